"""``eval --compare`` overlays: one ROC / ERC / per-group FMR plot with every run, checked by the colours
drawn; result files without curves (or with bad ones) are named in a note; result files keep bounded ROCs."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from faceforge.cli.main import main
from faceforge.eval.overlay_data import erc_of, group_fmr_of, roc_of
from faceforge.eval.roc import roc, roc_points, tar_at_far_from_roc

#: matplotlib's first four default colours (C0..C3)
COLOURS = {"C0": (31, 119, 180), "C1": (255, 127, 14), "C2": (44, 160, 44), "C3": (214, 39, 40)}


def _colour_pixels(png: bytes) -> dict[str, int]:
    """How many pixels lie within a small distance of each of :data:`COLOURS`."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int32)
    return {name: int((np.abs(rgb - np.array(c)).sum(axis=2) < 40).sum()) for name, c in COLOURS.items()}


def _overlay(page: str, alt: str) -> bytes:
    m = re.search(rf'alt="{re.escape(alt)}" src="data:image/png;base64,([^"]+)"', page)
    assert m, f"no image {alt!r} on the page"
    return base64.b64decode(m.group(1))


def _roc_rec(power: float, with_curves: bool = True) -> dict[str, Any]:
    fpr = np.concatenate([[0.0], np.geomspace(1e-4, 1.0, 300)])
    tpr = np.clip(1.0 - 0.5 * (1 - fpr) ** 40 * power, 0, 1)
    tpr[0] = 0.0
    rec: dict[str, Any] = {
        "name": "lfw:pairs",
        "kind": "lfw",
        "summary": {"accuracy": 0.9, "tar@far=0.001": float(np.interp(1e-3, fpr, tpr))},
    }
    if with_curves:
        rec["curves"] = {"roc": roc_points(fpr, tpr)}
    return rec


def _quality_rec(scale: float) -> dict[str, Any]:
    x = [0.0, 0.1, 0.2, 0.3, 0.4]
    curves = {k: {"fnmr": [scale * f * (1 - r) for r in x]} for k, f in (("0.01", 0.2), ("0.001", 0.4))}
    fixed = {"reject_fractions": x, "curves": curves, "aoc_normalised": {"0.01": 0.3, "0.001": 0.2}}
    return {
        "name": "quality:pairs",
        "kind": "quality",
        "summary": {},
        "quality": {"sources": {"norm": {"fixed": fixed}}},
    }


def _bias_rec(fmrs: dict[str, float]) -> dict[str, Any]:
    groups = {g: {"fmr": v, "n_impostor": 1000} for g, v in fmrs.items()}
    return {"name": "bias:utk", "kind": "bias", "summary": {}, "bias": {"target_fmr": 1e-3, "groups": groups}}


def _write(folder: Path, benchmarks: dict[str, dict[str, Any]]) -> Path:
    folder.mkdir(parents=True)
    path = folder / "result.json"
    run = {"format": "faceforge-eval/1", "model": {"kind": "fake"}, "benchmarks": benchmarks}
    path.write_text(json.dumps(run))
    return path


def test_compare_overlays_one_curve_per_run_and_notes_old_files(tmp_path: Path, capsys) -> None:
    results = [
        _write(tmp_path / "alpha", {"lfw:pairs": _roc_rec(1.0), "quality:pairs": _quality_rec(1.0),
                                    "bias:utk": _bias_rec({"a": 1e-3, "b": 4e-3, "c": 2e-4})}),
        _write(tmp_path / "beta", {"lfw:pairs": _roc_rec(0.5), "quality:pairs": _quality_rec(0.6),
                                   "bias:utk": _bias_rec({"a": 2e-3, "b": 1e-3, "c": 0.0})}),
        _write(tmp_path / "gamma", {"lfw:pairs": _roc_rec(0.2)}),
        _write(tmp_path / "old$\\frac{", {"lfw:pairs": _roc_rec(0.1, with_curves=False)}),
    ]  # fmt: skip
    page_path = tmp_path / "compare.html"
    assert main(["eval", "--compare", *map(str, results), "--html", str(page_path)]) == 0
    page = page_path.read_text()
    for label in ("#1 fake", "alpha/result.json", "beta/result.json", "gamma/result.json", "old$\\frac{"):
        assert label in page

    roc_px = _colour_pixels(_overlay(page, "lfw:pairs ROC overlay"))
    assert min(roc_px["C0"], roc_px["C1"], roc_px["C2"]) > 300, roc_px  # three runs drawn
    assert roc_px["C3"] < 30, roc_px  # the old result file is not
    assert "#4 old$\\frac{: no ROC points in this result file" in page
    assert "its ROC is shown in its own section only" in page

    erc_px = _colour_pixels(_overlay(page, "quality:pairs ERC overlay"))
    assert min(erc_px["C0"], erc_px["C1"]) > 150 and erc_px["C2"] < 30, erc_px
    grp_px = _colour_pixels(_overlay(page, "bias:utk per-group FMR overlay"))
    assert min(grp_px["C0"], grp_px["C1"]) > 150 and grp_px["C2"] < 30, grp_px
    assert page.count('class="overlay"') == 3


