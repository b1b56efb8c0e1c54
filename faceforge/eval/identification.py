"""1:N identification: closed-set rank-k / CMC and open-set DIR (TPIR) at FPIR.

Inputs are a similarity matrix ``scores`` of shape ``(n_probe, n_gallery)`` (higher = more alike)
with identity labels for the probes and for the gallery entries.  A gallery may hold several
entries per identity; every metric first reduces the gallery to one score per identity and probe,
the maximum over that identity's entries:

``S[p, g] = max_{e : label(e) = g} scores[p, e]``.

A probe is *mated* when its identity is in the gallery, *non-mated* otherwise.  The rank of a mated
probe counts ties against it (pessimistic, so that constant scores never look good):

``rank(p) = 1 + #{g != id(p) : S[p, g] >= S[p, id(p)]}``.

* Closed set (ISO/IEC 19795-1 "identification rate at rank k"): non-mated probes are excluded and
  reported; ``CMC(k) = #{mated p : rank(p) <= k} / n_mated``.
* Open set (NIST FRVT 1:N, ISO/IEC 19795-1): ``FPIR(t) = #{non-mated p : max_g S[p, g] >= t} /
  n_non-mated``; for each target FPIR the threshold ``t`` is the smallest one with
  ``FPIR(t) <= target`` (:func:`faceforge.eval.allpairs.threshold_at_rate` on the non-mated
  maxima), and ``DIR(t) = #{mated p : rank(p) <= r and S[p, id(p)] >= t} / n_mated`` with
  ``r = 1`` by default (TPIR = DIR).

Written from the definitions above; no code taken from any project.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from faceforge.eval.allpairs import threshold_at_rate
from faceforge.eval.verification import l2_normalize

__all__ = [
    "GalleryProbeSplit",
    "closed_set_cmc",
    "cosine_scores",
    "identification",
    "identity_scores",
    "open_set_dir",
    "split_gallery_probe",
]


def cosine_scores(probe: ArrayLike, gallery: ArrayLike) -> NDArray[np.float64]:
    """``(n_probe, n_gallery)`` cosine similarities ``<p / |p|, g / |g|>``."""
    p = l2_normalize(np.asarray(probe, dtype=np.float64))
    g = l2_normalize(np.asarray(gallery, dtype=np.float64))
    return p @ g.T


def identity_scores(scores: ArrayLike, gallery_labels: ArrayLike) -> tuple[NDArray[Any], NDArray[np.float64]]:
    """Reduce gallery columns to identities: ``S[:, g] = max over entries of identity g``.

    Returns ``(identities, S)`` with identities sorted (``np.unique`` order).
    """
    s = np.asarray(scores, dtype=np.float64)
    gl = np.asarray(gallery_labels).ravel()
    if s.ndim != 2 or s.shape[1] != gl.size:
        raise ValueError(f"scores {s.shape} do not match {gl.size} gallery labels")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    ids, inv = np.unique(gl, return_inverse=True)
    if ids.size == gl.size:
        out = np.empty_like(s)
        out[:, inv] = s
        return ids, out
    order = np.argsort(inv, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(inv[order]) != 0])
    return ids, np.maximum.reduceat(s[:, order], starts, axis=1)


@dataclass(frozen=True)
class _ProbeStats:
    mated: NDArray[np.bool_]  # (n_probe,)
    mate_score: NDArray[np.float64]  # nan for non-mated
    rank: NDArray[np.int64]  # 0 for non-mated
    max_score: NDArray[np.float64]  # best identity score
    n_ids: int


def _probe_stats(scores: ArrayLike, probe_labels: ArrayLike, gallery_labels: ArrayLike) -> _ProbeStats:
    ids, s = identity_scores(scores, gallery_labels)
    pl = np.asarray(probe_labels).ravel()
    if pl.size != s.shape[0]:
        raise ValueError(f"{s.shape[0]} probe rows but {pl.size} probe labels")
    col = np.searchsorted(ids, pl)
    col_c = np.minimum(col, ids.size - 1)
    mated = ids[col_c] == pl
    rows = np.arange(pl.size)
    mate = np.where(mated, s[rows, col_c], np.nan)
    ge = (s >= mate[:, None]).sum(axis=1)  # counts the mate itself; nan compares False
    rank = np.where(mated, ge, 0).astype(np.int64)
    return _ProbeStats(mated, mate, rank, s.max(axis=1), int(ids.size))


def closed_set_cmc(
    scores: ArrayLike,
    probe_labels: ArrayLike,
    gallery_labels: ArrayLike,
    ranks: Sequence[int] = (1, 5, 10),
    max_rank: int | None = None,
) -> dict[str, Any]:
    """Closed-set identification: rank-k rates and the CMC curve.

    ``CMC(k) = #{mated p : rank(p) <= k} / n_mated`` with the pessimistic rank of the module
    docstring; probes whose identity is not in the gallery are excluded (``n_excluded``).

    Result: ``rank_k`` ``{str(k): rate}`` for ``ranks`` (ranks above the gallery size give 1.0),
    ``cmc`` (list, ``cmc[k - 1] = CMC(k)`` for ``k = 1 .. max_rank``, default all identities up to
    100), counts and settings.
    """
    st = _probe_stats(scores, probe_labels, gallery_labels)
    n_mated = int(st.mated.sum())
    if n_mated == 0:
        raise ValueError("no probe has its identity in the gallery")
    r = st.rank[st.mated]
    max_rank = min(st.n_ids, 100) if max_rank is None else int(max_rank)
    counts = np.bincount(r, minlength=max(max_rank, st.n_ids) + 1)
    cmc = np.cumsum(counts)[1:] / n_mated
    return {
        "protocol": "closed_set_identification",
        "tie_rule": "pessimistic",
        "rank_k": {str(int(k)): float(cmc[min(int(k), st.n_ids) - 1]) for k in ranks},
        "cmc": [float(v) for v in cmc[:max_rank]],
        "n_probes": int(st.mated.size),
        "n_mated": n_mated,
        "n_excluded": int(st.mated.size - n_mated),
        "n_gallery_identities": st.n_ids,
        "ranks": [int(k) for k in ranks],
        "max_rank": int(max_rank),
    }


def open_set_dir(
    scores: ArrayLike,
    probe_labels: ArrayLike,
    gallery_labels: ArrayLike,
    fpirs: Sequence[float] = (0.01, 0.1),
    rank: int = 1,
) -> dict[str, Any]:
    """Open-set identification: DIR (TPIR) at each target FPIR.

    ``t_f`` = smallest threshold with ``#{non-mated p : max_g S[p, g] >= t_f} / n_nonmated <= f``;
    ``DIR(f) = #{mated p : rank(p) <= rank and S[p, id(p)] >= t_f} / n_mated``.  Each entry of
    ``dir_at_fpir`` (keyed ``f"{f:g}"``) carries ``dir``, the ``threshold`` (``None`` = accept
    everything), the ``fpir`` actually achieved and ``below_resolution`` (``f < 1 / n_nonmated``).
    """
    st = _probe_stats(scores, probe_labels, gallery_labels)
    n_mated, n_non = int(st.mated.sum()), int((~st.mated).sum())
    if n_mated == 0 or n_non == 0:
        raise ValueError(f"need mated and non-mated probes (got {n_mated} and {n_non})")
    mate = st.mate_score[st.mated]
    hit = st.rank[st.mated] <= rank
    out: dict[str, Any] = {}
    for f in fpirs:
        thr, achieved = threshold_at_rate(st.max_score[~st.mated], float(f))
        out[f"{float(f):g}"] = {
            "target_fpir": float(f),
            "dir": float(np.count_nonzero(hit & (mate >= thr)) / n_mated),
            "threshold": thr if math.isfinite(thr) else None,
            "fpir": achieved,
            "below_resolution": bool(float(f) < 1.0 / n_non),
        }
    return {
        "protocol": "open_set_identification",
        "tie_rule": "pessimistic",
        "rank": int(rank),
        "dir_at_fpir": out,
        "n_mated": n_mated,
        "n_nonmated": n_non,
        "n_gallery_identities": st.n_ids,
    }


def identification(
    probe: ArrayLike,
    probe_labels: ArrayLike,
    gallery: ArrayLike,
    gallery_labels: ArrayLike,
    ranks: Sequence[int] = (1, 5, 10),
    fpirs: Sequence[float] = (0.01, 0.1),
) -> dict[str, Any]:
    """Cosine scores, then :func:`closed_set_cmc` and (if there are non-mated probes) :func:`open_set_dir`."""
    s = cosine_scores(probe, gallery)
    out: dict[str, Any] = {"closed_set": closed_set_cmc(s, probe_labels, gallery_labels, ranks)}
    gl = set(np.asarray(gallery_labels).ravel().tolist())
    if any(p not in gl for p in np.asarray(probe_labels).ravel().tolist()):
        out["open_set"] = open_set_dir(s, probe_labels, gallery_labels, fpirs)
    else:
        out["open_set"] = None
    return out


@dataclass(frozen=True, eq=False)
class GalleryProbeSplit:
    """Indices into the original set: gallery entries, probes, and which probes are mated."""

    gallery_idx: NDArray[np.intp]
    probe_idx: NDArray[np.intp]
    probe_mated: NDArray[np.bool_]
    k: int
    seed: int
    few: str
    n_skipped: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "seed": self.seed,
            "few": self.few,
            "n_gallery": int(self.gallery_idx.size),
            "n_probe": int(self.probe_idx.size),
            "n_mated_probe": int(self.probe_mated.sum()),
            "n_nonmated_probe": int((~self.probe_mated).sum()),
            "n_skipped": self.n_skipped,
        }


def split_gallery_probe(
    labels: ArrayLike, k: int = 1, seed: int = 0, few: Literal["probe", "skip"] = "probe"
) -> GalleryProbeSplit:
    """Split an identity-labelled set into gallery and probes.

    Identities (in sorted order) with more than ``k`` images put ``k`` of them, chosen by
    ``np.random.default_rng(seed).permutation`` over that identity's images, into the gallery and
    the rest into the probes (mated).  Identities with ``<= k`` images become non-mated probes
    (``few="probe"``, all their images) or are left out (``few="skip"``, counted in ``n_skipped``).
    Indices are returned sorted.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    if few not in ("probe", "skip"):
        raise ValueError(f"few must be 'probe' or 'skip', got {few!r}")
    y = np.asarray(labels).ravel()
    rng = np.random.default_rng(seed)
    _ids, inv = np.unique(y, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    bounds = np.r_[np.flatnonzero(np.r_[True, np.diff(inv[order]) != 0]), y.size]
    gal: list[NDArray[np.intp]] = []
    mated: list[NDArray[np.intp]] = []
    non: list[NDArray[np.intp]] = []
    skipped = 0
    for a, b in itertools.pairwise(bounds):
        members = order[a:b]
        if members.size <= k:
            if few == "probe":
                non.append(members)
            else:
                skipped += int(members.size)
            continue
        perm = members[rng.permutation(members.size)]
        gal.append(perm[:k])
        mated.append(perm[k:])

    def cat(parts: list[NDArray[np.intp]]) -> NDArray[np.intp]:
        return np.concatenate(parts).astype(np.intp) if parts else np.zeros(0, dtype=np.intp)

    g, m, n = cat(gal), cat(mated), cat(non)
    probe = np.concatenate([m, n])
    is_mated = np.r_[np.ones(m.size, bool), np.zeros(n.size, bool)]
    o = np.argsort(probe, kind="stable")
    return GalleryProbeSplit(np.sort(g), probe[o], is_mated[o], int(k), int(seed), few, skipped)
