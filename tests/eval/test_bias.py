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


# ---------------------------------------------------------------------------------------------
# (c) spread with a floor for groups without a false match
#   a: .01 of 1000, b: .001 of 1000, c: 0 of 500 -> floored .002
#   ratio .01 / .001 = 10; log10: -2, -3, log10(.002) = -2.69897; std (ddof 0) by hand below
# ---------------------------------------------------------------------------------------------
def test_fmr_spread_floors_zero_groups() -> None:
    from faceforge.eval.bias import fmr_spread

    r = fmr_spread({"a": 0.01, "b": 0.001, "c": 0.0}, {"a": 1000, "b": 1000, "c": 500})
    logs = np.array([-2.0, -3.0, np.log10(0.002)])
    assert r["fmr_ratio_floored"] == pytest.approx(10.0)
    assert r["log10_fmr_std"] == pytest.approx(np.sqrt(np.mean((logs - logs.mean()) ** 2)))
    assert r["groups_at_floor"] == ["c"] and "1/n_impostor" in r["floor_rule"]
    # a group with too few pairs for the target would decide the spread by its floor alone: left out
    r = fmr_spread({"a": 0.01, "b": 0.001, "c": 0.0}, {"a": 1000, "b": 1000, "c": 500}, min_pairs=600)
    assert r["groups_too_few_pairs"] == ["c"] and r["groups_at_floor"] == []
    assert r["fmr_ratio_floored"] == pytest.approx(10.0) and r["log10_fmr_std"] == pytest.approx(0.5)


def test_min_pairs_for_target() -> None:
    from faceforge.eval.bias import min_pairs_for

    assert (min_pairs_for(1e-3), min_pairs_for(1e-4), min_pairs_for(0.6), min_pairs_for(0.05)) == (
        1000,
        10000,
        2,
        20,
    )


# ---------------------------------------------------------------------------------------------
# (d) group pairs report.  20 pairs per group, alternating genuine / impostor:
#   A: genuine cos .8 (d .4), impostors cos .1, the last one .3 -> separable: accuracy 1.0, AUC 1, EER 0
#   B: every pair cos .6 -> accuracy .5, AUC .5, EER .5
#   mean accuracy .75, std .25
#   pooled impostors (20): .6 x10 (B), .3, .1 x9 (A)
#   target .6: 12 false matches allowed -> accept > .1: FMR A 1/10, B 1; FNMR 0, 0 -> FMR ratio 10 (B),
#     log10 spread std(-1, 0) = .5
#   target .05: 1 allowed -> accept > .6: FMR A 0, B 0; FNMR A 0, B 1; 10 impostor pairs per group are
#     fewer than 1/.05 = 20, so neither group enters the floored ratio / spread
# ---------------------------------------------------------------------------------------------
def test_group_pairs_report_hand() -> None:
    from faceforge.eval.bias import group_pairs_report, group_pairs_table

    same = np.tile([True, False], 10)
    cos_a = np.where(same, 0.8, 0.1)
    cos_a[-1] = 0.3
    cos = np.r_[cos_a, np.full(20, 0.6)]
    groups = np.repeat(["A", "B"], 20)
    r = group_pairs_report(cos, np.r_[same, same], groups, fmrs=(0.6, 0.05))
    acc = r["accuracy"]
    assert acc["groups"]["A"]["accuracy_mean"] == 1.0 and acc["groups"]["B"]["accuracy_mean"] == 0.5
    assert acc["mean"] == pytest.approx(0.75) and acc["std"] == pytest.approx(0.25)
    hi = r["at_fmr"]["0.6"]
    assert 0.1 < hi["threshold"] < 0.1 + 1e-12 and hi["false_matches"] == 11
    assert hi["groups"]["A"]["fmr"] == pytest.approx(0.1) and hi["groups"]["B"]["fmr"] == 1.0
    assert hi["groups"]["A"]["fnmr"] == 0.0 and hi["groups"]["B"]["fnmr"] == 0.0
    assert (
        hi["fmr_ratio"] == pytest.approx(10.0) and hi["fmr_worst_group"] == "B" and hi["fnmr_ratio"] is None
    )
    lo = r["at_fmr"]["0.05"]
    assert 0.6 < lo["threshold"] < 0.6 + 1e-12
    assert lo["groups"]["A"]["fmr"] == 0.0 and lo["groups"]["B"]["fmr"] == 0.0 and lo["fmr_ratio"] is None
    assert (
        lo["fmr_spread"]["groups_too_few_pairs"] == ["A", "B"] and lo["fmr_spread"]["log10_fmr_std"] is None
    )
    assert hi["fmr_spread"]["fmr_ratio_floored"] == pytest.approx(10.0)
    assert hi["fmr_spread"]["log10_fmr_std"] == pytest.approx(0.5)
    assert lo["groups"]["B"]["fnmr"] == 1.0 and lo["fnmr_worst_group"] == "B"
    assert r["roc"]["A"]["auc"] == 1.0 and r["roc"]["A"]["eer"] == 0.0
    assert r["roc"]["B"]["auc"] == pytest.approx(0.5) and r["roc"]["B"]["eer"] == pytest.approx(0.5)
    assert r["roc"]["B"]["n_genuine"] == 10 and r["accuracy_pairs"] == 40
    t = group_pairs_table(r)
    assert t["columns"][:4] == ["group", "genuine pairs", "impostor pairs", "accuracy"]
    assert t["rows"][0][:4] == ["A", 10, 10, 1.0] and t["rows"][1][0] == "B"
    assert t["rows"][2][3] == pytest.approx(0.25) and t["rows"][2][6] == pytest.approx(10.0)
    json.dumps(r, allow_nan=False)
    # the accuracy can be restricted to (and ordered by) given pairs; the differentials still use all
    sub = group_pairs_report(cos, np.r_[same, same], groups, fmrs=(0.6,), accuracy_index=np.arange(20))
    assert list(sub["accuracy"]["groups"]) == ["A"] and sub["at_fmr"]["0.6"]["groups"]["B"]["fmr"] == 1.0


def test_identity_group_pairs_and_balanced_subset() -> None:
    from faceforge.eval.bias import balanced_interleaved, identity_group_pairs

    ids = np.array(["p", "p", "q", "q", "r"])
    groups = np.array(["x", "x", "x", "x", "y"])
    i, j, same, g = identity_group_pairs(ids, groups)
    got = sorted(zip(i.tolist(), j.tolist(), same.tolist(), g.tolist(), strict=True))
    assert got == [
        (0, 1, True, "x"),
        (0, 2, False, "x"),
        (0, 3, False, "x"),
        (1, 2, False, "x"),
        (1, 3, False, "x"),
        (2, 3, True, "x"),
    ]
    i, j, same, g = identity_group_pairs(
        np.repeat(["a", "b", "c"], 5), np.zeros(15), max_genuine_per_group=4, max_impostor_per_group=7
    )
    assert int(same.sum()) == 4 and int((~same).sum()) == 7 and bool((i < j).all())
    ids15 = np.repeat(["a", "b", "c"], 5)
    assert bool((ids15[i] == ids15[j])[same].all()) and bool((ids15[i] != ids15[j])[~same].all())
    idx = balanced_interleaved(np.array([True, True, True, False, False, True]), np.array(list("xxxxxy")))
    assert len(idx) == 4 and [bool(v) for v in np.array([1, 1, 1, 0, 0, 1], bool)[idx]] == [True, False] * 2
