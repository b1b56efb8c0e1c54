"""Embed image files through any :class:`~faceforge.embedders.Embedder` (numpy in, numpy out; no model code).

Flip test-time augmentation follows insightface's "Accuracy-Flip": ``e = f(x) + f(flip(x))``, then L2
normalisation. Unreadable files and images of another size than the model's input are reported, not
fatal: their rows are NaN and their paths are returned with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from faceforge.data.image_io import UnreadableImageError, read_image_rgb
from faceforge.embedders.cache import wrong_size_reason


def embed_paths(
    embedder: Any,
    paths: Sequence[str | Path],
    flip: bool = True,
    batch_size: int = 128,
    normalize: bool = True,
    progress: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """Embeddings [N, D] float32 of ``paths`` (NaN rows for unreadable files) and the unreadable files."""
    n = len(paths)
    out = np.full((n, embedder.embedding_size), np.nan, dtype=np.float32)
    failed: list[str] = []
    size = embedder.input_size
    with tqdm(total=n, desc="embed", unit="img", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            chunk = paths[start : start + batch_size]
            faces, rows = [], []
            for j, p in enumerate(chunk):
                try:
                    img = read_image_rgb(p)
                except UnreadableImageError as exc:
                    failed.append(f"{exc.path}: {exc.reason}")
                    continue
                if img.shape[:2] != (size, size):
                    failed.append(f"{p}: {wrong_size_reason(img, size)}")
                    continue
                faces.append(img)
                rows.append(start + j)
            if faces:
                batch = np.stack(faces)
                emb = embedder.embed(batch)
                if flip:
                    emb = emb + embedder.embed(np.ascontiguousarray(batch[:, :, ::-1]))
                out[rows] = emb
            bar.update(len(chunk))
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out, failed
