"""``faceforge eval``: one or several benchmarks for any embedder, cached embeddings, JSON + plots + HTML.

faceforge eval --model run/model.pt --pairs pairsDevTest.txt --images aligned/
faceforge eval --model dlib --benchmark lfw:pairs.txt:aligned --benchmark ident:aligned:1:2 --html
faceforge eval --compare a/result.json b/result.json --html compare.html
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from faceforge.cli.arguments import (
    add_precision_argument,
    model_kwargs,
    parse_key_values,
    precision_line,
    printable,
)
from faceforge.cli.registry import command
from faceforge.eval.kinds.base import DEFAULT_MIN_VALID_FRACTION


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", help="faceforge checkpoint (.pt), kind:path, or a registered kind such as 'dlib'"
    )
    p.add_argument(
        "--benchmark",
        action="append",
        default=[],
        metavar="SPEC",
        help="repeatable: lfw:PAIRS:IMAGES | bin:FILE | quality:PAIRS:IMAGES[:SOURCES] | qualityall:IMAGES[:SOURCES] | "
        "allpairs:IMAGES[:MIN] | ident:IMAGES[:K[:MIN]] | bias:IMAGES:GROUPS[:identities] | "
        "biaspairs:PAIRS:IMAGES:GROUPS | fgnet:IMAGES | cacdvs:PAIRS:IMAGES | "
        "agegap:PAIRS:IMAGES | ijb:DIR[:N0D1] | robust:PAIRS:IMAGES[:EPS,...,steps=N,maxpairs=N] | "
        "lowres:SIZE[:one|both]:lfw:PAIRS:IMAGES|allpairs:IMAGES|bin:FILE",
    )
    p.add_argument("--pairs", help="LFW-format pairs file (same as --benchmark lfw:PAIRS:IMAGES)")
    p.add_argument("--images", help="folder of aligned faces, <name>/<name>_NNNN.<ext> (with --pairs)")
    p.add_argument("--json", help="also write the result JSON here (default: <out-dir>/result.json only)")
    p.add_argument(
        "--out-dir", help="folder for result.json and plots (default: next to --json, or ./eval_out)"
    )
    p.add_argument("--ext", default=".jpg", help="image extension of pairs-file images (default .jpg)")
    p.add_argument("--no-flip", action="store_true", help="embed the original image only (default: flip-sum)")
    p.add_argument("--folds", type=int, default=10)
    p.add_argument(
        "--min-valid",
        type=float,
        default=DEFAULT_MIN_VALID_FRACTION,
        metavar="FRACTION",
        help="pairs (images) with an unreadable image are left out; a benchmark fails when fewer than this "
        f"fraction can be scored (default {DEFAULT_MIN_VALID_FRACTION}, recorded in the result)",
    )
    p.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra embedder argument, repeatable (e.g. box=fixed or input_size=224 for dlib; mean=127.5 for "
        "a foreign .onnx)",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    add_precision_argument(p)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--cache-dir",
        help="embedding cache (default: $FACEFORGE_CACHE or ~/.cache/faceforge/embeddings)",
    )
    p.add_argument("--no-cache", action="store_true", help="embed everything, read and write no cache")
    p.add_argument(
        "--html",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="write an HTML report (default path: <out-dir>/report.html)",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="RESULT_JSON",
        help="no evaluation: build an HTML comparison of these result.json files (with --html PATH)",
    )


def _print_record(name: str, rec: dict[str, Any], flip: bool) -> None:
    s = rec.get("summary", {})
    if "verification" in rec:
        v, r = rec["verification"], rec["roc"]
        tar = r["tar_at_far"]["conservative"]
        print(
            f"{name}: accuracy {v['accuracy_mean'] * 100:.2f} +- {v['accuracy_std'] * 100:.2f} % "
            f"({v['rule']}, {v['n_folds']} folds, flip={'on' if flip else 'off'})"
        )
        print(
            f"  AUC {r['auc']:.4f}  EER {r['eer'] * 100:.2f} %  "
            + "  ".join(f"TAR@FAR={k} {t['tar'] * 100:.2f} %" for k, t in tar.items())
        )
    else:
        print(
            f"{name}: "
            + "  ".join(
                f"{k} n/a"
                if v is None
                else f"AUC {v:.4f}"
                if k == "auc"
                else f"{k} x{v:.2f}"
                if "ratio" in k
                else f"{k} {v * 100:.3g} %"
                for k, v in s.items()
            )
        )
    v = rec.get("validity") or {}
    if v.get("left_out"):
        unreadable = rec.get("benchmark", {}).get("unreadable_images") or []
        first = f"; first: {printable(unreadable[0])}" if unreadable else ""
        print(
            f"  left out {v['left_out']} of {v['total']} {v['unit']} with an unreadable or wrong-size image "
            f"({len(unreadable)} image(s) listed in the result){first}"
        )
    plots = rec.get("plots") or {}
    if plots:
        print("  plots: " + "  ".join(str(p) for p in plots.values()))


@command(
    "eval",
    "evaluate a model on benchmarks (pairs, .bin, all-pairs, identification, quality, bias, age, IJB) "
    "or compare results",
)(_add)
def run(args: argparse.Namespace) -> int:
    from faceforge.eval.report_html import load_result, write_html_report

    if args.compare:
        out_html = Path(args.html) if args.html else Path("eval_compare.html")
        skipped: list[str] = []
        page = write_html_report([load_result(p) for p in args.compare], out_html, skipped=skipped)
        print(f"comparison of {len(args.compare)} result(s): {page}")
        if skipped:
            print(f"  {len(skipped)} plot(s) not embedded (listed on the page):")
            for s in skipped[:10]:
                print(f"    {printable(s)}")
        return 0

    from faceforge.embedders import embedder_from_spec
    from faceforge.embedders.cache import default_cache_dir
    from faceforge.eval.benchmarks import lfw_spec, parse_benchmark_spec, run_benchmarks

    if not args.model:
        raise ValueError("--model is required (or use --compare RESULT_JSON ...)")
    if not 0.0 <= args.min_valid <= 1.0:
        raise ValueError(f"--min-valid must be a fraction in [0, 1], got {args.min_valid}")
    if bool(args.pairs) != bool(args.images):
        raise ValueError("--pairs and --images go together (or use --benchmark lfw:PAIRS:IMAGES)")
    specs = [parse_benchmark_spec(s) for s in args.benchmark]
    if args.pairs:
        specs.insert(0, lfw_spec(args.pairs, args.images))
    if not specs:
        raise ValueError("no benchmark: give --benchmark SPEC (repeatable) or --pairs and --images")
    out_dir = (
        Path(args.out_dir) if args.out_dir else (Path(args.json).parent if args.json else Path("eval_out"))
    )
    cache_dir = None if args.no_cache else (Path(args.cache_dir) if args.cache_dir else default_cache_dir())
    options = parse_key_values(args.model_option, "--model-option")
    embedder = embedder_from_spec(args.model, **model_kwargs(args, options))
    flip = not args.no_flip
    result = run_benchmarks(
        embedder,
        specs,
        out_dir,
        cache_dir=cache_dir,
        flip=flip,
        n_folds=args.folds,
        image_ext=args.ext,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        min_valid_fraction=args.min_valid,
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    for name, rec in result["benchmarks"].items():
        _print_record(name, rec, flip)
    emb = result["embedding"]
    if line := precision_line(result["model"]):
        print(f"  {line}")
    print(
        f"  embedded {emb['images_embedded']} image(s), {emb['images_from_cache']} from cache ({cache_dir or 'off'})"
    )
    print(f"  result: {args.json or out_dir / 'result.json'}")
    if args.html is not None:
        page = write_html_report(
            [{**result, "_source": str(out_dir / "result.json")}],
            Path(args.html) if args.html else out_dir / "report.html",
        )
        print(f"  report: {page}")
    return 0
