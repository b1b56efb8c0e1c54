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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "AOC_FORMULA",
    "DEFAULT_FMRS",
    "DEFAULT_REJECT_FRACTIONS",
    "erc",
    "erc_areas",
    "pair_quality",
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
