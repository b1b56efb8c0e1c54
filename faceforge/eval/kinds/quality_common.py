"""What the ``quality`` and ``qualityall`` kinds share: the options field of the spec and the run.

Spec: ``quality:PAIRS:IMAGES[:OPTIONS]`` and ``qualityall:IMAGES[:OPTIONS]``; ``OPTIONS`` is a
comma-separated list of quality sources (:mod:`faceforge.eval.kinds.quality_sources`: ``norm``,
``sharpness``, ``csv=PATH[#COLUMN]``, ``facesize=CSV``, ``facebox=CSV``, ``random[=SEED]``,
``model=SPEC``) and settings ``fmr=A+B+C`` (FMR targets, default 1e-2+1e-3+1e-4) and, for
``qualityall``, ``maxpairs=N``.  Without ``OPTIONS`` the source is ``norm`` (the old meaning of
``quality:PAIRS:IMAGES``).  The last ``:`` field is read as ``OPTIONS`` when its first item names a
source or a setting; a folder whose name ends in such a word needs a trailing ``/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from faceforge.eval.kinds.base import BenchmarkSpec, BenchmarkSpecError, RunContext, check_valid
from faceforge.eval.kinds.quality_sources import (
    QUALITY_SOURCES,
    QualityInputs,
    QualitySourceError,
    parse_quality_sources,
    score_images,
)
from faceforge.eval.plots import plot_erc_sources
from faceforge.eval.quality import (
    AOC_FORMULA,
    AREA_FORMULA,
    DEFAULT_FMRS,
    DEFAULT_REJECT_FRACTIONS,
    MAX_ALL_PAIRS,
    MODE_RULES,
    compare_sources,
    quality_summary,
)

SETTING_KEYS = ("fmr", "maxpairs")
DEFAULT_SOURCES = "norm"
MAX_LISTED = 20


def is_options_field(text: str) -> bool:
    first = text.split(",", 1)[0].partition("=")[0].strip()
    return bool(first) and (first in QUALITY_SOURCES or first in SETTING_KEYS)


def parse_options(spec: str, text: str | None, allowed: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``OPTIONS`` -> ``(("sources", ...), ("fmr", ...), ...)``, every part checked."""
    sources: list[str] = []
    opts: dict[str, str] = {}
    for item in (t.strip() for t in (text or "").split(",")):
        if not item:
            continue
        key, _, value = item.partition("=")
        if key in SETTING_KEYS:
            if key not in allowed:
                raise BenchmarkSpecError(spec, f"setting {key!r} does not apply here")
            opts[key] = value
        else:
            sources.append(item)
    src = ",".join(sources) or DEFAULT_SOURCES
    try:
        parse_quality_sources(src)
    except QualitySourceError as exc:
        raise BenchmarkSpecError(spec, str(exc)) from None
    if "fmr" in opts:
        fmrs(spec, opts["fmr"])
    if "maxpairs" in opts and not (opts["maxpairs"].isdigit() and int(opts["maxpairs"]) >= 2):
        raise BenchmarkSpecError(spec, f"maxpairs must be an integer >= 2, got {opts['maxpairs']!r}")
    return (("sources", src), *sorted(opts.items()))


def fmrs(spec: str, text: str | None) -> tuple[float, ...]:
    if not text:
        return DEFAULT_FMRS
    try:
        vals = tuple(float(t) for t in text.split("+"))
    except ValueError:
        raise BenchmarkSpecError(
            spec, f"fmr={text}: expected numbers joined by '+', e.g. fmr=1e-2+1e-3"
        ) from None
    if not all(0 < v < 1 for v in vals):
        raise BenchmarkSpecError(spec, f"fmr={text}: FMR targets must lie in (0, 1)")
    return vals


def split_options(spec: str, parts: list[str], min_fields: int) -> tuple[list[str], str | None]:
    """Pop the trailing ``OPTIONS`` field when there is one (see the module docstring)."""
    if len(parts) >= min_fields + 1 and is_options_field(parts[-1]):
        return parts[:-1], parts[-1]
    return parts, None


def check_sources(b: BenchmarkSpec) -> None:
    for s in parse_quality_sources(b.option("sources", DEFAULT_SOURCES)):
        try:
            s.check()
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{b.spec}: {exc}") from None


def max_pairs(b: BenchmarkSpec) -> int:
    return int(b.option("maxpairs", str(MAX_ALL_PAIRS)))


def run_quality(
    b: BenchmarkSpec,
    ctx: RunContext,
    files: list[str],
    root: str | Path,
    ia: np.ndarray,
    ib: np.ndarray,
    cos: np.ndarray,
    issame: np.ndarray,
    info: dict[str, Any],
    pair_settings: dict[str, Any],
    plot_dir: Path | None,
    validity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``files`` with every source of the spec, compare them on the pairs, build the record.

    Pairs with an unreadable image (a non-finite cosine) are left out; too few scorable pairs (or, for a folder,
    images: ``validity`` computed by the caller) stop with :class:`~faceforge.eval.kinds.base.TooFewValidError`.
    """
    if validity is None:
        ok = np.isfinite(cos)
        validity = check_valid(ctx.name, int(ok.sum()), int(ok.size), "pairs", ctx.min_valid_fraction,
                               ctx.failed_in(files))  # fmt: skip
    sources = parse_quality_sources(b.option("sources", DEFAULT_SOURCES))
    targets = fmrs(b.spec, b.option("fmr", ""))
    inputs = QualityInputs(
        paths=files,
        root=Path(root),
        norms=ctx.norms,
        embed_options={"cache_dir": ctx.cache_dir, "batch_size": ctx.batch_size, "progress": ctx.progress},
    )
    qualities: dict[str, np.ndarray] = {}
    without: dict[str, dict[str, Any]] = {}
    for s in sources:
        got = score_images(s, inputs)
        qualities[s.label] = got.values
        without[s.label] = {"count": len(got.missing), "first": got.missing[:MAX_LISTED]}
    res = compare_sources(
        cos, issame, ia, ib, qualities, fmrs=targets, reject_fractions=DEFAULT_REJECT_FRACTIONS
    )
    rec: dict[str, Any] = {
        "benchmark": info,
        "quality": res,
        "summary": quality_summary(res),
        "images_without_quality": without,
        "pairs_with_unreadable_image": int((~np.isfinite(cos)).sum()),
        "validity": validity,
        "settings": {
            "protocol": "error-versus-reject",
            "quality_sources": {s.label: s.settings() for s in sources},
            "pair_quality": "min of the two images",
            "score": "cosine similarity",
            **pair_settings,
            "fmrs": list(targets),
            "reject_fractions": list(DEFAULT_REJECT_FRACTIONS),
            "threshold_modes": res["threshold_modes"],
            "aoc": AOC_FORMULA,
            "area_under_erc": AREA_FORMULA,
            "pairs_used": res["pair_rule"],
            **ctx.preprocess_settings(),
            "unreadable_images": "pairs left out",
            "min_valid_fraction": ctx.min_valid_fraction,
        },
    }
    if plot_dir is not None:
        rec["plots"] = plot_sources(res, plot_dir, f"ERC: {ctx.name}")
    return rec


def _short(label: str) -> str:
    """``csv=/long/path/labels.csv`` -> ``csv=labels.csv`` for legends."""
    name, sep, arg = label.partition("=")
    return f"{name}={Path(arg).name}" if sep and "/" in arg else label


def plot_sources(res: dict[str, Any], plot_dir: Path, title: str) -> dict[str, str]:
    """One ERC figure per threshold mode, one panel per FMR, one line per source."""
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
