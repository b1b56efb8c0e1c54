"""Tests for faceforge.eval.age on tiny hand-built examples."""

from __future__ import annotations

import json

import numpy as np
import pytest

from faceforge.eval.age import (
    age_gap_verification,
    cacd_vs_accuracy,
    fgnet_leave_one_out,
    parse_fgnet_name,
)
from faceforge.eval.kinds.age import read_pairs_list
from faceforge.eval.verification import kfold_accuracy, squared_l2


# ---------------------------------------------------------------------------------------------
# Age gap, 2 folds of 4 pairs (d = squared L2, accept d < t; grid arange(0, 4, .01)):
#   pair  d    kind  gap   fold
#   0     .5   G     2     0
#   1     3.0  I     3     0
#   2     1.0  G     12    0
#   3     2.5  I     30    0
#   4     .6   G     1     1
#   5     3.2  I     7     1
#   6     2.8  G     15    1
#   7     1.2  I     25    1
# fold 0 threshold, trained on fold 1: 3 correct for t in (.6, 1.2] and (2.8, 3.2]; first -> .61
#   fold 0 decisions: .5 acc (ok), 3.0 rej (ok), 1.0 rej (miss), 2.5 rej (ok) -> 3/4
# fold 1 threshold, trained on fold 0: 4 correct for t in (1.0, 2.5]; first -> 1.01
#   fold 1 decisions: .6 acc (ok), 3.2 rej (ok), 2.8 rej (miss), 1.2 rej (ok) -> 3/4
# bands [0,5): pairs 0,1,4 -> TAR 1, FAR 0, acc 1, AUC 1
#       [5,10): pair 5 -> FAR 0, TAR None, AUC None
#       [10,20): pairs 2, 6 -> TAR 0, acc 0
#       [20,inf): pairs 3, 7 -> FAR 0, acc 1
# ---------------------------------------------------------------------------------------------
def test_age_gap_hand():
    d = np.array([0.5, 3.0, 1.0, 2.5, 0.6, 3.2, 2.8, 1.2])
    same = np.array([1, 0, 1, 0, 1, 0, 1, 0], dtype=bool)
    age_a = np.array([20, 20, 20, 20, 40, 40, 40, 40])
    age_b = age_a + np.array([2, -3, 12, 30, 1, 7, -15, 25])
    r = age_gap_verification(d, same, age_a, age_b, n_folds=2)
    assert r["overall"]["fold_thresholds"] == pytest.approx([0.61, 1.01])
    assert r["overall"]["accuracy_mean"] == pytest.approx(0.75)
    b = r["bands"]
    assert [x["lo"] for x in b] == [0, 5, 10, 20] and b[-1]["hi"] is None
    assert (b[0]["tar"], b[0]["far"], b[0]["accuracy"], b[0]["auc"]) == (1.0, 0.0, 1.0, 1.0)
    assert (b[1]["tar"], b[1]["far"], b[1]["auc"]) == (None, 0.0, None)
    assert (b[2]["tar"], b[2]["far"], b[2]["accuracy"]) == (0.0, None, 0.0)
    assert (b[3]["far"], b[3]["accuracy"], b[3]["n_impostor"]) == (0.0, 1.0, 2)
    assert r["edges"][-1] is None
    json.dumps(r, allow_nan=False)


# ---------------------------------------------------------------------------------------------
# FG-NET leave-one-out:
#   001A02 (1,0)   001A10 (.8,.6)   002A05 (0,1)   002A30a (.6,.8)   003A01 (.7071,.7071)
#   001A02: mate .8  > best other .7071 (003)        correct
#   001A10: mate .8  < 002A30a .96                   wrong
#   002A05: mate .8  > .7071                          correct
#   002A30a: mate .8 < 001A10 .96                     wrong
#   003A01: no mate -> excluded.   rank-1 = 2/4; by age [0,10): 2/2, [10,100): 0/2
# ---------------------------------------------------------------------------------------------
def test_fgnet_hand():
    assert parse_fgnet_name("data/001A02.JPG") == ("001", 2)
    assert parse_fgnet_name("010A07a.jpg") == ("010", 7)
    with pytest.raises(ValueError):
        parse_fgnet_name("foo.jpg")
    names = ["001A02.JPG", "001A10.JPG", "002A05.JPG", "002A30a.JPG", "003A01.JPG"]
    h = 0.5**0.5
    x = np.array([[1, 0], [0.8, 0.6], [0, 1], [0.6, 0.8], [h, h]])
    r = fgnet_leave_one_out(x, names, age_edges=(0, 10, 100), chunk=2)
    assert r["rank1"] == 0.5 and r["n_probes"] == 4 and r["n_excluded"] == 1 and r["n_subjects"] == 3
    assert [a["rank1"] for a in r["age_bands"]] == [1.0, 0.0]
    json.dumps(r, allow_nan=False)


def test_cacd_vs_pairs_list(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"p{i // 2}_{i % 2}.jpg" for i in range(40)]
    centers = rng.standard_normal((20, 8))
    x = np.repeat(centers, 2, axis=0) + 0.3 * rng.standard_normal((40, 8))
    lines, pairs = [], []
    for i in range(20):
        same = i % 2 == 0
        a, b = names[2 * i], names[2 * i + 1] if same else names[(2 * i + 2) % 40]
        lines.append(f"{a} {b} {int(same)}\n")
        pairs.append((a, b, same))
    path = tmp_path / "pairs.txt"
    path.write_text("".join(lines))
    assert read_pairs_list(path) == pairs
    r = cacd_vs_accuracy(x, names, read_pairs_list(path))
    idx = {n: i for i, n in enumerate(names)}
    ref = kfold_accuracy(
        squared_l2(x[[idx[p[0]] for p in pairs]], x[[idx[p[1]] for p in pairs]]), [p[2] for p in pairs]
    )
    assert r["accuracy_mean"] == ref.mean and r["n_pairs"] == 20 and r["n_genuine"] == 10
    json.dumps(r, allow_nan=False)
