"""ROC, AUC, EER and TAR@FAR for similarity scores (higher score = more likely the same person).

Conventions:

* a pair is accepted when ``score >= threshold`` (``sklearn.metrics.roc_curve``);
* TPR (= TAR, true accept rate) = accepted genuine / genuine, FPR (= FAR) = accepted impostor /
  impostor, FNR = 1 - TPR;
* the ROC keeps every distinct score as a point (``drop_intermediate=False``); its first point is
  (0, 0) with threshold ``+inf``.

TAR@FAR comes in two named rules, because published numbers use the first and deployment needs
the second:

* ``"nearest"``: insightface's IJB rule (``eval_ijbc.py`` / ``_evaluation_/ijb/ijb_evals.py``): the
  ROC point whose FPR is closest to the target; among equally close points the one with the
  largest TPR (insightface flips the ROC arrays and takes the first minimum).  Not interpolated,
  and its FPR may exceed the target.
* ``"conservative"``: the largest TPR over thresholds whose FPR is ``<=`` the target; among points
  with that TPR the one with the smallest FPR (highest threshold).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn import metrics

__all__ = [
    "DEFAULT_FARS",
    "TarAtFar",
    "auc",
    "eer",
    "eer_from_roc",
    "roc",
    "roc_points",
    "summarize_verification",
    "tar_at_far",
    "tar_at_far_from_roc",
]

TarRule = Literal["nearest", "conservative"]
TAR_RULES: tuple[TarRule, ...] = ("nearest", "conservative")
DEFAULT_FARS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
#: the most ROC points a result file keeps per curve (:func:`roc_points`)
MAX_ROC_POINTS = 200


def _scores_labels(scores: ArrayLike, labels: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError(f"need both genuine and impostor pairs (got {n_pos} genuine of {y.size})")
    return s, y


def roc(
    scores: ArrayLike, labels: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """ROC curve ``(fpr, tpr, thresholds)``, thresholds decreasing, ``thresholds[0] = +inf``.

    ``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False)``: one point per distinct
    score, where point ``i`` accepts every pair with ``score >= thresholds[i]``.
    """
    s, y = _scores_labels(scores, labels)
    fpr, tpr, thr = metrics.roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr, thr


def auc(fpr: ArrayLike, tpr: ArrayLike) -> float:
    """Area under the ROC by the trapezoid rule (``sklearn.metrics.auc``).

    Equals the probability that a random genuine pair outscores a random impostor pair, with ties
    counting one half.
    """
    return float(metrics.auc(np.asarray(fpr), np.asarray(tpr)))


def eer(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """Equal error rate and its threshold of scored pairs: :func:`eer_from_roc` on :func:`roc`."""
    return eer_from_roc(*roc(scores, labels))


def eer_from_roc(fpr: ArrayLike, tpr: ArrayLike, thresholds: ArrayLike) -> tuple[float, float]:
    """Equal error rate and its threshold: the ROC operating point where FPR = FNR (= 1 - TPR).

    The one EER rule of faceforge, on any ROC laid out as :func:`roc` returns it (first point
    ``(0, 0)`` at threshold ``+inf``, thresholds decreasing, last point FPR = 1, TPR = 1): the
    exact ROC of scored pairs and the histogram ROC of the all-pairs protocol alike.

    ``g_i = FNR_i - FPR_i`` decreases along the ROC from 1 (threshold ``+inf``) to -1.  Let ``i``
    be the first point with ``g_i <= 0``.  If ``g_i = 0`` the EER is ``FPR_i`` at
    ``thresholds[i]``.  Otherwise the crossing lies on the straight ROC segment from point
    ``i - 1`` to ``i``; with ``a = g_{i-1} / (g_{i-1} - g_i)``:

    ``EER = FPR_{i-1} + a (FPR_i - FPR_{i-1})`` (which equals ``FNR_{i-1} + a (FNR_i - FNR_{i-1})``),

    and the threshold is interpolated the same way between ``thresholds[i-1]`` and
    ``thresholds[i]`` (score space); if ``i - 1`` is the ``+inf`` starting point, ``thresholds[i]``
    is returned.  Any threshold strictly between two consecutive observed scores accepts the same
    pairs as the higher one (point ``i - 1``), so the interpolated threshold only locates the
    crossing; it is not an operating point with exactly the EER.
    """
    fpr, tpr, thr = (np.asarray(a, dtype=np.float64) for a in (fpr, tpr, thresholds))
    gap = (1.0 - tpr) - fpr
    i = int(np.argmax(gap <= 0))  # exists: the last point has FPR = 1, FNR = 0
    if gap[i] == 0 or i == 0:
        return float(fpr[i]), float(thr[i])
    a = gap[i - 1] / (gap[i - 1] - gap[i])
    rate = fpr[i - 1] + a * (fpr[i] - fpr[i - 1])
    threshold = thr[i] if not np.isfinite(thr[i - 1]) else thr[i - 1] + a * (thr[i] - thr[i - 1])
    return float(rate), float(threshold)


@dataclass(frozen=True)
class TarAtFar:
    """One TAR@FAR operating point.

    Attributes:
        target_far: the requested FAR.
        tar: TPR at the chosen ROC point.
        far: FPR actually achieved there (may exceed ``target_far`` under ``"nearest"``).
        threshold: score threshold of that point (accept ``score >= threshold``); ``+inf`` means
            "accept nothing".
        rule: ``"nearest"`` or ``"conservative"``.
        below_resolution: ``target_far < 1 / n_impostor``: the smallest non-zero FPR this many
            impostor pairs can show is ``1 / n_impostor``, so the target cannot be resolved.
        n_impostor: number of impostor pairs behind the estimate.
    """

    target_far: float
    tar: float
    far: float
    threshold: float
    rule: str
    below_resolution: bool
    n_impostor: int

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict; a non-finite threshold becomes ``None`` (strict JSON)."""
        out = asdict(self)
        out["threshold"] = self.threshold if math.isfinite(self.threshold) else None
        return out


