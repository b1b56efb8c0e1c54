"""Pair-verification metrics with the insightface k-fold protocol, vectorised.

The functions here reproduce ``calculate_roc`` / ``calculate_val`` from insightface
``recognition/arcface_torch/eval/verification.py`` (the same code lives in TFace
``recognition/test/utils.py`` and face.evoLVe), which is the protocol every paper uses for
LFW, CFP-FP, AgeDB-30, CALFW and CPLFW:

* embeddings are L2-normalised and compared with the squared Euclidean distance
  ``d = sum((e1 - e2) ** 2)`` which lies in ``[0, 4]`` and equals ``2 - 2 cos``;
* pairs are split into ``n_folds`` contiguous folds in pair order, exactly like
  ``sklearn.model_selection.KFold(n_splits, shuffle=False)`` (the first ``n % k`` folds hold one
  extra pair); for LFW's 6000 pairs this reproduces the official 10 x 600 split;
* a pair is predicted "same" when ``d < threshold`` (strict);
* for each fold the threshold is the grid value maximising accuracy on the *other* folds
  (``np.argmax``: the first, i.e. smallest on an increasing grid, wins ties) and the reported
  accuracy is the one obtained with it on the held-out fold; mean and ``np.std`` (ddof 0) of the
  fold accuracies are reported.

The reference implementation loops over folds and over every threshold.  Here every pair is
placed once into the sorted threshold grid (``np.searchsorted``), one ``np.bincount`` gives, for
every fold and class, how many distances fall into each grid cell, and a cumulative sum turns that
into "number of pairs with ``d < t``" for all thresholds at once.  The cost is O(n log T + k T)
instead of O(n k T), and the counts are integers, so accuracies and chosen thresholds are
bit-identical to the loop (``tests/eval/test_verification.py`` checks this against a literal loop).

No torch here: the eval layer is numpy / scipy only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "KFoldResult",
    "ThresholdGrid",
    "ValAtFarResult",
    "fold_ids",
    "kfold_accuracy",
    "l2_normalize",
    "squared_l2",
    "threshold_at_far",
    "val_at_far",
]

KFOLD_RULE = "insightface-10fold"
VAL_RULE = "insightface-calculate_val"

#: Default grids of insightface ``evaluate()``: accuracy on 0.01 steps, VAL@FAR on 0.001 steps.
ACCURACY_GRID = (0.0, 4.0, 0.01)
VAL_GRID = (0.0, 4.0, 0.001)


# --------------------------------------------------------------------------------------------
# embeddings -> distances
# --------------------------------------------------------------------------------------------
def l2_normalize(x: ArrayLike, axis: int = -1) -> NDArray[np.floating]:
    """Divide every vector by its L2 norm: ``x / ||x||_2`` along ``axis``.

    Bit-identical to ``sklearn.preprocessing.normalize`` (used by insightface before computing
    distances): norms are ``sqrt(einsum(x, x))`` along ``axis`` and all-zero vectors are left
    unchanged (their norm is replaced by 1).  Floating inputs keep their dtype (float32 stays
    float32, as in insightface); integer inputs become float64.
    """
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    last = np.moveaxis(arr, axis, -1)
    norms = np.sqrt(np.einsum("...i,...i->...", last, last))
    norms = np.where(norms == 0, np.ones_like(norms), norms)
    return np.moveaxis(last / norms[..., None], -1, axis)


def squared_l2(e1: ArrayLike, e2: ArrayLike, normalize: bool = True) -> NDArray[np.floating]:
    """Squared Euclidean distance between rows of ``e1`` and ``e2``: ``sum((e1 - e2) ** 2, axis=1)``.

    With ``normalize=True`` (default) both inputs are first L2-normalised, so the distance lies in
    ``[0, 4]`` and equals ``2 - 2 cos(e1, e2)``.  It is computed as the sum of squared differences
    (not as ``2 - 2 cos``) in the input dtype, exactly like insightface ``calculate_roc``, so that
    distances, and hence k-fold results, match the reference bit for bit.
    """
    a = np.asarray(e1)
    b = np.asarray(e2)
    if a.shape != b.shape:
        raise ValueError(f"embedding shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 1:
        a, b = a[None, :], b[None, :]
    if a.ndim != 2:
        raise ValueError(f"expected (n, d) embeddings, got shape {a.shape}")
    if normalize:
        a, b = l2_normalize(a), l2_normalize(b)
    elif not np.issubdtype(np.result_type(a, b), np.floating):
        a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(np.square(np.subtract(a, b)), axis=1)


# --------------------------------------------------------------------------------------------
# shared machinery
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ThresholdGrid:
    """Description of the threshold grid a result was computed on (written into result records).

    ``start``/``stop``/``step`` follow ``np.arange`` conventions (``stop`` exclusive).  For a grid
    given as an explicit array, ``step`` is the median spacing and ``stop = last + step``;
    ``uniform`` says whether the spacing is constant (to 1e-9).
    """

    start: float
    stop: float
    step: float
    n: int
    uniform: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "stop": self.stop,
            "step": self.step,
            "n": self.n,
            "uniform": self.uniform,
        }


def _make_grid(
    thresholds: ArrayLike | tuple[float, float, float] | None,
    default: tuple[float, float, float],
) -> tuple[NDArray[np.float64], ThresholdGrid]:
    """Return the threshold array and its description.

    ``thresholds`` is ``None`` (use ``default``), a ``(start, stop, step)`` tuple (``np.arange``)
    or an explicit 1-D array (used as given, in the given order).
    """
    if thresholds is None:
        thresholds = default
    if isinstance(thresholds, tuple) and len(thresholds) == 3:
        start, stop, step = (float(v) for v in thresholds)
        thr = np.arange(start, stop, step, dtype=np.float64)
        return thr, ThresholdGrid(start, stop, step, int(thr.size), True)
    thr = np.asarray(thresholds, dtype=np.float64).ravel()
    if thr.size == 0:
        raise ValueError("empty threshold grid")
    if np.isnan(thr).any():
        raise ValueError("threshold grid contains NaN")
    if thr.size > 1:
        diffs = np.diff(thr)
        step = float(np.median(diffs))
        uniform = bool(np.allclose(diffs, step, rtol=0, atol=1e-9))
    else:
        step, uniform = 0.0, True
    grid = ThresholdGrid(
        start=float(thr[0]),
        stop=round(float(thr[-1]) + step, 12),
        step=round(step, 12),
        n=int(thr.size),
        uniform=uniform,
    )
    return thr, grid


def fold_ids(n: int, n_folds: int) -> NDArray[np.intp]:
    """Fold index of every pair under ``KFold(n_splits=n_folds, shuffle=False)``.

    Folds are contiguous in pair order; the first ``n % n_folds`` folds have ``n // n_folds + 1``
    pairs and the others ``n // n_folds`` (sklearn's split sizes).  ``n_folds=1`` puts every pair
    in fold 0 (insightface's ``LFold`` then trains and tests on the same pairs).
    """
    if n_folds < 1:
        raise ValueError(f"n_folds must be >= 1, got {n_folds}")
    if n < n_folds:
        raise ValueError(f"cannot split {n} pairs into {n_folds} folds")
    sizes = np.full(n_folds, n // n_folds, dtype=np.intp)
    sizes[: n % n_folds] += 1
    return np.repeat(np.arange(n_folds, dtype=np.intp), sizes)


def _check_inputs(dist: ArrayLike, issame: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    d = np.asarray(dist)
    if not np.issubdtype(d.dtype, np.floating):
        d = d.astype(np.float64)
    # float32 -> float64 is exact, and the reference compares float32 distances with float64
    # thresholds in float64 anyway.
    d = d.astype(np.float64, copy=False).ravel()
    same = np.asarray(issame).astype(bool).ravel()
    if d.shape != same.shape:
        raise ValueError(f"{d.size} distances but {same.size} labels")
    if d.size == 0:
        raise ValueError("no pairs")
    if np.isnan(d).any():
        raise ValueError("distances contain NaN (broken embeddings?)")
    return d, same


def _fold_counts(
    dist: NDArray[np.float64],
    issame: NDArray[np.bool_],
    folds: NDArray[np.intp],
    n_folds: int,
    thresholds: NDArray[np.float64],
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Per fold, how many genuine / impostor pairs have ``dist < t`` for every threshold ``t``.

    Returns ``(gen_below, imp_below, n_gen, n_imp)`` with shapes ``(k, T)``, ``(k, T)``, ``(k,)``,
    ``(k,)``; the threshold axis is in the caller's order.

    With the grid sorted as ``s_0 <= ... <= s_{T-1}`` and ``b = #{j : s_j <= d}``
    (``searchsorted(..., side="right")``), ``d < s_i`` holds exactly when ``b <= i``; so a
    histogram of ``b`` followed by a cumulative sum counts ``d < s_i`` for all ``i`` at once.
    """
    n_thr = thresholds.size
    order = np.argsort(thresholds, kind="stable")
    cells = np.searchsorted(thresholds[order], dist, side="right")  # in [0, T]
    key = (folds * 2 + issame.astype(np.intp)) * (n_thr + 1) + cells
    hist = np.bincount(key, minlength=n_folds * 2 * (n_thr + 1)).reshape(n_folds, 2, n_thr + 1)
    below_sorted = np.cumsum(hist[:, :, :n_thr], axis=2)
    below = np.empty_like(below_sorted)
    below[:, :, order] = below_sorted
    totals = hist.sum(axis=2)
    return below[:, 1], below[:, 0], totals[:, 1], totals[:, 0]


def _train_counts(per_fold: NDArray[np.int64], n_folds: int) -> NDArray[np.int64]:
    """Counts over all folds but one (for every held-out fold); all folds when ``n_folds == 1``."""
    total = per_fold.sum(axis=0, keepdims=True)
    return total if n_folds == 1 else total - per_fold


def _safe_ratio(num: NDArray[np.int64], den: NDArray[np.int64]) -> NDArray[np.float64]:
    """``num / den`` with 0 where ``den == 0`` (insightface's convention in calculate_accuracy)."""
    den_b = np.broadcast_to(den, np.broadcast_shapes(np.shape(num), np.shape(den)))
    out = np.zeros(den_b.shape, dtype=np.float64)
    np.divide(num, den_b, out=out, where=den_b != 0)
    return out


# --------------------------------------------------------------------------------------------
# k-fold accuracy (calculate_roc)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class KFoldResult:
    """Outcome of :func:`kfold_accuracy`.

    ``tpr`` / ``fpr`` are the held-out-fold TPR and FPR at every grid threshold averaged over folds
    (the ``tpr, fpr`` that insightface ``calculate_roc`` returns), in grid order.
    """

    mean: float
    std: float
    fold_accuracies: NDArray[np.float64]
    fold_thresholds: NDArray[np.float64]
    n_folds: int
    grid: ThresholdGrid
    rule: str = KFOLD_RULE
    tpr: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0), repr=False)
    fpr: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (plain floats and lists; the TPR/FPR curves are left out)."""
        return {
            "rule": self.rule,
            "accuracy_mean": float(self.mean),
            "accuracy_std": float(self.std),
            "fold_accuracies": [float(v) for v in self.fold_accuracies],
            "fold_thresholds": [float(v) for v in self.fold_thresholds],
            "n_folds": int(self.n_folds),
            "thresholds": self.grid.to_dict(),
        }


def kfold_accuracy(
    dist: ArrayLike,
    issame: ArrayLike,
    n_folds: int = 10,
    thresholds: ArrayLike | tuple[float, float, float] | None = None,
) -> KFoldResult:
    """k-fold verification accuracy, identical to insightface ``calculate_roc``.

    For fold ``f`` with held-out pairs ``Te_f`` and training pairs ``Tr_f`` (all other folds):

    ``acc(t, S) = (#{i in S: same_i and d_i < t} + #{i in S: not same_i and d_i >= t}) / |S|``

    ``t_f = thresholds[argmax_t acc(t, Tr_f)]`` (first maximum on ties) and the fold accuracy is
    ``acc(t_f, Te_f)``.  Result: mean and ``np.std`` (ddof 0) over folds, the per-fold values and
    thresholds, and the averaged held-out TPR/FPR curves.

    Args:
        dist: squared L2 distances of normalised embeddings (smaller = more alike), shape (n,).
        issame: ground truth per pair, shape (n,).
        n_folds: number of contiguous folds (``KFold(n_folds, shuffle=False)``); 1 trains and tests
            on all pairs, as insightface's ``LFold`` does.
        thresholds: ``None`` for insightface's ``np.arange(0, 4, 0.01)``, a ``(start, stop, step)``
            tuple (always read as an ``np.arange`` spec: pass a list or array for three explicit
            thresholds), or an explicit array (ties go to the earliest entry, as ``np.argmax``).

    Source: insightface ``recognition/arcface_torch/eval/verification.py`` (``calculate_roc``,
    ``calculate_accuracy``); fold sizes from ``sklearn.model_selection.KFold``.
    """
    d, same = _check_inputs(dist, issame)
    thr, grid = _make_grid(thresholds, ACCURACY_GRID)
    folds = fold_ids(d.size, n_folds)
    gen_below, imp_below, n_gen, n_imp = _fold_counts(d, same, folds, n_folds, thr)

    # training accuracy numerator (correct decisions) for every fold x threshold
    tr_gen_below = _train_counts(gen_below, n_folds)
    tr_imp_below = _train_counts(imp_below, n_folds)
    tr_n_imp = _train_counts(n_imp[:, None], n_folds)
    correct_train = tr_gen_below + (tr_n_imp - tr_imp_below)
    best = np.argmax(correct_train, axis=1)

    rows = np.arange(n_folds)
    n_test = n_gen + n_imp
    correct_test = gen_below[rows, best] + (n_imp - imp_below[rows, best])
    fold_acc = correct_test / n_test

    tprs = _safe_ratio(gen_below, n_gen[:, None])
    fprs = _safe_ratio(imp_below, n_imp[:, None])
    return KFoldResult(
        mean=float(np.mean(fold_acc)),
        std=float(np.std(fold_acc)),
        fold_accuracies=fold_acc.astype(np.float64),
        fold_thresholds=thr[best],
        n_folds=n_folds,
        grid=grid,
        tpr=np.mean(tprs, axis=0),
        fpr=np.mean(fprs, axis=0),
    )


# --------------------------------------------------------------------------------------------
# VAL @ FAR (calculate_val)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ValAtFarResult:
    """Outcome of :func:`val_at_far`.  Unpacks like insightface: ``val, val_std, far = result``."""

    val_mean: float
    val_std: float
    far_mean: float
    fold_vals: NDArray[np.float64]
    fold_fars: NDArray[np.float64]
    fold_thresholds: NDArray[np.float64]
    far_target: float
    n_folds: int
    grid: ThresholdGrid
    rule: str = VAL_RULE

    def __iter__(self) -> Iterator[float]:
        return iter((self.val_mean, self.val_std, self.far_mean))

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "far_target": float(self.far_target),
            "val_mean": float(self.val_mean),
            "val_std": float(self.val_std),
            "far_mean": float(self.far_mean),
            "fold_vals": [float(v) for v in self.fold_vals],
            "fold_fars": [float(v) for v in self.fold_fars],
            "fold_thresholds": [float(v) for v in self.fold_thresholds],
            "n_folds": int(self.n_folds),
            "thresholds": self.grid.to_dict(),
        }


def threshold_at_far(far: ArrayLike, thresholds: ArrayLike, far_target: float) -> float:
    """Threshold at which the (training) FAR curve reaches ``far_target``, by linear interpolation.

    This is what insightface does with ``interp1d(far, thresholds, kind="slinear")(far_target)``
    under SciPy <= 1.8, where the order-1 spline was built directly on the knots
    ``[x_0, x_0, x_1, ..., x_{m-1}, x_{m-1}]`` without rejecting repeated ``x``.  SciPy >= 1.9
    raises "Expect x to not have duplicates" instead (insightface issues #2152, #2290), and a FAR
    curve on a threshold grid is full of repeats (every threshold below the smallest impostor
    distance has FAR 0), so the call is not usable as written.  Reproduced rule, with the points
    stably sorted by FAR (the grid order when the grid increases):

    * ``j`` = the last index with ``far_j <= far_target``; the result is the linear interpolation
      between ``(far_j, thr_j)`` and ``(far_{j+1}, thr_{j+1})``, evaluated with the same
      arithmetic as SciPy's de Boor recursion:
      ``thr_j * (w (far_{j+1} - x)) + thr_{j+1} * (w (x - far_j))`` with ``w = 1 / (far_{j+1} - far_j)``.
      In words: between the last threshold whose FAR is still ``far_j`` and the first threshold
      whose FAR is larger.  An exact hit returns the *last* (largest) threshold with that FAR.
    * Deviation: when ``far_target`` equals the largest FAR value and that value is repeated, old
      SciPy evaluates a zero-width interval and returns 0.0; we return the first threshold that
      reaches that FAR (the limit from the left).
    * Deviation: a target below the smallest FAR made ``interp1d`` raise ("below the interpolation
      range"); we return the threshold with the smallest FAR (the most conservative grid point).
      With a grid starting at 0 this cannot happen, since no distance is ``< 0``.

    An alternative would be ``np.unique(far)`` with the first threshold of each FAR value; that
    interpolates from the *first* threshold with FAR ``far_j`` and gives different (smaller)
    thresholds, so it is not used.
    """
    x = np.asarray(far, dtype=np.float64).ravel()
    y = np.asarray(thresholds, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size == 0:
        raise ValueError("far and thresholds must be non-empty and of equal length")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    target = float(far_target)
    m = x.size
    if target < x[0]:
        return float(y[0])
    j = int(np.searchsorted(x, target, side="right")) - 1
    if j >= m - 1:
        first_max = int(np.searchsorted(x, x[-1], side="left"))
        if first_max == 0:
            return float(y[0])
        j = first_max - 1
        if target > x[-1]:
            raise ValueError(f"far_target {target} above the largest FAR {x[-1]}")
    xa, xb = x[j], x[j + 1]
    w = 1.0 / (xb - xa)
    return float(y[j] * (w * (xb - target)) + y[j + 1] * (w * (target - xa)))


def val_at_far(
    dist: ArrayLike,
    issame: ArrayLike,
    far_target: float = 1e-3,
    n_folds: int = 10,
    thresholds: ArrayLike | tuple[float, float, float] | None = None,
) -> ValAtFarResult:
    """VAL (true accept rate) at a target FAR with k-fold threshold selection (insightface ``calculate_val``).

    Per fold ``f`` (same contiguous folds as :func:`kfold_accuracy`):

    * training FAR for every grid threshold: ``FAR(t) = #{not same, d < t} / #{not same}`` on the
      other folds;
    * if ``max_t FAR(t) >= far_target`` the threshold is ``FAR^{-1}(far_target)`` by linear
      interpolation (:func:`threshold_at_far`), otherwise ``0.0`` (nothing is accepted);
    * on the held-out fold: ``VAL = #{same, d < t_f} / #{same}``, ``FAR = #{not same, d < t_f} /
      #{not same}``.

    Returns mean VAL, ``np.std`` (ddof 0) of VAL and mean FAR, plus per-fold values; the result
    unpacks as ``val, val_std, far``.  ``thresholds`` works as in :func:`kfold_accuracy`; the default
    grid is ``np.arange(0, 4, 0.001)``, as in insightface.

    Deviations from the reference (which would crash instead): duplicate FAR values are handled
    as SciPy <= 1.8 did (see :func:`threshold_at_far`); a fold with no genuine (impostor) pairs
    gets VAL (FAR) 0.0 instead of a ``ZeroDivisionError``; training folds with no impostor
    pairs have FAR 0 everywhere, hence threshold 0.

    Source: insightface ``recognition/arcface_torch/eval/verification.py`` (``calculate_val``,
    ``calculate_val_far``).
    """
    d, same = _check_inputs(dist, issame)
    thr, grid = _make_grid(thresholds, VAL_GRID)
    folds = fold_ids(d.size, n_folds)
    _, imp_below, n_gen, n_imp = _fold_counts(d, same, folds, n_folds, thr)
    far_train = _safe_ratio(_train_counts(imp_below, n_folds), _train_counts(n_imp[:, None], n_folds))

    fold_thr = np.zeros(n_folds, dtype=np.float64)
    fold_val = np.zeros(n_folds, dtype=np.float64)
    fold_far = np.zeros(n_folds, dtype=np.float64)
    for f in range(n_folds):  # n_folds iterations; everything inside is vectorised
        if np.max(far_train[f]) >= far_target:
            fold_thr[f] = threshold_at_far(far_train[f], thr, far_target)
        test = folds == f
        accepted = d[test] < fold_thr[f]
        same_f = same[test]
        ta = np.count_nonzero(accepted & same_f)
        fa = np.count_nonzero(accepted & ~same_f)
        fold_val[f] = ta / n_gen[f] if n_gen[f] else 0.0
        fold_far[f] = fa / n_imp[f] if n_imp[f] else 0.0

    return ValAtFarResult(
        val_mean=float(np.mean(fold_val)),
        val_std=float(np.std(fold_val)),
        far_mean=float(np.mean(fold_far)),
        fold_vals=fold_val,
        fold_fars=fold_far,
        fold_thresholds=fold_thr,
        far_target=float(far_target),
        n_folds=n_folds,
        grid=grid,
    )
