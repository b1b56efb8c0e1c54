"""Tests for faceforge.eval.ijb with hand-made meta files whose pooled features are worked out here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from faceforge.eval.ijb import (
    ijb_1to1,
    ijb_1toN,
    image_features,
    pair_scores,
    template_features,
)
from faceforge.eval.kinds.ijb import load_ijb_meta, read_1n_templates, read_template_pair_label

# ---------------------------------------------------------------------------------------------
# 5 images, 3 templates, 4 media:
#   img  tid mid  feature   faceness
#   0    1   10   (2, 0)    .5
#   1    1   10   (0, 2)    1
#   2    1   11   (0, 3)    .5
#   3    2   20   (3, 4)    .9
#   4    3   30   (0, -1)   .8
#
# N1 D0 F0: media 10 = mean((2,0),(0,2)) = (1,1); media 11 = (0,3); T1 = (1,4)/sqrt17
#           T2 = (.6,.8), T3 = (0,-1)
# N0 D0 F0: img0 -> (1,0), img1 -> (0,1): media 10 = (.5,.5); media 11 = (0,1); T1 = (1,3)/sqrt10
# N0 D1 F0: (.5,0), (0,1) -> (.25,.5); (0,.5); sum (.25,1) -> T1 = (1,4)/sqrt17 again
#
# pairs: (1,2, impostor), (1,3, impostor), (2,3, genuine)
# N1D0F0 scores: <T1,T2> = (.6 + 3.2)/sqrt17 = 3.8/sqrt17 = .92163; <T1,T3> = -4/sqrt17 = -.97014;
#                <T2,T3> = -.8
# ROC: (0,0,inf) (.5,0,.92) (.5,1,-.8) (1,1,-.97)
#   FAR .1: nearest FPR is 0 -> TAR 0 (both rules); FAR .5: FPR .5 at TPR 0 and 1 -> TAR 1.
# ---------------------------------------------------------------------------------------------
FEATS = np.array([[2.0, 0], [0, 2], [0, 3], [3, 4], [0, -1]])
FACENESS = np.array([0.5, 1.0, 0.5, 0.9, 0.8])
TIDS = np.array([1, 1, 1, 2, 3])
MIDS = np.array([10, 10, 11, 20, 30])
S17, S10 = math.sqrt(17), math.sqrt(10)


@pytest.fixture
def meta_dir(tmp_path):
    d = tmp_path / "meta"
    d.mkdir()
    (d / "ijbx_face_tid_mid.txt").write_text(
        "".join(f"{i}.jpg {t} {m}\n" for i, (t, m) in enumerate(zip(TIDS, MIDS, strict=True)))
    )
    lines = []
    for i, q in enumerate(FACENESS):
        pts = " ".join(f"{v:.1f}" for v in np.arange(10) + i)
        lines.append(f"{i}.jpg {pts} {q}\n")
    (d / "ijbx_name_5pts_score.txt").write_text("".join(lines))
    (d / "ijbx_template_pair_label.txt").write_text("1 2 0\n1 3 0\n2 3 1\n")
    return d


def test_readers(meta_dir):
    m = load_ijb_meta(meta_dir)
    assert m.names == [f"{i}.jpg" for i in range(5)]
    np.testing.assert_array_equal(m.template_ids, TIDS)
    np.testing.assert_array_equal(m.media_ids, MIDS)
    np.testing.assert_allclose(m.faceness, FACENESS)
    assert m.landmarks.shape == (5, 5, 2) and m.landmarks[1, 0, 0] == 1.0 and m.landmarks[1, 4, 1] == 10.0
    np.testing.assert_array_equal(m.pair_t1, [1, 1, 2])
    np.testing.assert_array_equal(m.pair_label, [0, 0, 1])
    _t1, t2, lab = read_template_pair_label(meta_dir / "ijbx_template_pair_label.txt")
    assert t2.tolist() == [2, 3, 3] and lab.dtype == np.int64


@pytest.mark.parametrize(
    ("norm", "detector", "t1"),
    [("N1", "D0", [1 / S17, 4 / S17]), ("N0", "D0", [1 / S10, 3 / S10]), ("N0", "D1", [1 / S17, 4 / S17])],
)
def test_template_pooling(norm, detector, t1):
    f = image_features(FEATS, faceness=FACENESS, flip="F0", norm=norm, detector=detector)
    ids, t = template_features(f, TIDS, MIDS)
    assert ids.tolist() == [1, 2, 3]
    np.testing.assert_allclose(t, [t1, [0.6, 0.8], [0, -1]], atol=1e-12)


def test_flip_switches():
    e = np.array([[1.0, 0.0]])
    ef = np.array([[0.0, 1.0]])
    np.testing.assert_allclose(image_features(e, ef, flip="F1", norm="N1", detector="D0"), [[1, 1]])
    np.testing.assert_allclose(
        image_features(e, ef, flip="F1", norm="N0", detector="D0"), [[2**-0.5, 2**-0.5]]
    )
    np.testing.assert_allclose(image_features(e, ef, flip="F2", norm="N1", detector="D0"), [[1, 0, 0, 1]])
    np.testing.assert_allclose(image_features(e, ef, [0.5], flip="F0", norm="N1", detector="D1"), [[0.5, 0]])
    with pytest.raises(ValueError):
        image_features(e, flip="F1", detector="D0")


def test_pair_scores_batched():
    f = image_features(FEATS, flip="F0", norm="N1", detector="D0")
    ids, t = template_features(f, TIDS, MIDS)
    s = pair_scores(ids, t, [1, 1, 2], [2, 3, 3], batch=2)
    np.testing.assert_allclose(s, [3.8 / S17, -4 / S17, -0.8], atol=1e-12)
    with pytest.raises(KeyError):
        pair_scores(ids, t, [1], [9])


def test_ijb_1to1_from_meta(meta_dir):
    m = load_ijb_meta(meta_dir)
    r = ijb_1to1(
        FEATS, m.template_ids, m.media_ids, m.pair_t1, m.pair_t2, m.pair_label,
        faceness=m.faceness, flip="F0", norm="N1", detector="D0", fars=(0.1, 0.5),
    )  # fmt: skip
    assert r["switches"] == {"code": "N1D0F0", "flip": "F0", "norm": "N1", "detector": "D0"}
    for rule in ("nearest", "conservative"):
        assert r["tar_at_far"][rule]["0.1"]["tar"] == 0.0
        assert r["tar_at_far"][rule]["0.5"]["tar"] == 1.0
        assert r["tar_at_far"][rule]["0.5"]["threshold"] == pytest.approx(-0.8)
    assert r["auc"] == pytest.approx(0.5)  # genuine beats one of the two impostors
    assert (r["n_pairs"], r["n_genuine"], r["n_templates"]) == (3, 1, 3)
    json.dumps(r, allow_nan=False)


# ---------------------------------------------------------------------------------------------
# 1:N.  Templates: 1 (1,0) subj 100, 2 (0,1) subj 200, 3 (-1,0) subj 300, 4 (.6,.8) subj 100,
# 5 (-.6,-.8) subj 300.  G1 = {1, 2}, G2 = {3}; probes {4, 5}.
#   G1: probe 4 scores [.6 (100), .8 (200)] -> rank 2; probe 5 non-mated (max -.6)
#       rank1 0, rank5 1; TPIR@.01: rank-1 fails -> 0
#   G2: probe 5 scores [.6] -> rank 1; probe 4 non-mated (-.6); threshold > -.6 -> TPIR 1
#   mean: rank1 .5, rank5 1, TPIR .5
# ---------------------------------------------------------------------------------------------
def test_ijb_1toN_hand(tmp_path):
    ids = np.array([1, 2, 3, 4, 5])
    t = np.array([[1.0, 0], [0, 1], [-1, 0], [0.6, 0.8], [-0.6, -0.8]])
    r = ijb_1toN(
        ids, t, {"G1": ([1, 2], [100, 200]), "G2": ([3], [300])}, ([4, 5], [100, 300]),
        ranks=(1, 5), fpirs=(0.01,), settings={"switches": "N0D1F1"},
    )  # fmt: skip
    g1, g2 = r["galleries"]["G1"], r["galleries"]["G2"]
    assert g1["closed_set"]["rank_k"] == {"1": 0.0, "5": 1.0}
    assert g1["open_set"]["dir_at_fpir"]["0.01"]["dir"] == 0.0
    assert g2["closed_set"]["rank_k"]["1"] == 1.0
    assert g2["open_set"]["dir_at_fpir"]["0.01"]["dir"] == 1.0
    assert r["mean"] == {"rank_k": {"1": 0.5, "5": 1.0}, "tpir_at_fpir": {"0.01": 0.5}}
    assert r["settings"] == {"switches": "N0D1F1"}
    json.dumps(r, allow_nan=False)
    csv_path = tmp_path / "g.csv"
    csv_path.write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n7,70,a.jpg\n7,70,b.jpg\n8,80,c.jpg\n")
    tids, sids = read_1n_templates(csv_path)
    assert tids.tolist() == [7, 8] and sids.tolist() == [70, 80]
