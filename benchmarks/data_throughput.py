"""Input-pipeline throughput: images/s the DataLoader delivers from RecordIO and from a JPEG folder, next to
the training step's images/s, measured in one run on this machine.

The pipeline alone is timed (no model): sampler -> read -> decode -> augment (flip + lowres + colour_jitter,
built by name from the augmentation registry) -> size check -> collate, for ``data.format=rec`` (a ``.rec``
written from the folder into a temp dir) and ``data.format=list`` (the same images as JPEG files), each
with 0, 1 and 2 DataLoader workers. Both datasets come from :func:`faceforge.data.build.build_dataset`, as
the trainer builds them. The first batch (worker start-up) is not timed.

The training figure is :meth:`Trainer.train_step` on a uint8 batch already in memory (the
``mobilefacenet_paper`` model of the LFW config, batch 64), as ``benchmarks/train_throughput.py`` measures
its ``limit``. ``ratio = pipeline / training`` says how many times faster than training the pipeline can
feed (target >= 3, so that data loading never limits training). Peak memory is ``ru_maxrss`` of this
process and of its (waited-for) children, i.e. the DataLoader workers.

    python benchmarks/data_throughput.py --data-root demo_out/lfw_aligned --images 2000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch
from common import DATA, REPO, lfw_photos
from torch.utils.data import DataLoader

from faceforge.config import compose_config
from faceforge.data.build import build_dataset
from faceforge.data.dataset import ResumableSampler, collate_faces
from faceforge.data.recordio import write_face_rec
from faceforge.data.samples import Samples, scan_image_folder

CONFIG = "lfw_mobilefacenet_arcface"
AUGMENT = "data.augment={flip: {p: 0.5}, lowres: {}, colour_jitter: {}}"


def aligned_subset(root: Path, images: int, tmp: Path) -> tuple[Path, str]:
    """An aligned LFW folder: ``root`` if it exists, else the first ``images`` LFW photos (people in name
    order) aligned into ``tmp`` (a full ``root`` is left for ``faceforge align`` to write)."""
    if root.is_dir():
        return root, f"existing aligned folder {root}"
    from faceforge.data.align_folder import align_folder

    src = DATA / "lfw" / "images"
    files = lfw_photos(src)
    out = tmp / "lfw_aligned"
    align_folder(
        src,
        DATA / "lfw" / "landmarks_mtcnn_5pts_250px.csv",
        out,
        landmark_offset=(-48, -48),
        images=files[:images],
        progress=False,
    )
    return out, f"{root} missing: first {images} LFW images aligned into a temp dir"


def subset(samples: Samples, n: int) -> Samples:
    """The first ``n`` samples with labels renumbered 0..C-1."""
    paths, labels = samples.paths[:n], samples.labels[:n]
    uniq = sorted(set(labels.tolist()))
    remap = {c: i for i, c in enumerate(uniq)}
    return Samples(list(paths), [remap[int(c)] for c in labels], [samples.classes[c] for c in uniq])


def pipeline_rate(dataset, batch_size: int, workers: int) -> dict:
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ResumableSampler(len(dataset), seed=0),
        num_workers=workers,
        collate_fn=collate_faces,
        drop_last=True,
        prefetch_factor=4 if workers > 0 else None,
    )
    dataset.set_epoch(0)
    it = iter(loader)
    first = next(it)  # worker start-up, not timed
    assert first.images.shape[1:] == (112, 112, 3)
    n, skipped, t0 = 0, len(first.skipped), time.perf_counter()
    for batch in it:
        n += len(batch)
        skipped += len(batch.skipped)
    dt = time.perf_counter() - t0
    del it
    return {"images_per_s": n / dt, "images_timed": n, "seconds": dt, "skipped": skipped}


def training_rate(cfg, batch_size: int, steps: int) -> tuple[float, str]:
    from faceforge.data.dataset import Batch
    from faceforge.engine.loop import Trainer

    trainer = Trainer(cfg)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 112, 112, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, trainer.data.num_classes, (batch_size,), generator=g)
    batch = Batch(images, labels, torch.arange(batch_size))
    trainer.train_step(batch)  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(batch)
    return steps * batch_size / (time.perf_counter() - t0), trainer.precision


def max_rss_mb() -> dict:
    # ru_maxrss is in KiB on Linux; RUSAGE_CHILDREN covers the DataLoader workers once they were joined
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"self_mb": round(own, 1), "largest_child_mb": round(children, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=REPO / "demo_out" / "lfw_aligned")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "data_throughput.json")
    ap.add_argument("--images", type=int, default=2000, help="images used (the first N of the folder)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--train-steps", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="faceforge_data_bench_") as tmp_dir:
        tmp = Path(tmp_dir)
        root, source = aligned_subset(args.data_root, args.images, tmp)
        samples = subset(scan_image_folder(root), args.images)
        list_file = tmp / "train.txt"
        list_file.write_text(
            "".join(
                f"{Path(p).relative_to(root)} {lab}\n"
                for p, lab in zip(samples.paths, samples.labels, strict=True)
            )
        )
        t0 = time.perf_counter()
        rec_path, _ = write_face_rec(samples, tmp / "train")
        write_seconds = time.perf_counter() - t0
        common = [
            f"data.root={root}",
            "data.exclude_pairs=[]",
            "data.preload=false",
            "eval.pairs=null",
            AUGMENT,
        ]
        common += [
            "run.progress=false",
            "data.min_images_per_identity=1",
            f"data.batch_size={args.batch_size}",
        ]
        formats = {
            "rec": ["data.format=rec", f"data.rec={rec_path}"],
            "folder_jpeg": ["data.format=list", f"data.list_file={list_file}"],
        }
        pipeline: dict[str, dict] = {}
        for name, overrides in formats.items():
            cfg = compose_config(CONFIG, [*common, *overrides])
            built = build_dataset(cfg.data, seed=0, progress=False)
            pipeline[name] = {}
            for w in (int(x) for x in args.workers.split(",")):
                r = pipeline_rate(built.dataset, args.batch_size, w)
                pipeline[name][f"workers_{w}"] = r
                print(f"{name}, {w} workers: {r['images_per_s']:.0f} img/s", flush=True)

        train_cfg = compose_config(CONFIG, [*common, *formats["rec"], "model=mobilefacenet_paper"])
        train: dict[str, dict] = {}
        rate, precision = training_rate(train_cfg, args.batch_size, args.train_steps)
        train["auto"] = {"images_per_s": rate, "precision": precision}
        if precision != "fp32":
            cfg32 = compose_config(
                CONFIG, [*common, *formats["rec"], "model=mobilefacenet_paper", "run.precision=fp32"]
            )
            train["fp32"] = {"images_per_s": training_rate(cfg32, args.batch_size, args.train_steps)[0]}
        train_ips = max(v["images_per_s"] for v in train.values())
        print(f"training (mobilefacenet_paper, batch {args.batch_size}): {train_ips:.1f} img/s", flush=True)
        for rows in pipeline.values():
            for r in rows.values():
                r["ratio_to_training"] = r["images_per_s"] / train_ips
        rec_mb = rec_path.stat().st_size / 2**20

    out = {
        "benchmark": "data_throughput",
        "what": "images/s delivered by the DataLoader alone (read + decode + flip/lowres/colour_jitter + "
        "collate, no model) vs MobileFaceNet training images/s on the same machine, same run",
        "target": "pipeline / training >= 3",
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": str(torch.__version__),
            "note": "run at nice 19 on 2 shared cores next to a CI job: absolute numbers are pessimistic",
        },
        "data": {
            "source": source,
            "images": len(samples),
            "identities": samples.num_classes,
            "rec_mb": round(rec_mb, 2),
            "rec_write_seconds": round(write_seconds, 2),
            "batch_size": args.batch_size,
        },
        "augment": {"flip": {"p": 0.5}, "lowres": "defaults", "colour_jitter": "defaults"},
        "pipeline": pipeline,
        "training": {
            "model": "mobilefacenet_paper + arcface, SGD, in-memory uint8 batch",
            "batch_size": args.batch_size,
            "steps": args.train_steps,
            "by_precision": train,
            "images_per_s": train_ips,
            "note": "the faster precision is used for the ratios (the conservative choice)",
        },
        "min_ratio": min(r["ratio_to_training"] for rows in pipeline.values() for r in rows.values()),
        "peak_memory": max_rss_mb(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"min ratio {out['min_ratio']:.1f}; wrote {args.out}")


if __name__ == "__main__":
    main()
