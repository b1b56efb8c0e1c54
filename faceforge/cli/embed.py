"""``faceforge embed``: L2-normalised float32 embeddings of a folder or list of aligned faces, as .npz."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from faceforge.cli.main import command


def list_images(spec: str) -> tuple[list[str], Path]:
    """Image paths from a folder (recursive) or a list file (one path per line, relative to the list's folder)."""
    from faceforge.data.image_io import is_image_file

    src = Path(spec)
    if src.is_dir():
        return sorted(str(p) for p in src.rglob("*") if p.is_file() and is_image_file(p)), src
    if src.is_file():
        lines = [
            ln.split()[0] for ln in src.read_text().splitlines() if ln.strip() and not ln.startswith("#")
        ]
        return [str(p if Path(p).is_absolute() else src.parent / p) for p in lines], src.parent
    raise FileNotFoundError(f"--images {src} is neither a folder nor a list file")


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="faceforge checkpoint (.pt) or kind:path")
    p.add_argument("--images", required=True, help="folder of aligned faces, or a list file of paths")
    p.add_argument("--out", required=True, help="output .npz with 'embeddings' [N, D] float32 and 'names'")
    p.add_argument(
        "--flip", action="store_true", help="sum original and mirrored embeddings before normalising"
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")


@command("embed", "write L2-normalised embeddings of aligned faces to an .npz file")(_add)
def run(args: argparse.Namespace) -> int:
    import json

    from faceforge.embedders import embedder_from_spec
    from faceforge.eval.embedding import embed_paths

    paths, base = list_images(args.images)
    if not paths:
        raise ValueError(f"no images found in {args.images}")
    embedder = embedder_from_spec(args.model, device=args.device, batch_size=args.batch_size)
    emb, failed = embed_paths(
        embedder, paths, flip=args.flip, batch_size=args.batch_size, progress=not args.no_progress
    )
    ok = ~np.isnan(emb).any(axis=1)
    names = np.array([str(Path(p).relative_to(base)) if Path(p).is_relative_to(base) else p for p in paths])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": embedder.describe(), "flip": args.flip, "normalised": "L2", "skipped": failed}
    np.savez(out, embeddings=emb[ok].astype(np.float32), names=names[ok], meta=np.array(json.dumps(meta)))
    print(
        f"wrote {int(ok.sum())} embeddings of size {emb.shape[1]} to {out}"
        + (f"; skipped {len(failed)} unreadable images" if failed else "")
    )
    for f in failed[:10]:
        print(f"  unreadable: {f}")
    return 0
