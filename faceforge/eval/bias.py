"""Demographic differentials: per-group verification accuracy (RFW style) and per-group error rates
at one global operating threshold (ISO/IEC 19795-10 style).

(a) :func:`per_group_kfold_accuracy`: RFW evaluates each race subset with the LFW 10-fold protocol
(insightface ``recognition/arcface_torch/eval/verification.py``; TFace ``recognition/test/utils.py``): squared L2 distances of normalised embeddings
(``d = ||e1 - e2||^2 = 2 - 2 cos``, range ``[0, 4]``) and the insightface threshold grid
``np.arange(0, 4, 0.01)``.  TFace's ``rfw_evaluate`` passes ``np.arange(-1, 1, 0.001)`` instead,
a cosine-like grid on a distance, which never reaches ``d >= 1`` (TFace
``recognition/test/utils.py`` ``rfw_evaluate``); that grid is
**not** used here, the grid is recorded in the result.  Reported: each group's mean/std over folds,
and the mean and standard deviation (``np.std``, ddof 0) of the group means, the fairness number
CIFP reports.

(b) :func:`differential_performance`: one threshold for a target *overall* FMR, set on all impostor
scores pooled over groups (:func:`faceforge.eval.allpairs.threshold_at_rate`; accept
``score >= t``), then per group ``FMR_g = #{impostor_g >= t} / n_impostor_g`` and
``FNMR_g = #{genuine_g < t} / n_genuine_g``, with the worst/best ratios ``max_g FMR_g / min_g FMR_g``
and ``max_g FNMR_g / min_g FNMR_g`` (ISO/IEC 19795-10 reports such max/min differentials; the ratio
is ``None`` when the best group has zero errors).

(c) :func:`fmr_spread`: the worst/best FMR ratio and the standard deviation of ``log10 FMR`` over groups
with a stated floor for groups without a false match (``1 / n_impostor_g``, the smallest FMR their pairs
can show), so a zero does not make the spread undefined or infinite; groups with fewer than
``1 / target FMR`` impostor pairs (less than one false match expected; e.g. UTKFace's five Black faces)
are left out of it and listed, since their floor alone would decide it.

(d) :func:`group_pairs_report`: (a) and (b) together for pairs that each belong to one group, at several
target FMRs (1e-3 and 1e-4 by default), with each group's ROC summary; :func:`group_pairs_table` turns it
into one row per group. :func:`identity_group_pairs` builds such pairs from an identity-labelled folder
(genuine within an identity, impostor across identities of the same group) and
:func:`balanced_interleaved` the balanced, interleaved subset the 10-fold accuracy is computed on.
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
    "BIAS_FMRS",
    "RFW_GRID",
    "balanced_interleaved",
    "differential_performance",
    "fmr_spread",
    "group_pairs_report",
    "group_pairs_table",
    "identity_group_pairs",
    "impostor_differential",
    "min_pairs_for",
    "per_group_kfold_accuracy",
    "within_group_impostor_pairs",
]

#: Target overall FMRs of the global thresholds in :func:`group_pairs_report`.
BIAS_FMRS: tuple[float, ...] = (1e-3, 1e-4)
FMR_FLOOR_RULE = (
    "a group with no false match counts as FMR = 1/n_impostor (the smallest FMR its pairs can show), "
    "so ratio and spread are lower bounds when such a group is the best"
)

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


def min_pairs_for(target_fmr: float) -> int:
    """Fewest impostor pairs a group needs to enter the spread at ``target_fmr``: ``ceil(1 / target)``, so at
    least one false match is expected at the target rate."""
    return math.ceil(1.0 / float(target_fmr) - 1e-9)


def fmr_spread(
    fmr: dict[str, float | None], n_impostor: dict[str, int], min_pairs: int = 1
) -> dict[str, Any]:
    """Worst/best FMR ratio and ``std_g log10 FMR_g`` (``np.std``, ddof 0) with zeros floored.

    ``FMR'_g = max(FMR_g, 1 / n_g)`` (``n_g`` impostor pairs of group ``g``): the floor is the smallest
    non-zero FMR the group's pairs can show. Groups with fewer than ``min_pairs`` impostor pairs (whose
    floor alone would decide the spread; :func:`min_pairs_for` gives ``1 / target FMR``) or without a value
    are left out and listed. Returns ``fmr_ratio_floored = max FMR' / min FMR'``, ``log10_fmr_std``,
    ``groups_at_floor``, ``groups_too_few_pairs`` and the rule.
    """
    small = sorted(k for k, v in fmr.items() if v is not None and n_impostor.get(k, 0) < max(min_pairs, 1))
    vals = {k: max(float(v), 1.0 / n_impostor[k]) for k, v in fmr.items() if v is not None and k not in small}
    rule = f"{FMR_FLOOR_RULE}; groups with fewer than {max(min_pairs, 1)} impostor pairs are left out"
    out: dict[str, Any] = {
        "fmr_ratio_floored": None,
        "log10_fmr_std": None,
        "groups_at_floor": sorted(k for k in vals if fmr[k] == 0),
        "groups_too_few_pairs": small,
        "min_pairs": max(min_pairs, 1),
        "floor_rule": rule,
    }
    if vals:
        out["fmr_ratio_floored"] = float(max(vals.values()) / min(vals.values()))
        out["log10_fmr_std"] = float(np.log10(np.array(list(vals.values()))).std())
    return out


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
    out["n_impostor"] = int((~y).sum())
    out["false_matches"] = int(np.count_nonzero(s[~y] >= thr))  # at the threshold, all groups
    out["fmr_spread"] = fmr_spread(
        {k: v["fmr"] for k, v in per.items()},
        {k: v["n_impostor"] for k, v in per.items()},
        min_pairs_for(target_fmr),
    )
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
    spread = fmr_spread(
        {k: v["fmr"] for k, v in per.items()},
        {k: v["n_impostor"] for k, v in per.items()},
        min_pairs_for(target_fmr),
    )
    return {
        "protocol": "within-group impostor FMR at one global threshold",
        "target_fmr": float(target_fmr),
        "threshold": float(thr),
        "overall_fmr": float(overall),
        "groups": per,
        "fmr_ratio": _ratio(fmrs),
        "worst_group": max(per, key=lambda k: per[k]["fmr"]),
        "best_group": min(per, key=lambda k: per[k]["fmr"]),
        "fmr_ratio_floored": spread["fmr_ratio_floored"],
        "log10_fmr_std": spread["log10_fmr_std"],
        "groups_at_floor": spread["groups_at_floor"],
        "groups_too_few_pairs": spread["groups_too_few_pairs"],
        "floor_rule": spread["floor_rule"],
    }


# ------------------------------------------------------------------------------------------------------
# pairs with a group each: RFW accuracy + differentials at several global thresholds
# ------------------------------------------------------------------------------------------------------
def _fmr_key(fmr: float) -> str:
    return f"{fmr:g}"


def group_pairs_report(
    scores: ArrayLike,
    issame: ArrayLike,
    groups: ArrayLike,
    dist: ArrayLike | None = None,
    fmrs: Sequence[float] = BIAS_FMRS,
    n_folds: int = 10,
    accuracy_index: ArrayLike | None = None,
) -> dict[str, Any]:
    """Everything a fairness table needs from pairs that each belong to one group.

    Args:
        scores: cosine similarity per pair (accept when ``score >= t``).
        issame: genuine (True) or impostor per pair.
        groups: the group of every pair.
        dist: squared L2 distances of the normalised embeddings for the 10-fold accuracy
            (default ``2 - 2 * scores``, equal for unit vectors up to rounding).
        fmrs: target overall FMRs; one global threshold each (:func:`differential_performance`).
        n_folds: folds of the per-group accuracy (:func:`per_group_kfold_accuracy`).
        accuracy_index: the pairs (indices, in this order) the accuracy is computed on; default all, in
            the given order (a pairs file's own fold order).

    Returns ``accuracy`` (per group and ``mean`` / ``std`` over groups, RFW), ``at_fmr[str(fmr)]`` (the
    differential at each global threshold), ``roc[group]`` (AUC, EER, pair counts) and ``groups``.
    """
    from faceforge.eval.roc import auc, eer, roc

    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(issame).astype(bool).ravel()
    g, names = _groups(groups, s.size)
    d = 2.0 - 2.0 * s if dist is None else np.asarray(dist, dtype=np.float64).ravel()
    idx = np.arange(s.size) if accuracy_index is None else np.asarray(accuracy_index, dtype=np.intp)
    curves: dict[str, Any] = {}
    for k in names:
        m = g == k
        gen, imp = int((m & y).sum()), int((m & ~y).sum())
        rec: dict[str, Any] = {"n_genuine": gen, "n_impostor": imp, "auc": None, "eer": None}
        if gen and imp:
            fpr, tpr, _ = roc(s[m], y[m])
            rec["auc"] = auc(fpr, tpr)
            rec["eer"] = eer(s[m], y[m])[0]
        curves[str(k)] = rec
    return {
        "protocol": "per-group verification: 10-fold accuracy (RFW) + FMR/FNMR at global thresholds",
        "groups": [str(k) for k in names],
        "accuracy": per_group_kfold_accuracy(d[idx], y[idx], g[idx], n_folds),
        "accuracy_pairs": int(idx.size),
        "at_fmr": {_fmr_key(f): differential_performance(s, y, g, f) for f in fmrs},
        "roc": curves,
    }


def group_pairs_table(report: dict[str, Any]) -> dict[str, Any]:
    """One row per group of a :func:`group_pairs_report`: pairs, accuracy (mean over folds), AUC, EER and
    FMR / FNMR at every global threshold; plus a last row with the spread over groups."""
    fmrs = list(report["at_fmr"])
    columns = ["group", "genuine pairs", "impostor pairs", "accuracy", "AUC", "EER"]
    for f in fmrs:
        columns += [f"FMR @ global FMR {f}", f"FNMR @ global FMR {f}"]
    rows = []
    for k in report["groups"]:
        acc = report["accuracy"]["groups"].get(k, {}).get("accuracy_mean")
        c = report["roc"][k]
        row = [k, c["n_genuine"], c["n_impostor"], acc, c["auc"], c["eer"]]
        for f in fmrs:
            grp = report["at_fmr"][f]["groups"][k]
            row += [grp["fmr"], grp["fnmr"]]
        rows.append(row)
    last: list[Any] = ["max/min (std for accuracy)", None, None, report["accuracy"]["std"], None, None]
    for f in fmrs:
        last += [report["at_fmr"][f]["fmr_ratio"], report["at_fmr"][f]["fnmr_ratio"]]
    rows.append(last)
    return {"title": "per-group verification", "columns": columns, "rows": rows}


def identity_group_pairs(
    identities: ArrayLike,
    groups: ArrayLike,
    max_genuine_per_group: int = 50_000,
    max_impostor_per_group: int = 200_000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``i < j``, from images with an identity and a group (an identity's images must
    share one group): every genuine pair (same identity) of a group, or ``max_genuine_per_group`` drawn
    without replacement; impostor pairs of different identities within the group, all of them when there
    are at most ``max_impostor_per_group``, else that many drawn uniformly (seeded, with replacement;
    different identities always). Returns ``i, j, issame, group``."""
    ids = np.asarray(identities)
    g = np.asarray(groups)
    rng = np.random.default_rng(seed)
    out: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for label in sorted(np.unique(g).tolist()):
        idx = np.flatnonzero(g == label)
        a, b = np.triu_indices(idx.size, k=1)
        same = ids[idx[a]] == ids[idx[b]]
        gen_a, gen_b = a[same], b[same]
        if gen_a.size > max_genuine_per_group:
            keep = np.sort(rng.choice(gen_a.size, max_genuine_per_group, replace=False))
            gen_a, gen_b = gen_a[keep], gen_b[keep]
        n_imp = int((~same).sum())
        if n_imp <= max_impostor_per_group:
            imp_a, imp_b = a[~same], b[~same]
        else:
            imp_a = rng.integers(0, idx.size, 4 * max_impostor_per_group)
            imp_b = rng.integers(0, idx.size, 4 * max_impostor_per_group)
            ok = ids[idx[imp_a]] != ids[idx[imp_b]]
            imp_a, imp_b = imp_a[ok][:max_impostor_per_group], imp_b[ok][:max_impostor_per_group]
            imp_a, imp_b = np.minimum(imp_a, imp_b), np.maximum(imp_a, imp_b)
        i = np.concatenate([idx[gen_a], idx[imp_a]])
        j = np.concatenate([idx[gen_b], idx[imp_b]])
        same_out = np.r_[np.ones(gen_a.size, bool), np.zeros(imp_a.size, bool)]
        out.append((i, j, same_out, np.full(i.size, label, dtype=object)))
    if not out or not any(o[0].size for o in out):
        raise ValueError("no group has two images, so there are no pairs")
    return tuple(np.concatenate(parts) for parts in zip(*out, strict=True))  # type: ignore[return-value]


def balanced_interleaved(issame: ArrayLike, groups: ArrayLike, seed: int = 0) -> np.ndarray:
    """Indices of a balanced subset per group, ``min(n_genuine, n_impostor)`` of each kind drawn with a
    seeded permutation, interleaved genuine, impostor, genuine, ... so every contiguous fold of the
    10-fold protocol holds both kinds (RFW's pairs are balanced the same way)."""
    y = np.asarray(issame).astype(bool).ravel()
    g = np.asarray(groups)
    rng = np.random.default_rng(seed)
    parts = []
    for label in sorted(np.unique(g).tolist()):
        gen = np.flatnonzero((g == label) & y)
        imp = np.flatnonzero((g == label) & ~y)
        n = min(gen.size, imp.size)
        if n == 0:
            continue
        both = np.empty(2 * n, dtype=np.intp)
        both[0::2] = rng.permutation(gen)[:n]
        both[1::2] = rng.permutation(imp)[:n]
        parts.append(both)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.intp)
