"""All-pairs verification on an identity-labelled embedding set.

Every unordered pair ``i < j`` of images is a comparison: *genuine* when both images carry the same
identity label, *impostor* otherwise.  The score is the cosine similarity
``s_ij = <x_i, x_j> / (||x_i|| ||x_j||)`` (higher = more alike; a pair is accepted when
``s >= threshold``, the convention of :mod:`faceforge.eval.roc`).  From the genuine and impostor
scores we report the ROC, AUC, EER and TAR@FAR under both rules of :func:`faceforge.eval.roc.tar_at_far`
(``"nearest"`` and ``"conservative"``).  All-vs-all comparison is what FMR targets of 1e-4 and
below need on small sets such as LFW (the official LFW list has only 3,000
impostor pairs, so 1/3000 is its FAR resolution).

Two modes:

* ``"exact"``: all pair scores are kept and handed to :mod:`faceforge.eval.roc` (sklearn ROC).
  Memory is ``O(N^2)``, so only for small sets.
* ``"histogram"``: the pair scores are streamed in row blocks of the ``N x N`` similarity matrix
  (upper triangle only; never more than ``block_elems`` scores at once) into two fixed-bin
  histograms over ``[-1, 1]``, one for genuine and one for impostor pairs.  With ``B`` bins the
  bin width is ``w = 2 / B`` and bin ``k`` holds scores in ``[-1 + k w, -1 + (k + 1) w)`` (a score
  of exactly 1, or rounding slightly outside the range, is clipped into the end bins).  The
  histogram ROC is *exactly* the sklearn ROC of the scores rounded down to their bin's lower edge:
  one point per non-empty bin, threshold = that bin's lower edge.  So thresholds are resolved to
  one bin width (``B = 2^18`` default: ``w = 7.6e-6``; ``2^16``: ``3.1e-5``; ``2^20``: ``1.9e-6``)
  and rates differ from the exact ones only through pairs whose scores fall in the same bin.
  Memory is ``O(B + block_elems)``.

Impostor pairs can be all ``N (N - 1) / 2 - n_genuine`` of them, or a seeded uniform random sample
(with replacement) of ``impostor_sample`` pairs, for sets too large to enumerate; genuine pairs are
always all enumerated (per identity).

Also here: :func:`threshold_at_rate`, the threshold that lets through at most a target fraction of
negative scores, shared by the identification, quality and bias protocols.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from faceforge.eval.roc import (
    TAR_RULES,
    TarAtFar,
    TarRule,
    auc,
    eer,
    eer_from_roc,
    roc,
    tar_at_far,
    tar_at_far_from_roc,
)
from faceforge.eval.verification import l2_normalize

__all__ = [
    "ALLPAIRS_FARS",
    "ScoreHistogram",
    "allpairs_scores",
    "allpairs_verification",
    "iter_pair_scores",
    "threshold_at_rate",
]

ALLPAIRS_FARS: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
DEFAULT_BINS = 2**18
Mode = Literal["auto", "exact", "histogram"]


# --------------------------------------------------------------------------------------------
# shared operating-threshold rule
# --------------------------------------------------------------------------------------------
def threshold_at_rate(negative_scores: ArrayLike, target_rate: float) -> tuple[float, float]:
    """Smallest threshold whose false-positive rate on ``negative_scores`` is ``<= target_rate``.

    With the negatives sorted in decreasing order ``u_1 >= u_2 >= ... >= u_n`` and
    ``k = floor(target_rate * n)`` false positives allowed, the threshold is the next float above
    ``u_{k+1}``, so ``score >= threshold`` is the same as ``score > u_{k+1}``:

    ``FPR = #{u_i > u_{k+1}} / n <= k / n <= target_rate``

    (strictly less when ``u_{k+1}`` is tied with higher negatives).  ``k >= n`` gives ``-inf``
    (accept everything).  This is the operating point that maximises the true accept rate subject
    to the FPR constraint: the same TAR as the ``"conservative"`` rule of
    :func:`faceforge.eval.roc.tar_at_far`, whose threshold is the smallest *observed* score above
    ``u_{k+1}`` instead of the next float.  Source: the definition of a threshold "for FMR = x" in
    ISO/IEC 19795-1 (largest acceptance with FMR not above the target); written here, not copied.

    Returns ``(threshold, achieved_rate)``.
    """
    u = np.sort(np.asarray(negative_scores, dtype=np.float64).ravel())[::-1]
    n = u.size
    if n == 0:
        raise ValueError("no negative scores")
    if np.isnan(u).any():
        raise ValueError("negative scores contain NaN")
    k = math.floor(float(target_rate) * n * (1 + 1e-12) + 1e-9)
    if k >= n:
        return -math.inf, 1.0
    thr = float(np.nextafter(u[k], np.inf))
    return thr, float(np.count_nonzero(u >= thr) / n)


# --------------------------------------------------------------------------------------------
# histogram of scores
# --------------------------------------------------------------------------------------------
@dataclass(eq=False)
class ScoreHistogram:
    """Fixed-bin histograms of genuine and impostor scores over ``[lo, hi)`` (default ``[-1, 1]``).

    Bin ``k`` counts scores ``s`` with ``floor((s - lo) / w) = k``, ``w = (hi - lo) / n_bins``,
    clipped to ``[0, n_bins - 1]``.  :meth:`roc` returns the ROC of the scores rounded down to
    their bin's lower edge ``lo + k w``: exactly what :func:`faceforge.eval.roc.roc` would return
    for those rounded scores (one point per non-empty bin, thresholds decreasing, first point
    ``(0, 0, +inf)``).
    """

    n_bins: int = DEFAULT_BINS
    lo: float = -1.0
    hi: float = 1.0
    genuine: NDArray[np.int64] = field(init=False, repr=False)
    impostor: NDArray[np.int64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.n_bins < 2 or not self.hi > self.lo:
            raise ValueError("need n_bins >= 2 and hi > lo")
        self.genuine = np.zeros(self.n_bins, dtype=np.int64)
        self.impostor = np.zeros(self.n_bins, dtype=np.int64)

    @property
    def bin_width(self) -> float:
        return (self.hi - self.lo) / self.n_bins

    @property
    def edges(self) -> NDArray[np.float64]:
        """Lower bin edges ``lo + k w``, ``k = 0 .. n_bins - 1``."""
        return self.lo + np.arange(self.n_bins, dtype=np.float64) * self.bin_width

    def bin_index(self, scores: ArrayLike) -> NDArray[np.intp]:
        s = np.asarray(scores, dtype=np.float64)
        idx = np.floor((s - self.lo) * (self.n_bins / (self.hi - self.lo)))
        return np.clip(idx, 0, self.n_bins - 1).astype(np.intp)

    def add(self, scores: ArrayLike, issame: ArrayLike) -> None:
        """Add a block of scores with their genuine (True) / impostor (False) labels."""
        s = np.asarray(scores).ravel()
        y = np.asarray(issame, dtype=bool).ravel()
        if s.shape != y.shape:
            raise ValueError(f"{s.size} scores but {y.size} labels")
        if np.isnan(s).any():
            raise ValueError("scores contain NaN")
        idx = self.bin_index(s)
        self.genuine += np.bincount(idx[y], minlength=self.n_bins)
        self.impostor += np.bincount(idx[~y], minlength=self.n_bins)

    @property
    def n_genuine(self) -> int:
        return int(self.genuine.sum())

    @property
    def n_impostor(self) -> int:
        return int(self.impostor.sum())

    def roc(self) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """``(fpr, tpr, thresholds)`` with ``TPR(e_k) = #{genuine in bins >= k} / n_genuine`` etc."""
        ng, ni = self.n_genuine, self.n_impostor
        if ng == 0 or ni == 0:
            raise ValueError(f"need both genuine and impostor scores (got {ng} and {ni})")
        nonempty = np.flatnonzero((self.genuine + self.impostor) > 0)[::-1]  # decreasing
        tp = np.cumsum(self.genuine[::-1])[::-1][nonempty]  # count in bins >= k
        fp = np.cumsum(self.impostor[::-1])[::-1][nonempty]
        tpr = np.concatenate([[0.0], tp / ng])
        fpr = np.concatenate([[0.0], fp / ni])
        thr = np.concatenate([[np.inf], self.edges[nonempty]])
        return fpr, tpr, thr

    def auc(self) -> float:
        fpr, tpr, _ = self.roc()
        return auc(fpr, tpr)

    def eer(self) -> tuple[float, float]:
        """EER and threshold on the histogram ROC (:func:`faceforge.eval.roc.eer_from_roc`)."""
        return eer_from_roc(*self.roc())

    def tar_at_far(self, fars: Sequence[float], rule: TarRule = "nearest") -> dict[float, TarAtFar]:
        """TAR@FAR on the histogram ROC (:func:`faceforge.eval.roc.tar_at_far_from_roc`)."""
        return tar_at_far_from_roc(*self.roc(), self.n_impostor, fars, rule)

    def settings(self) -> dict[str, Any]:
        return {
            "n_bins": int(self.n_bins),
            "range": [float(self.lo), float(self.hi)],
            "bin_width": self.bin_width,
        }


