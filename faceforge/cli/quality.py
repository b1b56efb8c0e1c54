"""``faceforge quality-labels`` (SDD-FIQA pseudo-labels) and ``faceforge quality`` (quality scores as a CSV).

faceforge quality-labels --model dlib --images lfw_aligned --out labels.csv [--seed 0 --rounds 12 --m 24]
faceforge quality --measure sharpness --images DIR --out scores.csv
faceforge quality --measure norm --model run/model.pt --images DIR --out norms.csv
faceforge quality --model quality_model.onnx --images DIR --out scores.csv   (a model with one output)
faceforge quality --model runs/lfw_sddfiqa/checkpoints/model.pt --images DIR --out scores.csv  (SDD-FIQA)

Both write ``path,quality`` (path relative to the image folder), the attribute-file format that
training (``read_sidecar``) and evaluation (``quality:...:csv=FILE``) read, and ``<out>_report.json``
with the settings and every image that was skipped and why (and, for a quality model, what its metadata says it
predicts).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from faceforge.cli.arguments import (
    add_precision_argument,
    finish_job,
    model_kwargs,
    parse_key_values,
    printable,
)
from faceforge.cli.registry import command

MAX_PRINTED = 10


def _model_args(p: argparse.ArgumentParser, model_help: str, required: bool) -> None:
    p.add_argument("--model", required=required, help=model_help)
    p.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra embedder argument, repeatable (as in 'faceforge eval')",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    add_precision_argument(p)
    p.add_argument(
        "--cache-dir", help="embedding cache (default: $FACEFORGE_CACHE or ~/.cache/faceforge/embeddings)"
    )
    p.add_argument("--no-cache", action="store_true", help="embed everything, read and write no cache")
    p.add_argument("--no-progress", action="store_true")


def _cache_dir(args: argparse.Namespace) -> Path | None:
    from faceforge.embedders.cache import default_cache_dir

    return None if args.no_cache else (Path(args.cache_dir) if args.cache_dir else default_cache_dir())


def _embedder(args: argparse.Namespace):
    from faceforge.embedders import embedder_from_spec

    options = parse_key_values(args.model_option, "--model-option")
    return embedder_from_spec(args.model, **model_kwargs(args, options))


def _add_labels(p: argparse.ArgumentParser) -> None:
    _model_args(
        p, "recogniser that embeds the faces: a faceforge checkpoint (.pt), an .onnx file, 'dlib'", True
    )
    p.add_argument(
        "--images", required=True, help="identity-labelled folder of aligned faces: DIR/<identity>/<image>"
    )
    p.add_argument("--out", required=True, help="output CSV path,quality (also writes <out>_report.json)")
    p.add_argument(
        "--m", type=int, default=24, help="same- and other-identity cosines per image (default 24)"
    )
    p.add_argument("--rounds", type=int, default=12, help="sampling rounds K, averaged (default 12)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--singletons",
        choices=("drop", "zero"),
        default="drop",
        help="identities with one image: no label (drop, default) or the lowest label 0 (zero)",
    )
    p.add_argument(
        "--signed",
        action="store_true",
        help="multiply W1 by sign(mean same - mean other) (guards against mislabelled faces; not in the paper)",
    )
    p.add_argument("--flip", action="store_true", help="flip-sum embeddings (TFace embeds without flip)")


@command(
    "quality-labels", "SDD-FIQA quality pseudo-labels of an identity-labelled folder, as path,quality CSV"
)(_add_labels)
def run_labels(args: argparse.Namespace) -> int:
    from faceforge.methods.sddfiqa import label_folder

    report = label_folder(
        _embedder(args),
        args.images,
        args.out,
        m=args.m,
        rounds=args.rounds,
        seed=args.seed,
        singletons=args.singletons,
        signed=args.signed,
        flip=args.flip,
        cache_dir=_cache_dir(args),
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    st = report["labels"]
    print(
        f"wrote {report['n_labelled']} pseudo-labels of {report['n_images_found']} images to {report['labels_csv']} "
        f"(m={args.m}, K={args.rounds}, seed={args.seed}; mean {st.get('mean', float('nan')):.1f}, "
        f"median {st.get('q50', float('nan')):.1f})"
    )
    _print_skipped("unreadable", report["unreadable_images"])
    if report["singleton_images"]:
        rule = "no label" if args.singletons == "drop" else "label 0"
        print(f"  {len(report['singleton_images'])} image(s) of one-image identities: {rule}")
    print(
        f"  report: {Path(report['labels_csv']).with_name(Path(report['labels_csv']).stem + '_report.json')}"
    )
    return 0


def _print_skipped(what: str, items: list[str]) -> None:
    if items:
        print(f"  skipped {len(items)} {what} image(s):")
        for f in items[:MAX_PRINTED]:
            print(f"    {f}")
        if len(items) > MAX_PRINTED:
            print("    ... (all listed in the report)")


def _add_quality(p: argparse.ArgumentParser) -> None:
    _model_args(
        p,
        "a quality model (one output per face) when --measure is not given; the recogniser for --measure norm",
        False,
    )
    p.add_argument(
        "--measure",
        help="a quality source instead of a quality model: sharpness | facesize=LANDMARKS_CSV | "
        "facebox=BOXES_CSV | norm (needs --model) | random[=SEED] | csv=PATH[#COLUMN]",
    )
    p.add_argument(
        "--images", required=True, help="folder of aligned faces (recursive) or a list file of paths"
    )
    p.add_argument("--out", required=True, help="output CSV path,quality (also writes <out>_report.json)")
    p.add_argument("--flip", action="store_true", help="flip-sum embeddings for --measure norm")


@command("quality", "face image quality scores (a quality model or a classic measure) as a path,quality CSV")(
    _add_quality
)
def run_quality(args: argparse.Namespace) -> int:
    from faceforge.data.files import list_images
    from faceforge.eval.kinds.quality_sources import (
        QualityInputs,
        parse_quality_sources,
        relative_key,
        score_images,
        write_quality_csv,
    )

    t0 = time.perf_counter()
    if not args.measure and not args.model:
        raise ValueError("give --model QUALITY_MODEL or --measure SOURCE (e.g. --measure sharpness)")
    spec = args.measure or f"model={args.model}"
    sources = parse_quality_sources(spec)
    if len(sources) != 1:
        raise ValueError(f"--measure takes one source, got {len(sources)}: {spec}")
    source = sources[0]
    paths = [str(p) for p in list_images(args.images, what="--images")]
    base = Path(args.images) if Path(args.images).is_dir() else Path(args.images).parent
    cache_dir = _cache_dir(args)
    norms = None
    if source.name == "norm":
        if not args.model:
            raise ValueError(
                "--measure norm needs --model (the recogniser whose embedding norm is the quality)"
            )
        from faceforge.embedders.cache import cached_embed_paths

        raw, _ = cached_embed_paths(
            _embedder(args),
            paths,
            flip=args.flip,
            cache_dir=cache_dir,
            batch_size=args.batch_size,
            normalize=False,
            progress=not args.no_progress,
        )
        table = dict(zip(paths, np.linalg.norm(raw, axis=1), strict=True))

        def norms(ps):
            return np.array([table[p] for p in ps])

    inputs = QualityInputs(
        paths=paths,
        root=base,
        norms=norms,
        embed_options={
            "cache_dir": cache_dir,
            "batch_size": args.batch_size,
            "device": args.device,
            "progress": not args.no_progress,
        },
    )
    got = score_images(source, inputs)
    keys = [relative_key(p, base) for p in paths]
    values = np.asarray(got.values, dtype=np.float64).copy()
    for i, key in enumerate(keys):
        if not _utf8(key) and np.isfinite(values[i]):  # the CSV is UTF-8: such a name cannot be its key
            values[i] = np.nan
            got.missing.append(
                f"{printable(paths[i])}: its name is not UTF-8, so it cannot be a key of the UTF-8 scores CSV "
                "(rename the file)"
            )
    got.missing[:] = [printable(m) for m in got.missing]
    out = write_quality_csv(args.out, [k if _utf8(k) else "" for k in keys], values)
    n_ok = int(np.isfinite(values).sum())
    report = {
        "format": "faceforge-quality-scores/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "scores_csv": str(out),
        "csv_format": "path,quality: path relative to the image folder, higher = better",
        "images": str(args.images),
        "source": source.settings(),
        "flip": bool(args.flip) if source.name == "norm" else None,
        "predicts": (source.settings().get("model") or {}).get("predicts"),
        "n_images": len(paths),
        "n_scored": n_ok,
        "skipped": got.missing,
        "seconds": time.perf_counter() - t0,
    }
    report_path = out.with_name(out.stem + "_report.json")
    report_path.write_text(json.dumps(report, indent=2, default=str))
    print(
        f"wrote {n_ok} quality scores ({source.label}) of {len(paths)} images to {out}; "
        f"skipped {len(got.missing)} (listed below and in the report)"
    )
    if report["predicts"]:
        print(f"  the model predicts: {report['predicts']}")
    _print_skipped("unreadable or unscored", got.missing)
    print(f"  report: {report_path}")
    return finish_job(n_ok, len(got.missing), "images", str(report_path))


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
