"""Training augmentations on uint8 HWC RGB arrays, chosen by name from config.

Each augmentation takes the image and a ``numpy.random.Generator``; the dataset seeds that generator from
(seed, epoch, sample index), so augmentation is identical whatever the worker count and after a resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# more augmentations (low resolution, blur, colour jitter, grey, random erasing) register themselves on import
from faceforge.data import augment_extra  # noqa: F401
from faceforge.data.augment_registry import AUGMENTATIONS, Augment


@AUGMENTATIONS.register("flip")
class RandomHorizontalFlip:
    """Mirror the face left-right with probability ``p`` (the only augmentation in the ArcFace recipes)."""

    #: this augmentation may mirror the face (:meth:`Compose.apply` reports it, so a teacher cached on both views
    #: can read the view the student saw); it returns the input object itself when it does not
    mirrors = True

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must lie in [0, 1], got {p}")
        self.p = p

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.ascontiguousarray(img[:, ::-1]) if rng.random() < self.p else img


class Compose:
    def __init__(self, augments: Sequence[Augment]) -> None:
        self.augments = list(augments)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(img, rng)[0]

    def apply(self, img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
        """The augmented image and whether it ended up mirrored (an odd number of mirroring augmentations
        applied); the random draws are those of ``__call__``."""
        mirrored = False
        for aug in self.augments:
            out = aug(img, rng)
            if getattr(aug, "mirrors", False) and out is not img:
                mirrored = not mirrored
            img = out
        return img, mirrored


def build_augmentations(spec: dict[str, dict] | None) -> Compose:
    """``{"flip": {"p": 0.5}, ...}`` -> Compose, in the given order; ``None``/empty -> identity."""
    return Compose([AUGMENTATIONS.build(name, **(kw or {})) for name, kw in (spec or {}).items()])
