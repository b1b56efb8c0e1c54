"""Tests for faceforge.eval.allpairs: hand-worked 3 x 2 example, exact vs histogram agreement."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from faceforge.eval.allpairs import (
    ScoreHistogram,
    allpairs_scores,
    allpairs_verification,
    iter_pair_scores,
    threshold_at_rate,
)
from faceforge.eval.roc import eer, tar_at_far

# ---------------------------------------------------------------------------------------------
# Hand example: 3 identities x 2 images, unit vectors in R^6 (e_k = k-th unit vector).
#   a1 = e1            a2 = .8 e1 + .6 e2
#   b1 = e3            b2 = .6 e3 + .8 e4
#   c1 = .6 e5 + .8 e2 c2 = .28 e5 + .96 e6      (|c1| = |c2| = 1)
# genuine:  a1.a2 = .8   b1.b2 = .6   c1.c2 = .6 * .28 = .168
# impostor: a2.c1 = .6 * .8 = .48, every other one of the 12 impostor pairs is 0.
#
# ROC (accept s >= t):   t     TP FP  TPR  FPR
#                        inf   0  0   0    0
#                        .8    1  0   1/3  0
#                        .6    2  0   2/3  0
#                        .48   2  1   2/3  1/12
#                        .168  3  1   1    1/12
#                        0     3  12  1    1
# AUC = (12 + 12 + 11) / 36 = 35/36.
# EER: FNR-FPR = 1/4 at t=.48 and -1/12 at t=.168, a = (1/4)/(1/3) = 3/4,
#      EER = 1/12 + 0 = 1/12, threshold = .48 + 3/4 (.168 - .48) = .246.
# TAR@FAR .05: conservative -> FPR 0 allowed only: TAR 2/3 (t=.6);
#              nearest -> |1/12 - .05| < .05, FPR 1/12 at t=.48 and .168, largest TPR: TAR 1 (t=.168).
# TAR@FAR .1:  both rules -> TAR 1, FAR 1/12, t=.168.
# ---------------------------------------------------------------------------------------------
E = np.eye(6)
HAND_X = np.stack(
    [
        E[0],
        0.8 * E[0] + 0.6 * E[1],
        E[2],
        0.6 * E[2] + 0.8 * E[3],
        0.6 * E[4] + 0.8 * E[1],
        0.28 * E[4] + 0.96 * E[5],
    ]
)
HAND_Y = np.array(["a", "a", "b", "b", "c", "c"])


def test_hand_scores():
    s, same = allpairs_scores(HAND_X, HAND_Y)
    assert s.size == 15 and same.sum() == 3
    np.testing.assert_allclose(np.sort(s[same]), [0.168, 0.6, 0.8], atol=1e-12)
    imp = np.sort(s[~same])
    np.testing.assert_allclose(imp[-1], 0.48, atol=1e-12)
    np.testing.assert_allclose(imp[:-1], 0.0, atol=1e-12)


@pytest.mark.parametrize("mode", ["exact", "histogram"])
def test_hand_summary(mode):
    r = allpairs_verification(HAND_X, HAND_Y, fars=(0.05, 0.1), mode=mode, n_bins=2**16)
    w = 2 / 2**16
    assert r["mode"] == mode and r["n_genuine"] == 3 and r["n_impostor"] == 12
    assert r["n_images"] == 6 and r["n_identities"] == 3
    assert r["auc"] == pytest.approx(35 / 36)
    assert r["eer"] == pytest.approx(1 / 12)
    assert r["eer_threshold"] == pytest.approx(0.246, abs=w)
    cons, near = r["tar_at_far"]["conservative"], r["tar_at_far"]["nearest"]
    assert cons["0.05"]["tar"] == pytest.approx(2 / 3) and cons["0.05"]["far"] == 0
    assert cons["0.05"]["threshold"] == pytest.approx(0.6, abs=w)
    assert near["0.05"]["tar"] == 1 and near["0.05"]["far"] == pytest.approx(1 / 12)
    assert near["0.05"]["threshold"] == pytest.approx(0.168, abs=w)
    for rule in (cons, near):
        assert rule["0.1"]["tar"] == 1 and rule["0.1"]["far"] == pytest.approx(1 / 12)
    if mode == "histogram":
        assert r["histogram"]["bin_width"] == w
        # thresholds are lower bin edges: never above the exact score, less than one bin below
        assert 0.6 - w < cons["0.05"]["threshold"] <= 0.6
    json.dumps(r, allow_nan=False)


def test_threshold_at_rate():
    neg = [0.9, 0.5, 0.5, 0.1, 0.0]
    thr, rate = threshold_at_rate(neg, 0.2)  # k = 1: accept > .5 -> only .9
    assert 0.5 < thr < 0.5 + 1e-12 and rate == pytest.approx(0.2)
    thr, rate = threshold_at_rate(neg, 0.4)  # k = 2: u_3 = .5 tied with u_2 -> still only .9
    assert 0.5 < thr < 0.5 + 1e-12 and rate == pytest.approx(0.2)
    thr, rate = threshold_at_rate(neg, 0.0)  # nothing accepted
    assert thr > 0.9 and rate == 0.0
    thr, rate = threshold_at_rate(neg, 1.0)
    assert thr == -math.inf and rate == 1.0
    # float robustness: .29 * 100 = 28.999... must allow 29
    _, rate = threshold_at_rate(np.arange(100.0), 0.29)
    assert rate == pytest.approx(0.29)


def _clustered(n_ids: int, per_id: int, dim: int, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_ids, dim))
    x = np.repeat(centers, per_id, axis=0) + noise * rng.standard_normal((n_ids * per_id, dim))
    return x.astype(np.float32), np.repeat(np.arange(n_ids), per_id)


def test_histogram_agrees_with_exact_on_random_data():
    x, y = _clustered(60, 5, 32, 1.1, seed=1)  # 300 images, 44,850 pairs
    fars = (1e-4, 1e-3, 1e-2, 1e-1)
    ex = allpairs_verification(x, y, fars, mode="exact")
    hi = allpairs_verification(x, y, fars, mode="histogram", n_bins=2**16, block_elems=5000)
    w = 2 / 2**16
    assert ex["n_genuine"] == hi["n_genuine"] == 60 * 10
    assert ex["n_impostor"] == hi["n_impostor"] == 300 * 299 // 2 - 600
    assert abs(ex["auc"] - hi["auc"]) < 1e-3
    assert abs(ex["eer"] - hi["eer"]) < 1e-3
    assert abs(ex["eer_threshold"] - hi["eer_threshold"]) <= w
    for rule in ("nearest", "conservative"):
        for f in fars:
            a, b = ex["tar_at_far"][rule][f"{f:g}"], hi["tar_at_far"][rule][f"{f:g}"]
            assert abs(a["tar"] - b["tar"]) <= 1e-3, (rule, f, a, b)
            assert abs(a["threshold"] - b["threshold"]) <= w, (rule, f, a, b)


def test_blocks_cover_every_pair_once():
    x, y = _clustered(7, 3, 8, 0.5, seed=2)
    full = np.concatenate([s for s, _ in iter_pair_scores(x, y, block_elems=10)])
    ref = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
    np.testing.assert_allclose(np.sort(full), np.sort(ref[np.triu_indices(21, 1)]), atol=1e-6)


def test_histogram_roc_equals_roc_of_rounded_scores():
    rng = np.random.default_rng(3)
    s = rng.uniform(-1, 1, 500)
    same = rng.random(500) < 0.3
    h = ScoreHistogram(n_bins=64)
    h.add(s, same)
    rounded = h.edges[h.bin_index(s)]
    for rule in ("nearest", "conservative"):
        a = h.tar_at_far((0.01, 0.1, 0.3), rule)
        b = tar_at_far(rounded, same, (0.01, 0.1, 0.3), rule)
        for f in a:
            assert a[f].tar == b[f].tar and a[f].far == b[f].far
            assert a[f].threshold == pytest.approx(b[f].threshold)
    # one EER rule: the histogram EER is the EER of the rounded scores
    rate, thr = h.eer()
    ref_rate, ref_thr = eer(rounded, same)
    assert rate == pytest.approx(ref_rate, abs=1e-12) and thr == pytest.approx(ref_thr, abs=1e-12)


def test_impostor_sampling_is_seeded():
    x, y = _clustered(20, 4, 16, 0.8, seed=4)
    r1 = allpairs_verification(x, y, mode="histogram", impostor_sample=2000, seed=7)
    r2 = allpairs_verification(x, y, mode="histogram", impostor_sample=2000, seed=7)
    assert r1 == r2
    assert r1["n_impostor"] == 2000 and r1["n_genuine"] == 20 * 6
    assert r1["impostor_sampling"] == {"n": 2000, "seed": 7, "with_replacement": True}
    s7, same = allpairs_scores(x, y, impostor_sample=2000, seed=7)
    assert same.sum() == 120 and (~same).sum() == 2000
    # the same seed draws the same impostor pairs; another seed other ones (the genuine pairs are all kept)
    s7b, same_b = allpairs_scores(x, y, impostor_sample=2000, seed=7)
    np.testing.assert_array_equal(s7b, s7)
    np.testing.assert_array_equal(same_b, same)
    s8, same8 = allpairs_scores(x, y, impostor_sample=2000, seed=8)
    np.testing.assert_array_equal(np.sort(s8[same8]), np.sort(s7[same]))
    imp7, imp8 = s7[~same], s8[~same8]
    assert len(imp8) == 2000 and not np.array_equal(np.sort(imp7), np.sort(imp8))
    r8 = allpairs_verification(x, y, mode="histogram", impostor_sample=2000, seed=8)
    assert r8["impostor_sampling"]["seed"] == 8 and r8 != r1
