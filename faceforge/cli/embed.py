"""``faceforge embed``: L2-normalised float32 embeddings of a folder or list of aligned faces, as .npz.

Same embeddings as ``faceforge eval`` (same defaults: flip-sum on, the embedding cache, ``--model-option``):

faceforge embed --model run/model.pt --images aligned/ --out emb.npz
faceforge embed --model dlib --model-option box=fixed --images list.txt --out emb --no-flip --no-cache
"""

from __future__ import annotations

import argparse
from pathlib import Path

from faceforge.cli.arguments import add_precision_argument, model_kwargs, parse_key_values, precision_line
from faceforge.cli.registry import command


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="faceforge checkpoint (.pt), kind:path, or a registered kind such as 'dlib'",
    )
    p.add_argument(
        "--images",
        required=True,
        help="folder of aligned faces (searched recursively), or a list file: one path per line, relative to "
        "the list file's folder",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output .npz ('.npz' is appended if missing) with 'embeddings' [N, D] float32, 'names' and 'meta'",
    )
    flip = p.add_mutually_exclusive_group()
    flip.add_argument(
        "--no-flip",
        dest="flip",
        action="store_false",
        help="embed the original image only (by default, as in 'faceforge eval', the embeddings of the image and "
        "of its mirror image are summed)",
    )
    flip.add_argument(
        "--flip",
        dest="flip",
        action="store_true",
        help="the default; accepted so that older scripts keep working",
    )
    p.set_defaults(flip=True)
    p.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra embedder argument, repeatable (as in 'faceforge eval', e.g. box=fixed for dlib)",
    )
    p.add_argument(
        "--cache-dir",
        help="embedding cache shared with 'faceforge eval' (default: $FACEFORGE_CACHE or "
        "~/.cache/faceforge/embeddings)",
    )
    p.add_argument("--no-cache", action="store_true", help="embed everything, read and write no cache")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    add_precision_argument(p)
    p.add_argument("--no-progress", action="store_true")


@command("embed", "write L2-normalised embeddings of aligned faces to an .npz file")(_add)
def run(args: argparse.Namespace) -> int:
    from faceforge.embedders import embedder_from_spec
    from faceforge.embedders.cache import default_cache_dir
    from faceforge.eval.embed_files import embed_files

    if not Path(args.images).exists():  # before loading the model
        raise FileNotFoundError(f"--images: no folder or list file at {args.images}")
    cache_dir = None if args.no_cache else (Path(args.cache_dir) if args.cache_dir else default_cache_dir())
    options = parse_key_values(args.model_option, "--model-option")
    embedder = embedder_from_spec(args.model, **model_kwargs(args, options))
    res = embed_files(
        embedder,
        args.images,
        args.out,
        flip=args.flip,
        cache_dir=cache_dir,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    print(
        f"wrote {res.count} embeddings of size {res.dim} to {res.path} "
        f"(flip={'on' if args.flip else 'off'}; {res.stats.get('cached', 0)} from cache ({cache_dir or 'off'}))"
        + (
            f"; skipped {len(res.skipped)} unreadable images (listed in the file's meta)"
            if res.skipped
            else ""
        )
    )
    if line := precision_line(embedder.describe()):
        print(line)
    for f in res.skipped[:10]:
        print(f"  unreadable: {f}")
    return 0
