"""Verification plots: ROC curves on a log-FPR axis and genuine/impostor score histograms.

Uses matplotlib's non-interactive Agg backend (selected here, before ``pyplot`` is imported) so
plots render on headless machines and in CI.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "plot_cmc",
    "plot_erc",
    "plot_erc_sources",
    "plot_group_bars",
    "plot_group_fmr_overlay",
    "plot_group_roc",
    "plot_lines",
    "plot_roc",
    "plot_score_histogram",
    "saved_figure",
]

StrPath = str | os.PathLike[str]


@contextlib.contextmanager
def saved_figure(out_png: StrPath, figsize: tuple[float, float] = (6, 5)) -> Iterator[Any]:
    """``with saved_figure(path) as ax:`` draw on ``ax``; on exit the figure is laid out, written to
    ``path`` (parent folders created) and closed, also when drawing fails."""
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=figsize, dpi=100)
    try:
        yield ax
        fig.tight_layout()
        fig.savefig(out)
    finally:
        plt.close(fig)


def plot_roc(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    out_png: StrPath,
    title: str = "ROC",
) -> Path:
    """Plot one or more ROC curves (TPR against FPR, FPR on a log axis) and save a PNG.

    Args:
        curves: ``{label: (fpr, tpr)}``, e.g. from :func:`faceforge.eval.roc.roc`.  Points with
            FPR = 0 cannot appear on a log axis and are dropped from the drawing.
        out_png: output file; parent directories are created.
        title: figure title.

    Returns:
        The path written.
    """
    with saved_figure(out_png) as ax:
        smallest = 1.0
        for n, (label, (fpr, tpr)) in enumerate(curves.items()):
            x = np.asarray(fpr, dtype=np.float64)
            y = np.asarray(tpr, dtype=np.float64)
            keep = x > 0
            if keep.any():
                smallest = min(smallest, float(x[keep].min()))
            ax.plot(x[keep], y[keep], label=label, linewidth=1.5, **_style(n))
        ax.set_xscale("log")
        ax.set_xlim(max(smallest, 1e-7), 1.0)
        ax.set_ylim(0.0, 1.01)
        ax.set_xlabel("False accept rate (FPR)")
        ax.set_ylabel("True accept rate (TPR)")
        ax.set_title(title)
        ax.grid(True, which="both", linestyle=":", linewidth=0.5)
        if curves:
            ax.legend(loc="lower right", fontsize=8 if len(curves) > 3 else None)
    return Path(out_png)


LINE_STYLES = ("-", "--", "-.", ":")


def _style(n: int) -> dict[str, str]:
    """Colour and line style of the ``n``-th curve: ten colours, then the next line style."""
    return {"color": f"C{n % 10}", "linestyle": LINE_STYLES[(n // 10) % len(LINE_STYLES)]}


def plot_score_histogram(
    scores: ArrayLike,
    labels: ArrayLike,
    out_png: StrPath,
    title: str = "Score distribution",
    bins: int = 50,
) -> Path:
    """Overlaid, density-normalised histograms of genuine (label true) and impostor scores.

    Returns:
        The path written.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    edges = np.histogram_bin_edges(s, bins=bins) if s.size else bins
    with saved_figure(out_png, figsize=(6, 4)) as ax:
        for mask, name, color in ((y, "genuine", "tab:green"), (~y, "impostor", "tab:red")):
            if mask.any():
                ax.hist(
                    s[mask],
                    bins=edges,
                    density=True,
                    alpha=0.5,
                    color=color,
                    label=f"{name} (n={int(mask.sum())})",
                )
        ax.set_xlabel("score")
        ax.set_ylabel("density")
        ax.set_title(title)
        ax.legend(loc="upper left")
    return Path(out_png)


def plot_erc(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    out_png: StrPath,
    title: str = "Error versus reject",
) -> Path:
    """Plot error-versus-reject curves (FNMR against the fraction of lowest-quality pairs rejected).

    Args:
        curves: ``{label: (reject_fractions, fnmr)}``, e.g. from :func:`faceforge.eval.quality.erc`
            (``None`` values are skipped).
        out_png: output file; parent directories are created.
    """
    with saved_figure(out_png) as ax:
        for label, (x, y) in curves.items():
            xs = np.asarray(x, dtype=np.float64)
            ys = np.array([np.nan if v is None else v for v in y], dtype=np.float64)
            ax.plot(xs, ys, marker="o", markersize=3, label=label, linewidth=1.5)
        ax.set_xlabel("Fraction of pairs rejected (lowest pair quality first)")
        ax.set_ylabel("FNMR")
        ax.set_title(title)
        ax.grid(True, linestyle=":", linewidth=0.5)
        if curves:
            ax.legend(loc="upper right")
    return Path(out_png)


