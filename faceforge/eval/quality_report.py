"""Several quality sources compared on one set of comparisons: ERC per source, tables, one plot.

Used by the ``quality`` and ``qualityall`` benchmark kinds and by ``benchmarks/quality.py``.

* Pairs are given as image indices ``(ia, ib)`` into one list of images with a cosine score and a
  genuine/impostor label; each source gives a quality per image and the pair quality is
  ``min(q_a, q_b)`` (:func:`faceforge.eval.quality.erc`).
* Every source is evaluated on the **same** pairs: a pair is left out (for all sources, counted and
  listed) when an image of it has no quality in some source, so the curves on one plot compare like
  with like.
* ``all_pairs`` lists every pair of an identity-labelled image set (FMR 1e-4 needs far more impostor
  pairs than a pairs file has: LFW's official list has 3,000), with a cap on the number of pairs beyond which the
  impostor pairs are sampled (seeded).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from faceforge.eval.quality import (
    DEFAULT_FMRS,
    DEFAULT_REJECT_FRACTIONS,
    ERC_MODES,
    MODE_RULES,
    erc,
)

__all__ = ["MAX_ALL_PAIRS", "all_pairs", "compare_sources", "quality_summary"]

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


def _short(label: str) -> str:
    """``csv=/long/path/labels.csv`` -> ``csv=labels.csv`` for legends."""
    name, sep, arg = label.partition("=")
    return f"{name}={Path(arg).name}" if sep and "/" in arg else label


def plot_sources(res: dict[str, Any], plot_dir: Path, title: str) -> dict[str, str]:
    """One ERC figure per threshold mode, one panel per FMR, one line per source."""
    from faceforge.eval.plots import plot_erc_sources

    out: dict[str, str] = {}
    modes = next(iter(res["sources"].values())).keys() if res["sources"] else []
    for mode in modes:
        curves = {
            _short(label): (r[mode]["reject_fractions"], {k: c["fnmr"] for k, c in r[mode]["curves"].items()})
            for label, r in res["sources"].items()
        }
        aoc = {_short(label): r[mode]["aoc_normalised"] for label, r in res["sources"].items()}
        out[f"erc_{mode}"] = str(
            plot_erc_sources(
                curves, plot_dir / f"erc_{mode}.png", title=f"{title} ({MODE_RULES[mode]})", aoc=aoc
            )
        )
    return out
