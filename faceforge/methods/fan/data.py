"""FAN's data: continuous random-scale twins of the batch, real unpaired low-resolution faces, and the grid PNG.

* :class:`RandomScaleTwins`: every face of the batch down-sampled by a scale drawn from ``U(min_scale,
  max_scale)`` and resized back (FAN's random scale augmentation: continuous factors instead of a fixed x4 or
  x8), with DDL's degradation code (:class:`faceforge.data.augment_extra.RandomLowResolution`) and a generator
  seeded by ``(seed, step, dataset row)``, so a resumed run degrades the same way;
* :class:`UnpairedFaces`: aligned low-resolution faces without a high-resolution twin (surveillance captures),
  any size (resized to the model's), drawn per step from ``(seed, step, rank)``;
* :func:`save_grid`: low-resolution input | normalised face | high-resolution face, one row per face.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from faceforge.core.atomic import atomic_writer
from faceforge.data.augment_extra import RandomLowResolution
from faceforge.data.files import list_images
from faceforge.data.image_io import UnreadableImageError, read_image_rgb
from faceforge.data.preprocess import Preprocess

__all__ = ["RandomScaleTwins", "UnpairedFaces", "input_to_uint8", "save_grid"]


class RandomScaleTwins:
    """Low-resolution twins of a batch (module doc)."""

    def __init__(
        self,
        min_scale: float,
        max_scale: float,
        interpolations: Sequence[str] = ("nearest", "linear", "cubic", "area"),
        seed: int = 0,
    ) -> None:
        self.degrade = RandomLowResolution(min_scale, max_scale, p=1.0, interpolations=interpolations)
        self.seed = int(seed)

    def __call__(self, images: Tensor, indices: Tensor, step: int) -> Tensor:
        out = [
            self.degrade(img, np.random.default_rng((self.seed, int(step), int(i), 0xFA7)))
            for img, i in zip(images.numpy(), indices.tolist(), strict=True)
        ]
        return torch.from_numpy(np.stack(out)) if out else images.clone()


class UnpairedFaces:
    """Aligned faces of a folder (any size, resized to ``size`` with INTER_CUBIC), drawn with replacement."""

    def __init__(self, folder: str | Path, size: int, seed: int = 0) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"method.unpaired_images: folder not found: {self.folder}")
        self.files = list_images(self.folder, recursive=True, what="unpaired faces")
        if not self.files:
            raise ValueError(f"method.unpaired_images: no images under {self.folder}")
        self.size, self.seed = int(size), int(seed)
        self.skipped: list[str] = []

    def sample(self, step: int, n: int, rank: int = 0) -> Tensor:
        rng = np.random.default_rng((self.seed, int(step), int(rank), 0x0F4))
        faces = []
        while len(faces) < n:
            path = self.files[int(rng.integers(len(self.files)))]
            try:
                img = read_image_rgb(path)
            except UnreadableImageError as exc:
                self.skipped.append(f"{exc.path}: {exc.reason}")
                if len(self.skipped) > 20 + n:
                    raise ValueError(
                        f"method.unpaired_images: too many unreadable images ({exc.path})"
                    ) from None
                continue
            if img.shape[:2] != (self.size, self.size):
                img = cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_CUBIC)
            faces.append(img)
        return torch.from_numpy(np.stack(faces))

    def describe(self) -> dict[str, object]:
        return {"folder": str(self.folder), "images": len(self.files), "skipped": len(self.skipped)}


def input_to_uint8(x: Tensor, preprocess: Preprocess) -> np.ndarray:
    """Network input ``[N, 3, H, W]`` back to uint8 RGB ``[N, H, W, 3]`` (inverse of :class:`Preprocess`)."""
    mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
    pixels = (x.detach().float().cpu() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    out = pixels.permute(0, 2, 3, 1).numpy()
    return out[..., ::-1].copy() if preprocess.colour == "BGR" else out


def save_grid(path: str | Path, columns: Sequence[np.ndarray], gap: int = 2) -> Path:
    """Write a PNG with one row per face and one column per array of ``columns`` (uint8 RGB ``[N, H, W, 3]``)."""
    n, h, w = columns[0].shape[:3]
    grid = np.full((n * (h + gap) + gap, len(columns) * (w + gap) + gap, 3), 255, np.uint8)
    for c, faces in enumerate(columns):
        for r in range(n):
            y, x = gap + r * (h + gap), gap + c * (w + gap)
            grid[y : y + h, x : x + w] = faces[r]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", grid[..., ::-1])
    if not ok:
        raise ValueError(f"could not encode the grid {path}")
    with atomic_writer(path) as fh:
        fh.write(data.tobytes())
    return path