def plot_cmc(cmc: Sequence[float], out_png: StrPath, title: str = "CMC") -> Path:
    """Cumulative match characteristic: identification rate against rank (log rank axis beyond 20)."""
    with saved_figure(out_png, figsize=(6, 4)) as ax:
        ranks = np.arange(1, len(cmc) + 1)
        ax.plot(ranks, np.asarray(cmc, dtype=np.float64), marker="o", markersize=3, linewidth=1.5)
        ax.set_xlabel("rank")
        ax.set_ylabel("identification rate")
        ax.set_ylim(0.0, 1.01)
        if len(cmc) > 20:
            ax.set_xscale("log")
        ax.set_title(title)
        ax.grid(True, which="both", linestyle=":", linewidth=0.5)
    return Path(out_png)


def plot_lines(
    x: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    out_png: StrPath,
    title: str,
    xlabel: str,
    ylabel: str = "rate",
    xticklabels: Sequence[str] | None = None,
) -> Path:
    """One line with markers per curve over the same ``x`` (e.g. accuracy, TAR and FAR against the attack ε)."""
    with saved_figure(out_png, figsize=(6, 4)) as ax:
        for label, y in curves.items():
            ax.plot(list(x), [float(v) for v in y], marker="o", markersize=4, linewidth=1.5, label=label)
        if xticklabels is not None:
            ax.set_xticks(list(x))
            ax.set_xticklabels(list(xticklabels))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.01, 1.01)
        ax.set_title(title)
        ax.grid(True, linestyle=":", linewidth=0.5)
        ax.legend()
    return Path(out_png)


def plot_group_bars(
    values: Mapping[str, float | None],
    out_png: StrPath,
    title: str,
    ylabel: str,
    reference: tuple[float, str] | None = None,
) -> Path:
    """One bar per group (``None`` drawn as 0), with an optional horizontal reference line."""
    names = list(values)
    with saved_figure(out_png, figsize=(6, 4)) as ax:
        ax.bar(names, [values[k] or 0.0 for k in names], color="tab:red")
        if reference is not None:
            ax.axhline(reference[0], color="k", linestyle=":", label=reference[1])
            ax.legend()
        ax.set_ylabel(ylabel)
        ax.set_title(title)
    return Path(out_png)


def plot_group_roc(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    out_png: StrPath,
    title: str = "ROC per group",
    points: Mapping[str, tuple[float | None, float | None]] | None = None,
    points_label: str = "one global threshold",
) -> Path:
    """One ROC curve per group on one log-FPR plot, each group's operating point at a shared threshold
    marked on its own curve (so a single threshold shows as different FMRs per group).

    Args:
        curves: ``{group: (fpr, tpr)}``; FPR = 0 points are dropped from the log axis.
        points: ``{group: (fmr, 1 - fnmr)}`` at the global threshold; a point with FMR 0 (or ``None``)
            is drawn at the left edge with an open marker.
        points_label: legend text of the markers.
    """
    with saved_figure(out_png, figsize=(6.5, 5)) as ax:
        smallest = 1.0
        for x_, _ in curves.values():
            x = np.asarray(x_, dtype=np.float64)
            if (x > 0).any():
                smallest = min(smallest, float(x[x > 0].min()))
        left = max(smallest, 1e-7)
        for n, (label, (fpr, tpr)) in enumerate(curves.items()):
            x = np.asarray(fpr, dtype=np.float64)
            y = np.asarray(tpr, dtype=np.float64)
            keep = x > 0
            color = f"C{n % 10}"
            ax.plot(x[keep], y[keep], label=label, linewidth=1.5, color=color)
            if points and label in points:
                px, py = points[label]
                if py is None:
                    continue
                at_zero = px is None or px <= 0
                ax.plot(
                    left if at_zero else px,
                    py,
                    marker="o",
                    markersize=7,
                    color=color,
                    markerfacecolor="none" if at_zero else color,
                    linestyle="none",
                )
        if points:
            ax.plot([], [], marker="o", color="k", linestyle="none", label=points_label)
        ax.set_xscale("log")
        ax.set_xlim(left, 1.0)
        ax.set_ylim(0.0, 1.01)
        ax.set_xlabel("False match rate (FMR)")
        ax.set_ylabel("True match rate (1 - FNMR)")
        ax.set_title(title)
        ax.grid(True, which="both", linestyle=":", linewidth=0.5)
        if curves:
            ax.legend(loc="lower right", fontsize=8)
    return Path(out_png)