def _pick_nearest(fpr: NDArray[np.float64], target: float) -> int:
    """Index of the FPR closest to ``target``; the last such index (largest TPR) on ties."""
    gap = np.abs(fpr - target)
    return int(gap.size - 1 - np.argmin(gap[::-1]))


def _pick_conservative(fpr: NDArray[np.float64], tpr: NDArray[np.float64], target: float) -> int:
    """Largest TPR with ``FPR <= target``; the first such index (smallest FPR) on ties."""
    allowed = np.flatnonzero(fpr <= target)  # never empty: fpr[0] == 0
    best_tpr = tpr[allowed].max()
    return int(allowed[np.argmax(tpr[allowed] == best_tpr)])


def tar_at_far(
    scores: ArrayLike,
    labels: ArrayLike,
    fars: Sequence[float] = DEFAULT_FARS,
    rule: TarRule = "nearest",
) -> dict[float, TarAtFar]:
    """TAR at each target FAR under ``rule`` (see the module docstring for both rules).

    ``"nearest"`` reproduces insightface IJB-B/C 1:1 numbers (``eval_ijbc.py``:
    ``argmin |fpr - target|`` on the flipped ROC arrays, TPR reported as is).  insightface builds the
    ROC with ``drop_intermediate=True``; dropping collinear points never changes the reported TPR,
    but the FPR recorded here is the truly nearest one, which can differ from theirs.
    """
    fpr, tpr, thr = roc(scores, labels)
    n_imp = int(np.count_nonzero(~np.asarray(labels).astype(bool).ravel()))
    return tar_at_far_from_roc(fpr, tpr, thr, n_imp, fars, rule)


