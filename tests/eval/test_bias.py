"""Tests for faceforge.eval.bias on hand examples with two groups."""

from __future__ import annotations

import json

import numpy as np
import pytest

from faceforge.eval.bias import differential_performance, per_group_kfold_accuracy


# ---------------------------------------------------------------------------------------------
# (a) RFW-style accuracy.
#   group "A": 20 pairs alternating genuine (d = 1.5, i.e. cos .25) / impostor (d = 3.0):
#       separable only by a threshold in (1.5, 3.0] -> accuracy 1.0 in every fold.
#       (TFace's grid arange(-1, 1, .001) stops below 1 and would predict "different" for all:
#       accuracy .5.  This is the regression test for not copying that grid.)
#   group "B": 20 pairs alternating genuine / impostor, all at d = 1.0: every threshold gives
#       all-same or all-different -> each fold (1 genuine + 1 impostor) has accuracy .5.
#   mean over groups .75, std (ddof 0) .25.
# ---------------------------------------------------------------------------------------------
def test_per_group_kfold_accuracy_hand():
    same = np.tile([True, False], 10)
    dist = np.r_[np.where(same, 1.5, 3.0), np.full(20, 1.0)]
    groups = np.repeat(["A", "B"], 20)
    r = per_group_kfold_accuracy(dist, np.r_[same, same], groups)
    assert r["groups"]["A"]["accuracy_mean"] == 1.0
    assert all(1.5 < t <= 3.0 for t in r["groups"]["A"]["fold_thresholds"])
    assert r["groups"]["B"]["accuracy_mean"] == 0.5
    assert r["mean"] == pytest.approx(0.75) and r["std"] == pytest.approx(0.25)
    assert r["thresholds"] == {"start": 0.0, "stop": 4.0, "step": 0.01}
    assert r["groups"]["A"]["thresholds"]["n"] == 400
    json.dumps(r, allow_nan=False)


# ---------------------------------------------------------------------------------------------
# (b) One global threshold.
#   X: genuine .9 .7 .3      impostor .6 .2 .1
#   Y: genuine .8 .25        impostor .3 .45 0 .1 .05
#   pooled impostors (8): .6 .45 .3 .2 .1 .1 .05 0; target FMR .25 -> k = 2 -> accept > .3
#   X: FMR 1/3 (.6), FNMR 1/3 (.3)      Y: FMR 1/5 (.45), FNMR 1/2 (.25)
#   overall FMR 2/8, FNMR 2/5; FMR ratio (1/3)/(1/5) = 5/3 (worst X), FNMR ratio (1/2)/(1/3) = 1.5
# ---------------------------------------------------------------------------------------------
def test_differential_performance_hand():
    scores = np.array([0.9, 0.7, 0.3, 0.6, 0.2, 0.1, 0.8, 0.25, 0.3, 0.45, 0.0, 0.1, 0.05])
    same = np.array([1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    groups = np.array(["X"] * 6 + ["Y"] * 7)
    r = differential_performance(scores, same, groups, target_fmr=0.25)
    assert 0.3 < r["threshold"] < 0.3 + 1e-12
    assert r["overall"] == pytest.approx({"fmr": 0.25, "fnmr": 0.4})
    assert r["groups"]["X"]["fmr"] == pytest.approx(1 / 3) and r["groups"]["X"]["fnmr"] == pytest.approx(
        1 / 3
    )
    assert r["groups"]["Y"]["fmr"] == pytest.approx(0.2) and r["groups"]["Y"]["fnmr"] == pytest.approx(0.5)
    assert r["fmr_ratio"] == pytest.approx(5 / 3) and r["fmr_worst_group"] == "X"
    assert r["fnmr_ratio"] == pytest.approx(1.5) and r["fnmr_worst_group"] == "Y"
    assert r["groups"]["Y"]["n_impostor"] == 5
    json.dumps(r, allow_nan=False)


def test_zero_error_group_gives_no_ratio():
    scores = np.array([0.9, 0.1, 0.8, 0.7])
    same = np.array([1, 0, 1, 0], dtype=bool)
    r = differential_performance(scores, same, ["a", "a", "b", "b"], target_fmr=0.5)
    # threshold > .1: group a FMR 0, group b FMR 1 -> ratio undefined
    assert r["groups"]["a"]["fmr"] == 0.0 and r["groups"]["b"]["fmr"] == 1.0
    assert r["fmr_ratio"] is None


def test_impostor_differential_by_hand() -> None:
    from faceforge.eval.bias import impostor_differential

    # 10 impostor scores; target FMR 0.2 allows 2 false matches: threshold just above the 3rd highest (0.8)
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.85, 0.1, 0.2, 0.3, 0.4]
    groups = ["a"] * 5 + ["b"] * 5
    r = impostor_differential(scores, groups, target_fmr=0.2)
    assert r["threshold"] == np.nextafter(0.8, np.inf)
    # accepted: 0.9 (a) and 0.85 (b): FMR_a = 1/5, FMR_b = 1/5
    assert r["groups"]["a"]["fmr"] == pytest.approx(0.2) and r["groups"]["b"]["fmr"] == pytest.approx(0.2)
    assert r["overall_fmr"] == pytest.approx(0.2) and r["fmr_ratio"] == pytest.approx(1.0)
    r = impostor_differential([0.9, 0.8, 0.7, 0.1, 0.2, 0.3], ["a"] * 3 + ["b"] * 3, target_fmr=1 / 3)
    assert r["groups"]["a"]["fmr"] == pytest.approx(2 / 3) and r["groups"]["b"]["fmr"] == 0.0
    assert r["fmr_ratio"] is None and r["worst_group"] == "a" and r["best_group"] == "b"


def test_within_group_pairs_and_utkface_labellers() -> None:
    from faceforge.data.attributes import GROUP_LABELLERS
    from faceforge.eval.bias import within_group_impostor_pairs

    i, j, g = within_group_impostor_pairs(np.array(["x", "y", "x", "x", "y"]))
    pairs = sorted(zip(i.tolist(), j.tolist(), g.tolist(), strict=True))
    assert pairs == [(0, 2, "x"), (0, 3, "x"), (1, 4, "y"), (2, 3, "x")]
    i, j, g = within_group_impostor_pairs(np.array(["x"] * 100), max_pairs_per_group=50, seed=3)
    assert len(i) == 50 and bool((i < j).all())
    name = "34_1_2_20170116174525125.jpg.chip.jpg"
    assert GROUP_LABELLERS.get("utkface-gender")(name) == "female"
    assert GROUP_LABELLERS.get("utkface-race")(name) == "Asian"
    assert GROUP_LABELLERS.get("utkface-age")(name) == "20-39"
    assert GROUP_LABELLERS.get("utkface-race")("not_a_utkface_name.jpg") is None


def test_bias_spec_names_the_labellers() -> None:
    from faceforge.eval.benchmarks import BenchmarkSpecError, parse_benchmark_spec

    s = parse_benchmark_spec("bias:data/utk:aligned:utkface-race")
    assert (s.kind, s.paths, s.name) == ("bias", ("data/utk:aligned", "utkface-race"), "bias:utkface-race")
    with pytest.raises(BenchmarkSpecError, match="utkface-gender"):
        parse_benchmark_spec("bias:data/utk:eyes")
