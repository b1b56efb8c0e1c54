"""Tests for faceforge.eval.quality: ERC worked out by hand in both threshold modes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from faceforge.eval.quality import DEFAULT_REJECT_FRACTIONS, erc, pair_quality

# ---------------------------------------------------------------------------------------------
# 10 pairs, FMR target .2, reject fractions 0, .1, .2, .3.
#   pair  score  quality  kind
#   G1    .9     .9       genuine
#   G2    .8     .8       genuine
#   G3    .4     .1       genuine
#   G4    .3     .2       genuine
#   G5    .55    .7       genuine
#   I1    .6     .5       impostor
#   I2    .4     .6       impostor
#   I3    .2     .15      impostor
#   I4    .1     .4       impostor
#   I5    .35    .95      impostor
# rejection order (quality ascending): G3 (.1), I3 (.15), G4 (.2), ...
#
# all impostors .6 .4 .35 .2 .1: FMR .2 allows k = 1 -> accept score > .4
#   phi 0:  FN = G3 (.4), G4 (.3)           -> 2/5 = .4       (both modes)
#   phi .1: drop G3; FN = G4                -> 1/4 = .25      (both modes: impostors unchanged)
#   phi .2: drop G3, I3
#           fixed: FN = G4                  -> 1/4 = .25
#           recomputed: impostors .6 .4 .35 .1, k = floor(.8) = 0 -> accept > .6;
#                       FN = G4, G5 (.55)   -> 2/4 = .5
#   phi .3: drop G3, I3, G4
#           fixed: no FN                    -> 0
#           recomputed: accept > .6: FN = G5 -> 1/3
# area (trapezoid, step .1):
#   fixed      .1 (.4 + .25)/2 + .1 (.25 + .25)/2 + .1 (.25 + 0)/2 = .0325 + .025 + .0125 = .07
#   recomputed .0325 + .1 (.25 + .5)/2 + .1 (.5 + 1/3)/2 = .0325 + .0375 + .041667 = .111667
# AOC = 1 - area / FNMR(0) / .3: fixed 1 - .07 / .12 = .416667; recomputed 1 - .111667/.12 = .069444
# ---------------------------------------------------------------------------------------------
SCORES = np.array([0.9, 0.8, 0.4, 0.3, 0.55, 0.6, 0.4, 0.2, 0.1, 0.35])
LABELS = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
QUALITY = np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.5, 0.6, 0.15, 0.4, 0.95])
PHIS = (0.0, 0.1, 0.2, 0.3)


def test_fixed_mode_hand():
    r = erc(SCORES, LABELS, QUALITY, fmrs=(0.2,), reject_fractions=PHIS, mode="fixed")
    c = r["curves"]["0.2"]
    assert c["fnmr"] == pytest.approx([0.4, 0.25, 0.25, 0.0])
    assert all(0.4 < t < 0.4 + 1e-12 for t in c["threshold"])
    assert r["n_genuine_remaining"] == [5, 4, 4, 3]
    assert r["n_impostor_remaining"] == [5, 5, 4, 4]
    assert r["area_under_erc"]["0.2"] == pytest.approx(0.07)
    assert r["aoc_normalised"]["0.2"] == pytest.approx(1 - 0.07 / 0.4 / 0.3)
    assert r["aoc_is_reconstruction"] is True
    json.dumps(r, allow_nan=False)


def test_recomputed_mode_hand():
    r = erc(SCORES, LABELS, QUALITY, fmrs=(0.2,), reject_fractions=PHIS, mode="recomputed")
    c = r["curves"]["0.2"]
    assert c["fnmr"] == pytest.approx([0.4, 0.25, 0.5, 1 / 3])
    assert 0.6 < c["threshold"][2] < 0.6 + 1e-12
    assert c["fmr"] == pytest.approx([0.2, 0.2, 0.0, 0.0])
    assert r["area_under_erc"]["0.2"] == pytest.approx(0.0325 + 0.0375 + 0.05 * (0.5 + 1 / 3))
    json.dumps(r, allow_nan=False)


def test_pair_quality_min_and_defaults():
    qa = QUALITY
    qb = np.full(10, 0.5)
    assert pair_quality(qa, qb).tolist() == np.minimum(qa, 0.5).tolist()
    rng = np.random.default_rng(0)
    n = 4000
    y = rng.random(n) < 0.5
    s = np.where(y, rng.normal(0.6, 0.15, n), rng.normal(0.0, 0.15, n))
    q = rng.random(n)
    r = erc(s, y, q, rng.random(n))
    assert r["reject_fractions"] == pytest.approx(list(DEFAULT_REJECT_FRACTIONS))
    assert len(r["reject_fractions"]) == 20 and r["reject_fractions"][-1] == pytest.approx(0.95)
    assert set(r["curves"]) == {"0.01", "0.001", "0.0001"}
    json.dumps(r, allow_nan=False)


def test_informative_quality_lowers_the_curve():
    rng = np.random.default_rng(1)
    n = 3000
    y = rng.random(n) < 0.5
    q = rng.random(n)
    # low quality genuine pairs score low
    s = np.where(y, 0.2 + 0.6 * q + rng.normal(0, 0.05, n), rng.normal(0.0, 0.1, n))
    good = erc(s, y, q, fmrs=(1e-2,), mode="fixed")
    rand = erc(s, y, rng.random(n), fmrs=(1e-2,), mode="fixed")
    assert good["area_under_erc"]["0.01"] < rand["area_under_erc"]["0.01"]
    assert good["aoc_normalised"]["0.01"] > rand["aoc_normalised"]["0.01"]


def test_bad_inputs():
    with pytest.raises(ValueError, match="mode must be 'fixed' or 'recomputed', got 'iso'"):
        erc(SCORES, LABELS, QUALITY, mode="iso")
    with pytest.raises(ValueError, match=r"reject_fractions must be increasing values in \[0, 1\)"):
        erc(SCORES, LABELS, QUALITY, reject_fractions=(0.5, 0.2))


def test_thresholds_at_rates_match_threshold_at_rate():
    from faceforge.eval.allpairs import threshold_at_rate
    from faceforge.eval.quality import thresholds_at_rates

    rng = np.random.default_rng(3)
    neg = np.round(rng.normal(size=997), 2)  # ties
    rates = (1e-4, 1e-3, 1e-2, 0.1, 0.5, 0.999, 1.0)
    assert thresholds_at_rates(neg, rates) == [threshold_at_rate(neg, r)[0] for r in rates]
    assert np.isnan(thresholds_at_rates([], (0.1,))[0])


def test_fmr_resolvable_flag():
    r = erc(SCORES, LABELS, QUALITY, fmrs=(0.2, 0.1, 0.01), reject_fractions=PHIS)
    # 5 impostors: FMR .2 allows one false match, .1 and .01 allow none (threshold above the top impostor)
    assert r["fmr_resolvable"] == {"0.2": True, "0.1": False, "0.01": False}
    assert r["curves"]["0.1"]["threshold"][0] == r["curves"]["0.01"]["threshold"][0] > 0.6


def test_aoc_is_relative_to_random_rejection():
    """Random rejection keeps the expected FNMR flat (AOC about 0); rejecting exactly the false non-matches
    first removes every error early (AOC near 1)."""
    rng = np.random.default_rng(4)
    n = 40000
    y = rng.random(n) < 0.5
    s = np.where(y, rng.normal(0.4, 0.2, n), rng.normal(0.0, 0.1, n))
    rand = erc(s, y, rng.random(n), fmrs=(1e-2,), mode="fixed")
    assert abs(rand["aoc_normalised"]["0.01"]) < 0.05
    thr = rand["curves"]["0.01"]["threshold"][0]
    g0 = rand["curves"]["0.01"]["fnmr"][0]
    oracle_q = np.where(y & (s < thr), 0.0, 1.0)
    oracle = erc(s, y, oracle_q, fmrs=(1e-2,), mode="fixed")
    # FN pairs are a fraction f = g0 * #genuine / n of all pairs; FNMR falls to 0 by phi = f, so the area
    # is about f * g0 / 2 and AOC about 1 - f / (2 * .95)
    f = g0 * y.sum() / n
    assert oracle["aoc_normalised"]["0.01"] == pytest.approx(1 - f / (2 * 0.95), abs=0.02)
    assert oracle["curves"]["0.01"]["fnmr"][-1] == 0.0
