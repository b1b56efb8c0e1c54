"""Helpers the benchmark scripts share, so each script keeps only what it measures.

The scripts run as ``python benchmarks/NAME.py`` (this folder is then first on ``sys.path``) and import
``from common import ...``; the tests load them the same way (``tests/benchmarks/conftest.py`` puts this
folder on the path).

* where things are: :data:`REPO`, :data:`DATA` (``$FACEFORGE_DATA``, else the data folder that sits beside the
  checkout), :data:`RESULTS` (``benchmarks/results``), :data:`DEVTEST_PAIRS` (LFW ``pairsDevTest.txt``);
* data: :func:`faceforge_cli`, :func:`align_lfw` (``faceforge align`` of LFW with its 5-point landmarks, once,
  as ``make demo`` does), :func:`lfw_photos`, :func:`write_training_list` (a ``path label`` list of the people
  outside the evaluation pairs);
* numbers: :func:`mean_std` over seeds and :func:`pm` (``mean ± std`` for tables);
* output: :func:`write_results` (JSON and markdown, copied to ``benchmarks/results``) and
  :func:`machine_info`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from faceforge.data.files import identity_folders

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FACEFORGE_DATA", REPO.parent / "shared" / "data")).resolve()
RESULTS = REPO / "benchmarks" / "results"
DEVTEST_PAIRS = DATA / "lfw" / "pairsDevTest.txt"
LFW_LANDMARKS = DATA / "lfw" / "landmarks_mtcnn_5pts_250px.csv"


# ------------------------------------------------------------------------------------------------------ data
def faceforge_cli(args: list[str]) -> None:
    """``faceforge ARGS`` in this process; a failure stops the benchmark naming the command."""
    from faceforge.cli.main import main as faceforge

    if faceforge(args) != 0:
        raise SystemExit(f"faceforge {args[0]} failed")


def align_lfw(out: Path, progress: bool = False) -> Path:
    """``faceforge align`` of LFW (its 5-point MTCNN landmarks, offset -48,-48 into the 250 px photos) into
    ``out/lfw_aligned``, once: the folder is reused when its ``align_report.json`` exists."""
    faces = out / "lfw_aligned"
    if not (faces / "align_report.json").is_file():
        args = ["align", "--images", str(DATA / "lfw" / "images"), "--landmarks", str(LFW_LANDMARKS)]
        args += ["--landmark-offset=-48,-48", "--out", str(faces)]
        faceforge_cli(args if progress else [*args, "--no-progress"])
    return faces


def lfw_photos(src: Path, n: int | None = None) -> list[Path]:
    """The first ``n`` images (all when None) of an identity-folder tree, people and files in sorted order."""
    photos = [f for _, files in identity_folders(src) for f in files]
    return photos if n is None else photos[:n]


def write_training_list(
    faces: Path,
    path: Path,
    exclude: Iterable[str] = (),
    min_images: int = 2,
    max_people: int | None = None,
    per_person: int | None = None,
    seed: int | None = None,
) -> tuple[Path, int, int]:
    """Write a ``path label`` list (paths relative to ``faces``) of the identity folders of ``faces`` whose
    name is not in ``exclude`` (e.g. :func:`faceforge.data.pairs.pairs_people` of :data:`DEVTEST_PAIRS`) and
    that have at least ``min_images`` images; the first ``max_people`` of them by name; at most ``per_person``
    images each (the first ones, or a seeded choice when ``seed`` is given).  Labels are 0.. in list order.
    Returns ``(path, images, people)``."""
    skip = set(exclude)
    rng = np.random.default_rng(seed) if seed is not None else None
    people = [
        files for d, files in identity_folders(faces) if d.name not in skip and len(files) >= min_images
    ]
    people = people[:max_people] if max_people else people
    lines = []
    for label, files in enumerate(people):
        if per_person and len(files) > per_person:
            if rng is None:
                files = files[:per_person]
            else:
                files = [files[i] for i in sorted(rng.choice(len(files), per_person, replace=False))]
        lines += [f"{f.relative_to(faces).as_posix()} {label}" for f in files]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path, len(lines), len(people)


# --------------------------------------------------------------------------------------------------- numbers
def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample std (ddof 1; 0 for one value) of the values that are not None, and how many."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0, "values": list(values)}
    arr = np.asarray(vals)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": int(arr.size), "values": list(values)}


def pm(m: dict[str, Any] | None, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    """``mean ± std`` of a :func:`mean_std` record (just the value for one seed), with ``(n=k)`` when some
    seeds had no value; ``n/a`` when none had."""
    if not m or m.get("mean") is None:
        return "n/a"
    n = f" (n={m['n']})" if m["n"] != len(m["values"]) else ""
    if m["n"] == 1:
        return f"{m['mean'] * scale:.{digits}f}{unit}{n}"
    return f"{m['mean'] * scale:.{digits}f} ± {m['std'] * scale:.{digits}f}{unit}{n}"


# ---------------------------------------------------------------------------------------------------- output
def write_results(
    out: Path, stem: str, record: dict[str, Any], markdown: str | None = None, publish: bool = True
) -> Path:
    """``out/STEM.json`` (and ``out/STEM.md`` when ``markdown`` is given), copied to :data:`RESULTS` when
    ``publish``; returns the JSON file."""
    out.mkdir(parents=True, exist_ok=True)
    saved = out / f"{stem}.json"
    saved.write_text(json.dumps(record, indent=2, default=str))
    files = [saved]
    if markdown is not None:
        (out / f"{stem}.md").write_text(markdown)
        files.append(out / f"{stem}.md")
    if publish and out.resolve() != RESULTS.resolve():
        RESULTS.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(f, RESULTS / f.name)
    return saved


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :func:`platform.processor` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(**extra: Any) -> dict[str, Any]:
    """Where a number was measured: platform, CPU, core count and the Python / torch / faceforge versions,
    plus ``extra``."""
    import faceforge

    rec: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.processor() or platform.machine(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "faceforge": faceforge.__version__,
    }
    if "torch" in sys.modules:
        rec["torch"] = str(sys.modules["torch"].__version__)
    return rec | extra


def random_weights_checkpoint(name: str, path: Path) -> Path:
    """A faceforge checkpoint of backbone ``name`` with seed-0 random weights (default preprocessing) at ``path``:
    for speed benchmarks that need a model file and no trained one."""
    import torch

    import faceforge
    from faceforge.core.checkpoint import FORMAT, VERSION, atomic_torch_save
    from faceforge.data.preprocess import Preprocess
    from faceforge.models.backbones import build_backbone

    torch.manual_seed(0)
    net = build_backbone(name)
    meta = {
        "backbone": {"name": name, "kwargs": {}},
        "embedding_size": int(net.embedding_size),
        "preprocess": Preprocess().to_dict(),
        "faceforge_version": faceforge.__version__,
    }
    atomic_torch_save(
        {"format": FORMAT, "version": VERSION, "meta": meta, "backbone": net.state_dict()}, path
    )
    return path
