"""dlib's ResNet imported as a faceforge network (``faceforge import dlib``) against dlib's own runtime.

Measured in one run, on the same machine and the same faces:

1. **Parity** on dlib's own chips: ``--parity-faces`` LFW pairsDevTest faces, each cut to a 150 px chip by dlib
   (its 5-point predictor on the ArcFace-aligned face, ``get_face_chip`` with padding 0.25); the descriptors of
   dlib's ``compute_face_descriptor`` and of the imported network (``input=chip150``, fp32) compared by cosine.
2. **Accuracy** on pairsDevTest (insightface 10-fold, flip on and off) through ``faceforge eval``: dlib's runtime
   with its per-face landmarks (``landmarks``), dlib's runtime on the fixed-template chips (``template``) and
   the import (``input=arcface112``, which cuts the same template chips inside the network).
3. **Speed**, faces per second on the same ``--speed-faces`` aligned faces, chips already cut: dlib's runtime
   (one process, and ``--workers`` processes) against the import in fp32 and, where the CPU has native bf16,
   bf16 autocast + channels_last, at batch 64 with all cores.
4. ``--measure-template`` re-derives the fixed transform (``ARCFACE112_TO_CHIP150``) on pairsDevTrain faces:
   the mean of dlib's per-face chip transforms, read off by cutting a chip of a coordinate image.

    python benchmarks/dlib_import.py --aligned demo_out/lfw_aligned [--measure-template]

writes ``benchmarks/results/dlib_import.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import DATA, REPO

from faceforge.cli.main import main as faceforge
from faceforge.core.checkpoint import load_checkpoint
from faceforge.core.precision import autocast, cpu_has_bf16
from faceforge.data.image_io import read_image_rgb
from faceforge.data.pairs import pairs_people
from faceforge.data.preprocess import Preprocess
from faceforge.embedders.checkpoint import backbone_from_checkpoint
from faceforge.embedders.dlib_resnet import DlibResNetEmbedder, model_files


def people_faces(aligned: Path, pairs: Path, limit: int, step: int = 1) -> list[Path]:
    names = sorted(pairs_people(pairs))
    files = [f for n in names for f in sorted((aligned / n).glob("*.jpg"))]
    return files[::step][:limit]


def dlib_chips(faces: np.ndarray) -> np.ndarray:
    import dlib

    emb = DlibResNetEmbedder(mode="landmarks")
    out = []
    for face in faces:
        img, pad = emb._bordered(face)
        shape = emb.predictor(img, emb._box(img, pad, face.shape[1], face.shape[0]))
        out.append(dlib.get_face_chip(img, shape, size=150, padding=0.25))
    return np.stack(out)


def _dlib_descriptors(chips: np.ndarray) -> np.ndarray:
    import dlib

    net = dlib.face_recognition_model_v1(str(model_files()["recognition"]))
    return np.asarray([np.asarray(v) for v in net.compute_face_descriptor(list(chips))], np.float32)


def _forward(
    model: torch.nn.Module, pre: Preprocess, chips: np.ndarray, precision: str, batch: int = 64
) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for i in range(0, len(chips), batch):
            x = pre(torch.from_numpy(chips[i : i + batch]))
            with autocast(torch.device("cpu"), precision):
                out.append(model(x).float())
    return torch.cat(out).numpy()


def parity(chips: np.ndarray, chip_model: Path) -> dict[str, Any]:
    ref = _dlib_descriptors(chips)
    ckpt = load_checkpoint(chip_model)
    model = backbone_from_checkpoint(ckpt)
    ours = _forward(model, Preprocess.from_dict(ckpt["meta"]["preprocess"]), chips, "fp32")
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    return {
        "faces": len(chips),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "max_abs_diff": float(np.abs(ours - ref).max()),
    }


def accuracy(model: str, options: list[str], aligned: Path, pairs: Path, flip: bool, out: Path) -> float:
    args = ["eval", "--model", model, "--pairs", str(pairs), "--images", str(aligned), "--json", str(out)]
    args += [a for o in options for a in ("--model-option", o)] + ([] if flip else ["--no-flip"])
    args += ["--cache-dir", str(out.parent / "cache")]
    if faceforge(args) != 0:
        raise SystemExit(f"faceforge {' '.join(args)} failed")
    return float(json.loads(out.read_text())["benchmarks"]["lfw:pairsDevTest"]["summary"]["accuracy"])


def _dlib_worker(chips: np.ndarray) -> int:
    return len(_dlib_descriptors(chips))


def speed(chips: np.ndarray, chip_model: Path, workers: int) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    t = time.perf_counter()
    _dlib_descriptors(chips)
    rows["dlib_runtime_1_process"] = len(chips) / (time.perf_counter() - t)
    if workers > 1:
        parts = np.array_split(chips, workers)
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_dlib_worker, [p[:2] for p in parts]))  # start the workers and load the model
            t = time.perf_counter()
            list(pool.map(_dlib_worker, parts))
            rows[f"dlib_runtime_{workers}_processes"] = len(chips) / (time.perf_counter() - t)
    ckpt = load_checkpoint(chip_model)
    model = backbone_from_checkpoint(ckpt).to(memory_format=torch.channels_last)
    pre = Preprocess.from_dict(ckpt["meta"]["preprocess"])
    for precision in ["fp32"] + (["bf16"] if cpu_has_bf16() else []):
        _forward(model, pre, chips[:64], precision)  # warm-up
        t = time.perf_counter()
        _forward(model, pre, chips, precision)
        rows[f"import_{precision}_batch64"] = len(chips) / (time.perf_counter() - t)
    base = rows["dlib_runtime_1_process"]
    return {
        "faces_per_s": rows,
        "speedup_vs_dlib_1_process": {k: v / base for k, v in rows.items()},
        "torch_threads": torch.get_num_threads(),
    }


def measure_template(aligned: Path, pairs: Path, limit: int) -> dict[str, Any]:
    """Mean chip -> ArcFace-112 transform of dlib's own per-face chips (see ``ARCFACE112_TO_CHIP150``)."""
    import dlib

    emb = DlibResNetEmbedder(mode="landmarks")
    coord = np.stack(
        [*np.meshgrid(np.arange(256), np.arange(256), indexing="xy"), np.zeros((256, 256))], -1
    ).astype(np.uint8)
    u, v = np.meshgrid(np.arange(150), np.arange(150))
    fits = []
    for f in people_faces(aligned, pairs, limit, step=3):
        face = read_image_rgb(f)
        img, pad = emb._bordered(face)
        shape = emb.predictor(img, emb._box(img, pad, face.shape[1], face.shape[0]))
        chip = dlib.get_face_chip(coord, shape, size=150, padding=0.25).astype(np.float64)
        ok = (chip[..., :2] > 0).all(-1) & (chip[..., :2] < 255).all(-1)
        a = np.stack([u[ok], v[ok], np.ones(ok.sum())], 1)
        fits.append([np.linalg.lstsq(a, chip[..., c][ok] - pad, rcond=None)[0] for c in (0, 1)])
    fits_arr = np.asarray(fits)
    return {
        "faces": len(fits_arr),
        "mean": fits_arr.mean(0).round(5).tolist(),
        "std": fits_arr.std(0).round(5).tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aligned", type=Path, required=True, help="ArcFace-aligned LFW (faceforge align)")
    ap.add_argument("--parity-faces", type=int, default=500)
    ap.add_argument("--speed-faces", type=int, default=256)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--measure-template", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "dlib_import.json")
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks_out" / "dlib_import")
    args = ap.parse_args()
    lfw = DATA / "lfw"
    args.work.mkdir(parents=True, exist_ok=True)
    models = {mode: args.work / f"dlib_{mode}.pt" for mode in ("arcface112", "chip150")}
    for mode, path in models.items():
        faceforge(["import", "dlib", "--out", str(path), "--option", f"input={mode}"])
    test = people_faces(args.aligned, lfw / "pairsDevTest.txt", max(args.parity_faces, args.speed_faces))
    chips = dlib_chips(np.stack([read_image_rgb(f) for f in test]))
    result: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "native_bf16": cpu_has_bf16()},
        "parity": parity(chips[: args.parity_faces], models["chip150"]),
        "speed": speed(chips[: args.speed_faces], models["chip150"], args.workers),
    }
    if not args.skip_accuracy:
        rows = {
            "dlib runtime, its landmarks per face (mode=landmarks)": ("dlib", ["mode=landmarks"]),
            "dlib runtime, fixed-template chips (mode=template)": ("dlib", ["mode=template"]),
            "import, input=arcface112 (same template, in the network)": (str(models["arcface112"]), []),
        }
        acc: dict[str, dict[str, float]] = {}
        for name, (model, options) in rows.items():
            acc[name] = {}
            for flip in (True, False):
                out = args.work / f"eval_{len(acc)}_{flip}.json"
                acc[name]["flip" if flip else "no_flip"] = accuracy(
                    model, options, args.aligned, lfw / "pairsDevTest.txt", flip, out
                )
        result["pairsDevTest_accuracy"] = acc
    if args.measure_template:
        result["template"] = measure_template(args.aligned, lfw / "pairsDevTrain.txt", 1500)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
