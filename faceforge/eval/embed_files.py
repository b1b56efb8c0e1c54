"""Embeddings of a folder or list of aligned faces, written to an ``.npz``: what ``faceforge embed`` does.

The embeddings are those ``faceforge eval`` scores, computed by the same code with the same defaults:
:func:`~faceforge.embedders.cache.cached_embed_paths` (flip test-time augmentation
``e = f(x) + f(mirror(x))`` on by default, the on-disk embedding cache), then
``e / max(||e||, 1e-12)``.  The images come from :func:`faceforge.data.files.list_images`.

The ``.npz`` holds ``embeddings`` (float32 ``[N, D]``, one row per readable image), ``names`` (each
image's path relative to the folder, or to the list file's folder) and ``meta``, a JSON string with
the model's ``describe()``, the ``settings`` that change the numbers (as in an eval result file),
the source and the unreadable images that were left out with their reasons (``skipped``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from faceforge.core.atomic import atomic_writer
from faceforge.data.files import list_images
from faceforge.embedders.cache import cached_embed_paths
from faceforge.eval.kinds.base import embedding_settings_record

__all__ = ["EMBEDDINGS_FORMAT", "EmbeddedFiles", "embed_files", "npz_path"]

EMBEDDINGS_FORMAT = "faceforge-embeddings/1"


@dataclass
class EmbeddedFiles:
    """What :func:`embed_files` wrote: the real ``.npz`` path, the row count and the skipped images."""

    path: Path
    count: int
    dim: int
    skipped: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)  # images embedded ("computed") / from the cache


def npz_path(out: str | Path) -> Path:
    """``out`` with ``.npz`` appended unless it already ends in ``.npz`` (the file ``np.savez`` writes)."""
    p = Path(out)
    return p if p.suffix == ".npz" else p.with_name(p.name + ".npz")


def _names(paths: list[Path], base: Path) -> np.ndarray:
    return np.array([str(p.relative_to(base)) if p.is_relative_to(base) else str(p) for p in paths])


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` to a temporary file in the same folder, then renamed: never half a file."""
    with atomic_writer(path) as fh:
        np.savez(fh, **arrays)


def embed_files(
    embedder: Any,
    source: str | Path,
    out: str | Path,
    flip: bool = True,
    cache_dir: str | Path | None = None,
    batch_size: int = 128,
    progress: bool = True,
) -> EmbeddedFiles:
    """Embed every image of ``source`` (a folder, recursively, or a list file) into ``npz_path(out)``.

    Unreadable images are left out and listed in ``meta["skipped"]`` with their reasons; a missing
    folder or listed file, or no image at all, raises (see :func:`~faceforge.data.files.list_images`).
    """
    src = Path(source)
    paths = list_images(src, what="--images")
    base = src if src.is_dir() else src.parent
    stats: dict[str, int] = {}
    emb, failed = cached_embed_paths(
        embedder,
        paths,
        flip=flip,
        cache_dir=cache_dir,
        batch_size=batch_size,
        normalize=True,
        progress=progress,
        stats=stats,
    )
    ok = ~np.isnan(emb).any(axis=1)
    model = embedder.describe()
    meta = {
        "format": EMBEDDINGS_FORMAT,
        "model": model,
        "settings": embedding_settings_record(flip, cache_dir, model),
        "flip": bool(flip),
        "normalised": "L2",
        "source": str(src),
        "n_images": len(paths),
        "skipped": failed,
    }
    target = npz_path(out)
    _save_npz(
        target,
        embeddings=emb[ok].astype(np.float32),
        names=_names(paths, base)[ok],
        meta=np.array(json.dumps(meta, default=str)),
    )
    return EmbeddedFiles(target, int(ok.sum()), int(emb.shape[1]), failed, stats)
