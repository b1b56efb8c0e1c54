"""The detector contract: :class:`Detection` (box, score, five landmarks in ArcFace order), the :data:`DETECTORS`
registry, and what every detector shares (the RGB check, dropping impossible detections, the resized copy a
detector searches, choosing the faces to keep).

This module imports no detector. The built-in ones register themselves here when imported: ``yunet`` in
:mod:`faceforge.deploy.detect`, which also imports ``mtcnn`` (:mod:`faceforge.deploy.mtcnn`) and ``dlib``
(:mod:`faceforge.deploy.dlib_detector`), so importing ``faceforge.deploy.detect`` (where
:func:`~faceforge.deploy.detect.build_detector` lives) registers them all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from faceforge.core.errors import InputError
from faceforge.core.registry import Registry

SELECT_POLICIES = ("largest", "central", "all")


@dataclass(frozen=True)
class Detection:
    """One face: ``box`` [4] = x1, y1, x2, y2; ``score`` in [0, 1]; ``landmarks`` [5, 2] in ArcFace order."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))

    @property
    def center(self) -> np.ndarray:
        return np.array([(self.box[0] + self.box[2]) / 2.0, (self.box[1] + self.box[3]) / 2.0])

    def to_dict(self) -> dict:
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(float(self.score), 4),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
        }


FaceDetector = Callable[[np.ndarray], list[Detection]]

DETECTORS: Registry[FaceDetector] = Registry("face detector")


#: detectors refuse images narrower or lower than this (nothing to search; OpenCV's resize needs 2 px)
MIN_SEARCH_SIDE = 2


class ImageTooSmallError(InputError):
    """An image too small for a detector to search (a folder job lists it and goes on)."""


def _check_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {img.dtype} {img.shape}")
    if img.shape[0] < MIN_SEARCH_SIDE or img.shape[1] < MIN_SEARCH_SIDE:
        raise ImageTooSmallError(
            f"{img.shape[1]}x{img.shape[0]} pixels is too small to search for faces "
            f"(at least {MIN_SEARCH_SIDE}x{MIN_SEARCH_SIDE})"
        )
    return img


def finite_detections(dets: Sequence[Detection], image_shape: Sequence[int] | None = None) -> list[Detection]:
    """The detections that can be faces: finite box, score and landmarks, a box of positive size, every
    landmark within the box grown by its own width and height on each side, and (given ``image_shape``) a box
    centre inside the image.

    YuNet returns rows of NaN/inf, or huge values with an empty box and score 1, on images smaller than
    its coarsest stride (e.g. 5x1000 or 2x2 pixels), and on thin ones (20x400, padded to 32x400) boxes with
    score 0.98 whose "eyes" lie several box widths away; they are no faces.
    """
    out = []
    for d in dets:
        if not (np.isfinite(d.score) and np.all(np.isfinite(d.box)) and np.all(np.isfinite(d.landmarks))):
            continue
        if d.box[2] <= d.box[0] or d.box[3] <= d.box[1]:
            continue
        bw, bh = d.box[2] - d.box[0], d.box[3] - d.box[1]
        lx, ly = d.landmarks[:, 0], d.landmarks[:, 1]
        if (
            np.any(lx < d.box[0] - bw)
            or np.any(lx > d.box[2] + bw)
            or np.any(ly < d.box[1] - bh)
            or np.any(ly > d.box[3] + bh)
        ):
            continue
        if image_shape is not None:
            cx, cy = d.center
            if not (0 <= cx <= image_shape[1] and 0 <= cy <= image_shape[0]):
                continue
        out.append(d)
    return out


def resize_for_search(image: np.ndarray, max_side: int, min_side: int = 0) -> tuple[np.ndarray, float, float]:
    """The copy of ``image`` a detector searches: downscaled (area) so the long side is at most ``max_side``,
    or upscaled (bicubic) so the short side reaches ``min_side`` (0: never), and the factors ``(sx, sy)``
    that map its pixel coordinates back onto the original (the copy spans the original exactly)."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if min_side and min(h, w) < min_side:
        scale = min(min_side / min(h, w), max_side / max(h, w))
    if scale != 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
        image = cv2.resize(image, size, interpolation=interp)
    return image, w / image.shape[1], h / image.shape[0]


def select_faces(
    dets: Sequence[Detection], image_shape: Sequence[int], policy: str = "largest"
) -> list[Detection]:
    """Choose the faces to keep from one image's detections.

    ``largest``: the face with the biggest box; ``central``: the face whose box centre is nearest the
    image centre (ties: the bigger box); ``all``: every face, ordered left to right (then top to bottom),
    so ``<stem>_<k>`` names follow reading order. Returns an empty list when there is no detection.
    """
    if policy not in SELECT_POLICIES:
        raise ValueError(
            f"unknown face selection policy {policy!r}; choose one of {', '.join(SELECT_POLICIES)}"
        )
    dets = list(dets)
    if not dets:
        return []
    if policy == "all":
        return sorted(dets, key=lambda d: (float(d.box[0]), float(d.box[1])))
    if policy == "largest":
        return [max(dets, key=lambda d: (d.area, d.score))]
    h, w = image_shape[0], image_shape[1]
    mid = np.array([w / 2.0, h / 2.0])
    return [min(dets, key=lambda d: (float(np.linalg.norm(d.center - mid)), -d.area))]
