"""Extra training augmentations (low resolution, blur, colour jitter, grey, random erasing).

All work on uint8 HWC RGB arrays with OpenCV/numpy, return a new uint8 array of the same shape, and draw
every random number from the ``numpy.random.Generator`` they are given, so they are deterministic under the
dataset's (seed, epoch, index) seeding. Importing this module registers them in
:data:`faceforge.data.augment_registry.AUGMENTATIONS` under ``lowres``, ``blur``, ``colour_jitter``, ``grey`` and
``random_erasing``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from faceforge.data.augment_registry import AUGMENTATIONS

_INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


#: up-sampling names accepted by :func:`interpolation_code`
INTERPOLATION_NAMES: tuple[str, ...] = tuple(_INTERPOLATIONS)


def _check_p(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}: probability p must lie in [0, 1], got {p}")
    return float(p)


def _check_range(
    name: str, what: str, rng: Sequence[float], lo: float, hi: float = math.inf
) -> tuple[float, float]:
    a, b = (float(x) for x in rng)
    if not lo <= a <= b <= hi:
        raise ValueError(f"{name}: {what} must satisfy {lo} <= min <= max <= {hi}, got ({a}, {b})")
    return a, b


def down_up(img: np.ndarray, size: tuple[int, int], interpolation: int = cv2.INTER_CUBIC) -> np.ndarray:
    """Down-sample ``img`` to ``size`` = (width, height) with INTER_AREA and resize it back to its own size with
    ``interpolation``: the low-resolution degradation of DDL's hard branch (:class:`RandomLowResolution`) and of
    the low-resolution evaluation (a face seen at ``size`` pixels, shown to a network that takes the original
    size)."""
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, int(size[0])), max(1, int(size[1]))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=interpolation)


def interpolation_code(name: str) -> int:
    """The OpenCV code of an up-sampling name (``nearest``, ``linear``, ``cubic``, ``area``, ``lanczos``)."""
    if name not in _INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {name!r}; choose from {sorted(_INTERPOLATIONS)}")
    return _INTERPOLATIONS[name]


@AUGMENTATIONS.register("lowres")
class RandomLowResolution:
    """With probability ``p``: shrink by a scale drawn uniformly from ``[min_scale, max_scale]`` with
    INTER_AREA, then resize back with an interpolation drawn from ``interpolations`` (low-resolution
    training as in FAN / DDL-style recipes)."""

    def __init__(self, min_scale: float = 0.2, max_scale: float = 1.0, p: float = 0.5,
                 interpolations: Sequence[str] = ("nearest", "linear", "cubic", "area")) -> None:  # fmt: skip
        self.min_scale, self.max_scale = _check_range("lowres", "scale", (min_scale, max_scale), 1e-3, 1.0)
        self.p = _check_p("lowres", p)
        unknown = [i for i in interpolations if i not in _INTERPOLATIONS]
        if unknown or not interpolations:
            raise ValueError(
                f"lowres: unknown interpolations {unknown}; choose from {sorted(_INTERPOLATIONS)}"
            )
        self.interpolations = [_INTERPOLATIONS[i] for i in interpolations]

    def apply(self, img: np.ndarray, scale: float, interpolation: int) -> np.ndarray:
        h, w = img.shape[:2]
        return down_up(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.p:
            return img
        scale = rng.uniform(self.min_scale, self.max_scale)
        interp = self.interpolations[int(rng.integers(len(self.interpolations)))]
        return self.apply(img, scale, interp)


@AUGMENTATIONS.register("blur")
class RandomGaussianBlur:
    """With probability ``p``: Gaussian blur with sigma uniform in ``[min_sigma, max_sigma]`` (pixels);
    the kernel covers +-3 sigma."""

    def __init__(self, min_sigma: float = 0.2, max_sigma: float = 2.0, p: float = 0.5) -> None:
        self.min_sigma, self.max_sigma = _check_range("blur", "sigma", (min_sigma, max_sigma), 1e-3)
        self.p = _check_p("blur", p)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.p:
            return img
        sigma = rng.uniform(self.min_sigma, self.max_sigma)
        k = 2 * math.ceil(3 * sigma) + 1
        return cv2.GaussianBlur(img, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


@AUGMENTATIONS.register("colour_jitter")
class ColourJitter:
    """With probability ``p``: brightness, contrast and saturation changes in a random order, each factor
    uniform in ``[1 - x, 1 + x]`` (0 disables that part). Brightness scales the pixels, contrast blends with
    the mean grey level, saturation blends with the grey image."""

    def __init__(
        self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4, p: float = 0.8
    ) -> None:
        for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if not 0.0 <= v < 1.0:
                raise ValueError(f"colour_jitter: {name} must lie in [0, 1), got {v}")
        self.amounts = (float(brightness), float(contrast), float(saturation))
        self.p = _check_p("colour_jitter", p)

    @staticmethod
    def _grey(x: np.ndarray) -> np.ndarray:
        return x[..., 0:1] * 0.299 + x[..., 1:2] * 0.587 + x[..., 2:3] * 0.114

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.p:
            return img
        factors = [rng.uniform(1 - a, 1 + a) for a in self.amounts]
        x = img.astype(np.float32)
        for op in rng.permutation(3):
            f = factors[op]
            if self.amounts[op] == 0:
                continue
            if op == 0:
                x = x * f
            elif op == 1:
                m = float(self._grey(x).mean())
                x = (x - m) * f + m
            else:
                g = self._grey(x)
                x = (x - g) * f + g
            x = np.clip(x, 0, 255)
        return np.rint(x).astype(np.uint8)


@AUGMENTATIONS.register("grey")
class RandomGrey:
    """With probability ``p``: replace the image by its luminance, repeated on the 3 channels."""

    def __init__(self, p: float = 0.2) -> None:
        self.p = _check_p("grey", p)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.p:
            return img
        g = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
        return np.repeat(g[:, :, None], 3, axis=2)


@AUGMENTATIONS.register("random_erasing")
class RandomErasing:
    """With probability ``p``: fill one rectangle whose area fraction is uniform in ``area`` and whose
    aspect ratio (h / w) is log-uniform in ``aspect``; ``value`` is an int (0..255) or ``"random"`` (uniform
    noise). Up to ``attempts`` draws are made to find a rectangle that fits; if none fits the image is
    returned unchanged."""

    def __init__(self, p: float = 0.5, area: Sequence[float] = (0.02, 0.33), aspect: Sequence[float] = (0.3, 3.3),
                 value: int | str = 0, attempts: int = 10) -> None:  # fmt: skip
        self.p = _check_p("random_erasing", p)
        self.area = _check_range("random_erasing", "area", area, 0.0, 1.0)
        self.log_aspect = tuple(math.log(a) for a in _check_range("random_erasing", "aspect", aspect, 1e-6))
        if not (value == "random" or (isinstance(value, int) and 0 <= value <= 255)):
            raise ValueError(f"random_erasing: value must be an int in [0, 255] or 'random', got {value!r}")
        self.value = value
        self.attempts = int(attempts)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.p:
            return img
        h, w = img.shape[:2]
        for _ in range(self.attempts):
            target = rng.uniform(*self.area) * h * w
            ratio = math.exp(rng.uniform(*self.log_aspect))
            eh, ew = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < eh <= h and 0 < ew <= w:
                y, x = int(rng.integers(h - eh + 1)), int(rng.integers(w - ew + 1))
                out = img.copy()
                if self.value == "random":
                    out[y : y + eh, x : x + ew] = rng.integers(
                        0, 256, (eh, ew, *img.shape[2:]), dtype=np.uint8
                    )
                else:
                    out[y : y + eh, x : x + ew] = self.value
                return out
        return img
