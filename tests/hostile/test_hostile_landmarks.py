"""Issue 17, item 3: malformed landmark CSV rows are skipped and listed with file:line; the rest aligns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from faceforge.cli.main import main
from faceforge.data.image_io import read_image_rgb

HEADER = "file,leye_x,leye_y,reye_x,reye_y,nose_x,nose_y,lmouth_x,lmouth_y,rmouth_x,rmouth_y"
GOOD = "60,60,100,60,80,85,65,105,95,105"


def _images(tmp_path: Path, lfw_photos: list[Path], names: list[str]) -> Path:
    src = tmp_path / "images"
    src.mkdir()
    for i, name in enumerate(names):
        shutil.copy(lfw_photos[i % len(lfw_photos)], src / name)
    return src


def test_bad_rows_are_listed_with_file_and_line_and_the_rest_aligns(
    tmp_path: Path, lfw_photos: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rows = {  # image name -> (row text, a word the reason must contain)
        "short.jpg": ("short.jpg,60,60,100", "fields"),
        "nan.jpg": ("nan.jpg,nan,60,100,60,80,85,65,105,95,105", "NaN"),
        "inf.jpg": ("inf.jpg,60,60,inf,60,80,85,65,105,95,105", "NaN or infinity"),
        "huge.jpg": ("huge.jpg,60,60,1e300,60,80,85,65,105,95,105", "beyond"),
        "same.jpg": ("same.jpg," + ",".join(["50"] * 10), "degenerate"),
        "word.jpg": ("word.jpg,60,sixty,100,60,80,85,65,105,95,105", "not a number"),
        "long.jpg": ("long.jpg," + GOOD + ",7", "fields"),
    }
    good = ["good_a.jpg", "good_b.jpg"]
    src = _images(tmp_path, lfw_photos, [*good, *rows])
    lines = [HEADER, f"good_a.jpg,{GOOD}", *(r for r, _ in rows.values()), f"good_b.jpg,{GOOD}"]
    lines += [",,,,,,,,,,", f"good_a.jpg,{GOOD}"]  # an empty line, then a duplicate row
    csv = tmp_path / "lm.csv"
    csv.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert (
        main(["align", "--images", str(src), "--landmarks", str(csv), "--out", str(out), "--no-progress"])
        == 0
    )
    printed = capsys.readouterr().out
    report = json.loads((out / "align_report.json").read_text())
    assert report["aligned"] == 2
    for name in good:
        assert read_image_rgb(out / name).shape == (112, 112, 3)
    bad_rows = {r["row"]: r for r in report["bad_rows"]}
    for line_no, (name, (_, word)) in enumerate(rows.items(), start=3):
        entry = bad_rows[f"{csv}:{line_no}"]
        assert entry["file"] == name and word in entry["reason"], entry
        assert f"{csv}:{line_no}" in printed
        assert not (out / name).exists()
    dup = bad_rows[f"{csv}:{len(lines)}"]
    assert dup["file"] == "good_a.jpg" and "line 2" in dup["reason"]
    unusable = {e["file"]: e["reason"] for e in report["bad_landmarks"]}
    assert set(unusable) == set(rows) and report["no_landmarks"] == []
    assert all(f"lm.csv:{n}" in unusable[name] for n, name in enumerate(rows, start=3))


def test_non_utf8_file_gives_one_line_naming_it(
    tmp_path: Path, lfw_photos: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    src = _images(tmp_path, lfw_photos, ["a.jpg"])
    csv = tmp_path / "latin1.csv"
    csv.write_bytes((HEADER + "\nJos\xe9.jpg," + GOOD + "\n").encode("latin-1"))
    rc = main(["align", "--images", str(src), "--landmarks", str(csv), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and str(csv) in err and "UTF-8" in err and "Traceback" not in err


def test_a_byte_order_mark_is_accepted(tmp_path: Path, lfw_photos: list[Path]) -> None:
    from faceforge.data.align_folder import read_landmarks_csv

    csv = tmp_path / "bom.csv"
    csv.write_bytes(("\ufeff" + HEADER + "\na.jpg," + GOOD + "\n").encode("utf-8"))
    assert list(read_landmarks_csv(csv)) == ["a.jpg"]