def test_a_single_result_gets_no_overlay(tmp_path: Path) -> None:
    page_path = tmp_path / "one.html"
    assert main(["eval", "--compare", str(_write(tmp_path / "a", {"lfw:pairs": _roc_rec(1.0)})),
                 "--html", str(page_path)]) == 0  # fmt: skip
    assert "overlay" not in page_path.read_text().replace("overlay{", "")


def _erc(fnmr: Any) -> dict[str, Any]:
    fixed = {"reject_fractions": [0.0, 0.5], "curves": {"0.001": {"fnmr": fnmr}}}
    return {"kind": "quality", "quality": {"sources": {"norm": {"fixed": fixed}}}}


@pytest.mark.parametrize(
    "read, rec, words",
    [
        (roc_of, {"kind": "lfw", "curves": {"roc": {"fpr": ["x"], "tpr": [0.5]}}}, "not a number in [0, 1]"),
        (
            roc_of,
            {"kind": "lfw", "curves": {"roc": {"fpr": [0.1, float("nan")], "tpr": [0.5, 0.6]}}},
            "not a number",
        ),
        (
            roc_of,
            {"kind": "lfw", "curves": {"roc": {"fpr": [0.1] * 6000, "tpr": [0.5] * 6000}}},
            "more than 5000",
        ),
        (roc_of, {"kind": "lfw", "curves": {"roc": {"fpr": [0.1, 0.2], "tpr": [0.5]}}}, "2 FPRs but 1 TPRs"),
        (roc_of, {"kind": "lfw", "curves": {"roc": "lots"}}, "not an object"),
        (roc_of, {"kind": "allpairs"}, "no ROC points in this result file"),
        (erc_of, _erc([0.1]), "1 values for 2 fractions"),
        (erc_of, _erc([0.1, 7]), "not a number in [0, 1]"),
        (erc_of, {"kind": "quality", "quality": {"sources": []}}, "not a non-empty object"),
        (
            group_fmr_of,
            {"kind": "bias", "bias": {"groups": {str(i): {"fmr": 0.1} for i in range(61)}}},
            "61 groups",
        ),
        (group_fmr_of, {"kind": "bias", "bias": {"groups": {"a": {"fmr": -1}}}}, "not a number in [0, 1]"),
        (group_fmr_of, {"kind": "biaspairs"}, "no per-group FMRs"),
    ],
)
def test_missing_or_bad_curves_are_reasons_not_crashes(read: Any, rec: dict[str, Any], words: str) -> None:
    got = read(rec)
    assert isinstance(got, str) and words in got, got


def test_kinds_without_such_curves_read_as_none() -> None:
    rec = {"kind": "ident", "summary": {"rank-1": 0.9}}
    assert roc_of(rec) is None and erc_of(rec) is None and group_fmr_of(rec) is None


def test_roc_points_are_bounded_true_roc_points() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(3000, bool), np.zeros(40000, bool)]
    s = np.r_[rng.normal(0.6, 0.15, 3000), rng.normal(0.1, 0.1, 40000)]
    fpr, tpr, thr = roc(s, y)
    pts = roc_points(fpr, tpr)
    assert len(pts["fpr"]) <= 200 < fpr.size and pts["n_points_full"] == fpr.size
    assert len(json.dumps(pts)) < 8000
    for f, t in zip(pts["fpr"], pts["tpr"], strict=True):  # every kept point is a point of the full ROC
        assert (np.isclose(fpr, f, rtol=1e-5, atol=0) & np.isclose(tpr, t, rtol=0, atol=1e-6)).any(), (f, t)
    # the conservative TAR at each FAR target is the same on the kept points as on the full ROC
    for target in (1e-4, 1e-3, 1e-2, 1e-1):
        want = tar_at_far_from_roc(fpr, tpr, thr, 40000, [target], "conservative")[target].tar
        kept = max(t for f, t in zip(pts["fpr"], pts["tpr"], strict=True) if f <= target)
        assert abs(kept - want) < 1e-3, (target, kept, want)
