"""IJB-B / IJB-C template-based 1:1 verification and 1:N identification from insightface meta files.

Meta files (insightface ``IJBB/meta``, ``IJBC/meta``; read by insightface
``recognition/_evaluation_/ijb/ijb_evals.py``), whitespace separated:

* ``*_face_tid_mid.txt``: ``image template_id media_id`` per image;
* ``*_name_5pts_score.txt``: ``image x1 y1 ... x5 y5 faceness`` per image (same image order);
* ``*_template_pair_label.txt``: ``template1 template2 label`` per 1:1 comparison.

(read by :func:`faceforge.eval.kinds.ijb.load_ijb_meta`; this module computes on the arrays).

Per-image features follow three switches (the names used by insightface ``ijb_evals.py``):

* **F** (flip): ``F0`` original embedding only, ``F1`` original + flipped (sum), ``F2`` the two
  concatenated;
* **N** (norm): ``N0`` L2-normalise every image feature before pooling, ``N1`` keep its norm (the
  norm then acts as a quality weight);
* **D** (detector): ``D1`` multiply by the detector's faceness score, ``D0`` do not.

Applied in that order: ``f_i = D(N(F(e_i, e_i^flip)))``.  Template pooling (``image2template_feature``
in insightface, TFace and FaceX-Zoo): average the features of a template's images that share a
media id (frames of one video), **sum** these media features, then L2-normalise:

``T_t = normalize( sum_m mean_{i in t, mid(i) = m} f_i )``.

1:1 score of a pair = ``<T_t1, T_t2>`` (batched).  TAR@FAR over FARs 1e-6 .. 1e-1 with the
insightface ``"nearest"`` rule by default, and the ``"conservative"`` rule as well
(:func:`faceforge.eval.roc.tar_at_far`).  Defaults differ between the reference codebases
(arcface_torch N1D1F1, ijb_evals N0D1F1, TFace N0D0F0); the result records the switches used.

1:N: probe templates against each gallery template set (IJB-C G1 and G2); CMC top-1/5/10 and
TPIR (= DIR at rank 1) at FPIR 0.01 / 0.1 via :mod:`faceforge.eval.identification`, reported per
gallery and averaged over galleries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from faceforge.eval.identification import closed_set_cmc, open_set_dir
from faceforge.eval.roc import DEFAULT_FARS, TAR_RULES, auc, roc, tar_at_far
from faceforge.eval.verification import l2_normalize

__all__ = [
    "ijb_1to1",
    "ijb_1toN",
    "image_features",
    "pair_scores",
    "template_features",
]

Flip = Literal["F0", "F1", "F2"]
Norm = Literal["N0", "N1"]
Detector = Literal["D0", "D1"]


# --------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------
def image_features(
    feats: ArrayLike,
    flip_feats: ArrayLike | None = None,
    faceness: ArrayLike | None = None,
    flip: Flip = "F1",
    norm: Norm = "N0",
    detector: Detector = "D1",
) -> NDArray[np.float64]:
    """Per-image features under the F/N/D switches (module docstring), in that order.

    ``F0: e``, ``F1: e + e_flip``, ``F2: [e, e_flip]``; then ``N0: f / ||f||`` (``N1``: as is); then
    ``D1: f * faceness`` (``D0``: as is).  Source: insightface ``_evaluation_/ijb/ijb_evals.py`` and
    arcface_torch ``eval_ijbc.py``.
    """
    e = np.asarray(feats, dtype=np.float64)
    if e.ndim != 2:
        raise ValueError(f"expected (n, d) features, got {e.shape}")
    if flip == "F0":
        f = e
    elif flip in ("F1", "F2"):
        if flip_feats is None:
            raise ValueError(f"{flip} needs flip_feats")
        ef = np.asarray(flip_feats, dtype=np.float64)
        if ef.shape != e.shape:
            raise ValueError(f"flip features {ef.shape} vs {e.shape}")
        f = e + ef if flip == "F1" else np.concatenate([e, ef], axis=1)
    else:
        raise ValueError(f"flip must be F0/F1/F2, got {flip!r}")
    if norm == "N0":
        f = l2_normalize(f)
    elif norm != "N1":
        raise ValueError(f"norm must be N0/N1, got {norm!r}")
    if detector == "D1":
        if faceness is None:
            raise ValueError("D1 needs faceness scores")
        q = np.asarray(faceness, dtype=np.float64).ravel()
        if q.size != f.shape[0]:
            raise ValueError(f"{q.size} faceness scores for {f.shape[0]} images")
        f = f * q[:, None]
    elif detector != "D0":
        raise ValueError(f"detector must be D0/D1, got {detector!r}")
    return f


def template_features(
    img_feats: ArrayLike, template_ids: ArrayLike, media_ids: ArrayLike
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Media-mean, template-sum, L2-normalised template features.

    ``T_t = normalize(sum_m mean_{i : tid(i) = t, mid(i) = m} f_i)``; returns
    ``(sorted unique template ids, (n_templates, d) features)``.  An all-zero template stays zero.
    """
    f = np.asarray(img_feats, dtype=np.float64)
    t = np.asarray(template_ids).astype(np.int64).ravel()
    m = np.asarray(media_ids).astype(np.int64).ravel()
    if not (f.shape[0] == t.size == m.size):
        raise ValueError("features, template ids and media ids must have the same length")
    order = np.lexsort((m, t))
    ts, ms, fs = t[order], m[order], f[order]
    new_media = np.r_[True, (ts[1:] != ts[:-1]) | (ms[1:] != ms[:-1])]
    ms_start = np.flatnonzero(new_media)
    counts = np.diff(np.r_[ms_start, ts.size])
    media_mean = np.add.reduceat(fs, ms_start, axis=0) / counts[:, None]
    media_tid = ts[ms_start]
    t_start = np.flatnonzero(np.r_[True, media_tid[1:] != media_tid[:-1]])
    pooled = np.add.reduceat(media_mean, t_start, axis=0)
    return media_tid[t_start], l2_normalize(pooled)