def tar_at_far_from_roc(
    fpr: NDArray[np.float64],
    tpr: NDArray[np.float64],
    thresholds: NDArray[np.float64],
    n_impostor: int,
    fars: Sequence[float],
    rule: TarRule = "nearest",
) -> dict[float, TarAtFar]:
    """TAR at each target FAR under ``rule`` on a ROC laid out as :func:`roc` returns it, built from
    ``n_impostor`` impostor pairs (the exact ROC, or the histogram ROC of the all-pairs protocol)."""
    if rule not in TAR_RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {TAR_RULES}")
    out: dict[float, TarAtFar] = {}
    for target in fars:
        t = float(target)
        i = _pick_nearest(fpr, t) if rule == "nearest" else _pick_conservative(fpr, tpr, t)
        out[t] = TarAtFar(
            target_far=t,
            tar=float(tpr[i]),
            far=float(fpr[i]),
            threshold=float(thresholds[i]),
            rule=rule,
            below_resolution=bool(t < 1.0 / n_impostor),
            n_impostor=int(n_impostor),
        )
    return out


def _far_key(far: float) -> str:
    return f"{far:g}"


def summarize_verification(
    scores: ArrayLike, labels: ArrayLike, fars: Sequence[float] = (1e-3, 1e-2)
) -> dict[str, Any]:
    """JSON-serialisable summary of a set of scored pairs.

    Keys: ``auc``, ``eer``, ``eer_threshold``, ``n_genuine``, ``n_impostor`` and ``tar_at_far``,
    a dict ``{rule: {"<far>": TarAtFar.to_dict()}}`` for both rules, with FAR keys written as
    ``f"{far:g}"`` (e.g. ``"0.001"``).  All values are plain ``float`` / ``int`` / ``bool`` /
    ``str`` / ``None``.
    """
    s, y = _scores_labels(scores, labels)
    fpr, tpr, _ = roc(s, y)
    rate, threshold = eer(s, y)
    tars = {
        rule: {_far_key(k): v.to_dict() for k, v in tar_at_far(s, y, fars, rule).items()}
        for rule in TAR_RULES
    }
    return {
        "auc": auc(fpr, tpr),
        "eer": rate,
        "eer_threshold": threshold,
        "tar_at_far": tars,
        "n_genuine": int(y.sum()),
        "n_impostor": int((~y).sum()),
    }


def roc_points(fpr: ArrayLike, tpr: ArrayLike, max_points: int = MAX_ROC_POINTS) -> dict[str, Any]:
    """At most ``max_points`` vertices of a ROC laid out as :func:`roc` returns it, for a result file.

    Rule: for each of ``max_points - 1`` FPR values spaced evenly on a log scale from the smallest non-zero
    FPR to 1, the ROC point with the largest TPR whose FPR is ``<=`` that value (the conservative rule of
    the module docstring), plus the last point at FPR 0 (TPR at zero false accepts); duplicates once.
    Every kept point is a true ROC point, so a curve drawn through them on a log-FPR axis follows the
    full ROC to within the grid's spacing.  FPR is written with 6 significant digits, TPR with 6 decimals.

    Returns:
        ``{"fpr": [...], "tpr": [...], "n_points_full": N, "rule": "..."}`` (JSON-ready).
    """
    x = np.asarray(fpr, dtype=np.float64).ravel()
    y = np.asarray(tpr, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"fpr and tpr must be non-empty and of one length, got {x.size} and {y.size}")
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    positive = x[x > 0]
    grid = np.geomspace(positive.min(), 1.0, max_points - 1) if positive.size else np.zeros(0)
    picks = np.searchsorted(x, np.concatenate([[0.0], grid]), side="right") - 1
    keep = np.unique(picks[picks >= 0])
    return {
        "fpr": [float(f"{v:.6g}") for v in x[keep]],
        "tpr": [round(float(v), 6) for v in y[keep]],
        "n_points_full": int(x.size),
        "rule": (
            f"at most {max_points} ROC points: the largest TPR with FPR <= each of {max_points - 1} "
            "log-spaced FPRs from the smallest non-zero one to 1, and at FPR 0"
        ),
    }