def plot_erc_sources(
    curves: Mapping[str, tuple[ArrayLike, Mapping[str, Sequence[float | None]]]],
    out_png: StrPath,
    title: str = "Error versus reject",
    aoc: Mapping[str, Mapping[str, float | None]] | None = None,
) -> Path:
    """Error-versus-reject curves of several quality sources: one panel per FMR, one line per source.

    Args:
        curves: ``{source: (reject_fractions, {fmr key: fnmr per reject fraction})}`` (``None`` skipped).
        out_png: output file; parent directories are created.
        aoc: optional ``{source: {fmr key: AOC}}`` shown in the legend.
    """
    fmr_keys: list[str] = []
    for _, by_fmr in curves.values():
        fmr_keys += [k for k in by_fmr if k not in fmr_keys]
    n = max(1, len(fmr_keys))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.4), dpi=100, squeeze=False)
    try:
        for ax, key in zip(axes[0], fmr_keys, strict=False):
            for n, (label, (x, by_fmr)) in enumerate(curves.items()):
                if key not in by_fmr:
                    continue
                ys = np.array([np.nan if v is None else v for v in by_fmr[key]], dtype=np.float64)
                a = (aoc or {}).get(label, {}).get(key)
                name = label if a is None else f"{label} (AOC {a:.3f})"
                ax.plot(
                    np.asarray(x, dtype=np.float64),
                    ys,
                    marker="o",
                    markersize=2.5,
                    linewidth=1.3,
                    label=name,
                    **_style(n),
                )
            ax.set_xlabel("Fraction of pairs rejected")
            ax.set_ylabel("FNMR")
            ax.set_title(f"FMR {key}")
            ax.grid(True, linestyle=":", linewidth=0.5)
            ax.legend(loc="upper right", fontsize=7)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out


def plot_group_fmr_overlay(
    runs: Mapping[str, Mapping[str, float | None]],
    out_png: StrPath,
    title: str = "Per-group FMR",
    target: float | None = None,
) -> Path:
    """Each run's per-group FMR at its global threshold: groups along x, one marked line per run, FMR on a
    log axis; an FMR of 0 is drawn at the bottom edge with an open marker, ``None`` (no impostor pairs) is
    left out.

    Args:
        runs: ``{run label: {group: FMR}}``; groups are placed in the order they first appear.
        target: the overall FMR the thresholds were set for, drawn as a dotted line.
    """
    groups: list[str] = []
    for values in runs.values():
        groups += [g for g in values if g not in groups]
    positive = [v for values in runs.values() for v in values.values() if v]
    floor = min([*positive, target or 1.0, 1.0]) / 3
    with saved_figure(out_png, figsize=(min(16.0, max(6.0, 0.5 * len(groups) + 3)), 5)) as ax:
        for n, (label, values) in enumerate(runs.items()):
            xs = [i for i, g in enumerate(groups) if values.get(g) is not None]
            ys = [values[groups[i]] or floor for i in xs]
            style = _style(n)
            ax.plot(xs, ys, marker="o", markersize=6, linewidth=1.3, label=label, **style)
            zeros = [i for i in xs if values[groups[i]] == 0]
            if zeros:
                ax.plot(zeros, [floor] * len(zeros), marker="o", markersize=8, linestyle="none",
                        markerfacecolor="white", color=style["color"])  # fmt: skip
        if target is not None:
            ax.axhline(target, color="k", linestyle=":", linewidth=1, label=f"overall target {target:g}")
        ax.set_yscale("log")
        ax.set_ylim(floor / 1.5, min(1.0, 3 * max([*positive, target or floor])))
        tilt = len(groups) > 6
        ax.set_xticks(
            range(len(groups)), groups, rotation=30 if tilt else 0, ha="right" if tilt else "center"
        )
        ax.set_xlabel("group (open marker: no false match, drawn at the bottom)")
        ax.set_ylabel("FMR at the global threshold")
        ax.set_title(title)
        ax.grid(True, which="both", axis="y", linestyle=":", linewidth=0.5)
        if runs:
            ax.legend(loc="best", fontsize=8)
    return Path(out_png)
