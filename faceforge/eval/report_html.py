"""A self-contained HTML report of one or several evaluation runs (``result.json`` files).

Plots are embedded as base64 PNG, so the page can be mailed or archived alone.  With several runs a
comparison table per benchmark puts the headline numbers side by side (best value in bold).

A result file may come from someone else, and the paths in its ``plots`` are only text: a plot is
embedded only if it resolves (symbolic links followed) to a file inside the result file's own folder (for
a record without a source file, the folder the page is written to), and the file itself, read through one
open descriptor, is a regular file with one hard link, at most 20 MB, starts like a PNG or JPEG file and is a
whole image to Pillow. Anything else (``/etc/passwd``, ``../x.png``, a link out of the
folder, a text file named ``.png``) is not read further and is noted on the page with the reason.
With several runs, each benchmark's section starts with overlay plots (ROC, error-versus-reject, per-group
FMR: every run on one figure, :mod:`faceforge.eval.report_overlay`) before each run's own plots.
Understands run records from :func:`faceforge.eval.benchmarks.run_benchmarks` and the older
single-benchmark records (one pairs benchmark at the top level) that faceforge 0.1's training wrote.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from faceforge.core.text_files import load_json
from faceforge.eval.report_overlay import overlay_section

__all__ = ["load_result", "normalise_run", "write_html_report"]

#: metrics where smaller is better (everything else: larger is better)
LOWER_IS_BETTER = ("eer", "accuracy_std")
#: metric-name prefixes where smaller is better (error rates and spreads of the bias benchmarks)
LOWER_IS_BETTER_PREFIXES = ("fmr", "fnmr", "overall_fmr", "log10_fmr_std", "accuracy_std_over_groups")

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:.5em 0 1em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right;font-variant-numeric:tabular-nums}
th{background:#f3f3f3}td.k,th.k{text-align:left}
.plots img{max-width:420px;margin:.2em;border:1px solid #eee}.plots img.overlay{max-width:640px}
ul.notes{color:#8d4e00}
details{margin:.3em 0 1em}pre{background:#f8f8f8;padding:.5em;overflow-x:auto;font-size:85%}
.muted{color:#777}
"""


def load_result(path: str | Path) -> dict[str, Any]:
    """Read a ``result.json``; remembers its folder so relative plot paths resolve."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"result file not found: {p}")
    data = load_json(p, "result")  # not UTF-8, not JSON, nested too deep: one line naming the file
    if not isinstance(data, dict):
        raise ValueError(f"{p} does not hold an evaluation result")
    data["_source"] = str(p)
    return data


def _legacy_summary(rec: dict[str, Any]) -> dict[str, float]:
    v, r = rec.get("verification", {}), rec.get("roc", {})
    out = {"accuracy": v.get("accuracy_mean"), "accuracy_std": v.get("accuracy_std")}
    if "val_at_far" in rec:
        out["val@far=1e-3"] = rec["val_at_far"].get("val_mean")
    out.update(auc=r.get("auc"), eer=r.get("eer"))
    for k, t in r.get("tar_at_far", {}).get("conservative", {}).items():
        out[f"tar@far={k}"] = t.get("tar")
    return {k: v for k, v in out.items() if v is not None}


def normalise_run(result: dict[str, Any]) -> dict[str, Any]:
    """Return a run record with a ``benchmarks`` mapping (wrapping an old single-benchmark record)."""
    if "benchmarks" in result:
        return result
    if "verification" not in result:
        raise ValueError(f"{result.get('_source', 'result')}: neither a run record nor a pairs result")
    bench = result.get("benchmark", {})
    name = f"lfw:{Path(bench.get('pairs_file', 'pairs')).stem}"
    rec = dict(result)
    rec.setdefault("name", name)
    rec.setdefault("kind", "lfw")
    rec.setdefault("summary", _legacy_summary(result))
    return {**result, "benchmarks": {name: rec}}


def _run_label(run: dict[str, Any], i: int) -> str:
    m = run.get("model", {})
    sha = str(m.get("sha256") or "")[:8]
    src = run.get("_source")
    where = f" ({Path(src).parent.name}/{Path(src).name})" if src else ""
    return f"#{i + 1} {m.get('kind', 'model')}{' ' + sha if sha else ''}{where}"


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return html.escape(str(v))
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return html.escape(str(v))


MAX_PLOT_BYTES = 20 << 20
_IMAGE_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}


def _plot_root(run: dict[str, Any], page_dir: Path) -> Path:
    """The folder a run's plots must be in: its result file's folder, else the page's folder."""
    src = run.get("_source")
    return (Path(src).parent if src else page_dir).resolve()


