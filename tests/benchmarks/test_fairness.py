"""benchmarks/fairness.py: the training command line, aggregation over seeds and the CIFP-vs-base verdict,
on hand-made per-run numbers (the script trains and evaluates; this checks what it does with the results)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fairness.py"


@pytest.fixture(scope="module")
def fairness():
    spec = importlib.util.spec_from_file_location("fairness_benchmark", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _eval(acc: float, asian: float, white: float, female: float, male: float) -> dict:
    """A run's evaluation as evaluate() returns it (1000 pairs per race, 2000 per gender)."""

    def grouping(fmr: dict[str, float], n: int) -> dict:
        lo, hi = min(fmr.values()), max(fmr.values())
        floored = {k: max(v, 1 / n) for k, v in fmr.items()}
        return {
            "threshold": 0.5,
            "overall_fmr": 1e-3,
            "fmr": fmr,
            "n_impostor": dict.fromkeys(fmr, n),
            "fmr_ratio": None if lo == 0 else hi / lo,
            "fmr_ratio_floored": max(floored.values()) / min(floored.values()),
            "log10_fmr_std": float(np.std(np.log10(list(floored.values())))),
            "worst_group": max(fmr, key=fmr.get),
            "best_group": min(fmr, key=fmr.get),
        }

    return {
        "pairs_accuracy": acc,
        "pairs_accuracy_fold_std": 0.01,
        "race": grouping({"Asian": asian, "White": white}, 1000),
        "gender": grouping({"female": female, "male": male}, 2000),
    }


def test_training_command(fairness, tmp_path: Path) -> None:
    cmd = fairness.training_command(
        "arcface_cifp", 2, tmp_path / "faces", tmp_path / "run", 3, ["run.max_steps=5"]
    )
    assert cmd[1:5] == ["-m", "faceforge", "train", "lfw_mobilefacenet_arcface"]
    assert cmd[5:] == [
        "head=arcface",
        f"data.root={tmp_path / 'faces'}",
        f"run.dir={tmp_path / 'run'}",
        "run.seed=2",
        "optim.epochs=3",
        "eval.pairs=null",
        "run.progress=false",
        "run.max_steps=5",
        *fairness.CIFP_KEYS,
    ]
    plain = fairness.training_command("cosface", 0, tmp_path, tmp_path, 1)
    assert "head=cosface" in plain and not set(fairness.CIFP_KEYS) & set(plain)
    with pytest.raises(SystemExit, match="unknown row"):
        fairness.training_command("sphereface", 0, tmp_path, tmp_path, 1)


def test_training_command_paths_are_absolute(fairness, tmp_path: Path, monkeypatch) -> None:
    # the training process runs in the repository root: a relative --out or --lfw given from another
    # folder must still point where the script looks for the model
    monkeypatch.chdir(tmp_path)
    cmd = fairness.training_command("cosface", 0, Path("faces"), Path("out/runs/cosface/seed0"), 2)
    assert f"data.root={tmp_path / 'faces'}" in cmd
    assert f"run.dir={tmp_path / 'out/runs/cosface/seed0'}" in cmd


def _saved_config(cmd: list[str], run_dir: Path, **changes: str) -> None:
    """Write ``run_dir/config.yaml`` as the trainer does for ``cmd``, with ``changes`` (dotted keys)."""
    from omegaconf import OmegaConf

    from faceforge.config import compose_config

    args = cmd[cmd.index("lfw_mobilefacenet_arcface") + 1 :]
    cfg = OmegaConf.to_container(compose_config("lfw_mobilefacenet_arcface", args), resolve=True)
    for key, value in changes.items():
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))


