"""`faceforge embed` throughput against the bare forward pass of the same network, with its bf16 parity.

For each model (a faceforge checkpoint path, e.g. an imported network's ``model.pt``, or a backbone name,
which gets random weights: its parity is then not a trained network's) and each precision, in one process:

- ``bare``: the network's forward pass on one batch of real aligned faces already preprocessed in memory
  (``batch_size`` faces in passes of the embedder's ``forward_batch``, 32 on a CPU, channels_last, under the
  precision's autocast; the same network the command runs, BatchNorms folded), measured before and after the
  commands, the larger kept: once one pass at a time on all the threads (``bare_one_pass_at_a_time``) and once
  with the passes dealt to the embedder's forward streams (``bare_in_streams``: on a CPU with 2 threads, two
  passes at once on one thread each, :class:`~faceforge.embedders.checkpoint.ForwardStreams`). The limit
  (``bare``) is the faster of the two; ``ratio_flip_to_one_pass_at_a_time`` compares with the first alone. And
  one pass at a time at each of ``--forward-batches`` faces per pass (the sweep that chose the CPU default);
- ``reading``: seconds per image to read, sha1-hash and decode the files on one thread, and the **ceiling with
  reading**, ``1 / (1 / bare + t_read / passes_per_image)``: the most a command that must read JPEG files can
  reach on the same cores. For a network whose forward pass is cheap (the dlib import, ~1 ms a face) reading
  alone (~0.19 ms an image) takes that ceiling to ~0.92 of the bare pass with flip, ~0.85 without;
- ``embed``: the ``faceforge embed`` command itself (``main([...])`` in this process: model load and hash,
  file listing, read + sha1 + JPEG decode of every file, preprocessing, the forward passes, the ``.npz``) on
  ``--images`` faces, with ``--no-cache``; with ``--no-flip`` (images/s) and with the default flip sum (two
  forward passes per image: forward passes/s), each ``--command-repeats`` times (2) in turn and the fastest kept,
  as the bare pass keeps its best;
- ``ratio = embed / bare`` (target >= 0.9), both rates in forward passes per second;
- the command's **steady-state throughput** and its **start-up**: the command also runs on the first half of the
  faces, and ``steady = (n - n/2) / (t(n) - t(n/2))`` is the rate at which it embeds once started (model load
  and hash, BatchNorm folding, imports and one-time kernel set-up cancel out), ``startup_s = t(n/2) - (n/2) /
  steady`` what the start-up costs; ``steady_ratio = steady / bare``. The whole-command ratio of a short job is
  dominated by its start-up (a second against a 1,000-face job of 0.75 s with the dlib import in bf16), so both are
  reported;
- ``parity``: the model's parity record for that precision (min / mean cosine to fp32 on the first 32 faces,
  :mod:`faceforge.embedders.parity`), measured here when missing.

Precisions: ``--precision auto`` (default) measures the precision ``auto`` picks on this machine (bf16 on a CPU
with native bf16 or on CUDA, else fp32) and fp32 beside it. bf16 on a CPU without native bf16 is emulated and
many times slower than fp32; ask for it with ``--precision bf16`` only to see that.

The numbers vary with the machine and with other load on it; the ratios, measured in one run, much less.

    python benchmarks/embed_speed.py --model mobilefacenet --model iresnet50 [--model run/model.pt]
    faceforge import dlib --out dlib.pt && faceforge import onnx SFACE.onnx --out sface.pt
    python benchmarks/embed_speed.py --model mobilefacenet --model iresnet50 --model dlib.pt --model sface.pt
    python benchmarks/embed_speed.py --quick          # 256 faces, MobileFaceNet: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import DATA, REPO, lfw_photos, random_weights_checkpoint

from faceforge.cli.main import main as faceforge_main
from faceforge.core.precision import autocast, hardware_name, inference_candidate
from faceforge.data.files import list_images
from faceforge.data.image_io import read_image_rgb
from faceforge.embedders.checkpoint import CheckpointEmbedder
from faceforge.models.backbones import BACKBONES


def aligned_faces(root: Path | None, n: int, tmp: Path) -> tuple[Path, str]:
    """A list file of ``n`` aligned faces: from ``root`` if given, else the first ``n`` LFW photos aligned."""
    if root is not None:
        files = list_images(root)[:n]
        where = f"the first {len(files)} images of {root}"
    else:
        from faceforge.data.align_folder import align_folder

        src = DATA / "lfw" / "images"
        photos = lfw_photos(src, n)
        out = tmp / "aligned"
        align_folder(
            src,
            DATA / "lfw" / "landmarks_mtcnn_5pts_250px.csv",
            out,
            landmark_offset=(-48, -48),
            images=photos,
            progress=False,
        )
        files = list_images(out)
        where = f"the first {len(files)} LFW photos (people in name order), aligned to 112x112 here"
    listing = tmp / "faces.txt"
    listing.write_text("".join(f"{f}\n" for f in files))
    return listing, where


def model_file(spec: str, tmp: Path) -> tuple[Path, str]:
    """A checkpoint path as given, or a random-weights checkpoint of the backbone named ``spec``."""
    if Path(spec).is_file():
        return Path(spec), "checkpoint file"
    if spec not in BACKBONES:
        raise SystemExit(f"--model {spec}: neither a checkpoint file nor a backbone ({BACKBONES.names()})")
    path = random_weights_checkpoint(spec, tmp / f"{spec}.pt")
    return path, "random weights (no trained checkpoint given): the parity is not a trained network's"


@torch.inference_mode()
def bare_rate(emb: CheckpointEmbedder, faces: np.ndarray, precision: str, repeats: int,
              forward_batch: int | None = None) -> float:  # fmt: skip
    """Forward passes/s of the network on one preprocessed batch in memory, ``forward_batch`` faces per pass
    (default: the embedder's, as the command runs it; the first round is warm-up)."""
    x = emb.preprocess(torch.from_numpy(faces), emb.device)
    step = forward_batch or emb.forward_batch
    best = 0.0
    with autocast(emb.device, precision):
        emb.model(x[:step])
        for _ in range(repeats):
            t0 = time.perf_counter()
            for i in range(0, len(x), step):
                emb.model(x[i : i + step])
            if emb.device.type == "cuda":
                torch.cuda.synchronize()
            best = max(best, len(x) / (time.perf_counter() - t0))
    return best


def bare_streams_rate(
    emb: CheckpointEmbedder, faces: np.ndarray, precision: str, repeats: int
) -> float | None:
    """Forward passes/s of the same passes dealt to the embedder's :class:`ForwardStreams` (its workers
    each run ``repeats`` rounds of their share under one context, as a long command does; best of 3 after a
    warm-up), or None where it runs one pass at a time: the limit of the way the command runs the network."""
    pool = emb.forward_streams()
    if pool is None:
        return None
    x = emb.preprocess(torch.from_numpy(faces), emb.device)
    starts = list(range(0, len(x), emb.forward_batch))
    n = min(pool.n, len(starts))

    def run(share: list[int], rounds: int) -> None:
        with torch.inference_mode(), autocast(emb.device, precision):
            for _ in range(rounds):
                for i in share:
                    emb.model(x[i : i + emb.forward_batch])

    pool.map(lambda share: run(share, 1), [starts[k::n] for k in range(n)])
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        pool.map(lambda share: run(share, repeats), [starts[k::n] for k in range(n)])
        best = max(best, repeats * len(x) / (time.perf_counter() - t0))
    return best


def read_seconds(paths: list[str]) -> float:
    """Seconds per file to read, hash (sha1, the cache key) and decode, on one thread: what the command must
    do for every face besides the forward pass."""
    import hashlib

    from faceforge.data.image_io import decode_image_rgb, read_image_bytes

    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        for p in paths:
            data = read_image_bytes(Path(p))
            hashlib.sha1(data).hexdigest()
            decode_image_rgb(data, p)
        best = min(best, (time.perf_counter() - t0) / len(paths))
    return best


def command_seconds(ckpt: Path, listing: Path, precision: str, batch: int, flip: bool, out: Path) -> float:
    """Seconds of the whole ``faceforge embed`` command."""
    args = ["embed", "--model", str(ckpt), "--images", str(listing), "--out", str(out), "--no-cache"]
    args += ["--no-progress", "--precision", precision, "--batch-size", str(batch)]
    t0 = time.perf_counter()
    rc = faceforge_main([*args] if flip else [*args, "--no-flip"])
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"faceforge embed failed ({rc})")
    return seconds


