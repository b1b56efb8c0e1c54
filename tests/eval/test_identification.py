"""Tests for faceforge.eval.identification on a score matrix ranked by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from faceforge.eval.identification import (
    closed_set_cmc,
    identification,
    identity_scores,
    open_set_dir,
    split_gallery_probe,
)

# ---------------------------------------------------------------------------------------------
# Gallery identities A B C D; probes p1..p4 mated (A, B, C, D), p5 (E) and p6 (F) non-mated.
#
#          A    B    C    D      mate   rank  (1 + others >= mate)
#   p1 A  .9   .3   .2   .1      .9     1
#   p2 B  .6   .5   .1   .2      .5     2     (A .6)
#   p3 C  .4   .7   .35  .8      .35    4     (A .4, B .7, D .8)
#   p4 D  .1   .2   .3   .45     .45    1
#   p5 E  .55  .2   .1   .3      max .55
#   p6 F  .2   .4   .3   .1      max .4
#
# closed set: p5, p6 excluded; CMC = [2/4, 3/4, 3/4, 4/4].
# open set, non-mated maxima {.55, .4}:
#   FPIR .5 -> one false alarm allowed: accept > .4; rank-1 mated p1 (.9) and p4 (.45) -> DIR .5
#   FPIR .01 -> none allowed: accept > .55; only p1 -> DIR .25, achieved FPIR 0
#   FPIR 1  -> accept everything: DIR = rank-1 rate = .5
# ---------------------------------------------------------------------------------------------
S = np.array(
    [
        [0.9, 0.3, 0.2, 0.1],
        [0.6, 0.5, 0.1, 0.2],
        [0.4, 0.7, 0.35, 0.8],
        [0.1, 0.2, 0.3, 0.45],
        [0.55, 0.2, 0.1, 0.3],
        [0.2, 0.4, 0.3, 0.1],
    ]
)
G = np.array(["A", "B", "C", "D"])
P = np.array(["A", "B", "C", "D", "E", "F"])


def test_closed_set_hand():
    r = closed_set_cmc(S, P, G, ranks=(1, 2, 5))
    assert r["cmc"] == pytest.approx([0.5, 0.75, 0.75, 1.0])
    assert r["rank_k"] == pytest.approx({"1": 0.5, "2": 0.75, "5": 1.0})
    assert (r["n_mated"], r["n_excluded"], r["n_gallery_identities"]) == (4, 2, 4)
    json.dumps(r, allow_nan=False)


def test_open_set_hand():
    r = open_set_dir(S, P, G, fpirs=(0.01, 0.5, 1.0))
    d = r["dir_at_fpir"]
    assert d["0.5"]["dir"] == pytest.approx(0.5) and d["0.5"]["fpir"] == pytest.approx(0.5)
    assert 0.4 < d["0.5"]["threshold"] < 0.4 + 1e-12
    assert d["0.01"]["dir"] == pytest.approx(0.25) and d["0.01"]["fpir"] == 0.0
    assert d["0.01"]["below_resolution"] is True
    assert d["1"]["dir"] == pytest.approx(0.5) and d["1"]["threshold"] is None
    assert (r["n_mated"], r["n_nonmated"]) == (4, 2)
    json.dumps(r, allow_nan=False)


def test_rank_ties_are_pessimistic():
    r = closed_set_cmc([[0.5, 0.5, 0.1]], ["A"], ["A", "B", "C"])
    assert r["cmc"] == pytest.approx([0.0, 1.0, 1.0])


def test_gallery_reduced_per_identity_by_max():
    # A has two entries; the max (.9) counts
    s = np.array([[0.2, 0.6, 0.9], [0.95, 0.1, 0.3]])
    ids, red = identity_scores(s, ["A", "B", "A"])
    assert list(ids) == ["A", "B"]
    np.testing.assert_allclose(red, [[0.9, 0.6], [0.95, 0.1]])
    assert closed_set_cmc(s, ["A", "B"], ["A", "B", "A"])["cmc"] == pytest.approx([0.5, 1.0])


def test_split_gallery_probe():
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    sp = split_gallery_probe(labels, k=1, seed=3)
    assert sp.gallery_idx.size == 3  # ids 0, 1, 3
    assert sorted(labels[sp.gallery_idx]) == [0, 1, 3]
    assert set(sp.gallery_idx) | set(sp.probe_idx) == set(range(10))
    assert not set(sp.gallery_idx) & set(sp.probe_idx)
    assert list(sp.probe_idx[~sp.probe_mated]) == [5]  # id 2 has one image -> non-mated probe
    assert sp.to_dict()["n_mated_probe"] == 6
    again = split_gallery_probe(labels, k=1, seed=3)
    assert np.array_equal(again.gallery_idx, sp.gallery_idx)
    sk = split_gallery_probe(labels, k=2, few="skip")
    assert sk.n_skipped == 3 and sorted(labels[sk.gallery_idx]) == [0, 0, 3, 3]
    assert sk.probe_mated.all()


def test_identification_end_to_end():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((10, 16))
    labels = np.repeat(np.arange(10), 3)
    x = np.repeat(centers, 3, axis=0) + 0.1 * rng.standard_normal((30, 16))
    sp = split_gallery_probe(labels[:27], k=1)  # ids 0-8 full, id 9 excluded from the set
    probe_idx = np.r_[sp.probe_idx, 27, 28]  # add id 9 as non-mated probes
    r = identification(x[probe_idx], labels[probe_idx], x[sp.gallery_idx], labels[sp.gallery_idx])
    assert r["closed_set"]["rank_k"]["1"] == 1.0
    assert r["open_set"]["n_nonmated"] == 2
    json.dumps(r, allow_nan=False)
