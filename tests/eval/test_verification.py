"""Tests for faceforge.eval.verification against hand-worked examples and a literal reference loop.

The ``_ref_*`` functions below restate insightface ``eval/verification.py`` (``calculate_roc``,
``calculate_accuracy``, ``calculate_val``, ``calculate_val_far``): a Python loop over folds and
over every threshold.  They live only here, as the oracle for the vectorised code.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.interpolate import BSpline
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

from faceforge.eval.verification import (
    KFoldResult,
    fold_ids,
    kfold_accuracy,
    l2_normalize,
    squared_l2,
    threshold_at_far,
    val_at_far,
)


# ---------------------------------------------------------------------------------------------
# reference loops (insightface semantics)
# ---------------------------------------------------------------------------------------------
def _ref_splits(n: int, n_folds: int) -> list[tuple[NDArray[np.intp], NDArray[np.intp]]]:
    idx = np.arange(n)
    if n_folds == 1:  # insightface LFold
        return [(idx, idx)]
    return list(KFold(n_splits=n_folds, shuffle=False).split(idx))


def _ref_accuracy(threshold: float, dist: np.ndarray, same: np.ndarray) -> tuple[float, float, float]:
    predict = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict, same))
    fp = np.sum(np.logical_and(predict, np.logical_not(same)))
    tn = np.sum(np.logical_and(np.logical_not(predict), np.logical_not(same)))
    fn = np.sum(np.logical_and(np.logical_not(predict), same))
    tpr = 0 if (tp + fn == 0) else float(tp) / float(tp + fn)
    fpr = 0 if (fp + tn == 0) else float(fp) / float(fp + tn)
    acc = float(tp + tn) / dist.size
    return tpr, fpr, acc


def _ref_roc(thresholds: np.ndarray, dist: np.ndarray, same: np.ndarray, n_folds: int):
    n_thr = len(thresholds)
    tprs = np.zeros((n_folds, n_thr))
    fprs = np.zeros((n_folds, n_thr))
    accuracy = np.zeros(n_folds)
    best = np.zeros(n_folds)
    for f, (train, test) in enumerate(_ref_splits(len(dist), n_folds)):
        acc_train = np.zeros(n_thr)
        for t_idx, t in enumerate(thresholds):
            _, _, acc_train[t_idx] = _ref_accuracy(t, dist[train], same[train])
        b = np.argmax(acc_train)
        for t_idx, t in enumerate(thresholds):
            tprs[f, t_idx], fprs[f, t_idx], _ = _ref_accuracy(t, dist[test], same[test])
        _, _, accuracy[f] = _ref_accuracy(thresholds[b], dist[test], same[test])
        best[f] = thresholds[b]
    return np.mean(tprs, 0), np.mean(fprs, 0), accuracy, best


def _ref_val_far(threshold: float, dist: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    predict = np.less(dist, threshold)
    true_accept = np.sum(np.logical_and(predict, same))
    false_accept = np.sum(np.logical_and(predict, np.logical_not(same)))
    return float(true_accept) / float(np.sum(same)), float(false_accept) / float(np.sum(~same))


def _old_scipy_slinear(x: np.ndarray, y: np.ndarray, x_new: float) -> float:
    """``interp1d(x, y, kind="slinear")(x_new)`` as SciPy <= 1.8 computed it (duplicates allowed).

    interp1d sorted x, then make_interp_spline(k=1) returned ``BSpline`` on the knots
    ``[x0, x, x_last]`` with coefficients y before any duplicate check.
    """
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    assert xs[0] <= x_new <= xs[-1], "interp1d would raise (out of range)"
    return float(BSpline(np.r_[xs[0], xs, xs[-1]], ys, 1)(x_new))


def _ref_val(thresholds: np.ndarray, dist: np.ndarray, same: np.ndarray, target: float, n_folds: int):
    val = np.zeros(n_folds)
    far = np.zeros(n_folds)
    thr = np.zeros(n_folds)
    for f, (train, test) in enumerate(_ref_splits(len(dist), n_folds)):
        far_train = np.zeros(len(thresholds))
        for t_idx, t in enumerate(thresholds):
            _, far_train[t_idx] = _ref_val_far(t, dist[train], same[train])
        threshold = _old_scipy_slinear(far_train, thresholds, target) if np.max(far_train) >= target else 0.0
        val[f], far[f] = _ref_val_far(threshold, dist[test], same[test])
        thr[f] = threshold
    return np.mean(val), np.std(val), np.mean(far), val, far, thr


def _random_pairs(seed: int, n: int, round_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping genuine / impostor distance distributions in [0, 4], shuffled."""
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    d = np.where(same, rng.normal(0.9, 0.35, n), rng.normal(1.7, 0.3, n))
    d = np.clip(d, 0.0, 3.999)
    if round_to is not None:
        d = np.round(d, round_to)  # many ties, and ties with grid values
    return d, same


