"""Tests for faceforge.eval.roc (hand-worked ROC / AUC / EER / TAR@FAR) and faceforge.eval.plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from faceforge.eval.plots import plot_roc, plot_score_histogram
from faceforge.eval.roc import auc, eer, eer_from_roc, roc, summarize_verification, tar_at_far
from tests.eval.plot_checks import assert_drawn_png

# ---------------------------------------------------------------------------------------------
# Main hand example: 4 genuine, 8 impostor similarity scores (accept when score >= threshold).
#
#   sorted:  .9G .8G .7I .6G .5I .4I .35G .3I .2I .15I .1I .05I
#
#   idx  thr   TP FP   TPR   FPR    FNR
#    0   inf   0  0    0     0      1
#    1   .9    1  0    .25   0      .75
#    2   .8    2  0    .5    0      .5
#    3   .7    2  1    .5    .125   .5
#    4   .6    3  1    .75   .125   .25
#    5   .5    3  2    .75   .25    .25   <- FPR = FNR exactly: EER .25 at threshold .5
#    6   .4    3  3    .75   .375   .25
#    7   .35   4  3    1     .375   0
#    8   .3    4  4    1     .5
#    9   .2    4  5    1     .625
#   10   .15   4  6    1     .75
#   11   .1    4  7    1     .875
#   12   .05   4  8    1     1
#
# AUC: genuine-over-impostor wins: .9 beats 8, .8 beats 8, .6 beats 7, .35 beats 5 -> 28/32 = .875
#   (trapezoids: .125*.5 + .25*.75 + .625*1 = .0625 + .1875 + .625 = .875)
# Resolution: 1/8 = .125, so targets below .125 are flagged below_resolution.
#
# TAR@FAR, "nearest" (closest FPR; among equal FPRs the largest TPR; equidistant -> later point):
#   .01    -> FPR 0 (idx 2)            TAR .5   thr .8
#   .0625  -> |0-.0625| = |.125-.0625|: later point, FPR .125 (idx 4)  TAR .75 thr .6
#   .1     -> FPR .125 (idx 4)         TAR .75  thr .6  (achieved FPR .125 > target)
#   .2     -> FPR .25 (|.05| < |.075|) TAR .75  thr .5
#   .36    -> FPR .375, largest TPR (idx 7) TAR 1  thr .35
# TAR@FAR, "conservative" (largest TPR with FPR <= target; smallest FPR among equal TPRs):
#   .01, .0625, .1 -> idx 2: TAR .5 thr .8 FPR 0
#   .2, .36        -> idx 4: TAR .75 thr .6 FPR .125
# ---------------------------------------------------------------------------------------------
GEN = [0.9, 0.8, 0.6, 0.35]
IMP = [0.7, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1, 0.05]


def _example() -> tuple[np.ndarray, np.ndarray]:
    scores = np.array(GEN + IMP)
    labels = np.array([1] * len(GEN) + [0] * len(IMP))
    perm = np.random.default_rng(0).permutation(scores.size)  # order must not matter
    return scores[perm], labels[perm]


def test_roc_points_by_hand() -> None:
    fpr, tpr, thr = roc(*_example())
    np.testing.assert_allclose(fpr * 8, [0, 0, 0, 1, 1, 2, 3, 3, 4, 5, 6, 7, 8])
    np.testing.assert_allclose(tpr * 4, [0, 1, 2, 2, 3, 3, 3, 4, 4, 4, 4, 4, 4])
    assert np.isinf(thr[0])
    np.testing.assert_allclose(thr[1:], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.35, 0.3, 0.2, 0.15, 0.1, 0.05])


def test_auc_by_hand() -> None:
    s, y = _example()
    fpr, tpr, _ = roc(s, y)
    assert auc(fpr, tpr) == pytest.approx(0.875, abs=1e-15)
    assert auc(fpr, tpr) == pytest.approx(roc_auc_score(y, s), abs=1e-15)


def test_eer_exact_crossing() -> None:
    rate, thr = eer(*_example())
    assert rate == pytest.approx(0.25, abs=1e-15)
    assert thr == pytest.approx(0.5, abs=1e-15)


def test_eer_interpolated_on_vertical_segment() -> None:
    # genuine .9 .4 .3, impostor .8 .2; points (FPR, FNR): inf (0,1) .9 (0,2/3) .8 (.5,2/3)
    # .4 (.5,1/3) .3 (.5,0) .2 (1,0).  FNR-FPR: 1, 2/3, 1/6, -1/6 -> crossing halfway between
    # the points at .8 and .4: EER = .5, threshold = .8 + .5 * (.4 - .8) = .6
    rate, thr = eer([0.9, 0.4, 0.3, 0.8, 0.2], [1, 1, 1, 0, 0])
    assert rate == pytest.approx(0.5, abs=1e-12)
    assert thr == pytest.approx(0.6, abs=1e-12)


def test_eer_interpolated_on_diagonal_segment_with_tied_scores() -> None:
    # genuine .9 .5, impostor .5 .5 .1 0; the tie at .5 makes a diagonal step
    # points (FPR, FNR): inf (0,1), .9 (0,.5), .5 (.5,0).  FNR-FPR: 1, .5, -.5 -> a = .5
    # EER = 0 + .5 * .5 = .25 (= FNR .5 + .5 * (0 - .5)), threshold = .9 + .5 * (.5 - .9) = .7
    s = [0.9, 0.5, 0.5, 0.5, 0.1, 0.0]
    y = [1, 1, 0, 0, 0, 0]
    rate, thr = eer(s, y)
    assert rate == pytest.approx(0.25, abs=1e-12)
    assert thr == pytest.approx(0.7, abs=1e-12)
    fpr, tpr, _ = roc(s, y)
    assert auc(fpr, tpr) == pytest.approx(7 / 8, abs=1e-15)  # the tie counts one half


def test_eer_from_roc_by_hand() -> None:
    # ROC of genuine .9 .8 .5, impostor .7 .6: points (FPR, TPR) inf (0,0) .9 (0,1/3) .8 (0,2/3)
    # .7 (1/2,2/3) .6 (1,2/3) .5 (1,1).  FNR-FPR: 1, 2/3, 1/3, -1/6 -> i = 3, a = (1/3)/(1/2) = 2/3:
    # EER = 0 + 2/3 * (1/2 - 0) = 1/3 (= FNR 1/3 + 2/3 * 0), threshold = .8 + 2/3 * (.7 - .8) = .7333...
    fpr = [0, 0, 0, 0.5, 1, 1]
    tpr = [0, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 1]
    thr = [np.inf, 0.9, 0.8, 0.7, 0.6, 0.5]
    rate, t = eer_from_roc(fpr, tpr, thr)
    assert rate == pytest.approx(1 / 3, abs=1e-12) and t == pytest.approx(0.8 - 0.1 * 2 / 3, abs=1e-12)
    assert eer([0.9, 0.8, 0.5, 0.7, 0.6], [1, 1, 1, 0, 0]) == (rate, t)
    # the crossing on the first segment, from the (0, 0) point at +inf: the threshold is the next point's
    # genuine .5, impostor .5: inf (0,0) .5 (1,1); FNR-FPR: 1, -1 -> a = 1/2, EER = 1/2 at .5
    assert eer_from_roc([0, 1], [0, 1], [np.inf, 0.5]) == (0.5, 0.5)
    assert eer([0.5, 0.5], [1, 0]) == (0.5, 0.5)


TARGETS = (0.01, 0.0625, 0.1, 0.2, 0.36)
# target: (tar, achieved far, threshold)
NEAREST = {
    0.01: (0.5, 0.0, 0.8),
    0.0625: (0.75, 0.125, 0.6),
    0.1: (0.75, 0.125, 0.6),
    0.2: (0.75, 0.25, 0.5),
    0.36: (1.0, 0.375, 0.35),
}
CONSERVATIVE = {
    0.01: (0.5, 0.0, 0.8),
    0.0625: (0.5, 0.0, 0.8),
    0.1: (0.5, 0.0, 0.8),
    0.2: (0.75, 0.125, 0.6),
    0.36: (0.75, 0.125, 0.6),
}


@pytest.mark.parametrize(("rule", "expected"), [("nearest", NEAREST), ("conservative", CONSERVATIVE)])
def test_tar_at_far_by_hand(rule: str, expected: dict[float, tuple[float, float, float]]) -> None:
    res = tar_at_far(*_example(), fars=TARGETS, rule=rule)  # type: ignore[arg-type]
    assert list(res) == list(TARGETS)
    for target, (tar, far, thr) in expected.items():
        r = res[target]
        assert r.rule == rule and r.target_far == target
        assert r.tar == pytest.approx(tar, abs=1e-15), target
        assert r.far == pytest.approx(far, abs=1e-15), target
        assert r.threshold == pytest.approx(thr, abs=1e-15), target
        assert r.below_resolution is (target < 0.125)
        assert r.n_impostor == 8
        if rule == "conservative":
            assert r.far <= target


def test_rules_differ_where_expected() -> None:
    s, y = _example()
    near = tar_at_far(s, y, TARGETS, "nearest")
    cons = tar_at_far(s, y, TARGETS, "conservative")
    differ = [t for t in TARGETS if near[t].tar != cons[t].tar]
    assert differ == [0.0625, 0.1, 0.36]
    assert near[0.1].far > 0.1  # nearest may exceed the target


def test_nearest_rule_matches_insightface_ijb_selection() -> None:
    # insightface eval_ijbc.py: roc_curve, flip both arrays, min over (|fpr - x|, index)
    rng = np.random.default_rng(3)
    y = rng.random(3000) < 0.3
    s = np.round(np.where(y, rng.normal(0.6, 0.2, y.size), rng.normal(0.1, 0.2, y.size)), 2)
    fpr, tpr, _ = roc(s, y)
    fpr_f, tpr_f = np.flipud(fpr), np.flipud(tpr)
    fars = (1e-4, 1e-3, 1e-2, 1e-1, 0.3)
    ours = tar_at_far(s, y, fars, "nearest")
    for x in fars:
        _, i = min(zip(np.abs(fpr_f - x), range(len(fpr_f)), strict=True))
        assert ours[x].tar == tpr_f[i]


def test_tar_at_far_unknown_rule() -> None:
    with pytest.raises(ValueError, match="unknown rule"):
        tar_at_far(*_example(), rule="interpolated")  # type: ignore[arg-type]


def test_roc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both genuine and impostor"):
        roc([0.1, 0.2], [1, 1])


def test_summarize_verification_is_json_and_consistent() -> None:
    s, y = _example()
    summary = summarize_verification(s, y, fars=(0.1, 0.2))
    text = json.dumps(summary, allow_nan=False)
    back = json.loads(text)
    assert back["auc"] == pytest.approx(0.875)
    assert back["eer"] == pytest.approx(0.25) and back["eer_threshold"] == pytest.approx(0.5)
    assert back["n_genuine"] == 4 and back["n_impostor"] == 8
    assert set(back["tar_at_far"]) == {"nearest", "conservative"}
    assert back["tar_at_far"]["nearest"]["0.1"]["tar"] == pytest.approx(0.75)
    assert back["tar_at_far"]["conservative"]["0.1"]["tar"] == pytest.approx(0.5)
    assert back["tar_at_far"]["conservative"]["0.2"]["below_resolution"] is False
    for v in (summary["auc"], summary["eer"], summary["eer_threshold"]):
        assert type(v) is float


def test_accept_nothing_threshold_serialises_as_null() -> None:
    # the top score is an impostor: with FPR <= .1 only the "accept nothing" point (+inf) is left
    summary = summarize_verification([0.5, 0.9, 0.1], [1, 0, 0], fars=(0.1,))
    cons = summary["tar_at_far"]["conservative"]["0.1"]
    assert cons["tar"] == 0.0 and cons["threshold"] is None
    json.dumps(summary, allow_nan=False)


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------
def test_plot_roc_writes_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.random(4000) < 0.5
    curves = {}
    for name, gap in (("model A", 1.0), ("model B", 2.0)):
        s = rng.normal(0, 1, y.size) + gap * y
        fpr, tpr, _ = roc(s, y)
        curves[name] = (fpr, tpr)
    out = plot_roc(curves, tmp_path / "sub" / "roc.png", title="test ROC")
    assert out == tmp_path / "sub" / "roc.png"
    assert_drawn_png(out)


def test_plot_score_histogram_writes_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y = rng.random(2000) < 0.4
    s = np.where(y, rng.normal(0.6, 0.15, y.size), rng.normal(0.1, 0.15, y.size))
    out = plot_score_histogram(s, y, tmp_path / "hist.png")
    assert_drawn_png(out)
