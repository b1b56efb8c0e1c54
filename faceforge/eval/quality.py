"""Face image quality assessment (FIQA) evaluation: error-versus-reject curves (ERC) and their areas.

Setting (Grother and Tabassi, IEEE TPAMI 2007; SDD-FIQA, Ou et al., CVPR 2021; CR-FIQA
``fdbtrs/CR-FIQA`` ``ERC/erc.py``): comparisons with similarity scores (higher = more
alike, accept when ``score >= threshold``), genuine/impostor labels and a quality value per image.

* Pair quality ``q = min(q_a, q_b)`` (CR-FIQA ``erc.py``, MagFace; the usual convention).
* Pairs are sorted by ``q`` ascending (stable: ties keep pair order) and, for every reject fraction
  ``phi``, the ``floor(phi * n)`` lowest-quality pairs are dropped.
* On the remaining pairs, ``FNMR(phi) = #{remaining genuine with score < t} / #{remaining genuine}``
  for a threshold ``t`` set for each target FMR by the rule of
  :func:`faceforge.eval.allpairs.threshold_at_rate` (smallest threshold with ``FMR <= target``).
  Two named modes:

  - ``"fixed"`` (ISO/IEC 29794-1, Grother & Tabassi): ``t`` is set once, on the impostor scores
    of *all* pairs, and kept for every ``phi``;
  - ``"recomputed"`` (MagFace / CR-FIQA evaluation code): ``t`` is set again on the *remaining*
    impostor scores at every ``phi``.

  An FMR target below ``1 / #impostors`` cannot be met by counting: its threshold is then the next
  float above the highest impostor score (zero false matches allowed).  Each result says, per FMR,
  whether it is resolvable (``#impostors * FMR >= 1``) on all pairs.

* Two summaries per FMR target, both by the trapezoid rule over the given reject fractions
  ``a = phi_0 .. b = phi_last`` (default ``0 .. 0.95`` in steps of ``0.05``):

  - ``area_under_erc`` = ``int_a^b FNMR(phi) dphi`` (lower is better), the plain area under the
    curve that newer papers report (CR-FIQA: ``sklearn.metrics.auc`` over the reject fractions);
  - ``aoc_normalised`` = ``1 - (1 / (b - a)) int_a^b FNMR(phi) / FNMR(a) dphi`` (higher is better).

  TFace does not define the Area Over Curve that SDD-FIQA reports (``AOC = 1 - int g``, g the
  ERC).  The plain ``1 - int_0^0.95 FNMR`` would be about 0.99 for every method on
  LFW, while the paper reports 0.6 - 0.8, so faceforge uses the normalised form above - a
  **reconstruction**, flagged in every result (``aoc_is_reconstruction``).  It has a meaning of its
  own, which is why it was chosen over other normalisations: rejecting pairs at random leaves the
  expected FNMR at ``FNMR(a)`` for every ``phi`` (fixed threshold), so ``(b - a) FNMR(a)`` is the
  area under the random-rejection curve and
  ``AOC = 1 - area(ERC) / area(random rejection) = (area between the random-rejection line and the
  ERC) / area(random rejection)``:
  0 means "no better than rejecting at random", 1 means "every false non-match is removed by the
  first rejection step", negative means worse than random.  It is undefined (``None``) when
  ``FNMR(a) = 0``.

Several quality sources are compared on one set of comparisons (:func:`compare_sources`): every source is
evaluated on the **same** pairs, a pair being left out (for all sources, counted) when an image of it has
no quality in some source, so the curves on one plot compare like with like.  :func:`all_pairs` lists every
pair of an identity-labelled image set (FMR 1e-4 needs far more impostor pairs than a pairs file has), with
a cap beyond which the impostor pairs are sampled (seeded).  :func:`laplacian_variance` is the ``sharpness``
quality of :mod:`faceforge.eval.kinds.quality_sources`, which reads the images and the other sources.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import cv2
import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "AOC_FORMULA",
    "DEFAULT_FMRS",
    "DEFAULT_REJECT_FRACTIONS",
    "MAX_ALL_PAIRS",
    "SHARPNESS_STRIP_PIXELS",
    "all_pairs",
    "compare_sources",
    "erc",
    "erc_areas",
    "laplacian_variance",
    "pair_quality",
    "quality_summary",
    "thresholds_at_rates",
]

ErcMode = Literal["fixed", "recomputed"]
ERC_MODES: tuple[ErcMode, ...] = ("fixed", "recomputed")
DEFAULT_REJECT_FRACTIONS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(20))  # 0 .. 0.95
DEFAULT_FMRS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
AOC_FORMULA = (
    "AOC = 1 - (1/(b-a)) * int_a^b FNMR(phi)/FNMR(a) dphi (trapezoid over the reject fractions, a and b the "
    "first and last) = 1 - area(ERC)/area(random rejection); a reconstruction: TFace does not define its AOC"
)
AREA_FORMULA = "area_under_erc = int_a^b FNMR(phi) dphi (trapezoid over the reject fractions)"
MODE_RULES: dict[str, str] = {
    "fixed": "threshold set once on all pairs (ISO/IEC 29794-1)",
    "recomputed": "threshold re-set on the remaining pairs per reject level (MagFace, CR-FIQA)",
}


def pair_quality(q_a: ArrayLike, q_b: ArrayLike) -> NDArray[np.float64]:
    """``min(q_a, q_b)`` elementwise (CR-FIQA ``ERC/erc.py`` convention)."""
    return np.minimum(np.asarray(q_a, dtype=np.float64), np.asarray(q_b, dtype=np.float64))


def _none_if_nan(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def thresholds_at_rates(negative_scores: ArrayLike, rates: Sequence[float]) -> list[float]:
    """:func:`faceforge.eval.allpairs.threshold_at_rate` for several rates with one sort.

    With the negatives sorted decreasingly ``u_1 >= ... >= u_n`` and ``k = floor(rate * n)``: the
    next float above ``u_{k+1}``, or ``-inf`` when ``k >= n``; ``nan`` when there are no negatives.
    """
    u = np.sort(np.asarray(negative_scores, dtype=np.float64).ravel())[::-1]
    n = u.size
    out: list[float] = []
    for rate in rates:
        if n == 0:
            out.append(math.nan)
            continue
        k = math.floor(float(rate) * n * (1 + 1e-12) + 1e-9)
        out.append(-math.inf if k >= n else float(np.nextafter(u[k], np.inf)))
    return out


def erc_areas(reject_fractions: ArrayLike, fnmr: Sequence[float | None]) -> tuple[float | None, float | None]:
    """``(area_under_erc, aoc_normalised)`` of one curve (formulas in the module docstring)."""
    phis = np.asarray(reject_fractions, dtype=np.float64)
    g = np.array([math.nan if v is None else v for v in fnmr], dtype=np.float64)
    if phis.size < 2 or np.isnan(g).any():
        return None, None
    area = float(np.trapezoid(g, phis))
    span = float(phis[-1] - phis[0])
    aoc = float(1.0 - area / g[0] / span) if g[0] > 0 and span > 0 else None
    return area, aoc


def erc(
    scores: ArrayLike,
    labels: ArrayLike,
    quality_a: ArrayLike,
    quality_b: ArrayLike | None = None,
    *,
    fmrs: Sequence[float] = DEFAULT_FMRS,
    reject_fractions: Sequence[float] = DEFAULT_REJECT_FRACTIONS,
    mode: ErcMode = "fixed",
) -> dict[str, Any]:
    """Error-versus-reject curves of FNMR at each target FMR (see the module docstring).

    Args:
        scores: similarity per pair (higher = same person).
        labels: True for genuine pairs.
        quality_a, quality_b: image qualities of the two sides; if ``quality_b`` is ``None``,
            ``quality_a`` is already the pair quality.
        fmrs: FMR targets for the threshold.
        reject_fractions: increasing fractions of pairs to reject, in ``[0, 1)``.
        mode: ``"fixed"`` or ``"recomputed"`` threshold.

    Result (JSON-serialisable; undefined values are ``None``): ``curves[f"{fmr:g}"]`` with lists
    ``fnmr``, ``threshold`` and ``fmr`` (achieved FMR on the remaining impostors) per reject
    fraction; ``area_under_erc`` and ``aoc_normalised`` per FMR; remaining genuine/impostor counts;
    whether each FMR is resolvable on all pairs; and the settings.
    """
    if mode not in ERC_MODES:
        raise ValueError(f"mode must be 'fixed' or 'recomputed', got {mode!r}")
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    q = (
        np.asarray(quality_a, dtype=np.float64).ravel()
        if quality_b is None
        else pair_quality(quality_a, quality_b)
    )
    q = q.ravel()
    if not (s.size == y.size == q.size):
        raise ValueError("scores, labels and qualities must have the same length")
    if np.isnan(s).any() or np.isnan(q).any():
        raise ValueError("scores or qualities contain NaN")
    phis = np.asarray(reject_fractions, dtype=np.float64)
    if phis.ndim != 1 or phis.size == 0 or (np.diff(phis) <= 0).any() or phis[0] < 0 or phis[-1] >= 1:
        raise ValueError("reject_fractions must be increasing values in [0, 1)")
    if y.all() or not y.any():
        raise ValueError("need genuine and impostor pairs")
    fmr_list = [float(f) for f in fmrs]
    keys = [f"{f:g}" for f in fmr_list]

    n = s.size
    order = np.argsort(q, kind="stable")
    n_reject = np.floor(phis * n * (1 + 1e-12) + 1e-9).astype(np.int64)
    s_sorted, y_sorted = s[order], y[order]
    fixed_thr = thresholds_at_rates(s[~y], fmr_list)

    curves: dict[str, dict[str, list[float | None]]] = {
        k: {"fnmr": [], "threshold": [], "fmr": []} for k in keys
    }
    # counts left after rejecting the first r pairs of the quality order: totals minus prefix sums
    gen_before = np.r_[0, np.cumsum(y_sorted)]
    imp_before = np.r_[0, np.cumsum(~y_sorted)]
    n_gen_left = [int(gen_before[-1] - gen_before[r]) for r in n_reject]
    n_imp_left = [int(imp_before[-1] - imp_before[r]) for r in n_reject]
    if mode == "fixed":  # one threshold per FMR: prefix sums of the errors give every reject level at once
        thr_rows = [fixed_thr] * n_reject.size
        fn_left, fm_left = [], []
        for thr in fixed_thr:
            fn = np.r_[0, np.cumsum(y_sorted & (s_sorted < thr))]
            fm = np.r_[0, np.cumsum(~y_sorted & (s_sorted >= thr))]
            fn_left.append([int(fn[-1] - fn[r]) for r in n_reject])
            fm_left.append([int(fm[-1] - fm[r]) for r in n_reject])
    else:  # the threshold moves with the remaining impostors
        thr_rows, fn_cols, fm_cols = [], [], []
        for r in n_reject:
            ys, ss = y_sorted[r:], s_sorted[r:]
            gen, imp = ss[ys], ss[~ys]
            thrs = thresholds_at_rates(imp, fmr_list)
            thr_rows.append(thrs)
            fn_cols.append([int(np.count_nonzero(gen < t)) if not math.isnan(t) else 0 for t in thrs])
            fm_cols.append([int(np.count_nonzero(imp >= t)) if not math.isnan(t) else 0 for t in thrs])
        fn_left = [list(col) for col in zip(*fn_cols, strict=True)]
        fm_left = [list(col) for col in zip(*fm_cols, strict=True)]
    for j, key in enumerate(keys):
        c = curves[key]
        for i in range(n_reject.size):
            thr = thr_rows[i][j]
            ok = not math.isnan(thr)
            g, m = n_gen_left[i], n_imp_left[i]
            c["fnmr"].append(fn_left[j][i] / g if g and ok else None)
            c["threshold"].append(float(thr) if math.isfinite(thr) else None)
            c["fmr"].append(fm_left[j][i] / m if m and ok else None)

    area: dict[str, float | None] = {}
    aoc: dict[str, float | None] = {}
    for key, c in curves.items():
        area[key], aoc[key] = erc_areas(phis, c["fnmr"])

    n_imp = int((~y).sum())
    return {
        "protocol": "erc",
        "mode": mode,
        "threshold_rule": MODE_RULES[mode],
        "pair_quality": "min" if quality_b is not None else "given",
        "reject_rule": "drop floor(phi * n) lowest-quality pairs; ties keep pair order",
        "reject_fractions": [float(v) for v in phis],
        "fmrs": fmr_list,
        "fmr_resolvable": {k: bool(n_imp * f >= 1) for k, f in zip(keys, fmr_list, strict=True)},
        "curves": curves,
        "n_genuine_remaining": n_gen_left,
        "n_impostor_remaining": n_imp_left,
        "area_under_erc": area,
        "aoc_normalised": aoc,
        "area_formula": AREA_FORMULA,
        "aoc_formula": AOC_FORMULA,
        "aoc_is_reconstruction": True,
        "n_pairs": int(n),
    }


#: float64 working pixels per strip of :func:`laplacian_variance` (32 MB): its memory beyond the decoded image
SHARPNESS_STRIP_PIXELS = 1 << 22


def _grey(rgb: np.ndarray) -> np.ndarray:
    img = np.asarray(rgb, dtype=np.float64)
    return img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114 if img.ndim == 3 else img


def laplacian_variance(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of an RGB uint8 image (the ``sharpness`` source of :mod:`faceforge.eval.kinds.quality_sources`: BT.601 grey, kernel ``[[0,1,0],[1,-4,1],[0,1,0]]``, reflect-101 borders).

    Computed over strips of rows (each with one row of its neighbours on either side, so every pixel sees
    the same 4 neighbours as in one pass) and combined exactly (Chan et al.'s pairwise variance), so the
    working memory is bounded (:data:`SHARPNESS_STRIP_PIXELS` float64 pixels) whatever the image's size: an
    88-megapixel photo costs its decoded pixels plus ~100 MB, not 2.8 GB of float copies.
    """
    arr = np.asarray(rgb)
    height, width = arr.shape[:2]
    rows = max(1, SHARPNESS_STRIP_PIXELS // max(width, 1))
    n_total, mean_total, m2_total = 0, 0.0, 0.0
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        lo, hi = max(0, r0 - 1), min(height, r1 + 1)
        lap = cv2.Laplacian(_grey(arr[lo:hi]), cv2.CV_64F, ksize=1, borderType=cv2.BORDER_REFLECT_101)
        part = lap[r0 - lo : r0 - lo + (r1 - r0)]
        n, mean = part.size, float(part.mean())
        m2 = float(((part - mean) ** 2).sum())
        if n_total == 0:
            n_total, mean_total, m2_total = n, mean, m2
            continue
        delta = mean - mean_total
        both = n_total + n
        m2_total += m2 + delta * delta * n_total * n / both
        mean_total += delta * n / both
        n_total = both
    return m2_total / n_total


#: above this many pairs, ``all_pairs`` keeps every genuine pair and samples the impostor pairs
MAX_ALL_PAIRS = 5_000_000


def all_pairs(
    embeddings: np.ndarray, labels: Sequence[Any], max_pairs: int = MAX_ALL_PAIRS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """``(ia, ib, cosine, issame, info)`` for the pairs ``i < j`` of L2-normalised ``embeddings``.

    Every pair when there are at most ``max_pairs``; otherwise every genuine pair plus
    ``max_pairs - #genuine`` impostor pairs drawn uniformly (``i != j`` with different labels, with
    replacement) from ``np.random.default_rng(seed)``.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(labels)
    n = x.shape[0]
    total = n * (n - 1) // 2
    if total <= max_pairs:
        ia, ib = np.triu_indices(n, k=1)
        cos = np.empty(ia.size, dtype=np.float64)
        step = max(1, 4_000_000 // max(1, x.shape[1]))
        for a in range(0, ia.size, step):
            i, j = ia[a : a + step], ib[a : a + step]
            cos[a : a + step] = np.einsum("ij,ij->i", x[i], x[j])
        return ia, ib, cos, y[ia] == y[ib], {"pairs": "all", "n_pairs_possible": int(total)}
    # every genuine pair, identity by identity
    gi: list[np.ndarray] = []
    gj: list[np.ndarray] = []
    for lab in np.unique(y):
        idx = np.flatnonzero(y == lab)
        if idx.size > 1:
            a, b = np.triu_indices(idx.size, k=1)
            gi.append(idx[a])
            gj.append(idx[b])
    ga = np.concatenate(gi) if gi else np.zeros(0, np.int64)
    gb = np.concatenate(gj) if gj else np.zeros(0, np.int64)
    want = max(0, int(max_pairs) - ga.size)
    rng = np.random.default_rng(seed)
    ia_parts: list[np.ndarray] = []
    ib_parts: list[np.ndarray] = []
    got = 0
    while got < want:
        i = rng.integers(0, n, 2 * (want - got) + 1024)
        j = rng.integers(0, n, i.size)
        ok = y[i] != y[j]
        i, j = i[ok][: want - got], j[ok][: want - got]
        ia_parts.append(np.minimum(i, j))
        ib_parts.append(np.maximum(i, j))
        got += i.size
    ia = np.concatenate([ga, *ia_parts]).astype(np.int64)
    ib = np.concatenate([gb, *ib_parts]).astype(np.int64)
    cos = np.empty(ia.size, dtype=np.float64)
    step = max(1, 4_000_000 // max(1, x.shape[1]))
    for a in range(0, ia.size, step):
        cos[a : a + step] = np.einsum("ij,ij->i", x[ia[a : a + step]], x[ib[a : a + step]])
    info = {
        "pairs": f"every genuine pair + {want} impostor pairs sampled uniformly with replacement (seed {seed})",
        "n_pairs_possible": int(total),
        "max_pairs": int(max_pairs),
    }
    return ia, ib, cos, y[ia] == y[ib], info


def compare_sources(
    scores: np.ndarray,
    issame: np.ndarray,
    ia: np.ndarray,
    ib: np.ndarray,
    qualities: Mapping[str, np.ndarray],
    *,
    fmrs: Sequence[float] = DEFAULT_FMRS,
    reject_fractions: Sequence[float] = DEFAULT_REJECT_FRACTIONS,
    modes: Sequence[str] = ERC_MODES,
) -> dict[str, Any]:
    """ERC of every source (``{label: quality per image}``) on the pairs where every source has a quality.

    Returns ``sources[label][mode]`` = :func:`faceforge.eval.quality.erc` results, ``aoc`` and
    ``area_under_erc`` tables ``[label][mode][fmr]``, and the pair counts.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(issame, dtype=bool)
    ia, ib = np.asarray(ia), np.asarray(ib)
    ok = np.isfinite(s)
    for q in qualities.values():
        qa, qb = np.asarray(q, dtype=np.float64)[ia], np.asarray(q, dtype=np.float64)[ib]
        ok &= np.isfinite(qa) & np.isfinite(qb)
    if not (ok & y).any() or not (ok & ~y).any():
        short = {lb: int(np.isnan(np.asarray(q, dtype=np.float64)).sum()) for lb, q in qualities.items()}
        raise ValueError(
            f"no genuine or no impostor pair has a quality in every source (images without a quality: {short}); "
            "check that the CSV paths are relative to the image folder"
        )
    res: dict[str, dict[str, Any]] = {}
    for label, q in qualities.items():
        q = np.asarray(q, dtype=np.float64)
        res[label] = {
            mode: erc(
                s[ok],
                y[ok],
                q[ia[ok]],
                q[ib[ok]],
                fmrs=fmrs,
                reject_fractions=reject_fractions,
                mode=mode,  # type: ignore[arg-type]
            )
            for mode in modes
        }
    return {
        "sources": res,
        "aoc": {lb: {m: r[m]["aoc_normalised"] for m in modes} for lb, r in res.items()},
        "area_under_erc": {lb: {m: r[m]["area_under_erc"] for m in modes} for lb, r in res.items()},
        "n_pairs": int(s.size),
        "n_pairs_used": int(ok.sum()),
        "n_genuine_used": int((ok & y).sum()),
        "n_impostor_used": int((ok & ~y).sum()),
        "pairs_left_out": int((~ok).sum()),
        "pair_rule": "a pair is used when both images have a quality in every source (same pairs for all)",
        "threshold_modes": {m: MODE_RULES[m] for m in modes},
    }


def quality_summary(res: dict[str, Any]) -> dict[str, float | None]:
    """Headline numbers: FNMR at reject 0 per FMR (fixed threshold); per source the AOC at each FMR (fixed
    threshold) and the mean AOC over the FMRs in each threshold mode."""
    out: dict[str, float | None] = {}
    for i, (label, by_mode) in enumerate(res["sources"].items()):
        if i == 0 and "fixed" in by_mode:
            for key, c in by_mode["fixed"]["curves"].items():
                out[f"fnmr@fmr={key} reject 0"] = c["fnmr"][0]
        for mode, r in by_mode.items():
            if mode == "fixed":
                for key, v in r["aoc_normalised"].items():
                    out[f"aoc@fmr={key} [{label}]"] = v
            vals = [v for v in r["aoc_normalised"].values() if v is not None]
            out[f"aoc mean [{label}] ({mode})"] = float(np.mean(vals)) if vals else None
    return out