# --------------------------------------------------------------------------------------------
# pair enumeration
# --------------------------------------------------------------------------------------------
def _prepare(embeddings: ArrayLike, labels: ArrayLike, normalize: bool) -> tuple[NDArray, NDArray]:
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise ValueError(f"expected (n, d) embeddings, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    y = np.asarray(labels).ravel()
    if y.size != x.shape[0]:
        raise ValueError(f"{x.shape[0]} embeddings but {y.size} labels")
    return (l2_normalize(x) if normalize else x), y


def iter_pair_scores(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    normalize: bool = True,
    impostor_sample: int | None = None,
    seed: int = 0,
    block_elems: int = 1 << 22,
    probe: ArrayLike | None = None,
) -> Iterator[tuple[NDArray[np.float64], NDArray[np.bool_]]]:
    """Yield ``(scores, issame)`` blocks covering the pairs of the all-pairs protocol.

    ``probe`` (optional, same shape as ``embeddings``): the second face of every pair ``(i, j)``, ``i < j``, is
    row ``j`` of ``probe`` instead (e.g. the same images at a lower resolution): ``s_ij = cos(x_i, p_j)``.

    * ``impostor_sample=None``: all pairs ``i < j``, row block by row block of the upper triangle
      of ``X X^T`` (``X`` = row-normalised embeddings when ``normalize``); each block has at most
      about ``block_elems`` entries.
    * ``impostor_sample=m``: every genuine pair (per identity: the upper triangle of that
      identity's Gram matrix), then ``m`` impostor pairs drawn uniformly with replacement: ``i`` and
      ``j`` independent uniform over images, kept when their labels differ, from
      ``np.random.default_rng(seed)``.
    """
    x, y = _prepare(embeddings, labels, normalize)
    p = x if probe is None else _prepare(probe, labels, normalize)[0]
    if p.shape != x.shape:
        raise ValueError(f"probe embeddings {p.shape} do not match the embeddings {x.shape}")
    n = x.shape[0]
    if impostor_sample is None:
        for a, b in _row_blocks(n, block_elems):
            s = x[a:b] @ p[a:].T
            keep = np.triu(np.ones(s.shape, dtype=bool), k=1)
            same = y[a:b, None] == y[None, a:]
            yield s[keep].astype(np.float64), same[keep]
        return
    # genuine pairs, identity by identity
    order = np.argsort(y, kind="stable")
    ys = y[order]
    starts = np.flatnonzero(np.r_[True, ys[1:] != ys[:-1]])
    ends = np.r_[starts[1:], n]
    buf: list[NDArray[np.float64]] = []
    size = 0
    for a, b in zip(starts, ends, strict=True):
        if b - a < 2:
            continue
        g = x[order[a:b]]
        s = (g @ p[order[a:b]].T)[np.triu_indices(b - a, k=1)].astype(np.float64)
        buf.append(s)
        size += s.size
        if size >= block_elems:
            out = np.concatenate(buf)
            yield out, np.ones(out.size, dtype=bool)
            buf, size = [], 0
    if buf:
        out = np.concatenate(buf)
        yield out, np.ones(out.size, dtype=bool)
    # sampled impostor pairs
    if impostor_sample < 1:
        raise ValueError("impostor_sample must be >= 1")
    if np.unique(y).size < 2:
        raise ValueError("impostor sampling needs at least two identities")
    rng = np.random.default_rng(seed)
    remaining = int(impostor_sample)
    while remaining > 0:
        draw = min(max(2 * remaining, 1024), block_elems)
        i = rng.integers(0, n, draw)
        j = rng.integers(0, n, draw)
        ok = y[i] != y[j]
        i, j = i[ok][:remaining], j[ok][:remaining]
        s = np.einsum("ij,ij->i", x[i], p[j]).astype(np.float64)
        remaining -= s.size
        yield s, np.zeros(s.size, dtype=bool)


def _row_blocks(n: int, block_elems: int) -> Iterator[tuple[int, int]]:
    a = 0
    while a < n - 1:
        rows = max(1, block_elems // max(1, n - a))
        b = min(n, a + rows)
        yield a, b
        a = b


def allpairs_scores(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    normalize: bool = True,
    impostor_sample: int | None = None,
    seed: int = 0,
    probe: ArrayLike | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """All pair scores and labels at once (``O(N^2)`` memory: small sets only).

    Same pairs, in the same order, as :func:`iter_pair_scores` (``probe`` as there).
    """
    blocks = list(
        iter_pair_scores(
            embeddings, labels, normalize=normalize, impostor_sample=impostor_sample, seed=seed, probe=probe
        )
    )
    if not blocks:
        return np.zeros(0), np.zeros(0, dtype=bool)
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


# --------------------------------------------------------------------------------------------
# protocol
# --------------------------------------------------------------------------------------------
def allpairs_verification(
    embeddings: ArrayLike,
    labels: ArrayLike,
    fars: Sequence[float] = ALLPAIRS_FARS,
    *,
    mode: Mode = "auto",
    n_bins: int = DEFAULT_BINS,
    exact_max_n: int = 3000,
    normalize: bool = True,
    impostor_sample: int | None = None,
    seed: int = 0,
    block_elems: int = 1 << 22,
    probe: ArrayLike | None = None,
) -> dict[str, Any]:
    """All-pairs verification summary (JSON-serialisable).

    Scores ``s_ij = cos(x_i, x_j)`` for pairs ``i < j``; genuine when ``label_i = label_j``.
    ``TAR(t) = #{genuine s >= t} / n_genuine``, ``FAR(t) = #{impostor s >= t} / n_impostor``;
    TAR@FAR for every target in ``fars`` under both rules of :func:`faceforge.eval.roc.tar_at_far`
    (``"nearest"``: insightface IJB rule; ``"conservative"``: best TAR with FAR <= target), AUC
    (trapezoid) and EER (:func:`faceforge.eval.roc.eer`).

    Args:
        embeddings: ``(N, d)`` features.
        labels: ``(N,)`` identity labels (any comparable dtype).
        fars: target FARs (default 1e-5 .. 1e-1).
        mode: ``"exact"`` (sklearn ROC on all scores), ``"histogram"`` (streamed fixed-bin
            histograms, see the module docstring) or ``"auto"`` (exact when ``N <= exact_max_n``).
        n_bins: histogram bins over ``[-1, 1]`` (bin width ``2 / n_bins``).
        normalize: L2-normalise embeddings first (cosine scores); if False, plain dot products
            (must then lie in ``[-1, 1]`` for the histogram mode).
        impostor_sample: ``None`` for all impostor pairs, or the number of impostor pairs to
            sample (uniform, with replacement, seeded by ``seed``).
        block_elems: at most about this many scores are computed at once.
        probe: the second face of each pair from these embeddings instead (:func:`iter_pair_scores`), e.g. the
            same images at a lower resolution; ``None``: the same embeddings.

    Result keys: ``protocol``, ``mode``, ``n_images``, ``n_identities``, ``n_genuine``,
    ``n_impostor``, ``impostor_sampling``, ``normalize``, ``histogram`` (bins, range, bin width;
    ``None`` in exact mode), ``fars``, ``auc``, ``eer``, ``eer_threshold`` and ``tar_at_far``
    ``{rule: {f"{far:g}": TarAtFar.to_dict()}}``.
    """
    x, y = _prepare(embeddings, labels, normalize=False)
    if mode == "auto":
        mode = "exact" if x.shape[0] <= exact_max_n else "histogram"
    if mode not in ("exact", "histogram"):
        raise ValueError(f"unknown mode {mode!r}")
    blocks = iter_pair_scores(
        x,
        y,
        normalize=normalize,
        impostor_sample=impostor_sample,
        seed=seed,
        block_elems=block_elems,
        probe=probe,
    )
    fars = [float(f) for f in fars]
    if mode == "exact":
        parts = list(blocks)
        s = np.concatenate([p[0] for p in parts])
        same = np.concatenate([p[1] for p in parts])
        fpr, tpr, _ = roc(s, same)
        rate, thr = eer(s, same)
        tars = {rule: tar_at_far(s, same, fars, rule) for rule in TAR_RULES}
        n_gen, n_imp = int(same.sum()), int((~same).sum())
        auc_value, hist_settings = auc(fpr, tpr), None
    else:
        hist = ScoreHistogram(n_bins=n_bins)
        for s, same in blocks:
            hist.add(s, same)
        rate, thr = hist.eer()
        tars = {rule: hist.tar_at_far(fars, rule) for rule in TAR_RULES}
        n_gen, n_imp = hist.n_genuine, hist.n_impostor
        auc_value, hist_settings = hist.auc(), hist.settings()
    out: dict[str, Any] = {
        "protocol": "allpairs",
        "mode": mode,
        "n_images": int(x.shape[0]),
        "n_identities": int(np.unique(y).size),
        "n_genuine": n_gen,
        "n_impostor": n_imp,
        "impostor_sampling": None
        if impostor_sample is None
        else {"n": int(impostor_sample), "seed": int(seed), "with_replacement": True},
        "normalize": bool(normalize),
        "histogram": hist_settings,
        "fars": fars,
        "auc": float(auc_value),
        "eer": float(rate),
        "eer_threshold": float(thr),
        "tar_at_far": {rule: {f"{k:g}": v.to_dict() for k, v in tars[rule].items()} for rule in TAR_RULES},
    }
    if probe is not None:
        out["second_face"] = "row j of the probe embeddings (e.g. the same image at a lower resolution)"
    return out
