"""A plot file must show something: a PNG of a sensible size with ink and coloured marks on it.

A size threshold alone passes a blank (or axes-only) figure saved at a high resolution; these checks read the
pixels: a blank PNG has no ink, an empty chart has no coloured pixels (axes and text are grey)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def plot_stats(path: str | Path) -> dict[str, float]:
    """Width, height, the fraction of pixels that differ from the background (the most common colour) and
    the number of coloured pixels (channel spread > 60: curves, bars, markers; not black, white or grey)."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path}: not a PNG"
    img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)
    flat = img.reshape(-1, 3)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    background = colours[counts.argmax()]
    ink = float((np.abs(flat - background).sum(axis=1) > 30).mean())
    coloured = int(((flat.max(axis=1) - flat.min(axis=1)) > 60).sum())
    return {"width": img.shape[1], "height": img.shape[0], "ink": ink, "coloured": coloured}


def assert_drawn_png(path: str | Path, min_ink: float = 0.01, min_coloured: int = 200) -> None:
    """``path`` is a PNG at least 200x150 px with ink on at least ``min_ink`` of it and at least
    ``min_coloured`` coloured pixels: fails on a blank image and on a chart whose data were not drawn."""
    s = plot_stats(path)
    assert s["width"] >= 200 and s["height"] >= 150, (str(path), s)
    assert s["ink"] >= min_ink, (f"{path}: blank (ink on {s['ink']:.2%} of the pixels)", s)
    assert s["coloured"] >= min_coloured, (f"{path}: nothing coloured drawn", s)
