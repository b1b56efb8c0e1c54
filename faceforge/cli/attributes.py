"""``faceforge attributes``: run a trained model's attribute heads (e.g. MTLFace's age estimator) on aligned faces
and write an attribute sidecar CSV (``path,age,age_group``) that ``data.attributes`` reads.

faceforge attributes --model runs/age/checkpoints/model.pt --images lfw_aligned --out lfw_ages.csv

Unreadable images and images that are not aligned faces of the model's input size are skipped and listed, with
the reason, in ``<out>.json`` beside the model, its hash and the settings.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from faceforge.cli.registry import command


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, help="faceforge checkpoint (.pt) of a run with an attribute head"
    )
    p.add_argument(
        "--images",
        required=True,
        help="folder of aligned faces (searched recursively), or a list file: one path per line, relative to "
        "the list file's folder",
    )
    p.add_argument(
        "--out", required=True, help="output CSV; keys are paths relative to --images (its folder)"
    )
    p.add_argument(
        "--objective",
        action="append",
        default=None,
        help="attribute head(s) to run, by objective name (default: every one the checkpoint has, e.g. age)",
    )
    p.add_argument(
        "--flip", action="store_true", help="average the outputs over the face and its mirror image"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")


@command("attributes", "predict per-image attributes (age, ...) with a model's attribute heads into a CSV")(
    _add
)
def run(args: argparse.Namespace) -> int:
    from faceforge.methods.mtlface.predict import AttributePredictor, predict_folder

    if not Path(args.images).exists():  # before loading the model
        raise FileNotFoundError(f"--images: no folder or list file at {args.images}")
    predictor = AttributePredictor(
        args.model, args.objective, device=args.device, flip=args.flip, batch_size=args.batch_size
    )
    pred = predict_folder(predictor, args.images, progress=not args.no_progress)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", *predictor.columns])
        for i, key in enumerate(pred.keys):
            row = [key]
            for c in predictor.columns:
                v = pred.values[c][i]
                row.append(f"{v:.3f}" if pred.values[c].dtype.kind == "f" else str(int(v)))
            w.writerow(row)
    tmp.replace(out)
    report = {
        "out": str(out),
        "images": str(args.images),
        "written": len(pred.keys),
        "skipped": {"count": len(pred.skipped), "images": pred.skipped},
        "predictor": predictor.describe(),
    }
    report_path = out.with_name(out.name + ".json")
    report_path.write_text(json.dumps(report, indent=2))
    print(
        f"wrote {len(pred.keys)} rows ({', '.join(predictor.columns)}) to {out}; "
        f"skipped {len(pred.skipped)} images (listed in {report_path})"
    )
    for s in pred.skipped[:10]:
        print(f"  skipped {s['path']}: {s['reason']}")
    return 0
