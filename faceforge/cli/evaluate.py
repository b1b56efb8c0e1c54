"""``faceforge eval``: verification on an LFW-format pairs file, any embedder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from faceforge.cli.main import command


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="faceforge checkpoint (.pt) or kind:path")
    p.add_argument("--pairs", required=True, help="LFW-format pairs file")
    p.add_argument("--images", required=True, help="folder of aligned faces, <name>/<name>_NNNN.<ext>")
    p.add_argument("--json", help="result JSON path (default: <out-dir>/result.json)")
    p.add_argument(
        "--out-dir", help="folder for result.json and plots (default: next to --json, or ./eval_out)"
    )
    p.add_argument("--ext", default=".jpg", help="image extension in --images (default .jpg)")
    p.add_argument("--no-flip", action="store_true", help="embed the original image only (default: flip-sum)")
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")


@command("eval", "evaluate a model on a pairs file: 10-fold accuracy, ROC, AUC, EER, TAR@FAR")(_add)
def run(args: argparse.Namespace) -> int:
    from faceforge.embedders import embedder_from_spec
    from faceforge.eval.lfw_benchmark import evaluate_pairs

    out_dir = (
        Path(args.out_dir) if args.out_dir else (Path(args.json).parent if args.json else Path("eval_out"))
    )
    embedder = embedder_from_spec(args.model, device=args.device, batch_size=args.batch_size)
    result = evaluate_pairs(
        embedder,
        args.pairs,
        args.images,
        out_dir=out_dir,
        flip=not args.no_flip,
        n_folds=args.folds,
        image_ext=args.ext,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    v, r = result["verification"], result["roc"]
    tar = r["tar_at_far"]["conservative"]
    print(
        f"{Path(args.pairs).name}: accuracy {v['accuracy_mean'] * 100:.2f} +- {v['accuracy_std'] * 100:.2f} % "
        f"({v['rule']}, {v['n_folds']} folds, flip={'on' if not args.no_flip else 'off'})"
    )
    print(
        f"  AUC {r['auc']:.4f}  EER {r['eer'] * 100:.2f} %  "
        + "  ".join(f"TAR@FAR={k} {t['tar'] * 100:.2f} %" for k, t in tar.items())
    )
    print(f"  result: {args.json or out_dir / 'result.json'}  ROC: {result['plots']['roc']}")
    return 0
