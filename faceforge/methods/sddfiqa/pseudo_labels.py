"""SDD-FIQA quality pseudo-labels (Ou et al., CVPR 2021; TFace ``quality/generate_pseudo_labels``).

For every image ``x_i`` of identity ``y_i``, embedded by a frozen recogniser (cosine similarity on
L2-normalised embeddings), in each of ``K`` rounds (Ou et al., CVPR 2021; TFace
``quality/generate_pseudo_labels/gen_pseudo_labels.py``):

* ``S^P_i``: cosines to ``min(m, n_{y_i} - 1)`` other images of the same identity, drawn without
  replacement (all of them when the identity has at most ``m + 1`` images);
* ``S^N_i``: cosines to ``min(m, N - n_{y_i})`` images of other identities, drawn uniformly without
  replacement;
* ``WD_i = W_1(S^P_i, S^N_i) = int |F_P(t) - F_N(t)| dt``, the 1-D Wasserstein distance between the two
  empirical distributions (what ``scipy.stats.wasserstein_distance`` computes);
* the round's distances are min-max normalised over the whole set to ``[0, 100]``:
  ``norm_k(WD_i) = 100 (WD_i - min_j WD_j) / (max_j WD_j - min_j WD_j)`` (all 0 when every distance is
  equal).

The pseudo-label is the mean over rounds, ``Q_i = (1/K) sum_k norm_k(WD_i^k)`` (normalise, then
average: TFace's order).  Defaults ``m = 24``, ``K = 12`` (TFace's ``fix_num`` and loop).

Choices the paper leaves open, each an option:

* **Identities with one image** have no same-identity cosine, so no distance.  ``singletons="drop"``
  (default) gives them no label (they are listed in the report; TFace's script asserts on them and
  users filter them out); ``"zero"`` gives them the lowest label, 0, for pipelines that need a label for
  every image (the face cannot be confirmed by another image of the person).  Either way they still
  serve as *other-identity* images for everyone else, and they take no part in the min-max
  normalisation.
* **Unsigned distance**: W1 is unsigned, so an image whose same-identity cosines lie *below* its
  other-identity cosines (a mislabelled face) also gets a large distance (a known weakness of the unsigned distance; Tencent/TFace
  issue #37 reports a related one, masked faces scoring above their unmasked sources).
  ``signed=True`` multiplies ``WD_i`` by ``sign(mean(S^P_i) - mean(S^N_i))`` before normalising - a
  deviation from the paper, off by default.
* **Randomness**: one ``numpy.random.default_rng(seed)`` drives every round, so a seed gives the same
  labels on any machine.
* **Flip**: TFace embeds without the horizontal-flip sum; ``flip=False`` by default.

W1 is computed for all images at once: for rows ``u`` (``p`` values, weight ``1/p`` each) and ``v``
(``q`` values, weight ``-1/q`` each) merged and sorted, ``F_P - F_N`` between consecutive merged values
is the running sum of the weights, so ``W1 = sum_k |cumsum_k| (z_{k+1} - z_k)``; padding entries carry
weight 0 and change nothing.  Identities are grouped once by sorting (the official script's
per-image identity look-up is O(N * #identities)).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from faceforge.embedders.cache import cached_embed_paths
from faceforge.eval.kinds.base import list_identity_folder
from faceforge.eval.kinds.quality_sources import relative_key, write_quality_csv

__all__ = [
    "SINGLETON_RULES",
    "PseudoLabels",
    "label_folder",
    "minmax_0_100",
    "sample_negatives",
    "sample_positives",
    "sdd_pseudo_labels",
    "sdd_round",
    "wasserstein_rows",
]

SingletonRule = Literal["drop", "zero"]
SINGLETON_RULES: tuple[str, ...] = ("drop", "zero")
DEFAULT_M = 24
DEFAULT_ROUNDS = 12
ROW_CHUNK = 1024


def wasserstein_rows(
    u: np.ndarray, v: np.ndarray, u_count: np.ndarray | None = None, v_count: np.ndarray | None = None
) -> np.ndarray:
    """Row-wise 1-D W1 between ``u[b, :u_count[b]]`` and ``v[b, :v_count[b]]`` (equal weights per sample).

    ``u`` is ``[B, p]``, ``v`` is ``[B, q]``; counts default to the full widths.  Rows with an empty
    side give NaN.  Entries beyond a row's count are ignored (their values may be anything finite).
    """
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    b, p = u.shape
    q = v.shape[1]
    uc = np.full(b, p) if u_count is None else np.asarray(u_count)
    vc = np.full(b, q) if v_count is None else np.asarray(v_count)
    empty = (uc == 0) | (vc == 0)
    wu = np.where(np.arange(p)[None, :] < uc[:, None], 1.0 / np.maximum(uc, 1)[:, None], 0.0)
    wv = np.where(np.arange(q)[None, :] < vc[:, None], -1.0 / np.maximum(vc, 1)[:, None], 0.0)
    z = np.concatenate([np.where(wu != 0, u, 0.0), np.where(wv != 0, v, 0.0)], axis=1)
    w = np.concatenate([wu, wv], axis=1)
    order = np.argsort(z, axis=1, kind="stable")
    zs = np.take_along_axis(z, order, axis=1)
    cum = np.cumsum(np.take_along_axis(w, order, axis=1), axis=1)[:, :-1]
    out = np.sum(np.abs(cum) * np.diff(zs, axis=1), axis=1)
    out[empty] = np.nan
    return out


def _groups(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``order`` (images sorted by identity), and each identity block's ``start``/``end`` in it."""
    order = np.argsort(codes, kind="stable")
    sc = codes[order]
    starts = np.flatnonzero(np.r_[True, sc[1:] != sc[:-1]])
    ends = np.r_[starts[1:], sc.size]
    return order, starts, ends


