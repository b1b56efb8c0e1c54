"""benchmarks/gpu_check.py starts and writes every section on a CPU (``--device cpu --quick``), so it is known to
run when a GPU machine is lent for a few minutes: no data from outside the checkout, no network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
SECTIONS = (
    "machine",
    "data",
    "training",
    "data_pipeline",
    "distributed",
    "embedding",
    "parity",
    "training_compiled",
)


def test_gpu_check_runs_on_cpu_and_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "FACEFORGE_DATA": str(tmp_path / "no_data_here")}  # it must need none
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    failed = {k: res[k].get("error") for k in SECTIONS if not res.get(k, {}).get("ok")}
    assert not failed, failed
    rows = res["training"]["rows"]
    assert {r["model"] for r in rows} == {"mobilefacenet", "iresnet18"}  # iresnet50 on a GPU
    assert all(
        r["engine_images_per_s"] > 0 and r["limit_images_per_s"] > 0 and r["loss_finite"] for r in rows
    )
    assert set(res["data_pipeline"]["formats"]) == {"rec", "folder"}
    assert res["distributed"]["backend"] == "gloo" and res["distributed"]["collectives_ok"]
    assert res["distributed"]["losses_finite"]
    assert {r["model"] for r in res["embedding"]["rows"]} == {"mobilefacenet", "iresnet18"}
    assert res["parity"]["within_tolerance"] and len(res["parity"]["losses_cpu"]) == 20
