"""Issue 30, classes 3, 4, 5 and 6 for ``faceforge quality``: one file name that is not UTF-8 is skipped and
named (escaped), never the end of the job; ``facesize=`` scores only files that are images and lists a NaN
landmark row; the sharpness measure works in bounded strips with the one-pass value."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from hostile_files import encode, random_image

from faceforge.cli.main import main
from faceforge.eval import quality
from faceforge.eval.quality import laplacian_variance

COLS = ("leye_x", "leye_y", "reye_x", "reye_y")


def _scores(out: Path) -> dict[str, float]:
    with out.open(newline="", encoding="utf-8") as fh:
        return {r["path"]: float(r["quality"]) for r in csv.DictReader(fh)}


def test_a_name_that_is_not_utf8_is_listed_escaped_and_the_rest_scored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    faces = tmp_path / "faces"
    faces.mkdir()
    for k in range(3):
        (faces / f"ok_{k}.png").write_bytes(encode(random_image(32, 32, k)))
    bad_name = os.fsdecode(b"latin1_\xe9\xff.png")
    (faces / bad_name).write_bytes(encode(random_image(32, 32, 9)))
    out = tmp_path / "q.csv"
    assert main(["quality", "--measure", "sharpness", "--images", str(faces), "--out", str(out)]) == 0
    shown = capsys.readouterr().out
    assert set(_scores(out)) == {"ok_0.png", "ok_1.png", "ok_2.png"}
    assert "latin1_\\udce9\\udcff.png" in shown and "not UTF-8" in shown and "skipped 1" in shown
    report = json.loads((tmp_path / "q_report.json").read_text())
    assert report["n_scored"] == 3 and len(report["skipped"]) == 1 and "not UTF-8" in report["skipped"][0]


def test_facesize_scores_only_images_and_lists_a_nan_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    faces = tmp_path / "faces"
    faces.mkdir()
    (faces / "good.png").write_bytes(encode(random_image(32, 32, 1)))
    (faces / "nan_row.png").write_bytes(encode(random_image(32, 32, 2)))
    (faces / "empty.png").write_bytes(b"")
    (faces / "text.jpg").write_bytes(b"not an image")
    table = tmp_path / "lm.csv"
    rows = {"good.png": [10, 10, 40, 10], "nan_row.png": [10, "nan", 40, 10]}
    rows |= {"empty.png": [10, 10, 40, 10], "text.jpg": [10, 10, 40, 10]}
    table.write_text(
        "file," + ",".join(COLS) + "\n" + "".join(f"{k},{','.join(map(str, v))}\n" for k, v in rows.items())
    )
    out = tmp_path / "q.csv"
    argv = ["quality", "--measure", f"facesize={table}", "--images", str(faces), "--out", str(out)]
    assert main(argv) == 0
    assert _scores(out) == {"good.png": 30.0}
    skipped = json.loads((tmp_path / "q_report.json").read_text())["skipped"]
    reasons = {Path(s.split(": ", 1)[0]).name: s.split(": ", 1)[1] for s in skipped}
    assert set(reasons) == {"nan_row.png", "empty.png", "text.jpg"}
    assert "non-finite" in reasons["nan_row.png"] and "empty file" in reasons["empty.png"]
    assert "not a decodable image" in reasons["text.jpg"]
    assert "skipped 3" in capsys.readouterr().out


def test_quality_over_only_bad_files_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    faces = tmp_path / "faces"
    faces.mkdir()
    (faces / "empty.png").write_bytes(b"")
    out = tmp_path / "q.csv"
    assert main(["quality", "--measure", "sharpness", "--images", str(faces), "--out", str(out)]) == 2
    assert "none of the 1 images could be used" in capsys.readouterr().err


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 9000, 3), (301, 207, 3), (112, 112, 3)])
def test_sharpness_in_strips_equals_one_pass(shape: tuple[int, int, int], monkeypatch) -> None:
    rgb = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    grey = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    one_pass = cv2.Laplacian(grey, cv2.CV_64F, ksize=1, borderType=cv2.BORDER_REFLECT_101).var()
    monkeypatch.setattr(quality, "SHARPNESS_STRIP_PIXELS", 1000)  # many strips of a few rows
    assert laplacian_variance(rgb) == pytest.approx(one_pass, rel=1e-12, abs=1e-12)
