"""`faceforge prepare` and `faceforge align` on one core and on every core, and MTCNN batched or not.

On the first ``--photos`` LFW photos (people in name order; linked into a temporary folder), each run in a
fresh Python process as the ``faceforge`` command runs it (its clock starts after the imports, at the call):

- ``prepare`` with each detector (``--detectors``, default yunet, mtcnn, dlib), ``workers=1`` (one process,
  one compute thread) and ``workers=0`` (one worker process per core, each with its own detector): photos/s,
  the ratio (target >= 1.8 on 2 cores) and whether the two runs wrote byte-identical faces and equal reports;
- ``align`` (``--align-images`` images with the shared MTCNN landmarks) the same way, and the machine's ceiling
  for it: the same images in two halves aligned by two independent one-worker jobs at once (no pool, nothing
  shared), whose ratio to the one-core run is the most any every-core run can reach on this machine and disk;
- MTCNN alone on one thread: photo by photo (``detector(photo)``) against chunks of 8 photos
  (``detect_many``), photos/s of each.

Worker start-up (forked where that is safe, see :func:`faceforge.core.workers.start_method`; spawned processes
import faceforge and build their detector: about a second, more for MTCNN, which imports PyTorch) is inside the
every-core times, so small jobs gain less. A fresh process per run matters: a pool forked from a process that
had just aligned 13k images itself took 6.9 s where a fresh process's took 5.8 (its workers spent 12.4 CPU-s on
what the one-core run did in 10.1), which is what an earlier, in-process version of this benchmark measured. Each setting runs ``--repeats`` times in turn, into fresh folders,
and its fastest run counts (every run's seconds are in the JSON): on this 2-core virtual machine one run's
ratio moves by 0.1-0.2 with the kernel's file-system work (creating thousands of files right after deleting
thousands spends most of its system time in ext4's inode allocator, which two writers share badly);
``--scratch /dev/shm`` writes the outputs to memory instead, which keeps the disk out of the ratio.

    python benchmarks/prepare_speed.py [--photos 4000] [--align-images 13233] [--detectors yunet,dlib,mtcnn]
        [--repeats 2] [--scratch DIR]
    python benchmarks/prepare_speed.py --quick        # 160 photos, yunet + mtcnn: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from common import DATA, REPO, lfw_photos

from faceforge.core.workers import available_cores, one_thread, start_method
from faceforge.data.align_folder import align_folder
from faceforge.data.image_io import read_image_rgb
from faceforge.deploy.align_photos import CHUNK, DetectorSpec
from faceforge.deploy.detect import build_detector
from faceforge.deploy.prepare import prepare_folder

LANDMARKS = DATA / "lfw" / "landmarks_mtcnn_5pts_250px.csv"


def linked_tree(photos: list[Path], root: Path) -> Path:
    """``root/<person>/<photo>`` symbolic links to the photos: an ImageFolder tree of just these."""
    for f in photos:
        (root / f.parent.name).mkdir(parents=True, exist_ok=True)
        (root / f.parent.name / f.name).symlink_to(f)
    return root


def same_outputs(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    files_b = sorted(p.relative_to(b) for p in b.rglob("*.jpg"))
    return files_a == files_b and all((a / r).read_bytes() == (b / r).read_bytes() for r in files_a)


def report_of(rep: Any) -> dict[str, Any]:
    return {k: v for k, v in rep.to_dict().items() if k not in ("out_dir", "images_dir")}


def run_job(job: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """One ``prepare`` or ``align`` job (``job``: what, where, how many workers), timed from the call to its
    return in this process: (seconds, report)."""
    out, workers = Path(job["out"]), int(job["workers"])
    if job["stage"] == "align":
        files = lfw_photos(DATA / "lfw" / "images", job["images"])
        t0 = time.perf_counter()
        rep = align_folder(DATA / "lfw" / "images", LANDMARKS, out, landmark_offset=(-48, -48), images=files,
                           workers=workers, progress=False)  # fmt: skip
    else:
        spec = DetectorSpec(job["detector"])
        t0 = time.perf_counter()
        rep = prepare_folder(Path(job["src"]), out, spec, workers=workers, progress=False)
    return time.perf_counter() - t0, report_of(rep)


def run_fresh(job: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """:func:`run_job` in a new Python process (``--job``), as a user's ``faceforge`` command runs: nothing
    imported, allocated or forked before it but what the command itself does."""
    proc = subprocess.run(
        [sys.executable, __file__, "--job", json.dumps(job)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"job {job} failed:\n{proc.stderr[-3000:]}")
    seconds, report = json.loads(proc.stdout.strip().splitlines()[-1])
    return seconds, report


def one_vs_all(job: dict[str, Any], n: int, out: Path, repeats: int = 1) -> dict[str, Any]:
    """``job`` (:func:`run_job`) with one worker, then every core, ``repeats`` times in turn, each in a fresh
    process and into a fresh folder; rates and ratio from each setting's fastest run; identical outputs and
    reports?"""
    times: dict[str, list[float]] = {"one_core": [], "every_core": []}
    reports = {}
    # a fresh process's start method: the every-core pools' (MTCNN's workers import PyTorch after the fork)
    method = start_method()
    for r in range(repeats):
        for label, workers in (("one_core", 1), ("every_core", 0)):
            seconds, reports[label] = run_fresh({**job, "out": str(out / f"{label}{r}"), "workers": workers})
            times[label].append(seconds)
    best = {k: min(v) for k, v in times.items()}
    return {
        "items": n,
        "start_method": method,
        "one_core_per_s": n / best["one_core"],
        "every_core_per_s": n / best["every_core"],
        "ratio": best["one_core"] / best["every_core"],
        "ratio_per_repeat": [a / b for a, b in zip(times["one_core"], times["every_core"], strict=True)],
        "identical_outputs": same_outputs(out / "one_core0", out / "every_core0"),
        "identical_reports": reports["one_core"] == reports["every_core"],
        "seconds": times,
    }


def _align_half(args: tuple[list[Path], Path]) -> float:
    files, out = args
    t0 = time.perf_counter()
    with one_thread():
        align_folder(DATA / "lfw" / "images", LANDMARKS, out, landmark_offset=(-48, -48), images=files,
                     workers=1, progress=False)  # fmt: skip
    return time.perf_counter() - t0


def independent_halves(files: list[Path], out: Path, one_core_s: float) -> dict[str, Any]:
    """The machine's ceiling for ``align`` on 2 cores: the images split in two halves, aligned by two
    independent one-worker jobs at once (each its own process from the start, nothing shared, no pool); the
    ratio is the best the every-core run could reach on this machine and disk."""
    halves = [files[0::2], files[1::2]]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
        list(ex.map(_align_half, [(h[:8], out / f"warm{i}") for i, h in enumerate(halves)]))  # started
        t0 = time.perf_counter()
        each = list(ex.map(_align_half, [(h, out / f"half{i}") for i, h in enumerate(halves)]))
        wall = time.perf_counter() - t0
    return {"seconds": wall, "each_seconds": each, "ratio": one_core_s / wall}


def mtcnn_batching(photos: list[Path]) -> dict[str, Any]:
    detector = build_detector("mtcnn")
    images = [read_image_rgb(p) for p in photos]
    with one_thread():
        detector(images[0])  # warm-up
        t0 = time.perf_counter()
        for img in images:
            detector(img)
        single = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(0, len(images), CHUNK):
            detector.detect_many(images[i : i + CHUNK])
        batched = time.perf_counter() - t0
    return {
        "photos": len(images),
        "chunk": CHUNK,
        "photo_by_photo_per_s": len(images) / single,
        "batched_per_s": len(images) / batched,
        "ratio": single / batched,
        "threads": 1,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=4000)
    ap.add_argument("--align-images", type=int, default=13233)
    # each run is its own process, whose pool forks as the faceforge command's does (MTCNN's workers import
    # PyTorch after the fork); the MTCNN batching comparison runs in this process, last (it imports PyTorch)
    ap.add_argument("--detectors", default="yunet,dlib,mtcnn")
    ap.add_argument(
        "--repeats", type=int, default=2, help="runs of each setting, in turn (the fastest counts)"
    )
    ap.add_argument(
        "--scratch", type=Path, default=None,
        help="folder for the outputs (default: the system's temporary folder; /dev/shm keeps the disk out)",
    )  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="160 photos, 1100 alignments, yunet and mtcnn")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "prepare_speed.json")
    ap.add_argument("--job", default=None, help=argparse.SUPPRESS)  # one timed run, in a fresh process
    args = ap.parse_args()
    if args.job:
        print(json.dumps(run_job(json.loads(args.job))))
        return
    if args.quick:
        args.photos, args.align_images, args.detectors, args.repeats = 160, 1100, "yunet,mtcnn", 1
    photos = lfw_photos(DATA / "lfw" / "images", max(args.photos, args.align_images))
    result: dict[str, Any] = {
        "benchmark": "prepare_speed",
        "what": "prepare / align photos per second on one core vs every core; MTCNN batched vs photo by photo",
        "target": "every_core / one_core >= 1.8 on 2 cores, identical outputs",
        "settings": {
            "photos": args.photos,
            "align_images": args.align_images,
            "cores": available_cores(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "quick": args.quick,
            "repeats": args.repeats,
            "scratch": str(args.scratch or tempfile.gettempdir()),
            "start_method": start_method(),
            "data": "LFW 160x160 crops, people in name order",
        },
        "prepare": {},
    }
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp_name:
        tmp = Path(tmp_name)
        align_files = photos[: args.align_images]

        job = {"stage": "align", "images": args.align_images}
        result["align"] = one_vs_all(job, len(align_files), tmp / "align", args.repeats)
        ceiling = independent_halves(align_files, tmp / "halves", min(result["align"]["seconds"]["one_core"]))
        result["align"]["machine_ceiling"] = ceiling
        result["align"]["ratio_to_ceiling"] = result["align"]["ratio"] / ceiling["ratio"]
        print(f"align: x{result['align']['ratio']:.2f} (two independent jobs on halves: "
              f"x{ceiling['ratio']:.2f}), identical {result['align']['identical_outputs']}")  # fmt: skip
        src = linked_tree(photos[: args.photos], tmp / "photos")
        for name in [d for d in args.detectors.split(",") if d]:
            job = {"stage": "prepare", "detector": name, "src": str(src)}
            rec = one_vs_all(job, args.photos, tmp / f"prepare_{name}", args.repeats)
            result["prepare"][name] = rec
            print(f"prepare {name}: x{rec['ratio']:.2f} ({rec['one_core_per_s']:.1f} -> "
                  f"{rec['every_core_per_s']:.1f} photos/s), identical {rec['identical_outputs']}", flush=True)  # fmt: skip
        if "mtcnn" in args.detectors:
            result["mtcnn_batching"] = mtcnn_batching(photos[: min(args.photos, 200)])
            print(f"mtcnn batched: x{result['mtcnn_batching']['ratio']:.2f} on one thread")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
