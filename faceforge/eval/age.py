"""Age-invariant face recognition protocols: age-gap verification, FG-NET leave-one-out, CACD-VS.

None of the public codebases insightface, TFace, FaceX-Zoo, face.evoLVe and ``Hzzone/MTLFace`` implements FG-NET
leave-one-out or CACD-VS; the protocols
below follow their common description in AIFR papers and are written from these definitions:

* :func:`age_gap_verification`: pairs with the two ages; accuracy by the insightface 10-fold rule
  (:func:`faceforge.eval.verification.kfold_accuracy`, squared L2 distances, accept ``d < t``).
  Every pair is decided with the threshold of *its own* fold (chosen on the other folds), and these
  out-of-fold decisions give the per-band TAR / FAR / accuracy, band ``b`` holding the pairs with
  ``edges[b] <= |age_a - age_b| < edges[b + 1]``.  Per-band AUC uses ``-d`` as the score.
* :func:`fgnet_leave_one_out`: every image is a probe against all *other* images as gallery;
  rank-1 is correct when the best same-subject score beats the best other-subject score (ties count
  as errors).  Subjects with a single image have no mate and are excluded (reported).  FG-NET file
  names ``SSSAaa[x].JPG`` give subject ``SSS`` and age ``aa`` (e.g. ``001A02.JPG``: subject 001,
  age 2; ``010A07a.JPG``: subject 010, age 7).
* :func:`cacd_vs_accuracy`: 10-fold accuracy over a pairs list (contiguous folds in list order, so
  give the pairs in the official fold order: CACD-VS has 10 folds of 200 positive + 200 negative
  pairs).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from faceforge.eval.roc import auc, roc
from faceforge.eval.verification import fold_ids, kfold_accuracy, l2_normalize, squared_l2

__all__ = [
    "DEFAULT_AGE_EDGES",
    "age_gap_verification",
    "cacd_vs_accuracy",
    "fgnet_leave_one_out",
    "parse_fgnet_name",
]

DEFAULT_AGE_EDGES: tuple[float, ...] = (0, 5, 10, 20, math.inf)
_FGNET = re.compile(r"^(\d+)A(\d+)[A-Z]?\.[A-Z]+$", re.IGNORECASE)


def _edge(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def age_gap_verification(
    dist: ArrayLike,
    issame: ArrayLike,
    age_a: ArrayLike,
    age_b: ArrayLike,
    edges: Sequence[float] = DEFAULT_AGE_EDGES,
    n_folds: int = 10,
) -> dict[str, Any]:
    """10-fold accuracy overall plus per-age-gap-band TAR/FAR/accuracy/AUC (module docstring).

    ``dist``: squared L2 distances of normalised embeddings (:func:`squared_l2`).  Result: the
    overall ``KFoldResult.to_dict()``, and ``bands`` (list, one per band, with ``lo`` / ``hi``
    (``None`` = infinity), counts, ``tar``, ``far``, ``accuracy``, ``auc``; ``None`` when
    undefined).
    """
    d = np.asarray(dist, dtype=np.float64).ravel()
    y = np.asarray(issame).astype(bool).ravel()
    gap = np.abs(np.asarray(age_a, dtype=np.float64).ravel() - np.asarray(age_b, dtype=np.float64).ravel())
    if not (d.size == y.size == gap.size):
        raise ValueError("dist, issame and ages must have the same length")
    e = np.asarray(edges, dtype=np.float64)
    if e.size < 2 or (np.diff(e) <= 0).any():
        raise ValueError("edges must be increasing with at least two values")
    kf = kfold_accuracy(d, y, n_folds)
    accepted = d < kf.fold_thresholds[fold_ids(d.size, n_folds)]
    bands = []
    for lo, hi in itertools.pairwise(e):
        m = (gap >= lo) & (gap < hi)
        gen, imp = m & y, m & ~y
        ng, ni = int(gen.sum()), int(imp.sum())
        band_auc = None
        if ng and ni:
            fpr, tpr, _ = roc(-d[m], y[m])
            band_auc = auc(fpr, tpr)
        bands.append(
            {
                "lo": _edge(lo),
                "hi": _edge(hi),
                "n_genuine": ng,
                "n_impostor": ni,
                "tar": float(np.count_nonzero(accepted & gen) / ng) if ng else None,
                "far": float(np.count_nonzero(accepted & imp) / ni) if ni else None,
                "accuracy": float(np.count_nonzero(accepted[m] == y[m]) / (ng + ni)) if ng + ni else None,
                "auc": band_auc,
            }
        )
    return {
        "protocol": "age_gap_verification",
        "gap_rule": "edges[b] <= |age_a - age_b| < edges[b+1]",
        "decision_rule": "out-of-fold: each pair uses its fold's threshold, accept d < t",
        "edges": [_edge(v) for v in e],
        "overall": kf.to_dict(),
        "bands": bands,
    }


def parse_fgnet_name(name: str) -> tuple[str, int]:
    """``"001A02.JPG" -> ("001", 2)``; a trailing letter before the extension is allowed."""
    m = _FGNET.match(Path(name).name)
    if m is None:
        raise ValueError(f"not an FG-NET file name: {name!r}")
    return m.group(1), int(m.group(2))


def fgnet_leave_one_out(
    embeddings: ArrayLike,
    names: Sequence[str] | None = None,
    subjects: ArrayLike | None = None,
    ages: ArrayLike | None = None,
    age_edges: Sequence[float] | None = None,
    chunk: int = 1024,
) -> dict[str, Any]:
    """Leave-one-image-out rank-1 identification on FG-NET.

    For probe ``i``: ``mate_i = max_{j != i, subj j = subj i} cos(x_i, x_j)``,
    ``other_i = max_{subj j != subj i} cos(x_i, x_j)``; correct when ``mate_i > other_i``.
    Subjects (and ages) come from ``names`` via :func:`parse_fgnet_name`, or from ``subjects``
    (``ages``).  With ``age_edges`` the rank-1 rate is also reported per probe-age band.
    """
    x = l2_normalize(np.asarray(embeddings, dtype=np.float64))
    if names is not None:
        parsed = [parse_fgnet_name(n) for n in names]
        subj = np.array([p[0] for p in parsed])
        age = np.array([p[1] for p in parsed], dtype=np.float64)
    elif subjects is not None:
        subj = np.asarray(subjects).ravel()
        age = None if ages is None else np.asarray(ages, dtype=np.float64).ravel()
    else:
        raise ValueError("give names or subjects")
    n = x.shape[0]
    if subj.size != n:
        raise ValueError(f"{n} embeddings but {subj.size} subject labels")
    _, inv, counts = np.unique(subj, return_inverse=True, return_counts=True)
    has_mate = counts[inv] > 1
    correct = np.zeros(n, dtype=bool)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        s = x[a:b] @ x.T
        s[np.arange(b - a), np.arange(a, b)] = -np.inf
        same = inv[a:b, None] == inv[None, :]
        mate = np.where(same, s, -np.inf).max(axis=1)
        other = np.where(same, -np.inf, s).max(axis=1)
        correct[a:b] = mate > other
    n_probe = int(has_mate.sum())
    out: dict[str, Any] = {
        "protocol": "fgnet_leave_one_out",
        "tie_rule": "ties count as errors",
        "rank1": float(correct[has_mate].mean()) if n_probe else None,
        "n_probes": n_probe,
        "n_excluded": int(n - n_probe),
        "n_subjects": int(counts.size),
    }
    if age_edges is not None:
        if age is None:
            raise ValueError("age_edges needs ages (from names or ages=)")
        bands = []
        for lo, hi in itertools.pairwise(age_edges):
            m = has_mate & (age >= lo) & (age < hi)
            bands.append(
                {
                    "lo": _edge(lo),
                    "hi": _edge(hi),
                    "n_probes": int(m.sum()),
                    "rank1": float(correct[m].mean()) if m.any() else None,
                }
            )
        out["age_bands"] = bands
    return out


def cacd_vs_accuracy(
    embeddings: ArrayLike,
    names: Sequence[str],
    pairs: Sequence[tuple[str, str, bool]],
    n_folds: int = 10,
) -> dict[str, Any]:
    """CACD-VS style 10-fold accuracy over ``pairs`` (``(name_a, name_b, same)``, in fold order).

    ``d = squared_l2(e_a, e_b)`` on normalised embeddings, then
    :func:`faceforge.eval.verification.kfold_accuracy` (grid ``arange(0, 4, 0.01)``).
    """
    x = np.asarray(embeddings)
    index = {n: i for i, n in enumerate(names)}
    if len(index) != len(names) or len(names) != x.shape[0]:
        raise ValueError("names must be unique and aligned with the embeddings")
    try:
        ia = np.array([index[p[0]] for p in pairs], dtype=np.intp)
        ib = np.array([index[p[1]] for p in pairs], dtype=np.intp)
    except KeyError as err:
        raise KeyError(f"pair image without embedding: {err.args[0]}") from None
    same = np.array([bool(p[2]) for p in pairs])
    kf = kfold_accuracy(squared_l2(x[ia], x[ib]), same, n_folds)
    return {"protocol": "cacd_vs", **kf.to_dict(), "n_pairs": len(pairs), "n_genuine": int(same.sum())}
