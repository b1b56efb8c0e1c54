"""Extra augmentations: registry, shape/dtype, p=0 / p=1, frequency content of lowres, determinism."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import faceforge.data.augment_extra  # noqa: F401  (registers the augmentations)
from faceforge.data.augment_extra import RandomLowResolution
from faceforge.data.transforms import AUGMENTATIONS, build_augmentations

NAMES = ["lowres", "blur", "colour_jitter", "grey", "random_erasing"]


def _face_like(seed: int = 0, size: int = 112) -> np.ndarray:
    """A colourful image with both smooth and high-frequency content."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx * 2, yy * 2, (xx + yy)], axis=-1).astype(np.float32)
    checker = ((xx // 2 + yy // 2) % 2 * 60)[..., None]
    noise = rng.normal(0, 20, (size, size, 3))
    return np.clip(base + checker + noise, 0, 255).astype(np.uint8)


def _laplacian_var(img: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


@pytest.mark.parametrize("name", NAMES)
def test_registered_shape_dtype_p0_p1_and_determinism(name: str) -> None:
    assert name in AUGMENTATIONS
    img = _face_like()
    orig = img.copy()
    never = AUGMENTATIONS.build(name, p=0.0)
    np.testing.assert_array_equal(never(img, np.random.default_rng(0)), img)
    always = AUGMENTATIONS.build(name, p=1.0)
    outs = [always(img, np.random.default_rng(s)) for s in (1, 1, 2)]
    for out in outs:
        assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.array_equal(outs[0], img)
    np.testing.assert_array_equal(outs[0], outs[1])  # same seed -> same output
    np.testing.assert_array_equal(img, orig)  # input never modified in place


def test_lowres_removes_high_frequencies() -> None:
    img = _face_like(3)
    before = _laplacian_var(img)
    aug = RandomLowResolution()
    variances = {s: _laplacian_var(aug.apply(img, s, cv2.INTER_LINEAR)) for s in (0.25, 0.5, 1.0)}
    assert variances[1.0] == pytest.approx(before)
    assert variances[0.5] < 0.5 * before
    assert variances[0.25] < variances[0.5]
    out = RandomLowResolution(0.2, 0.3, p=1.0)(img, np.random.default_rng(0))
    assert _laplacian_var(out) < 0.5 * before


def test_blur_grey_erasing_specifics() -> None:
    img = _face_like(4)
    blurred = AUGMENTATIONS.build("blur", min_sigma=1.5, max_sigma=2.0, p=1.0)(img, np.random.default_rng(0))
    assert _laplacian_var(blurred) < 0.3 * _laplacian_var(img)
    grey = AUGMENTATIONS.build("grey", p=1.0)(img, np.random.default_rng(0))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    erased = AUGMENTATIONS.build("random_erasing", p=1.0, area=(0.1, 0.1), aspect=(1.0, 1.0), value=7)(
        img, np.random.default_rng(0)
    )
    changed = (erased != img).any(axis=-1)
    assert changed.sum() <= 0.11 * img.shape[0] * img.shape[1] and (erased[changed] == 7).all()
    jitter = AUGMENTATIONS.build("colour_jitter", brightness=0.0, contrast=0.0, saturation=0.9, p=1.0)
    assert not np.array_equal(jitter(img, np.random.default_rng(5)), img)


def test_build_from_config_and_bad_arguments() -> None:
    compose = build_augmentations(
        {"flip": {"p": 0.5}, "lowres": {"min_scale": 0.3}, "blur": {}, "grey": {"p": 0.5}}
    )
    img = _face_like()
    a = compose(img, np.random.default_rng(9))
    b = compose(img, np.random.default_rng(9))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="lowres: scale"):
        AUGMENTATIONS.build("lowres", min_scale=0.8, max_scale=0.5)
    with pytest.raises(ValueError, match="probability"):
        AUGMENTATIONS.build("grey", p=1.5)
    with pytest.raises(ValueError, match="value"):
        AUGMENTATIONS.build("random_erasing", value="noise")
    with pytest.raises(ValueError, match="interpolations"):
        AUGMENTATIONS.build("lowres", interpolations=["bogus"])
