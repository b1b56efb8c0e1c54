"""What ``eval --compare`` overlays, read from one benchmark record of a ``result.json``, checked.

Three kinds of curve, each from the record's own data:

* ROC (kinds with a ROC plot: ``lfw``, ``bin``, ``allpairs``, ``ijb``): ``curves["roc"]``, the bounded
  ROC points of :func:`faceforge.eval.roc.roc_points`; result files written before faceforge kept them
  have none, and the reader says so;
* error-versus-reject (``quality``, ``qualityall``): ``quality["sources"][source][mode]`` (reject fractions,
  FNMR per FMR target, AOC), which quality records have always held;
* per-group FMR (``bias``, ``biaspairs``): ``bias["groups"][group]["fmr"]`` at one global threshold, or for
  records with genuine pairs ``bias["at_fmr"][first target]["groups"][group]["fmr"]``.

A result file may come from someone else: every value is checked (lists of at most
:data:`MAX_POINTS` finite numbers in [0, 1], at most :data:`MAX_GROUPS` groups, names cut to
:data:`MAX_NAME` characters) and anything else is reported as a reason, never drawn or raised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "MAX_GROUPS",
    "MAX_NAME",
    "MAX_POINTS",
    "ROC_KINDS",
    "ErcSeries",
    "GroupFmr",
    "erc_of",
    "group_fmr_of",
    "roc_of",
]

#: the most points a curve read from a result file may have
MAX_POINTS = 5000
#: the most groups a per-group FMR overlay draws
MAX_GROUPS = 60
#: names (groups, quality sources) longer than this are cut
MAX_NAME = 40
#: benchmark kinds whose per-run report has a ROC plot
ROC_KINDS = ("lfw", "bin", "allpairs", "ijb")
QUALITY_KINDS = ("quality", "qualityall")
BIAS_KINDS = ("bias", "biaspairs")

NO_ROC_POINTS = "no ROC points in this result file (written before result files kept them, or without plots)"


class _Bad(ValueError):
    """A value of the record that cannot be drawn; the message says which and why."""


def short_name(text: Any) -> str:
    """A name as it may appear on a plot: a string of at most :data:`MAX_NAME` printable characters."""
    s = "".join(c if c.isprintable() else "?" for c in str(text))
    return s if len(s) <= MAX_NAME else s[: MAX_NAME - 1] + "…"


def _numbers(value: Any, what: str, allow_none: bool = False) -> np.ndarray:
    """A list of 1..MAX_POINTS numbers in [0, 1] (``None`` -> NaN where allowed) as float64."""
    if not isinstance(value, list) or not value:
        raise _Bad(f"{what} is not a non-empty list")
    if len(value) > MAX_POINTS:
        raise _Bad(f"{what} has {len(value)} points, more than {MAX_POINTS}")
    out = np.empty(len(value), dtype=np.float64)
    for i, v in enumerate(value):
        if v is None and allow_none:
            out[i] = np.nan
        elif isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1:
            out[i] = float(v)
        else:
            raise _Bad(f"{what}[{i}] is {str(v)[:20]!r}, not a number in [0, 1]")
    return out


def _rate(value: Any, what: str) -> float | None:
    if value is None:
        return None
    return float(_numbers([value], what)[0])


def _kind(rec: dict[str, Any]) -> str:
    return str(rec.get("kind", ""))


def roc_of(rec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | str | None:
    """``(fpr, tpr)`` of the record's ROC points; a reason when it should have them but has none or bad
    ones; ``None`` for a kind without a ROC."""
    has_roc_plot = isinstance(rec.get("plots"), dict) and "roc" in rec["plots"]
    curves = rec.get("curves")
    if not isinstance(curves, dict) or "roc" not in curves:
        return NO_ROC_POINTS if (_kind(rec) in ROC_KINDS or has_roc_plot) else None
    roc = curves["roc"]
    try:
        if not isinstance(roc, dict):
            raise _Bad("curves.roc is not an object")
        fpr = _numbers(roc.get("fpr"), "curves.roc.fpr")
        tpr = _numbers(roc.get("tpr"), "curves.roc.tpr")
        if fpr.size != tpr.size:
            raise _Bad(f"curves.roc has {fpr.size} FPRs but {tpr.size} TPRs")
    except _Bad as exc:
        return f"unusable ROC points: {exc}"
    return fpr, tpr


@dataclass(frozen=True)
class ErcSeries:
    """One quality source's error-versus-reject curves in one threshold mode."""

    source: str
    reject_fractions: np.ndarray
    fnmr: dict[str, np.ndarray]  # {FMR key: FNMR per reject fraction (NaN: none)}
    aoc: dict[str, float | None]  # {FMR key: normalised AOC}


