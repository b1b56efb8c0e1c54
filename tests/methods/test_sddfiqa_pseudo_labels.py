"""SDD-FIQA pseudo-labels: W1 against scipy and by hand, sampling rules, per-round normalisation, the
tight-versus-spread identity on synthetic embeddings, singletons, seeds, the signed option."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from faceforge.methods.sddfiqa.pseudo_labels import (
    minmax_0_100,
    sample_negatives,
    sample_positives,
    sdd_pseudo_labels,
    wasserstein_rows,
)


def test_w1_hand_example() -> None:
    # u = {0, 1}, v = {2, 3, 4}: F_u - F_v is 1/2 on [0,1), 1 on [1,2), 2/3 on [2,3), 1/3 on [3,4)
    # W1 = .5 + 1 + 2/3 + 1/3 = 2.5 (= mean(v) - mean(u), every u below every v)
    w = wasserstein_rows(
        np.array([[0.0, 1.0, 9.0]]), np.array([[2.0, 3.0, 4.0]]), np.array([2]), np.array([3])
    )
    assert w[0] == pytest.approx(2.5)
    assert wasserstein_distance([0, 1], [2, 3, 4]) == pytest.approx(2.5)
    # interleaved: u = {0, 2}, v = {1}: |F_u - F_v| = 1/2 on [0,1) and 1/2 on [1,2) -> 1
    assert wasserstein_rows(np.array([[0.0, 2.0]]), np.array([[1.0]]))[0] == pytest.approx(1.0)


def test_w1_matches_scipy_with_counts_and_ties() -> None:
    rng = np.random.default_rng(0)
    b, m = 200, 24
    u = np.round(rng.normal(0.5, 0.2, (b, m)), 2)  # rounding makes ties within and across the two sets
    v = np.round(rng.normal(0.1, 0.2, (b, m)), 2)
    uc = rng.integers(0, m + 1, b)
    vc = rng.integers(1, m + 1, b)
    got = wasserstein_rows(u, v, uc, vc)
    for i in range(b):
        if uc[i] == 0:
            assert np.isnan(got[i])
        else:
            assert got[i] == pytest.approx(wasserstein_distance(u[i, : uc[i]], v[i, : vc[i]]), abs=1e-12)


def test_minmax_per_round() -> None:
    assert np.allclose(minmax_0_100(np.array([2.0, 4.0, np.nan, 6.0])), [0, 50, np.nan, 100], equal_nan=True)
    assert minmax_0_100(np.array([3.0, 3.0])).tolist() == [0.0, 0.0]


def _codes(sizes: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(sizes)), sizes)


def test_sampling_rules() -> None:
    rng = np.random.default_rng(1)
    codes = _codes([1, 2, 5, 30, 40])
    pi, pc = sample_positives(codes, rng, 24)
    ni, nc = sample_negatives(codes, rng, 24)
    n = codes.size
    for i in range(n):
        own = int((codes == codes[i]).sum())
        assert pc[i] == min(24, own - 1)
        p = pi[i, : pc[i]]
        assert len(set(p.tolist())) == pc[i] and i not in p and (codes[p] == codes[i]).all()
        assert nc[i] == min(24, n - own)
        q = ni[i, : nc[i]]
        assert len(set(q.tolist())) == nc[i] and (codes[q] != codes[i]).all()
    # a small set: fewer other-identity images than m -> all of them
    ni, nc = sample_negatives(_codes([3, 2]), rng, 24)
    assert nc.tolist() == [2, 2, 2, 3, 3] and sorted(ni[0, :2].tolist()) == [3, 4]


def test_negatives_are_uniform_without_replacement() -> None:
    rng = np.random.default_rng(2)
    codes = np.array([0, 0, 1, 2, 3, 4, 5])  # image 0 has 5 other-identity images, draws 3
    hits = np.zeros(7)
    for _ in range(3000):
        ni, _ = sample_negatives(codes, rng, 3)
        hits += np.bincount(ni[0, :3], minlength=7)
    assert hits[:2].sum() == 0
    assert np.allclose(hits[2:] / 3000, 3 / 5, atol=0.04)


def _clusters(rng: np.random.Generator, sizes: list[int], spreads: list[float], d: int = 32) -> np.ndarray:
    centres = rng.normal(size=(len(sizes), d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.concatenate(
        [
            c + rng.normal(scale=s / np.sqrt(d), size=(n, d))
            for c, n, s in zip(centres, sizes, spreads, strict=True)
        ]
    )
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_labels_are_mean_of_per_round_minmax_of_scipy_w1() -> None:
    rng = np.random.default_rng(3)
    sizes = [6, 9, 30, 4]
    x = _clusters(rng, sizes, [0.5] * 4)
    codes = _codes(sizes)
    res = sdd_pseudo_labels(x, codes, m=5, rounds=3, seed=7)
    # reproduce every round with the same generator, the public samplers and scipy's W1
    g = np.random.default_rng(7)
    for k in range(3):
        pi, pc = sample_positives(codes, g, 5)
        ni, nc = sample_negatives(codes, g, 5)
        for i in range(codes.size):
            sp = x[pi[i, : pc[i]]] @ x[i]
            sn = x[ni[i, : nc[i]]] @ x[i]
            assert res.raw_rounds[k, i] == pytest.approx(wasserstein_distance(sp, sn), abs=1e-6)
    per_round = [100 * (r - r.min()) / (r.max() - r.min()) for r in res.raw_rounds]
    assert np.allclose(res.labels, np.mean(per_round, axis=0))
    assert res.labels.min() >= 0 and res.labels.max() <= 100
    assert res.settings["m"] == 5 and res.settings["rounds"] == 3 and res.settings["seed"] == 7


def test_tight_identity_beats_spread_identity() -> None:
    rng = np.random.default_rng(4)
    sizes = [20, 20, 20, 20, 20]
    x = _clusters(rng, sizes, [0.2, 1.2, 0.6, 0.6, 0.6])  # identity 0 tight, identity 1 spread
    res = sdd_pseudo_labels(x, _codes(sizes), seed=0)
    tight, spread = res.labels[:20], res.labels[20:40]
    assert tight.mean() > spread.mean() + 20
    assert np.median(tight) > spread.max()
    # one face far from its identity (an outlier in a tight identity) is labelled lowest in it
    x2 = x.copy()
    x2[5] = x[25]  # image 5 of identity 0 looks like identity 1
    res2 = sdd_pseudo_labels(x2, _codes(sizes), seed=0)
    assert res2.labels[5] == res2.labels[:20].min() and res2.labels[5] < np.median(res2.labels[:20]) - 30


def test_singletons_rule_and_seed() -> None:
    rng = np.random.default_rng(5)
    sizes = [1, 8, 8, 1, 8]
    x = _clusters(rng, sizes, [0.5] * 5)
    codes = _codes(sizes)
    dropped = sdd_pseudo_labels(x, codes, m=4, rounds=2, seed=0)
    assert np.isnan(dropped.labels[[0, 17]]).all() and np.isfinite(np.delete(dropped.labels, [0, 17])).all()
    assert dropped.singleton.tolist() == [s == 1 for s in np.repeat(sizes, sizes)]
    zero = sdd_pseudo_labels(x, codes, m=4, rounds=2, seed=0, singletons="zero")
    assert zero.labels[[0, 17]].tolist() == [0.0, 0.0]
    assert np.allclose(np.delete(zero.labels, [0, 17]), np.delete(dropped.labels, [0, 17]))
    # singletons still serve as other-identity images
    ni, _ = sample_negatives(codes, np.random.default_rng(0), 16)
    assert np.isin([0, 17], ni[1:9]).all()
    again = sdd_pseudo_labels(x, codes, m=4, rounds=2, seed=0)
    other = sdd_pseudo_labels(x, codes, m=4, rounds=2, seed=1)
    assert np.array_equal(again.labels, dropped.labels, equal_nan=True)
    assert not np.allclose(np.nan_to_num(other.labels), np.nan_to_num(dropped.labels))
    with pytest.raises(ValueError, match="singletons"):
        sdd_pseudo_labels(x, codes, singletons="keep")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="two identities"):
        sdd_pseudo_labels(x[:8], np.zeros(8))


def test_signed_option_demotes_reversed_distributions() -> None:
    """A face whose same-identity cosines lie far below its other-identity ones: unsigned W1 calls it good."""
    rng = np.random.default_rng(6)
    d = 16
    a = np.zeros(d)
    a[0] = 1
    b = np.zeros(d)
    b[1] = 1
    # identity 0: 10 faces near a, plus face 10 at -a (same-identity cosines about -1);
    # identity 1..3: faces near b (cosines to face 10 about 0)
    near_a = a + rng.normal(scale=0.05, size=(10, d))
    others = b + rng.normal(scale=0.05, size=(30, d))
    x = np.concatenate([near_a, -a[None], others])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    codes = np.r_[np.zeros(11), np.repeat([1, 2, 3], 10)]
    unsigned = sdd_pseudo_labels(x, codes, m=8, rounds=4)
    signed = sdd_pseudo_labels(x, codes, m=8, rounds=4, signed=True)
    assert unsigned.labels[10] > np.median(unsigned.labels)  # the pitfall of methods.md §5.5
    assert signed.labels[10] == pytest.approx(0.0) and signed.settings["signed"] is True