def _embeddable(path: str, run: dict[str, Any], page_dir: Path) -> tuple[bytes | None, str, str]:
    """``(the file's bytes, mime type, "")`` for a plot that may be embedded, else ``(None, "", why not)``.

    The path must resolve inside the result's folder; then the file itself is checked through one open file
    descriptor, whose bytes are the ones embedded: a regular file (not a FIFO or device), with one hard link
    (a hard link placed in the folder would carry a file from anywhere past the path check), at most 20 MB,
    starting with PNG or JPEG magic bytes, and a whole image to Pillow."""
    root = _plot_root(run, page_dir)
    p = Path(path)
    candidates = [p] if p.is_absolute() else [p, root / p, root / p.parent.name / p.name]
    existing = [c for c in candidates if c.exists()]
    if not existing:
        return None, "", "file missing"
    inside = [c.resolve() for c in existing if c.resolve().is_relative_to(root)]
    if not inside:
        return None, "", f"outside the result's folder {root}"
    try:
        fd = os.open(inside[0], os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        return None, "", f"cannot open it ({exc.strerror})"
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None, "", "not a regular file"
        if st.st_nlink != 1:
            return (
                None,
                "",
                f"a file with {st.st_nlink} hard links (it may be a file from outside the folder)",
            )
        if st.st_size > MAX_PLOT_BYTES:
            return None, "", f"larger than {MAX_PLOT_BYTES >> 20} MB"
        data = fh.read(MAX_PLOT_BYTES + 1)
    if len(data) > MAX_PLOT_BYTES:
        return None, "", f"larger than {MAX_PLOT_BYTES >> 20} MB"
    mime = next((m for sig, m in _IMAGE_SIGNATURES.items() if data.startswith(sig)), None)
    if mime is None:
        return None, "", "not a PNG or JPEG image"
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except Exception as exc:  # Pillow raises many types on damaged or spoofed files
        return None, "", f"not a PNG or JPEG image ({type(exc).__name__})"
    return data, mime, ""


def _img(path: str | None, run: dict[str, Any], page_dir: Path, skipped: list[str]) -> str:
    if not path:
        return ""
    data, mime, why = _embeddable(str(path), run, page_dir)
    if data is None:
        skipped.append(f"{path}: {why}")
        return f'<span class="muted">plot not embedded: {html.escape(str(path))} ({html.escape(why)})</span>'
    return f'<img alt="{html.escape(Path(path).name)}" src="data:{mime};base64,{base64.b64encode(data).decode()}">'


def _kv_table(d: dict[str, Any]) -> str:
    rows = "".join(
        f'<tr><td class="k">{html.escape(str(k))}</td><td class="k">'
        + (
            f"<pre>{html.escape(json.dumps(v, indent=1, default=str))}</pre>"
            if isinstance(v, dict | list)
            else _fmt(v)
        )
        + "</td></tr>"
        for k, v in d.items()
    )
    return f"<table>{rows}</table>"


def _group_table(table: dict[str, Any]) -> str:
    """A benchmark's per-group table (``record["group_table"]``: ``title``, ``columns``, ``rows``), one row
    per group; empty cells for ``None``."""
    cols = table.get("columns") or []
    head = "".join(
        f"<th{' class=k' if i == 0 else ''}>{html.escape(str(c))}</th>" for i, c in enumerate(cols)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=k' if i == 0 else ''}>{'' if v is None else _fmt(v)}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in table.get("rows") or []
    )
    title = f"<p><b>{html.escape(str(table['title']))}</b></p>" if table.get("title") else ""
    return f"{title}<table><tr>{head}</tr>{body}</table>"


def _best(values: list[Any], metric: str) -> Any:
    nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(nums) < 2:
        return None
    lower = metric in LOWER_IS_BETTER or metric.startswith(LOWER_IS_BETTER_PREFIXES)
    return min(nums) if lower else max(nums)


def _comparison(name: str, runs: list[dict[str, Any]], labels: list[str]) -> str:
    recs = [r["benchmarks"].get(name) for r in runs]
    metrics: list[str] = []
    for rec in recs:
        for k in (rec or {}).get("summary", {}):
            if k not in metrics:
                metrics.append(k)
    head = '<tr><th class="k">metric</th>' + "".join(f"<th>{html.escape(lb)}</th>" for lb in labels) + "</tr>"
    body = ""
    for m in metrics:
        vals = [(rec or {}).get("summary", {}).get(m) for rec in recs]
        best = _best(vals, m)
        cells = "".join(
            f"<td>{'<b>' + _fmt(v) + '</b>' if best is not None and v == best else ('' if v is None else _fmt(v))}</td>"
            for v in vals
        )
        body += f'<tr><td class="k">{html.escape(m)}</td>{cells}</tr>'
    return f"<table>{head}{body}</table>"


def write_html_report(
    results: Sequence[dict[str, Any]],
    out_html: str | Path,
    title: str = "faceforge evaluation",
    skipped: list[str] | None = None,
) -> Path:
    """Write one self-contained HTML page for one or several run records; returns its path.

    Sections: the runs (model and run settings), then one section per benchmark name found in any
    run, with a side-by-side table of the headline numbers (best in bold when there are several runs),
    the overlay plots of all runs (:func:`faceforge.eval.report_overlay.overlay_section`, with a note for
    each run left off one), each run's dataset description and settings, and its plots (embedded under the rules of the module
    docstring; ``skipped``, if given, receives ``"<path>: <reason>"`` for every plot left out).
    """
    if not results:
        raise ValueError("no results to report")
    skipped = [] if skipped is None else skipped
    out = Path(out_html)
    page_dir = out.parent
    runs = [normalise_run(r) for r in results]
    labels = [_run_label(r, i) for i, r in enumerate(runs)]
    names: list[str] = []
    for r in runs:
        for n in r["benchmarks"]:
            if n not in names:
                names.append(n)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    parts.append(f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>")
    parts.append("<h2>Runs</h2>")
    for lb, r in zip(labels, runs, strict=True):
        parts.append(f"<h3>{html.escape(lb)}</h3>")
        meta = {"created": r.get("created"), "source": r.get("_source"), "seconds": r.get("seconds")}
        parts.append(_kv_table({k: v for k, v in meta.items() if v is not None}))
        parts.append("<details><summary>model</summary>" + _kv_table(r.get("model", {})) + "</details>")
        if r.get("embedding"):
            parts.append(
                "<details><summary>embedding pass</summary>" + _kv_table(r["embedding"]) + "</details>"
            )
    for name in names:
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(_comparison(name, runs, labels))
        if len(runs) > 1:
            parts.append(overlay_section(name, runs))
        for lb, r in zip(labels, runs, strict=True):
            rec = r["benchmarks"].get(name)
            if rec is None:
                continue
            if len(runs) > 1:
                parts.append(f"<h3>{html.escape(name)} - {html.escape(lb)}</h3>")
            if rec.get("spec"):
                parts.append(f"<p>spec: <code>{html.escape(rec['spec'])}</code></p>")
            if rec.get("group_table"):
                parts.append(_group_table(rec["group_table"]))
            parts.append(
                "<details><summary>dataset</summary>" + _kv_table(rec.get("benchmark", {})) + "</details>"
            )
            parts.append(
                "<details open><summary>settings</summary>"
                + _kv_table(rec.get("settings", {}))
                + "</details>"
            )
            plots = rec.get("plots") or {}
            if isinstance(plots, dict) and plots:
                imgs = "".join(_img(str(p), r, page_dir, skipped) for p in plots.values())
                parts.append(f'<div class="plots">{imgs}</div>')
    if skipped:
        parts.append("<h2>Plots not embedded</h2><ul>")
        parts.extend(f"<li>{html.escape(s)}</li>" for s in skipped)
        parts.append("</ul>")
    parts.append("</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out
