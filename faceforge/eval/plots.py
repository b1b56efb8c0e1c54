"""Verification plots: ROC curves on a log-FPR axis and genuine/impostor score histograms.

Uses matplotlib's non-interactive Agg backend (selected here, before ``pyplot`` is imported) so
plots render on headless machines and in CI.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from numpy.typing import ArrayLike

__all__ = ["plot_roc", "plot_score_histogram"]

StrPath = str | os.PathLike[str]


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
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    try:
        smallest = 1.0
        for label, (fpr, tpr) in curves.items():
            x = np.asarray(fpr, dtype=np.float64)
            y = np.asarray(tpr, dtype=np.float64)
            keep = x > 0
            if keep.any():
                smallest = min(smallest, float(x[keep].min()))
            ax.plot(x[keep], y[keep], label=label, linewidth=1.5)
        ax.set_xscale("log")
        ax.set_xlim(max(smallest, 1e-7), 1.0)
        ax.set_ylim(0.0, 1.01)
        ax.set_xlabel("False accept rate (FPR)")
        ax.set_ylabel("True accept rate (TPR)")
        ax.set_title(title)
        ax.grid(True, which="both", linestyle=":", linewidth=0.5)
        if curves:
            ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out


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
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    edges = np.histogram_bin_edges(s, bins=bins) if s.size else bins
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    try:
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
        fig.tight_layout()
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out


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
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    try:
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
        fig.tight_layout()
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out