def test_existing_run_is_reused_only_with_the_same_config(fairness, tmp_path: Path) -> None:
    faces, run_dir = tmp_path / "faces", tmp_path / "runs" / "cosface_cifp" / "seed1"
    cmd = fairness.training_command("cosface_cifp", 1, faces, run_dir, 2, ["run.threads=1"])
    assert fairness.run_config_differences(cmd, run_dir) == ["config.yaml"]  # nothing saved yet
    # where the run lived, its threads and its log settings do not make another model
    _saved_config(cmd, run_dir, **{"run.dir": "elsewhere", "run.threads": "2", "run.log_every": "50"})
    assert fairness.run_config_differences(cmd, run_dir) == []
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "model.pt").write_bytes(b"")
    info = fairness.train("cosface_cifp", 1, faces, run_dir, 2, ["run.threads=1"])
    assert info["trained"].startswith("earlier") and "wall_seconds" not in info
    # a run trained for 3 epochs is not a 2-epoch run: the script stops and names the key
    _saved_config(cmd, run_dir, **{"optim.epochs": "3"})
    assert fairness.run_config_differences(cmd, run_dir) == ["optim.epochs"]
    with pytest.raises(SystemExit, match=r"optim\.epochs differ"):
        fairness.train("cosface_cifp", 1, faces, run_dir, 2, ["run.threads=1"])
    # the base row's run is not the CIFP row's run
    plain = fairness.training_command("cosface", 1, faces, run_dir, 2, ["run.threads=1"])
    assert {"objectives.margin", "objectives.cifp.alpha"} <= set(
        fairness.run_config_differences(plain, run_dir)
    )


def test_aggregate_compare_and_table(fairness) -> None:
    # seeds of the base row: accuracy .80 / .82, Asian FMR .004 / .006, White .001 / .001 -> floored ratios 4, 6
    # CIFP row: accuracy .815 / .80, Asian .002 / .002, White .001 / .001 -> ratios 2, 2
    runs = {
        "arcface": {
            "0": {"eval": _eval(0.80, 0.004, 0.001, 0.002, 0.001)},
            "1": {"eval": _eval(0.82, 0.006, 0.001, 0.002, 0.0)},
        },
        "arcface_cifp": {
            "0": {"eval": _eval(0.815, 0.002, 0.001, 0.001, 0.001)},
            "1": {"eval": _eval(0.80, 0.002, 0.001, 0.001, 0.001)},
        },
    }
    s = fairness.aggregate(runs)
    acc = s["arcface"]["pairs_accuracy"]
    assert acc["mean"] == pytest.approx(0.81) and acc["std"] == pytest.approx(0.02 / 2**0.5) and acc["n"] == 2
    assert s["arcface"]["race.fmr_ratio_floored"]["mean"] == pytest.approx(5.0)
    assert s["arcface"]["race.fmr.Asian"]["values"] == [0.004, 0.006]
    # a seed whose male group had no false match: raw ratio undefined there, mean over the other seed only
    assert s["arcface"]["gender.fmr_ratio"] == {"mean": 2.0, "std": 0.0, "n": 1, "values": [2.0, None]}
    assert s["arcface"]["gender.fmr_ratio_floored"]["mean"] == pytest.approx((2.0 + 4.0) / 2)
    c = fairness.compare(s)
    assert set(c) == {"arcface"}
    assert c["arcface"]["pairs_accuracy_points"] == pytest.approx(-0.25)
    assert c["arcface"]["race.fmr_ratio_floored"] == pytest.approx(2.0 - 5.0)
    assert c["arcface"]["race.log10_fmr_std"] < 0 and c["arcface"]["target_met"] is True
    runs["arcface_cifp"]["1"]["eval"]["pairs_accuracy"] = 0.78  # now 1.25 points lost
    assert fairness.compare(fairness.aggregate(runs))["arcface"]["target_met"] is False
    runs["arcface"]["0"]["eval"]["race"]["groups_too_few_pairs"] = ["Black"]
    md = fairness.table(s, c, 2, fairness.small_groups(runs))
    assert "| arcface + CIFP | 80.75 ± 1.06 %" in md and "target met" in md
    assert "- race: Black left out" in md and "gender:" not in md
    one = fairness.table(fairness.aggregate({"arcface": {"0": runs["arcface"]["0"]}}), {}, 1)
    assert "| arcface | 80.00 % |" in one
    assert "FMR Asian" in md and "FMR White" in md
    json.dumps({"summary": s, "comparison": c}, allow_nan=False)