# ---------------------------------------------------------------------------------------------
# normalisation and distances
# ---------------------------------------------------------------------------------------------
def test_l2_normalize_unit_norm_zero_rows_and_dtype() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    out = l2_normalize(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(l2_normalize(np.array([0, 5])), [0.0, 1.0])


def test_squared_l2_matches_insightface_and_two_minus_two_cos() -> None:
    rng = np.random.default_rng(0)
    e1 = rng.normal(size=(50, 16)).astype(np.float32)
    e2 = rng.normal(size=(50, 16)).astype(np.float32)
    d = squared_l2(e1, e2)
    # insightface: sklearn normalize, then sum of squared differences, in float32
    ref = np.sum(np.square(np.subtract(normalize(e1), normalize(e2))), 1)
    assert d.dtype == np.float32
    np.testing.assert_array_equal(d, ref)
    cos = np.sum(normalize(e1.astype(np.float64)) * normalize(e2.astype(np.float64)), 1)
    np.testing.assert_allclose(d, 2 - 2 * cos, atol=1e-5)
    assert np.all((d >= 0) & (d <= 4 + 1e-6))
    # hand values: orthogonal -> 2, opposite -> 4, identical direction -> 0
    a = np.array([[1.0, 0.0], [1.0, 0.0], [2.0, 2.0]])
    b = np.array([[0.0, 3.0], [-1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(squared_l2(a, b), [2.0, 4.0, 0.0], atol=1e-12)


def test_squared_l2_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        squared_l2(np.zeros((2, 3)), np.zeros((2, 4)))


# ---------------------------------------------------------------------------------------------
# folds
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "k"), [(6000, 10), (613, 10), (7, 3), (10, 10), (5, 2)])
def test_fold_ids_match_sklearn_kfold(n: int, k: int) -> None:
    ids = fold_ids(n, k)
    for f, (_, test) in enumerate(KFold(n_splits=k, shuffle=False).split(np.arange(n))):
        np.testing.assert_array_equal(np.flatnonzero(ids == f), test)


def test_fold_ids_rejects_too_few_pairs() -> None:
    with pytest.raises(ValueError, match="cannot split"):
        fold_ids(3, 10)


# ---------------------------------------------------------------------------------------------
# kfold_accuracy: hand examples
# ---------------------------------------------------------------------------------------------
HAND_GRID = np.array([0.5, 1.0, 1.5, 2.0, 2.5])
# fold 0 = pairs 0-2, fold 1 = pairs 3-5 (KFold(2) on 6 pairs); "same" is predicted when d < t.
#
# Example A. fold 0: (0.4, same) (1.2, diff) (1.8, same); fold 1: (0.9, same) (1.6, diff) (2.2, diff)
#   held-out fold 0, train on fold 1, correct decisions per t = 0.5 1.0 1.5 2.0 2.5: 2 3 3 2 1
#     -> t = 1.0 (first of the tied maxima); on fold 0: 0.4<1 ok, 1.2>=1 ok, 1.8>=1 wrong -> 2/3
#   held-out fold 1, train on fold 0, correct per t: 2 2 1 2 2 -> t = 0.5 (smallest of 4 ties);
#     on fold 1: 0.9>=0.5 wrong, 1.6 ok, 2.2 ok -> 2/3
#   mean 2/3, std 0
# Example B. as A but the first pair of fold 1 is (0.3, same):
#   held-out fold 0, train on fold 1, correct per t: 3 3 3 2 1 -> t = 0.5; on fold 0 -> 2/3
#   held-out fold 1, train on fold 0 (unchanged) -> t = 0.5; on fold 1: 0.3 ok 1.6 ok 2.2 ok -> 1
#   mean 5/6, std = |1 - 2/3| / 2 = 1/6
HAND_SAME = np.array([True, False, True, True, False, False])


@pytest.mark.parametrize(
    ("dist", "accs", "thrs"),
    [
        ([0.4, 1.2, 1.8, 0.9, 1.6, 2.2], [2 / 3, 2 / 3], [1.0, 0.5]),
        ([0.4, 1.2, 1.8, 0.3, 1.6, 2.2], [2 / 3, 1.0], [0.5, 0.5]),
    ],
)
def test_kfold_accuracy_hand_example(dist: list[float], accs: list[float], thrs: list[float]) -> None:
    res = kfold_accuracy(np.array(dist), HAND_SAME, n_folds=2, thresholds=HAND_GRID)
    np.testing.assert_allclose(res.fold_accuracies, accs, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(res.fold_thresholds, thrs)
    assert res.mean == pytest.approx(np.mean(accs), abs=1e-15)
    assert res.std == pytest.approx(np.std(accs), abs=1e-15)
    assert res.n_folds == 2
    assert res.rule == "insightface-10fold"


def test_kfold_hand_example_b_mean_and_std() -> None:
    res = kfold_accuracy(np.array([0.4, 1.2, 1.8, 0.3, 1.6, 2.2]), HAND_SAME, n_folds=2, thresholds=HAND_GRID)
    assert res.mean == pytest.approx(5 / 6, abs=1e-15)
    assert res.std == pytest.approx(1 / 6, abs=1e-15)


def test_kfold_ties_choose_smallest_threshold() -> None:
    # every threshold in (0.2, 0.8] separates the classes perfectly -> the smallest grid value
    # above 0.2, i.e. 0.21, must be chosen in every fold
    dist = np.tile([0.2, 0.8], 10)
    same = np.tile([True, False], 10)
    res = kfold_accuracy(dist, same, n_folds=10)
    np.testing.assert_allclose(res.fold_thresholds, 0.21, atol=1e-12)
    assert res.mean == 1.0 and res.std == 0.0
    # an unsorted grid: ties go to the earliest entry (np.argmax), not the smallest value
    res2 = kfold_accuracy(dist, same, n_folds=10, thresholds=np.array([0.7, 0.5, 0.3, 0.1]))
    np.testing.assert_array_equal(res2.fold_thresholds, 0.7)


def test_kfold_default_grid_and_settings() -> None:
    d, s = _random_pairs(1, 100)
    res = kfold_accuracy(d, s)
    assert res.grid.start == 0.0 and res.grid.stop == 4.0 and res.grid.step == 0.01
    assert res.grid.n == 400
    assert res.tpr.shape == (400,) and res.fpr.shape == (400,)
    rec = res.to_dict()
    assert rec["rule"] == "insightface-10fold" and rec["n_folds"] == 10
    assert rec["thresholds"] == {"start": 0.0, "stop": 4.0, "step": 0.01, "n": 400, "uniform": True}
    explicit = kfold_accuracy(d, s, thresholds=np.arange(0, 4, 0.01))
    assert explicit.grid.start == 0.0 and explicit.grid.step == 0.01 and explicit.grid.stop == 4.0
    np.testing.assert_array_equal(explicit.fold_accuracies, res.fold_accuracies)


def test_kfold_input_validation() -> None:
    with pytest.raises(ValueError, match="labels"):
        kfold_accuracy(np.zeros(10), np.zeros(9, dtype=bool))
    with pytest.raises(ValueError, match="NaN"):
        kfold_accuracy(np.array([0.1, np.nan, 0.3, 0.4]), np.ones(4, dtype=bool), n_folds=2)


# ---------------------------------------------------------------------------------------------
# kfold_accuracy: equivalence with the reference loop
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("seed", "n", "n_folds", "round_to"),
    [(0, 600, 10, None), (1, 613, 10, 2), (2, 457, 7, 2), (3, 300, 10, 1), (4, 120, 1, 2), (5, 61, 3, None)],
)
def test_kfold_equals_reference_loop(seed: int, n: int, n_folds: int, round_to: int | None) -> None:
    d, s = _random_pairs(seed, n, round_to)
    thresholds = np.arange(0, 4, 0.01)
    tpr, fpr, acc, best = _ref_roc(thresholds, d, s, n_folds)
    res = kfold_accuracy(d, s, n_folds=n_folds)
    np.testing.assert_array_equal(res.fold_accuracies, acc)
    np.testing.assert_array_equal(res.fold_thresholds, best)
    assert res.mean == np.mean(acc) and res.std == np.std(acc)
    np.testing.assert_array_equal(res.tpr, tpr)
    np.testing.assert_array_equal(res.fpr, fpr)


def test_kfold_from_float32_embeddings_equals_reference() -> None:
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 40, size=(400, 2))
    ids[:200, 1] = ids[:200, 0]
    centers = rng.normal(size=(40, 8))
    e1 = (centers[ids[:, 0]] + 0.6 * rng.normal(size=(400, 8))).astype(np.float32)
    e2 = (centers[ids[:, 1]] + 0.6 * rng.normal(size=(400, 8))).astype(np.float32)
    same = ids[:, 0] == ids[:, 1]
    perm = rng.permutation(400)
    e1, e2, same = e1[perm], e2[perm], same[perm]
    dist = np.sum(np.square(np.subtract(normalize(e1), normalize(e2))), 1)  # float32 as in insightface
    _, _, acc, best = _ref_roc(np.arange(0, 4, 0.01), dist, same, 10)
    res = kfold_accuracy(squared_l2(e1, e2), same)
    np.testing.assert_array_equal(res.fold_accuracies, acc)
    np.testing.assert_array_equal(res.fold_thresholds, best)


# ---------------------------------------------------------------------------------------------
# val_at_far
# ---------------------------------------------------------------------------------------------
def test_threshold_at_far_hand_values() -> None:
    thr = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    far = np.array([0.0, 0.0, 0.0, 0.004, 0.004, 0.01])
    # target 0.002 lies between far 0 (last at t=0.2) and far 0.004 (first at t=0.3): halfway
    assert threshold_at_far(far, thr, 0.002) == pytest.approx(0.25, abs=1e-15)
    # exact hit on a repeated value -> last threshold with that FAR
    assert threshold_at_far(far, thr, 0.004) == pytest.approx(0.4, abs=1e-15)
    assert threshold_at_far(far, thr, 0.0) == pytest.approx(0.2, abs=1e-15)
    # 0.007 between 0.004 (t=0.4) and 0.01 (t=0.5)
    assert threshold_at_far(far, thr, 0.007) == pytest.approx(0.45, abs=1e-15)
    # the largest FAR, repeated: first threshold reaching it (documented deviation)
    far2 = np.array([0.0, 0.5, 1.0, 1.0])
    assert threshold_at_far(far2, thr[:4], 1.0) == pytest.approx(0.2, abs=1e-15)
    # the same values as SciPy <= 1.8 interp1d(kind="slinear") wherever that was well defined
    for target in (0.0, 0.001, 0.002, 0.004, 0.005, 0.007, 0.01):
        assert threshold_at_far(far, thr, target) == _old_scipy_slinear(far, thr, target)


def test_val_at_far_hand_example() -> None:
    # 2 folds of 4 pairs, grid 0.0 0.5 1.0 1.5 2.0 2.5, target FAR 0.5
    # fold 0: (0.3 same) (0.6 diff) (1.2 same) (1.8 diff)
    # fold 1: (0.4 same) (0.9 diff) (1.6 diff) (2.2 same)
    # held-out fold 0 (train fold 1, impostors 0.9 and 1.6): FAR per t = 0 0 .5 .5 1 1
    #   0.5 is hit exactly and repeated: last threshold with FAR 0.5 -> t = 1.5
    #   fold 0 at 1.5: genuine 0.3, 1.2 accepted -> VAL 1; impostor 0.6 accepted, 1.8 not -> FAR .5
    # held-out fold 1 (train fold 0, impostors 0.6 and 1.8): FAR per t = 0 0 .5 .5 1 1 -> t = 1.5
    #   fold 1 at 1.5: genuine 0.4 accepted, 2.2 not -> VAL .5; impostor 0.9 accepted, 1.6 not -> FAR .5
    # VAL mean .75, std .25; FAR mean .5
    dist = np.array([0.3, 0.6, 1.2, 1.8, 0.4, 0.9, 1.6, 2.2])
    same = np.array([True, False, True, False, True, False, False, True])
    grid = np.arange(0.0, 3.0, 0.5)
    res = val_at_far(dist, same, far_target=0.5, n_folds=2, thresholds=grid)
    np.testing.assert_allclose(res.fold_thresholds, [1.5, 1.5], atol=1e-15)
    np.testing.assert_allclose(res.fold_vals, [1.0, 0.5])
    np.testing.assert_allclose(res.fold_fars, [0.5, 0.5])
    val, val_std, far = res
    assert val == pytest.approx(0.75) and val_std == pytest.approx(0.25) and far == pytest.approx(0.5)
    # grid whose training FAR never reaches the target -> threshold 0.0, nothing accepted
    none = val_at_far(dist, same, far_target=0.5, n_folds=2, thresholds=np.array([0.0, 0.1]))
    np.testing.assert_array_equal(none.fold_thresholds, [0.0, 0.0])
    assert tuple(none) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("seed", "n", "target", "grid_step", "round_to"),
    [
        (0, 3000, 1e-3, 0.001, None),
        (1, 2000, 1e-3, 0.01, 2),
        (2, 1500, 1e-2, 0.01, None),
        (3, 800, 0.1, 0.01, 2),
    ],
)
def test_val_at_far_equals_reference_loop(
    seed: int, n: int, target: float, grid_step: float, round_to: int | None
) -> None:
    d, s = _random_pairs(seed, n, round_to)
    thresholds = np.arange(0, 4, grid_step)
    val, val_std, far, vals, fars, thrs = _ref_val(thresholds, d, s, target, 10)
    res = val_at_far(d, s, far_target=target, n_folds=10, thresholds=(0.0, 4.0, grid_step))
    np.testing.assert_array_equal(res.fold_thresholds, thrs)
    np.testing.assert_array_equal(res.fold_vals, vals)
    np.testing.assert_array_equal(res.fold_fars, fars)
    assert (res.val_mean, res.val_std, res.far_mean) == (val, val_std, far)
    assert res.to_dict()["far_target"] == target


def test_val_at_far_default_grid() -> None:
    d, s = _random_pairs(9, 500)
    res = val_at_far(d, s)
    assert res.grid.n == 4000 and res.grid.step == 0.001
    assert res.rule == "insightface-calculate_val"
    assert 0.0 <= res.val_mean <= 1.0


def test_results_are_frozen() -> None:
    res = kfold_accuracy(*_random_pairs(0, 50))
    assert isinstance(res, KFoldResult)
    with pytest.raises(AttributeError):
        res.mean = 0.0  # type: ignore[misc]