def sample_positives(codes: np.ndarray, rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray]:
    """``(idx [N, m], count [N])``: for image ``i``, ``count[i] = min(m, n_{y_i} - 1)`` distinct other images
    of its identity in ``idx[i, :count[i]]`` (uniform without replacement); the rest of the row is ``i``."""
    n = codes.size
    idx = np.repeat(np.arange(n)[:, None], m, axis=1)
    count = np.zeros(n, dtype=np.int64)
    order, starts, ends = _groups(codes)
    for a, b in zip(starts, ends, strict=True):
        g = order[a:b]
        s = g.size
        if s < 2:
            continue
        c = min(m, s - 1)
        count[g] = c
        if c == s - 1:  # every other image of the identity
            others = np.broadcast_to(g, (s, s))[~np.eye(s, dtype=bool)].reshape(s, s - 1)
            idx[g, :c] = others
            continue
        for r0 in range(0, s, 256):
            rows = np.arange(r0, min(s, r0 + 256))
            keys = rng.random((rows.size, s))
            keys[np.arange(rows.size), rows] = np.inf  # never the image itself
            pick = np.argpartition(keys, c - 1, axis=1)[:, :c]
            idx[g[rows], :c] = g[pick]
    return idx, count


def sample_negatives(codes: np.ndarray, rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray]:
    """``(idx [N, m], count [N])``: ``min(m, N - n_{y_i})`` distinct images of other identities per image,
    uniform without replacement.

    Positions ``t`` in ``[0, N - n_y)`` of the identity-sorted list skip the image's own identity block;
    a row drawn with replacement is kept when it has no repeat (then it is a uniform subset) and
    redrawn exactly with ``rng.choice(..., replace=False)`` otherwise.
    """
    n = codes.size
    order, starts, ends = _groups(codes)
    block = np.empty(n, dtype=np.int64)
    block[order] = np.repeat(np.arange(starts.size), ends - starts)
    start_i, size_i = starts[block], (ends - starts)[block]
    n_comp = n - size_i
    count = np.minimum(m, n_comp)
    t = np.zeros((n, m), dtype=np.int64)
    full = count == m
    t[full] = rng.integers(0, n_comp[full][:, None], size=(int(full.sum()), m))
    srt = np.sort(t, axis=1)
    dup = full & (srt[:, 1:] == srt[:, :-1]).any(axis=1)
    for i in np.flatnonzero(dup | ~full):
        c = int(count[i])
        t[i, :c] = rng.choice(int(n_comp[i]), size=c, replace=False) if c < n_comp[i] else np.arange(c)
        t[i, c:] = 0
    pos = np.where(t >= start_i[:, None], t + size_i[:, None], t)  # skip the own identity block
    pad = np.arange(m)[None, :] >= count[:, None]
    idx = np.where(pad, np.arange(n)[:, None], order[np.minimum(pos, n - 1)])
    return idx, count


