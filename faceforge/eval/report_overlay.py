"""The overlay plots of an HTML comparison: every compared run's curves of one benchmark on one figure.

For each benchmark name of an ``eval --compare`` page with two or more runs, :func:`overlay_section` draws

* one ROC plot (FPR on a log axis) with a curve per run, the legend naming the run and its TAR at FAR
  1e-3 (else its AUC);
* for quality benchmarks, one error-versus-reject figure (a panel per FMR target, the fixed-threshold mode
  of ISO/IEC 29794-1) with a line per run (and per quality source where a run has several), the legend
  giving each line's AOC;
* for bias benchmarks, one per-group FMR plot with a marked line per run, the legend giving the spread
  (largest over smallest FMR);

and embeds them as base64 PNG beside the per-run plots. A run whose record lacks the data (a result file
written before ``curves`` were kept) or holds data that cannot be drawn is left off the overlay and named
in a note; it keeps its own section and plots. Data are read and checked by :mod:`.overlay_data`.
"""

from __future__ import annotations

import base64
import html
import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from faceforge.eval.overlay_data import ErcSeries, GroupFmr, erc_of, group_fmr_of, roc_of, short_name
from faceforge.eval.plots import plot_erc_sources, plot_group_fmr_overlay, plot_roc

__all__ = ["MAX_OVERLAY_RUNS", "legend_name", "overlay_section"]

#: the most runs drawn on one overlay (ten colours times four line styles); later runs get a note
MAX_OVERLAY_RUNS = 40


def _plain(text: str) -> str:
    """Text for a matplotlib label: ``$`` escaped, so nothing is read as mathtext."""
    return text.replace("\\", "/").replace("$", r"\$")


def legend_name(run: dict[str, Any], i: int) -> str:
    """A run's short name on plots: ``#<n> <result file's folder>`` (else ``#<n> <model kind>``)."""
    src = run.get("_source")
    base = Path(src).parent.name if src else str((run.get("model") or {}).get("kind", "run"))
    return f"#{i + 1} {short_name(base or 'run')}"


def _number(summary: Any, key: str) -> float | None:
    v = summary.get(key) if isinstance(summary, dict) else None
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def _roc_headline(rec: dict[str, Any]) -> str:
    summary = rec.get("summary")
    tar = _number(summary, "tar@far=0.001")
    if tar is not None:
        return f"TAR@FAR=1e-3 {tar:.4f}"
    auc = _number(summary, "auc")
    return f"AUC {auc:.4f}" if auc is not None else "no headline number"


def _spread(g: GroupFmr) -> str:
    vals = [v for v in g.fmr.values() if v is not None]
    if not vals:
        return "no FMR"
    lo, hi = min(vals), max(vals)
    return f"max/min x{hi / lo:.2f}" if lo > 0 else f"max {hi:.2g}, a group at 0"


def _embed(png: Path, alt: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode()
    return f'<img class="overlay" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _collect(
    recs: Sequence[dict[str, Any] | None],
    names: Sequence[str],
    read: Callable[[dict[str, Any]], Any],
    what: str,
    notes: list[str],
) -> list[tuple[int, Any]]:
    """``(run index, data)`` of the runs whose record has ``what``; a note for each that should and does not."""
    got: list[tuple[int, Any]] = []
    for i, rec in enumerate(recs):
        if rec is None:
            continue
        data = read(rec)
        if isinstance(data, str):
            notes.append(f"{names[i]}: {data}; its {what} is shown in its own section only")
        elif data is not None:
            got.append((i, data))
    if len(got) > MAX_OVERLAY_RUNS:
        left = ", ".join(names[i] for i, _ in got[MAX_OVERLAY_RUNS:])
        notes.append(f"{what} overlay: only the first {MAX_OVERLAY_RUNS} runs are drawn; not drawn: {left}")
        got = got[:MAX_OVERLAY_RUNS]
    return got


def overlay_section(name: str, runs: Sequence[dict[str, Any]], names: Sequence[str] | None = None) -> str:
    """HTML with the overlay plots of benchmark ``name`` over ``runs`` (normalised run records, see
    :func:`faceforge.eval.report_html.normalise_run`) and notes on the runs left off; empty for fewer than
    two runs with the benchmark. ``names`` are the runs' legend names (default :func:`legend_name`)."""
    recs = [r["benchmarks"].get(name) if isinstance(r.get("benchmarks"), dict) else None for r in runs]
    recs = [r if isinstance(r, dict) else None for r in recs]
    if sum(r is not None for r in recs) < 2:
        return ""
    names = list(names) if names is not None else [legend_name(r, i) for i, r in enumerate(runs)]
    notes: list[str] = []
    imgs: list[str] = []
    title = _plain(short_name(name))
    with tempfile.TemporaryDirectory(prefix="faceforge-overlay-") as tmp:
        out = Path(tmp)
        rocs = _collect(recs, names, roc_of, "ROC", notes)
        if len(rocs) >= 2:
            curves = {_plain(f"{names[i]}: {_roc_headline(recs[i] or {})}"): data for i, data in rocs}
            png = plot_roc(curves, out / "roc.png", title=f"ROC, all runs: {title}")
            imgs.append(_embed(png, f"{name} ROC overlay"))
        ercs: list[tuple[int, list[ErcSeries]]] = _collect(
            recs, names, erc_of, "error-versus-reject plot", notes
        )
        if len(ercs) >= 2:
            several = any(len(series) > 1 for _, series in ercs)
            erc_curves: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
            aoc: dict[str, dict[str, float | None]] = {}
            for i, series in ercs:
                for s in series:
                    label = _plain(f"{names[i]} [{s.source}]" if several else names[i])
                    erc_curves[label] = (s.reject_fractions, s.fnmr)  # type: ignore[assignment]
                    aoc[label] = s.aoc
            png = plot_erc_sources(
                erc_curves,  # type: ignore[arg-type]
                out / "erc.png",
                title=f"Error versus reject (fixed threshold), all runs: {title}",
                aoc=aoc,
            )
            imgs.append(_embed(png, f"{name} ERC overlay"))
        groups: list[tuple[int, GroupFmr]] = _collect(recs, names, group_fmr_of, "per-group FMR plot", notes)
        if len(groups) >= 2:
            targets = {g.target_fmr for _, g in groups}
            png = plot_group_fmr_overlay(
                {
                    _plain(f"{names[i]}: {_spread(g)}"): {_plain(k): v for k, v in g.fmr.items()}
                    for i, g in groups
                },
                out / "group_fmr.png",
                title=f"Per-group FMR, all runs: {title}",
                target=targets.pop() if len(targets) == 1 else None,
            )
            imgs.append(_embed(png, f"{name} per-group FMR overlay"))
    if not imgs and not notes:
        return ""
    parts = [f"<h3>{html.escape(name)} - all runs</h3>"]
    if imgs:
        parts.append('<div class="plots">' + "".join(imgs) + "</div>")
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    return "\n".join(parts)
