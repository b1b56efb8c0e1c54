"""Demographic differentials: per-group verification accuracy (RFW style) and per-group error rates
at one global operating threshold (ISO/IEC 19795-10 style).

(a) :func:`per_group_kfold_accuracy`: RFW evaluates each race subset with the LFW 10-fold protocol
(anchors.md §6.1, §6.5; methods.md §10): squared L2 distances of normalised embeddings
(``d = ||e1 - e2||^2 = 2 - 2 cos``, range ``[0, 4]``) and the insightface threshold grid
``np.arange(0, 4, 0.01)``.  TFace's ``rfw_evaluate`` passes ``np.arange(-1, 1, 0.001)`` instead,
a cosine-like grid on a distance, which never reaches ``d >= 1`` (anchors.md §1.1); that grid is
**not** used here, the grid is recorded in the result.  Reported: each group's mean/std over folds,
and the mean and standard deviation (``np.std``, ddof 0) of the group means, the fairness number
CIFP reports.

(b) :func:`differential_performance`: one threshold for a target *overall* FMR, set on all impostor
scores pooled over groups (:func:`faceforge.eval.allpairs.threshold_at_rate`; accept
``score >= t``), then per group ``FMR_g = #{impostor_g >= t} / n_impostor_g`` and
``FNMR_g = #{genuine_g < t} / n_genuine_g``, with the worst/best ratios ``max_g FMR_g / min_g FMR_g``
and ``max_g FNMR_g / min_g FNMR_g`` (ISO/IEC 19795-10 reports such max/min differentials; the ratio
is ``None`` when the best group has zero errors).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from faceforge.eval.allpairs import threshold_at_rate
from faceforge.eval.verification import kfold_accuracy

__all__ = ["RFW_GRID", "differential_performance", "per_group_kfold_accuracy"]

#: The correct squared-L2 grid (insightface ``calculate_roc``): ``np.arange(0, 4, 0.01)``.
RFW_GRID: tuple[float, float, float] = (0.0, 4.0, 0.01)


def _groups(groups: ArrayLike, n: int) -> tuple[np.ndarray, list[Any]]:
    g = np.asarray(groups).ravel()
    if g.size != n:
        raise ValueError(f"{g.size} group labels for {n} pairs")
    return g, sorted(np.unique(g).tolist())


def per_group_kfold_accuracy(
    dist: ArrayLike, issame: ArrayLike, groups: ArrayLike, n_folds: int = 10
) -> dict[str, Any]:
    """RFW-style accuracy per group with :func:`faceforge.eval.verification.kfold_accuracy`.

    Each group's pairs (in their given order, so contiguous folds follow the list) are evaluated
    on their own with the grid ``np.arange(0, 4, 0.01)`` on squared L2 distances.  Result:
    ``groups[str(g)] = KFoldResult.to_dict()``, ``mean`` and ``std`` (ddof 0) of the per-group
    accuracies, the grid and ``n_folds``.
    """
    d = np.asarray(dist, dtype=np.float64).ravel()
    y = np.asarray(issame).astype(bool).ravel()
    if d.size != y.size:
        raise ValueError(f"{d.size} distances but {y.size} labels")
    g, names = _groups(groups, d.size)
    per = {str(k): kfold_accuracy(d[g == k], y[g == k], n_folds, RFW_GRID).to_dict() for k in names}
    accs = np.array([v["accuracy_mean"] for v in per.values()])
    return {
        "protocol": "per_group_kfold_accuracy",
        "distance": "squared_l2_of_normalised_embeddings",
        "thresholds": {"start": RFW_GRID[0], "stop": RFW_GRID[1], "step": RFW_GRID[2]},
        "n_folds": int(n_folds),
        "groups": per,
        "mean": float(accs.mean()),
        "std": float(accs.std()),
        "std_ddof": 0,
    }


def _ratio(values: Sequence[float]) -> float | None:
    lo, hi = min(values), max(values)
    if lo == 0:
        return None
    return float(hi / lo)


def differential_performance(
    scores: ArrayLike, issame: ArrayLike, groups: ArrayLike, target_fmr: float = 1e-3
) -> dict[str, Any]:
    """Per-group FMR / FNMR at one global threshold set for ``target_fmr`` on all impostors.

    Result: ``threshold``, ``overall`` (fmr, fnmr), ``groups[str(g)]`` (fmr, fnmr, counts),
    ``fmr_ratio`` / ``fnmr_ratio`` (max/min over groups; ``None`` if the minimum is 0 or a group
    has no pairs of that kind), and the worst and best group for each.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(issame).astype(bool).ravel()
    if s.size != y.size:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if y.all() or not y.any():
        raise ValueError("need genuine and impostor pairs")
    g, names = _groups(groups, s.size)
    thr, overall_fmr = threshold_at_rate(s[~y], target_fmr)
    per: dict[str, dict[str, Any]] = {}
    for k in names:
        gen, imp = s[(g == k) & y], s[(g == k) & ~y]
        per[str(k)] = {
            "fmr": float(np.count_nonzero(imp >= thr) / imp.size) if imp.size else None,
            "fnmr": float(np.count_nonzero(gen < thr) / gen.size) if gen.size else None,
            "n_genuine": int(gen.size),
            "n_impostor": int(imp.size),
        }
    out: dict[str, Any] = {
        "protocol": "differential_performance",
        "target_fmr": float(target_fmr),
        "threshold": thr if math.isfinite(thr) else None,
        "overall": {"fmr": overall_fmr, "fnmr": float(np.count_nonzero(s[y] < thr) / y.sum())},
        "groups": per,
    }
    for key in ("fmr", "fnmr"):
        vals = {k: v[key] for k, v in per.items()}
        if any(v is None for v in vals.values()):
            out[f"{key}_ratio"] = None
            out[f"{key}_worst_group"] = out[f"{key}_best_group"] = None
            continue
        out[f"{key}_ratio"] = _ratio(list(vals.values()))
        out[f"{key}_worst_group"] = max(vals, key=lambda k: vals[k])
        out[f"{key}_best_group"] = min(vals, key=lambda k: vals[k])
    return out
