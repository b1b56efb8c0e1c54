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

__all__ = [
    "RFW_GRID",
    "differential_performance",
    "impostor_differential",
    "per_group_kfold_accuracy",
    "within_group_impostor_pairs",
]

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


# ------------------------------------------------------------------------------------------------------
# impostor-only differentials (data sets without identity labels, such as UTKFace)
# ------------------------------------------------------------------------------------------------------
def within_group_impostor_pairs(
    groups: ArrayLike, max_pairs_per_group: int = 200_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``i < j``, of different images in the same group: every such pair when a group
    has at most ``max_pairs_per_group`` of them, else that many drawn uniformly (seeded, with
    replacement of the draw but never ``i == j``). Returns index arrays and each pair's group."""
    g = np.asarray(groups)
    rng = np.random.default_rng(seed)
    out_i, out_j, out_g = [], [], []
    for label in sorted(np.unique(g).tolist()):
        idx = np.flatnonzero(g == label)
        n = idx.size
        if n < 2:
            continue
        total = n * (n - 1) // 2
        if total <= max_pairs_per_group:
            a, b = np.triu_indices(n, k=1)
        else:
            a = rng.integers(0, n, max_pairs_per_group)
            b = rng.integers(0, n - 1, max_pairs_per_group)
            b = b + (b >= a)  # uniform over the other n - 1 images
            a, b = np.minimum(a, b), np.maximum(a, b)
        out_i.append(idx[a])
        out_j.append(idx[b])
        out_g.append(np.full(a.size, label, dtype=object))
    if not out_i:
        raise ValueError("no group has two images, so there are no within-group pairs")
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_g)


def impostor_differential(scores: ArrayLike, groups: ArrayLike, target_fmr: float = 1e-3) -> dict[str, Any]:
    """Per-group FMR of within-group impostor pairs at one global threshold (data without identities).

    Every pair is taken as an impostor pair (different people; UTKFace has no identity labels, so
    repeated people count as impostors and slightly raise the FMR of their group). The threshold ``t``
    is set on all pairs pooled for ``FMR = target_fmr`` (:func:`threshold_at_rate`), then
    ``FMR_g = #{s >= t in group g} / n_g``, with ``fmr_ratio = max_g FMR_g / min_g FMR_g`` (``None`` if
    the best group has no false match), as NIST FRVT's demographic FMR comparisons do.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    g, names = _groups(groups, s.size)
    if s.size == 0:
        raise ValueError("no pairs")
    thr, overall = threshold_at_rate(s, target_fmr)
    per = {}
    for k in names:
        m = g == k
        n = int(m.sum())
        per[str(k)] = {"fmr": float(np.count_nonzero(s[m] >= thr) / n), "n_impostor": n}
    fmrs = [v["fmr"] for v in per.values()]
    return {
        "protocol": "within-group impostor FMR at one global threshold",
        "target_fmr": float(target_fmr),
        "threshold": float(thr),
        "overall_fmr": float(overall),
        "groups": per,
        "fmr_ratio": _ratio(fmrs),
        "worst_group": max(per, key=lambda k: per[k]["fmr"]),
        "best_group": min(per, key=lambda k: per[k]["fmr"]),
    }
