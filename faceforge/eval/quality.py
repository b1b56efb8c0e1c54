"""Face image quality assessment (FIQA) evaluation: error-versus-reject curves (ERC).

Setting (methods.md §5.3, anchors.md §6.5): comparisons with similarity scores (higher = more
alike, accept when ``score >= threshold``), genuine/impostor labels and a quality value per image.

* Pair quality ``q = min(q_a, q_b)``.
* Pairs are sorted by ``q`` ascending (stable: ties keep pair order) and, for every reject fraction
  ``phi``, the ``floor(phi * n)`` lowest-quality pairs are dropped.
* On the remaining pairs, ``FNMR(phi) = #{remaining genuine with score < t} / #{remaining genuine}``
  for a threshold ``t`` set for each target FMR by :func:`faceforge.eval.allpairs.threshold_at_rate`
  (smallest threshold with ``FMR <= target``).  Two named modes:

  - ``"fixed"`` (ISO/IEC 29794-1, Grother & Tabassi): ``t`` is set once, on the impostor scores
    of *all* pairs, and kept for every ``phi``;
  - ``"recomputed"`` (MagFace / CR-FIQA evaluation code): ``t`` is set again on the *remaining*
    impostor scores at every ``phi``.

* Summaries per FMR target: the area under the ERC, ``int FNMR(phi) dphi`` by the trapezoid rule
  over the given reject fractions (lower is better), and the normalised area over the curve
  ``AOC = 1 - (1 / (b - a)) int_a^b FNMR(phi) / FNMR(a) dphi`` (higher is better; ``a, b`` the first
  and last reject fraction).  The AOC formula is a **reconstruction** (methods.md §5.3: the SDD-FIQA
  values are only reachable with this normalisation; not verified against their code).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from faceforge.eval.allpairs import threshold_at_rate

__all__ = ["DEFAULT_REJECT_FRACTIONS", "erc", "pair_quality"]

ErcMode = Literal["fixed", "recomputed"]
DEFAULT_REJECT_FRACTIONS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(20))  # 0 .. 0.95
DEFAULT_FMRS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)


def pair_quality(q_a: ArrayLike, q_b: ArrayLike) -> NDArray[np.float64]:
    """``min(q_a, q_b)`` elementwise (CR-FIQA ``erc.py`` convention, methods.md §5.3)."""
    return np.minimum(np.asarray(q_a, dtype=np.float64), np.asarray(q_b, dtype=np.float64))


def _none_if_nan(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


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
    and the settings.
    """
    if mode not in ("fixed", "recomputed"):
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

    n = s.size
    order = np.argsort(q, kind="stable")
    n_reject = np.floor(phis * n * (1 + 1e-12) + 1e-9).astype(np.int64)
    fixed_thr = {float(f): threshold_at_rate(s[~y], float(f))[0] for f in fmrs}

    curves: dict[str, dict[str, list[float | None]]] = {
        f"{float(f):g}": {"fnmr": [], "threshold": [], "fmr": []} for f in fmrs
    }
    n_gen_left: list[int] = []
    n_imp_left: list[int] = []
    for r in n_reject:
        keep = order[r:]
        gen, imp = s[keep][y[keep]], s[keep][~y[keep]]
        n_gen_left.append(int(gen.size))
        n_imp_left.append(int(imp.size))
        for f in fmrs:
            c = curves[f"{float(f):g}"]
            if mode == "fixed":
                thr = fixed_thr[float(f)]
            else:
                thr = threshold_at_rate(imp, float(f))[0] if imp.size else math.nan
            fnmr = (
                float(np.count_nonzero(gen < thr) / gen.size)
                if gen.size and not math.isnan(thr)
                else math.nan
            )
            fmr = (
                float(np.count_nonzero(imp >= thr) / imp.size)
                if imp.size and not math.isnan(thr)
                else math.nan
            )
            c["fnmr"].append(_none_if_nan(fnmr))
            c["threshold"].append(None if not math.isfinite(thr) else float(thr))
            c["fmr"].append(_none_if_nan(fmr))

    area: dict[str, float | None] = {}
    aoc: dict[str, float | None] = {}
    span = float(phis[-1] - phis[0])
    for key, c in curves.items():
        g = np.array([math.nan if v is None else v for v in c["fnmr"]], dtype=np.float64)
        if np.isnan(g).any() or phis.size < 2:
            area[key] = aoc[key] = None
            continue
        a = float(np.trapezoid(g, phis))
        area[key] = a
        aoc[key] = float(1.0 - a / g[0] / span) if g[0] > 0 and span > 0 else None

    return {
        "protocol": "erc",
        "mode": mode,
        "threshold_rule": "set on all pairs once (ISO/IEC 29794-1)"
        if mode == "fixed"
        else "re-set on remaining pairs per reject level (MagFace / CR-FIQA)",
        "pair_quality": "min" if quality_b is not None else "given",
        "reject_rule": "drop floor(phi * n) lowest-quality pairs; ties keep pair order",
        "reject_fractions": [float(v) for v in phis],
        "fmrs": [float(f) for f in fmrs],
        "curves": curves,
        "n_genuine_remaining": n_gen_left,
        "n_impostor_remaining": n_imp_left,
        "area_under_erc": area,
        "aoc_normalised": aoc,
        "aoc_is_reconstruction": True,
        "n_pairs": int(n),
    }