def pair_scores(
    template_ids: ArrayLike,
    template_feats: ArrayLike,
    t1: ArrayLike,
    t2: ArrayLike,
    batch: int = 100_000,
) -> NDArray[np.float64]:
    """``<T_{t1[k]}, T_{t2[k]}>`` for every pair, ``batch`` pairs at a time."""
    ids = np.asarray(template_ids).astype(np.int64)
    feats = np.asarray(template_feats, dtype=np.float64)
    order = np.argsort(ids, kind="stable")
    sid = ids[order]

    def rows(q: ArrayLike) -> NDArray[np.intp]:
        q = np.asarray(q).astype(np.int64).ravel()
        pos = np.minimum(np.searchsorted(sid, q), sid.size - 1)
        missing = sid[pos] != q
        if missing.any():
            raise KeyError(f"templates without features: {np.unique(q[missing])[:10].tolist()}")
        return order[pos]

    r1, r2 = rows(t1), rows(t2)
    out = np.empty(r1.size, dtype=np.float64)
    for a in range(0, r1.size, batch):
        b = a + batch
        out[a:b] = np.einsum("ij,ij->i", feats[r1[a:b]], feats[r2[a:b]])
    return out


def _switch_dict(flip: str, norm: str, detector: str) -> dict[str, str]:
    return {"code": f"{norm}{detector}{flip}", "flip": flip, "norm": norm, "detector": detector}