def _row_cosines(emb: np.ndarray, idx: np.ndarray) -> np.ndarray:
    out = np.empty(idx.shape, dtype=np.float64)
    for a in range(0, idx.shape[0], ROW_CHUNK):
        b = min(idx.shape[0], a + ROW_CHUNK)
        out[a:b] = np.einsum("bd,bkd->bk", emb[a:b], emb[idx[a:b]])
    return out


def sdd_round(
    emb: np.ndarray, codes: np.ndarray, rng: np.random.Generator, m: int = DEFAULT_M, signed: bool = False
) -> np.ndarray:
    """One round's raw distances ``WD_i`` (NaN for images without a same-identity image)."""
    pi, pc = sample_positives(codes, rng, m)
    ni, nc = sample_negatives(codes, rng, m)
    sp, sn = _row_cosines(emb, pi), _row_cosines(emb, ni)
    wd = wasserstein_rows(sp, sn, pc, nc)
    if signed:
        mask_p = np.arange(m)[None, :] < pc[:, None]
        mask_n = np.arange(m)[None, :] < nc[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            mp = (sp * mask_p).sum(1) / pc
            mn = (sn * mask_n).sum(1) / nc
        wd = wd * np.sign(mp - mn)
    return wd


def minmax_0_100(x: np.ndarray) -> np.ndarray:
    """``100 (x - min) / (max - min)`` over the finite entries (NaN kept; all 0 when max = min)."""
    out = np.full(x.shape, np.nan)
    ok = np.isfinite(x)
    if not ok.any():
        return out
    lo, hi = float(x[ok].min()), float(x[ok].max())
    out[ok] = 100.0 * (x[ok] - lo) / (hi - lo) if hi > lo else 0.0
    return out


@dataclass
class PseudoLabels:
    """Labels in ``[0, 100]`` per image (NaN: no label), per-round raw distances, and the settings."""

    labels: np.ndarray
    raw_rounds: np.ndarray  # [K, N] W1 before normalisation
    singleton: np.ndarray  # bool [N]: identity with one image
    settings: dict[str, Any] = field(default_factory=dict)


def sdd_pseudo_labels(
    embeddings: np.ndarray,
    identities: Sequence[Any] | np.ndarray,
    m: int = DEFAULT_M,
    rounds: int = DEFAULT_ROUNDS,
    seed: int = 0,
    singletons: SingletonRule = "drop",
    signed: bool = False,
) -> PseudoLabels:
    """SDD-FIQA pseudo-labels of L2-normalised ``embeddings`` with identity labels (module docstring)."""
    if singletons not in SINGLETON_RULES:
        raise ValueError(f"singletons must be one of {SINGLETON_RULES}, got {singletons!r}")
    if m < 1 or rounds < 1:
        raise ValueError(f"m and rounds must be >= 1, got m={m}, rounds={rounds}")
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(identities):
        raise ValueError(f"{emb.shape} embeddings for {len(identities)} identity labels")
    if not np.isfinite(emb).all():
        raise ValueError("embeddings contain NaN or inf (leave unreadable images out first)")
    _, codes = np.unique(np.asarray(identities), return_inverse=True)
    codes = codes.ravel()
    if np.unique(codes).size < 2:
        raise ValueError("SDD-FIQA needs at least two identities (other-identity cosines)")
    sizes = np.bincount(codes)
    singleton = sizes[codes] < 2
    if singleton.all():
        raise ValueError("every identity has one image: no same-identity cosine for any image")
    rng = np.random.default_rng(seed)
    raw = np.stack([sdd_round(emb, codes, rng, m, signed) for _ in range(rounds)])
    labels = np.mean(np.stack([minmax_0_100(r) for r in raw]), axis=0)
    if singletons == "zero":
        labels[singleton] = 0.0
    return PseudoLabels(
        labels=labels,
        raw_rounds=raw,
        singleton=singleton,
        settings={
            "method": "SDD-FIQA pseudo-labels (Ou et al., CVPR 2021)",
            "m": int(m),
            "rounds": int(rounds),
            "seed": int(seed),
            "distance": "W1 between the same-identity and other-identity cosine sets (scipy definition)",
            "normalisation": "per round min-max to [0, 100] over labelled images, then mean over rounds",
            "positives": "min(m, n_identity - 1) other images of the identity, without replacement",
            "negatives": "min(m, N - n_identity) images of other identities, uniform without replacement",
            "singletons": singletons,
            "singleton_rule": "no label (listed)"
            if singletons == "drop"
            else "label 0 (lowest); they still serve as other-identity images",
            "signed": bool(signed),
            "rng": "numpy default_rng(seed), one generator for all rounds",
            "n_images": int(codes.size),
            "n_identities": int(sizes.size),
            "n_singleton_images": int(singleton.sum()),
        },
    )


def _stats(x: np.ndarray) -> dict[str, float]:
    v = x[np.isfinite(x)]
    if v.size == 0:
        return {}
    q = np.quantile(v, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {
        "count": int(v.size),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(v.min()),
        "max": float(v.max()),
        **{f"q{int(p * 100):02d}": float(t) for p, t in zip((0.05, 0.25, 0.5, 0.75, 0.95), q, strict=True)},
    }


def label_folder(
    embedder: Any,
    images_dir: str | Path,
    out_csv: str | Path,
    *,
    m: int = DEFAULT_M,
    rounds: int = DEFAULT_ROUNDS,
    seed: int = 0,
    singletons: SingletonRule = "drop",
    signed: bool = False,
    flip: bool = False,
    cache_dir: str | Path | None = None,
    batch_size: int = 128,
    progress: bool = True,
) -> dict[str, Any]:
    """Pseudo-label ``images_dir/<identity>/<image>`` and write ``path,quality`` (paths relative to the folder).

    Unreadable images are left out (listed) before sampling.  Also writes ``<out stem>_report.json``
    with every setting, the model's ``describe()``, the images without a label and label statistics;
    returns that report.
    """
    t0 = time.perf_counter()
    root = Path(images_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    files, ids, _ = list_identity_folder(root, 1)
    paths = [str(f) for f in files]
    emb, failed = cached_embed_paths(
        embedder,
        paths,
        flip=flip,
        cache_dir=cache_dir,
        batch_size=batch_size,
        normalize=True,
        progress=progress,
    )
    ok = ~np.isnan(emb).any(axis=1)
    keys = [relative_key(p, root) for p in paths]
    res = sdd_pseudo_labels(
        emb[ok], np.asarray(ids)[ok], m=m, rounds=rounds, seed=seed, singletons=singletons, signed=signed
    )
    used = [k for k, good in zip(keys, ok, strict=True) if good]
    out = write_quality_csv(out_csv, used, res.labels)
    report: dict[str, Any] = {
        "format": "faceforge-sddfiqa-labels/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "labels_csv": str(out),
        "csv_format": "path,quality: path relative to images_dir, quality in [0, 100], higher = better",
        "images_dir": str(root),
        "model": embedder.describe(),
        "embedding": {"flip": "sum of original and mirrored" if flip else "none", "normalisation": "L2"},
        "settings": res.settings,
        "n_images_found": len(paths),
        "n_labelled": int(np.isfinite(res.labels).sum()),
        "unreadable_images": failed,
        "singleton_images": [k for k, s in zip(used, res.singleton, strict=True) if s],
        "labels": _stats(res.labels),
        "raw_w1_per_round": [_stats(r) for r in res.raw_rounds],
        "seconds": time.perf_counter() - t0,
    }
    Path(out).with_name(Path(out).stem + "_report.json").write_text(json.dumps(report, indent=2))
    return report
