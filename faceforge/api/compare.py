"""Compare two faces with a decision at a calibrated false-match rate: ``faceforge.compare(photo_a, photo_b)``.

Each side is a photo (its largest face is used, as in the calibration), a :class:`~faceforge.api.results.Face`
(its embedding if it has one, else its aligned crop), or an embedding (a 1-d float array from the same model).
The score is the cosine similarity of the L2-normalised embeddings (no flip, as calibrated); the decision is
``score >= threshold`` with the threshold of the model's calibration at the target false-match rate (FMR), and
the result says which calibration that was. deepface's ``verify`` answers with a fixed per-model distance
threshold of unstated origin and face_recognition's ``compare_faces`` with ``tolerance=0.6``; here the threshold
comes from impostor scores measured on held-out people through the same pipeline
(:mod:`faceforge.serve.calibration`), and a model without a calibration is refused unless a threshold is given.

>>> result = compare(people / "Al_Gore" / "Al_Gore_0001.jpg", people / "Al_Gore" / "Al_Gore_0002.jpg")
>>> result.match, result.rule.fmr
(True, 0.0001)
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from faceforge.api.images import ImageInput
from faceforge.api.model import Model, load_model
from faceforge.api.results import Comparison, Face


def compare_with(
    model: Model,
    a: ImageInput | Face | np.ndarray,
    b: ImageInput | Face | np.ndarray,
    *,
    fmr: float | None = None,
    threshold: float | None = None,
    colour: str | None = None,
) -> Comparison:
    """:func:`compare` with a loaded :class:`~faceforge.api.model.Model` (also :meth:`Model.compare`)."""
    return model.compare(a, b, fmr=fmr, threshold=threshold, colour=colour)


@lru_cache(maxsize=4)
def _cached_model(spec: str) -> Model:
    return load_model(spec)


def compare(
    a: ImageInput | Face | np.ndarray,
    b: ImageInput | Face | np.ndarray,
    *,
    model: str | Model = "sface",
    fmr: float | None = None,
    threshold: float | None = None,
    colour: str | None = None,
) -> Comparison:
    """Are ``a`` and ``b`` the same person? (see the module docstring)

    Args:
        a: a photo (path, bytes, or uint8 array with ``colour``), a :class:`Face` result, or an embedding.
        b: the other one, in any of the same forms.
        model: a loaded :class:`Model`, or a model name loaded once (CPU, fp32) and reused.
        fmr: the target false-match rate of the decision (default 1e-4; the calibrated targets are 1e-2 to
            1e-6, as far as the calibration's impostor pairs resolve them).
        threshold: decide at this cosine threshold instead (its false-match rate is then unknown).
        colour: ``"RGB"`` or ``"BGR"`` for array photos.

    Returns:
        A :class:`~faceforge.api.results.Comparison`: score, match, the rule (threshold, FMR, the FNMR measured
        at it, which calibration) and the two faces.
    """
    m = model if not isinstance(model, str) else _cached_model(model)
    return compare_with(m, a, b, fmr=fmr, threshold=threshold, colour=colour)