# --------------------------------------------------------------------------------------------
# protocols
# --------------------------------------------------------------------------------------------
def ijb_1to1(
    feats: ArrayLike,
    template_ids: ArrayLike,
    media_ids: ArrayLike,
    t1: ArrayLike,
    t2: ArrayLike,
    labels: ArrayLike,
    *,
    flip_feats: ArrayLike | None = None,
    faceness: ArrayLike | None = None,
    flip: Flip = "F1",
    norm: Norm = "N0",
    detector: Detector = "D1",
    fars: Sequence[float] = DEFAULT_FARS,
    batch: int = 100_000,
) -> dict[str, Any]:
    """IJB 1:1 verification: image features -> template features -> pair scores -> TAR@FAR.

    ``score_k = <T_{t1_k}, T_{t2_k}>``; ``tar_at_far`` holds both rules
    (``{rule: {f"{far:g}": TarAtFar.to_dict()}}``), ``"nearest"`` being the insightface number.
    Also ``auc``, pair counts, the FAR list and the switches (``"switches": {"code": "N0D1F1", ...}``).
    """
    f = image_features(feats, flip_feats, faceness, flip, norm, detector)
    ids, tf = template_features(f, template_ids, media_ids)
    s = pair_scores(ids, tf, t1, t2, batch)
    y = np.asarray(labels).astype(bool).ravel()
    fpr, tpr, _ = roc(s, y)
    fars = [float(v) for v in fars]
    return {
        "protocol": "ijb_1to1",
        "switches": _switch_dict(flip, norm, detector),
        "pooling": "media-mean, template-sum, l2-normalise",
        "fars": fars,
        "default_rule": "nearest",
        "tar_at_far": {
            rule: {f"{k:g}": v.to_dict() for k, v in tar_at_far(s, y, fars, rule).items()}
            for rule in TAR_RULES
        },
        "auc": auc(fpr, tpr),
        "n_pairs": int(y.size),
        "n_genuine": int(y.sum()),
        "n_impostor": int((~y).sum()),
        "n_templates": int(ids.size),
    }


def ijb_1toN(
    template_ids: ArrayLike,
    template_feats: ArrayLike,
    galleries: Mapping[str, tuple[ArrayLike, ArrayLike]],
    probe: tuple[ArrayLike, ArrayLike],
    *,
    ranks: Sequence[int] = (1, 5, 10),
    fpirs: Sequence[float] = (0.01, 0.1),
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """IJB 1:N: each gallery ``name -> (template ids, subject ids)`` against the probe templates.

    Scores are ``<T_p, T_g>`` over normalised template features (from :func:`template_features`).
    Per gallery: :func:`faceforge.eval.identification.closed_set_cmc` (probes whose subject is not in
    that gallery are excluded) and :func:`faceforge.eval.identification.open_set_dir` (those probes
    are the non-mated ones; TPIR = DIR at rank 1).  ``mean`` averages ``rank_k`` and TPIR over
    galleries (insightface reports the G1/G2 average).  ``settings`` (e.g. the N/D/F switches used
    to build the template features) is copied into the result.
    """
    ids = np.asarray(template_ids).astype(np.int64)
    feats = np.asarray(template_feats, dtype=np.float64)
    lookup = {int(t): i for i, t in enumerate(ids)}

    def take(tids: ArrayLike) -> NDArray[np.float64]:
        try:
            return feats[[lookup[int(t)] for t in np.asarray(tids).ravel()]]
        except KeyError as err:
            raise KeyError(f"template {err.args[0]} has no features") from None

    p_feat, p_sub = take(probe[0]), np.asarray(probe[1]).ravel()
    per: dict[str, Any] = {}
    for name, (g_t, g_s) in galleries.items():
        s = p_feat @ take(g_t).T
        g_sub = np.asarray(g_s).ravel()
        cs = closed_set_cmc(s, p_sub, g_sub, ranks)
        os_ = open_set_dir(s, p_sub, g_sub, fpirs) if np.isin(p_sub, g_sub, invert=True).any() else None
        per[str(name)] = {"closed_set": cs, "open_set": os_}
    mean_rank = {
        str(int(k)): float(np.mean([v["closed_set"]["rank_k"][str(int(k))] for v in per.values()]))
        for k in ranks
    }
    tpir_vals: dict[str, float | None] = {}
    for f in fpirs:
        vals = [v["open_set"]["dir_at_fpir"][f"{float(f):g}"]["dir"] for v in per.values() if v["open_set"]]
        tpir_vals[f"{float(f):g}"] = float(np.mean(vals)) if len(vals) == len(per) else None
    return {
        "protocol": "ijb_1toN",
        "settings": dict(settings) if settings else None,
        "ranks": [int(k) for k in ranks],
        "fpirs": [float(f) for f in fpirs],
        "galleries": per,
        "mean": {"rank_k": mean_rank, "tpir_at_fpir": tpir_vals},
        "n_probe_templates": int(p_sub.size),
    }
