"""torch.compile or not, for training and inference of MobileFaceNet and iresnet50 on this machine.

For each backbone, in one process, at the precision ``run.precision=auto`` picks here:

- **training**: :meth:`faceforge.engine.loop.Trainer.train_step` (preprocess, forward, ArcFace head, CE,
  backward, clip, SGD step) on one uint8 batch already in memory, with ``run.compile=false`` and ``true``;
- **inference**: the ``faceforge embed`` network (:class:`~faceforge.embedders.checkpoint.CheckpointEmbedder`:
  BatchNorm folded, channels_last, ``inference_mode``) on one batch in memory, ``compile=False`` and ``True``.

The first compiled call (compilation) is timed on its own (``compile_seconds``); then eager and compiled run
in alternating rounds (``--rounds`` x ``--steps``) so that load that comes and goes hits both alike, and the
median rate of each is kept. ``speedup = compiled / eager`` in steady state; ``break_even_images`` is how
many images the compiled path must process before its compile time is paid back. torch.compile pays where
``speedup`` is clearly above 1 and the job is much larger than ``break_even_images``.

    python benchmarks/compile_speed.py [--backbones mobilefacenet:64,iresnet50:32]
    python benchmarks/compile_speed.py --quick      # MobileFaceNet, 2 rounds: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import DATA, REPO, lfw_photos, random_weights_checkpoint

from faceforge.config import compose_config
from faceforge.core.precision import hardware_name
from faceforge.data.dataset import Batch
from faceforge.embedders.checkpoint import CheckpointEmbedder
from faceforge.engine.loop import Trainer


def training_data(tmp: Path, n: int = 256) -> Path:
    """The first ``n`` LFW photos aligned into ``tmp``: the trainer needs a data set (its batches come from
    memory here)."""
    from faceforge.data.align_folder import align_folder

    src = DATA / "lfw" / "images"
    photos = lfw_photos(src, n)
    align_folder(
        src, DATA / "lfw" / "landmarks_mtcnn_5pts_250px.csv", tmp / "aligned", landmark_offset=(-48, -48),
        images=photos, progress=False,
    )  # fmt: skip
    return tmp / "aligned"


def timed_rounds(runs: dict[str, Callable[[], None]], images: int, rounds: int, steps: int) -> dict[str, Any]:
    """First call of each (compile / warm-up) timed alone, then alternating rounds; median images/s."""
    first = {}
    for name, fn in runs.items():
        t0 = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - t0
        fn()  # a second warm-up: oneDNN primitives, allocator
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            rates[name].append(steps * images / (time.perf_counter() - t0))
    eager, compiled = statistics.median(rates["eager"]), statistics.median(rates["compiled"])
    gain = 1 / eager - 1 / compiled  # seconds saved per image
    extra = first["compiled"] - first["eager"]
    return {
        "eager_images_per_s": eager,
        "compiled_images_per_s": compiled,
        "speedup": compiled / eager,
        "compile_seconds": first["compiled"],
        "eager_first_call_seconds": first["eager"],
        "break_even_images": extra / gain if gain > 0 else None,
        "rates": rates,
    }


def training(name: str, batch: int, root: Path, tmp: Path, rounds: int, steps: int) -> dict[str, Any]:
    trainers = {}
    for label, flag in (("eager", "false"), ("compiled", "true")):
        cfg = compose_config(
            "lfw_mobilefacenet_arcface",
            [f"model={name}", f"data.root={root}", f"data.batch_size={batch}", "data.exclude_pairs=[]",
             "eval.pairs=null", "run.progress=false", f"run.compile={flag}", f"run.dir={tmp / label}"],
        )  # fmt: skip
        trainers[label] = Trainer(cfg)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 112, 112, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, trainers["eager"].data.num_classes, (batch,), generator=g)
    data = Batch(images, labels, torch.arange(batch))
    rec = timed_rounds(
        {k: (lambda t=t: t.train_step(data)) for k, t in trainers.items()}, batch, rounds, steps
    )
    rec["precision"] = trainers["eager"].precision
    rec["compiled_flag_reported"] = trainers["compiled"].compiled
    return rec


def inference(name: str, batch: int, tmp: Path, rounds: int, steps: int) -> dict[str, Any]:
    path = random_weights_checkpoint(name, tmp / f"{name}.pt")
    faces = torch.randint(0, 256, (batch, 112, 112, 3), dtype=torch.uint8).numpy()
    embedders = {
        "eager": CheckpointEmbedder(path, precision="auto", batch_size=batch, compile=False),
        "compiled": CheckpointEmbedder(path, precision="auto", batch_size=batch, compile=True),
    }
    rec = timed_rounds({k: (lambda e=e: e.embed(faces)) for k, e in embedders.items()}, batch, rounds, steps)
    rec["precision"] = embedders["eager"].precision
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--backbones", default="mobilefacenet:64,iresnet50:32", help="name:batch, comma separated"
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="mobilefacenet:32, 2 rounds of 1 step")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "compile_speed.json")
    args = ap.parse_args()
    if args.quick:
        args.backbones, args.rounds, args.steps = "mobilefacenet:32", 2, 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["FACEFORGE_CACHE"] = str(tmp / "cache")
        root = training_data(tmp)
        for spec in args.backbones.split(","):
            name, batch = spec.split(":")
            row = {"backbone": name, "batch_size": int(batch)}
            row["training"] = training(name, int(batch), root, tmp / name, args.rounds, args.steps)
            row["inference"] = inference(name, int(batch), tmp, args.rounds, args.steps)
            rows.append(row)
            for part in ("training", "inference"):
                r = row[part]
                print(f"{name} {part} ({r['precision']}): eager {r['eager_images_per_s']:.1f} img/s, compiled "
                      f"{r['compiled_images_per_s']:.1f} (x{r['speedup']:.2f}), compile {r['compile_seconds']:.0f} s",
                      flush=True)  # fmt: skip
    result = {
        "benchmark": "compile_speed",
        "what": "torch.compile vs eager: Trainer.train_step and the embed network on one batch in memory",
        "settings": {
            "rounds": args.rounds,
            "steps_per_round": args.steps,
            "device": "cpu",
            "hardware": hardware_name(torch.device("cpu")),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "torch": str(torch.__version__),
            "platform": platform.platform(),
            "quick": args.quick,
        },
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