def erc_of(rec: dict[str, Any], mode: str = "fixed") -> list[ErcSeries] | str | None:
    """The record's ERC curves in threshold ``mode`` (else its first mode), one per quality source; a reason
    when they are missing or bad; ``None`` for a kind without quality."""
    quality = rec.get("quality")
    if quality is None:
        return "no error-versus-reject curves in this result file" if _kind(rec) in QUALITY_KINDS else None
    out: list[ErcSeries] = []
    try:
        sources = quality.get("sources") if isinstance(quality, dict) else None
        if not isinstance(sources, dict) or not sources:
            raise _Bad("quality.sources is not a non-empty object")
        for label, by_mode in list(sources.items())[:MAX_GROUPS]:
            if not isinstance(by_mode, dict) or not by_mode:
                raise _Bad(f"quality.sources[{short_name(label)!r}] is not an object")
            r = by_mode.get(mode, next(iter(by_mode.values())))
            if not isinstance(r, dict) or not isinstance(r.get("curves"), dict):
                raise _Bad(f"source {short_name(label)!r} has no curves")
            x = _numbers(r.get("reject_fractions"), "reject_fractions")
            fnmr, aoc = {}, {}
            raw_aoc = r.get("aoc_normalised") if isinstance(r.get("aoc_normalised"), dict) else {}
            for key, c in list(r["curves"].items())[:MAX_GROUPS]:
                y = _numbers(c.get("fnmr") if isinstance(c, dict) else None, f"FNMR at FMR {key}", True)
                if y.size != x.size:
                    raise _Bad(f"FNMR at FMR {short_name(key)} has {y.size} values for {x.size} fractions")
                fnmr[short_name(key)] = y
                a = raw_aoc.get(key)
                aoc[short_name(key)] = a if isinstance(a, int | float) and math.isfinite(a) else None
            out.append(ErcSeries(short_name(label), x, fnmr, aoc))
    except _Bad as exc:
        return f"unusable error-versus-reject curves: {exc}"
    return out


@dataclass(frozen=True)
class GroupFmr:
    """Each group's FMR at one global threshold set for ``target_fmr`` over all groups."""

    fmr: dict[str, float | None]
    target_fmr: float | None


def group_fmr_of(rec: dict[str, Any]) -> GroupFmr | str | None:
    """The record's per-group FMRs (module docstring); a reason when missing or bad; ``None`` for a kind
    without groups."""
    bias = rec.get("bias")
    if bias is None:
        return "no per-group FMRs in this result file" if _kind(rec) in BIAS_KINDS else None
    try:
        if not isinstance(bias, dict):
            raise _Bad("bias is not an object")
        at = bias
        if isinstance(bias.get("at_fmr"), dict) and bias["at_fmr"]:
            at = next(iter(bias["at_fmr"].values()))
        groups = at.get("groups") if isinstance(at, dict) else None
        if not isinstance(groups, dict) or not groups:
            raise _Bad("no groups")
        if len(groups) > MAX_GROUPS:
            raise _Bad(f"{len(groups)} groups, more than {MAX_GROUPS}")
        fmr = {
            short_name(k): _rate(
                v.get("fmr") if isinstance(v, dict) else v, f"FMR of group {short_name(k)!r}"
            )
            for k, v in groups.items()
        }
        target = _rate(at.get("target_fmr"), "target_fmr")
    except _Bad as exc:
        return f"unusable per-group FMRs: {exc}"
    return GroupFmr(fmr, target)
