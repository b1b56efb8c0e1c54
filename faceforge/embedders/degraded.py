"""An embedder that sees every face at a lower resolution: down-sampled to ``size`` pixels and back.

The degradation is DDL's low-resolution hard branch (:func:`faceforge.data.augment_extra.down_up`: INTER_AREA
down to ``size x size``, then ``up`` back to the model's input size), so a model trained with DDL or random-scale
augmentation is evaluated on the same kind of image it was trained on. ``describe()`` carries the degradation,
so the embedding cache keeps these embeddings apart from the clean ones of the same network.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from faceforge.core.errors import InputError
from faceforge.data.augment_extra import down_up, interpolation_code

__all__ = ["LowResolutionEmbedder", "check_probe_size"]


def check_probe_size(size: int, face_size: int) -> int:
    """``size`` if ``1 <= size <= face_size``, else an :class:`InputError` saying what to use."""
    if not 1 <= int(size) <= int(face_size):
        raise InputError(
            f"probe resolution {size} px is {'above' if size > face_size else 'below'} what can be simulated for "
            f"this model's {face_size} px faces: choose a size from 1 to {face_size} (e.g. 16, 24 or 32)"
        )
    return int(size)


class LowResolutionEmbedder:
    """``embed(faces)`` = ``inner.embed(up(down(faces, size)))`` (module doc)."""

    def __init__(self, inner: Any, size: int, up: str = "cubic") -> None:
        self.inner = inner
        self.size = check_probe_size(size, inner.input_size)
        self.up = up
        self._code = interpolation_code(up)
        self.embedding_size = inner.embedding_size
        self.input_size = inner.input_size

    def degrade(self, faces: np.ndarray) -> np.ndarray:
        return (
            np.stack([down_up(f, (self.size, self.size), self._code) for f in faces]) if len(faces) else faces
        )

    def embed(self, faces: np.ndarray) -> np.ndarray:
        return self.inner.embed(self.degrade(faces))

    def degradation(self) -> dict[str, Any]:
        return {
            "probe_size": self.size,
            "face_size": self.input_size,
            "down": "area (cv2.INTER_AREA)",
            "up": self.up,
            "rule": "faceforge.data.augment_extra.down_up, as DDL's low-resolution hard branch",
        }

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "degradation": self.degradation()}
