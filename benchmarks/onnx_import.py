"""``faceforge import onnx`` on SFace: parity with ONNX Runtime, pairsDevTest accuracy and speed, in one run.

1. imports the ONNX file (default: the fetched SFace int8 file) into a faceforge checkpoint;
2. embeds the same ``--faces`` aligned faces with the reference runtime (the ``sface`` embedder: ONNX Runtime on
   the original graph) and with the imported checkpoint in fp32 and bf16 autocast, and reports the cosine
   similarity per face (min, 1st percentile, mean) and faces/s of each (batch ``--batch``, after one warm-up
   batch; bf16 on at most ``--bf16-faces`` faces when the CPU has no native bf16, where PyTorch emulates it);
3. with ``--pairs``: LFW pairs accuracy of both through :func:`faceforge.eval.benchmarks.run_benchmarks`, the
   code ``faceforge eval`` runs (insightface 10-fold, flip-sum), on the aligned ``--images``.

The JSON records the machine (CPU, cores, load average before and after: on a shared machine the speeds are
only comparable within one run) and the versions.

    python benchmarks/onnx_import.py --images ALIGNED_DEVTEST --pairs $FACEFORGE_DATA/lfw/pairsDevTest.txt
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from common import REPO, cpu_name

from faceforge.core.precision import cpu_has_bf16
from faceforge.data.image_io import read_image_rgb
from faceforge.embedders.checkpoint import CheckpointEmbedder
from faceforge.embedders.sface import SFaceEmbedder, default_sface_path
from faceforge.eval.benchmarks import lfw_spec, run_benchmarks
from faceforge.importers.base import save_imported
from faceforge.importers.onnx_net import import_onnx


def _timed(embedder: Any, faces: np.ndarray, batch: int) -> tuple[np.ndarray, float]:
    embedder.embed(faces[:batch])  # warm-up
    t = time.perf_counter()
    out = embedder.embed(faces)
    return out, len(faces) / (time.perf_counter() - t)


def _cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    c = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {
        "min": float(c.min()),
        "p01": float(np.percentile(c, 1)),
        "mean": float(c.mean()),
        "faces": len(c),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="ONNX file (default: the fetched SFace)")
    ap.add_argument("--images", type=Path, required=True, help="aligned 112 px faces, <name>/<name>_NNNN.jpg")
    ap.add_argument("--pairs", type=Path, default=None, help="LFW pairs file: also measure accuracy")
    ap.add_argument("--faces", type=int, default=500)
    ap.add_argument("--bf16-faces", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "onnx_import_sface.json")
    args = ap.parse_args()

    load_before = os.getloadavg()
    model = args.model or default_sface_path()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        imported = import_onnx(model)
        ckpt = save_imported(imported, Path(tmp) / "imported.pt")
        import_seconds = time.perf_counter() - t

        files = sorted(args.images.rglob("*.jpg"))[: args.faces]
        faces = np.stack([read_image_rgb(f) for f in files])
        reference = SFaceEmbedder(model, device="cpu", batch_size=args.batch)
        ref, ref_speed = _timed(reference, faces, args.batch)
        fp32, fp32_speed = _timed(CheckpointEmbedder(ckpt, "cpu", "fp32", args.batch), faces, args.batch)
        n16 = len(faces) if cpu_has_bf16() else min(len(faces), args.bf16_faces)
        bf16, bf16_speed = _timed(
            CheckpointEmbedder(ckpt, "cpu", "bf16", args.batch), faces[:n16], args.batch
        )
        result: dict[str, Any] = {
            "model": str(model),
            "import": {
                "seconds": import_seconds,
                "backbone": imported.backbone["name"],
                "notes": imported.notes,
                "source": imported.source,
            },
            "parity": {"fp32": _cosines(fp32, ref), "bf16": _cosines(bf16, ref[:n16])},
            "faces_per_second": {
                "onnxruntime": ref_speed,
                "torch_fp32": fp32_speed,
                "torch_bf16": bf16_speed,
            },
            "batch": args.batch,
            "images": str(args.images),
        }
        if args.pairs is not None:
            spec = [lfw_spec(args.pairs, args.images)]
            accuracy = {}
            for name, emb in (
                ("onnxruntime", reference),
                ("imported_fp32", CheckpointEmbedder(ckpt, "cpu", "fp32")),
            ):
                run = run_benchmarks(emb, spec, None, cache_dir=None, progress=False)
                bench = next(iter(run["benchmarks"].values()))
                accuracy[name] = bench["summary"]
            result["pairs"] = {
                "file": str(args.pairs),
                "protocol": "insightface 10-fold, flip-sum",
                **accuracy,
            }
    result["machine"] = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "native_bf16": cpu_has_bf16(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("parity", "faces_per_second", "machine")}, indent=2))
    if "pairs" in result:
        print(json.dumps(result["pairs"], indent=2))


if __name__ == "__main__":
    main()