def command_rates(
    ckpt: Path,
    listing: Path,
    half: Path,
    n: int,
    precision: str,
    batch: int,
    flip: bool,
    tmp: Path,
    repeats: int = 1,
) -> dict[str, float]:
    """The whole command's rate on ``n`` faces, its steady-state rate (from the run on the first ``n // 2``) and
    its start-up seconds (module doc), in forward passes per second (two passes per image with flip); each run
    ``repeats`` times in turn and the fastest kept, as the bare pass keeps its best."""
    passes = 2 if flip else 1
    t_half = t_full = float("inf")
    for _ in range(repeats):
        t_half = min(t_half, command_seconds(ckpt, half, precision, batch, flip, tmp / "h.npz"))
        t_full = min(t_full, command_seconds(ckpt, listing, precision, batch, flip, tmp / "f.npz"))
    steady = passes * (n - n // 2) / max(t_full - t_half, 1e-9)
    return {"whole": passes * n / t_full, "steady": steady, "startup_s": t_half - passes * (n // 2) / steady}


def measure(
    spec: str, precision: str, listing: Path, faces: np.ndarray, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    ckpt, weights = model_file(spec, tmp)
    emb = CheckpointEmbedder(ckpt, precision=precision, batch_size=args.batch_size)
    emb.settle_precision(faces, "the first faces of this benchmark")
    used = emb.precision
    lines = listing.read_text().splitlines()
    n = len(lines)
    half = tmp / "half.txt"
    half.write_text("".join(f"{p}\n" for p in lines[: n // 2]))
    # the bare pass before and after the commands, the larger kept: drift (other load) can only lower the ratio
    batch = faces[: args.batch_size]
    bare_runs = [bare_rate(emb, batch, used, args.repeats)]
    streams_runs = [bare_streams_rate(emb, batch, used, args.repeats)]
    runs = args.command_repeats
    no_flip = command_rates(ckpt, listing, half, n, precision, args.batch_size, False, tmp, runs)
    flip = command_rates(ckpt, listing, half, n, precision, args.batch_size, True, tmp, runs)
    bare_runs.append(bare_rate(emb, batch, used, args.repeats))
    streams_runs.append(bare_streams_rate(emb, batch, used, args.repeats))
    one_at_a_time = max(bare_runs)
    in_streams = max(streams_runs) if streams_runs[0] is not None else None
    # the limit: the faster of the two ways to run the bare network on these cores
    bare = max(one_at_a_time, in_streams or 0.0)
    t_read = read_seconds(lines[:512])
    # the most a command that reads JPEG files can reach on these cores: reading adds t_read per image
    ceiling = {"no_flip": 1 / (1 / bare + t_read), "flip": 1 / (1 / bare + t_read / 2)}
    sweep = {
        str(b): bare_rate(emb, faces[: args.batch_size], used, max(2, args.repeats // 2), b)
        for b in args.forward_batches
    }
    return {
        "model": spec,
        "weights": weights,
        "precision_requested": precision,
        "precision": used,
        "precision_note": emb.policy.note,
        "forward_batch": emb.forward_batch,
        "streams": emb.streams,
        "threads_per_stream": emb.stream_threads,
        "bare_forward_per_s": bare,
        "bare_one_pass_at_a_time_per_s": one_at_a_time,
        "bare_in_streams_per_s": in_streams,
        "bare_in_streams_before_after": streams_runs,
        "ratio_flip_to_one_pass_at_a_time": flip["whole"] / one_at_a_time,
        "bare_forward_per_s_by_forward_batch": sweep,
        "read_hash_decode_ms_per_image": 1000 * t_read,
        "ceiling_with_reading_per_s": ceiling,
        "ratio_flip_to_ceiling": flip["whole"] / ceiling["flip"],
        "steady_ratio_flip_to_ceiling": flip["steady"] / ceiling["flip"],
        "bare_forward_per_s_before_after": bare_runs,
        "embed_no_flip_images_per_s": no_flip["whole"],
        "embed_flip_forward_per_s": flip["whole"],
        "ratio_no_flip": no_flip["whole"] / bare,
        "ratio_flip": flip["whole"] / bare,
        "steady_no_flip_images_per_s": no_flip["steady"],
        "steady_flip_forward_per_s": flip["steady"],
        "steady_ratio_no_flip": no_flip["steady"] / bare,
        "steady_ratio_flip": flip["steady"] / bare,
        "startup_s_no_flip": no_flip["startup_s"],
        "startup_s_flip": flip["startup_s"],
        "parity": emb.describe()["precision_choice"]["record"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="checkpoint path or backbone name (repeatable)")
    ap.add_argument("--images", type=Path, help="aligned faces (default: the first --n LFW photos, aligned)")
    ap.add_argument("--n", type=int, default=2000, help="faces embedded by the command")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5, help="timed bare forward passes (best kept)")
    ap.add_argument(
        "--forward-batches", default="8,16,32,64,128",
        help="also time the bare pass at these faces per pass (the embedder's forward_batch)",
    )  # fmt: skip
    ap.add_argument(
        "--command-repeats", type=int, default=2,
        help="runs of each command, the fastest kept (the bare pass keeps its best of --repeats)",
    )  # fmt: skip
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--quick", action="store_true", help="256 faces, batch 64, MobileFaceNet only")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "embed_speed.json")
    args = ap.parse_args()
    if args.quick:
        args.n, args.batch_size, args.repeats, args.forward_batches = min(args.n, 256), 64, 2, "16,64"
        args.command_repeats = 1
    args.forward_batches = [int(b) for b in args.forward_batches.split(",") if b]
    models = args.model or (["mobilefacenet"] if args.quick else ["mobilefacenet", "iresnet50"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precisions = [args.precision]
    if args.precision == "auto":
        precisions = ["auto", "fp32"] if inference_candidate(device) is not None else ["fp32"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["FACEFORGE_CACHE"] = str(tmp / "cache")  # parity records of this run only
        listing, where = aligned_faces(args.images, args.n, tmp)
        paths = listing.read_text().splitlines()
        faces = np.stack([read_image_rgb(p) for p in paths[: max(args.batch_size, 32)]])
        for spec in models:
            for precision in precisions:
                row = measure(spec, precision, listing, faces, args, tmp)
                rows.append(row)
                streams = (
                    f" (one pass at a time {row['bare_one_pass_at_a_time_per_s']:.1f}, {row['streams']} streams "
                    f"{row['bare_in_streams_per_s']:.1f})"
                    if row["bare_in_streams_per_s"]
                    else ""
                )
                print(
                    f"{spec} {row['precision']}: bare {row['bare_forward_per_s']:.1f}/s{streams}, embed "
                    f"{row['embed_no_flip_images_per_s']:.1f} img/s (x{row['ratio_no_flip']:.2f}), with flip "
                    f"{row['embed_flip_forward_per_s']:.1f} passes/s (x{row['ratio_flip']:.2f}); steady state "
                    f"x{row['steady_ratio_no_flip']:.2f} / x{row['steady_ratio_flip']:.2f} with flip, start-up "
                    f"{row['startup_s_no_flip']:.2f} / {row['startup_s_flip']:.2f} s; reading "
                    f"{row['read_hash_decode_ms_per_image']:.3f} ms/image, flip ratio to the ceiling with reading "
                    f"x{row['ratio_flip_to_ceiling']:.2f}; bare by faces per pass "
                    f"{ {k: round(v) for k, v in row['bare_forward_per_s_by_forward_batch'].items()} }",
                    flush=True,
                )
    result = {
        "benchmark": "embed_speed",
        "what": "faceforge embed (whole command, --no-cache) vs the bare forward pass on a batch in memory",
        "target": "ratio >= 0.9 in forward passes per second (steady_ratio: the throughput once started)",
        "settings": {
            "faces": len(paths),
            "faces_from": where,
            "batch_size": args.batch_size,
            "bare_repeats": args.repeats,
            "command_repeats": args.command_repeats,
            "quick": args.quick,
            "device": str(device),
            "hardware": hardware_name(device),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "torch": str(torch.__version__),
            "platform": platform.platform(),
        },
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
