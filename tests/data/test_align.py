"""Alignment: template, similarity transform, and the folder job on real LFW photos and broken files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from faceforge.data.align import (
    ARCFACE_TEMPLATE_112,
    estimate_similarity,
    template_for_size,
    transform_points,
    warp_face,
)
from faceforge.data.align_folder import align_folder, read_landmarks_csv
from faceforge.data.image_io import read_image_rgb


def test_template_values_and_scaling() -> None:
    # insightface arcface_dst: the 96x112 SphereFace points + 8 px on x
    assert np.allclose(ARCFACE_TEMPLATE_112[0], [38.2946, 51.6963])
    assert np.allclose(ARCFACE_TEMPLATE_112[:, 0] - 8, [30.2946, 65.5318, 48.0252, 33.5493, 62.7299])
    assert np.allclose(template_for_size(224), ARCFACE_TEMPLATE_112 * 2)
    t128 = template_for_size(128)  # insightface estimate_norm: ratio 128/128 = 1, +8 on x
    assert np.allclose(t128[:, 0], ARCFACE_TEMPLATE_112[:, 0] + 8)
    assert np.allclose(t128[:, 1], ARCFACE_TEMPLATE_112[:, 1])
    with pytest.raises(ValueError, match="multiple of 112 or 128"):
        template_for_size(100)


def test_similarity_of_template_is_identity_and_recovers_known_transform() -> None:
    assert np.allclose(estimate_similarity(ARCFACE_TEMPLATE_112), [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    # landmarks = template rotated by 20 degrees, scaled by 1.7 and shifted: the estimate must invert it
    a, s, t = np.deg2rad(20), 1.7, np.array([13.0, -4.0])
    rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    lmk = ARCFACE_TEMPLATE_112 @ rot.T + t
    m = estimate_similarity(lmk)
    assert np.allclose(transform_points(lmk, m), ARCFACE_TEMPLATE_112, atol=1e-9)
    with pytest.raises(ValueError, match="5 landmarks"):
        estimate_similarity(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        estimate_similarity(np.full((5, 2), np.nan))


def test_real_lfw_landmarks_land_on_the_template(data_dir: Path) -> None:
    table = read_landmarks_csv(data_dir / "lfw" / "landmarks_mtcnn_5pts_250px.csv", offset=(-48, -48))
    assert len(table) == 13233
    for name in ("Aaron_Eckhart_0001.jpg", "George_W_Bush_0001.jpg", "Serena_Williams_0001.jpg"):
        person = name.rsplit("_", 1)[0]
        img = read_image_rgb(data_dir / "lfw" / "images" / person / name)
        assert img.shape == (160, 160, 3)
        lmk = table[name]
        aligned = warp_face(img, lmk)
        assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
        moved = transform_points(lmk, estimate_similarity(lmk))
        err = np.linalg.norm(moved - ARCFACE_TEMPLATE_112, axis=1)
        assert err[:2].max() < 3.0, f"{name}: eyes {err[:2]} px from the template"
        assert err.mean() < 4.0


def _write_landmarks(path: Path, rows: dict[str, np.ndarray]) -> None:
    cols = "file,leye_x,leye_y,reye_x,reye_y,nose_x,nose_y,lmouth_x,lmouth_y,rmouth_x,rmouth_y"
    lines = [cols] + [f"{k}," + ",".join(f"{v:.2f}" for v in pts.ravel()) for k, pts in rows.items()]
    path.write_text("\n".join(lines) + "\n")


def test_align_folder_reports_bad_files_and_resumes(data_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "photos"
    (src / "Aaron_Eckhart").mkdir(parents=True)
    (src / "Broken").mkdir()
    lfw = data_dir / "lfw" / "images"
    shutil.copy(lfw / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg", src / "Aaron_Eckhart")
    good = (lfw / "Aaron_Guiel" / "Aaron_Guiel_0001.jpg").read_bytes()
    (src / "Broken" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (src / "Broken" / "text.jpg").write_text("this is not an image")
    shutil.copy(lfw / "Aaron_Guiel" / "Aaron_Guiel_0001.jpg", src / "Broken" / "no_landmarks.jpg")
    table = read_landmarks_csv(data_dir / "lfw" / "landmarks_mtcnn_5pts_250px.csv", offset=(-48, -48))
    csv = tmp_path / "lmk.csv"
    _write_landmarks(
        csv,
        {
            "Aaron_Eckhart_0001.jpg": table["Aaron_Eckhart_0001.jpg"],
            "truncated.jpg": table["Aaron_Guiel_0001.jpg"],
            "text.jpg": table["Aaron_Guiel_0001.jpg"],
        },
    )
    out = tmp_path / "aligned"
    report = align_folder(src, csv, out, progress=False)
    assert report.aligned == 1
    assert report.no_landmarks == ["Broken/no_landmarks.jpg"]
    assert sorted(u["file"] for u in report.unreadable) == ["Broken/text.jpg", "Broken/truncated.jpg"]
    assert (out / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg").is_file()
    saved = json.loads((out / "align_report.json").read_text())
    assert saved["skipped"] == 3 and saved["template"] == "arcface_112"
    again = align_folder(src, csv, out, progress=False)  # resume: the aligned file is kept, not redone
    assert again.aligned == 0 and again.kept_existing == 1


def test_landmarks_csv_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("file,leye_x\nA.jpg,1\n")
    with pytest.raises(ValueError, match=r"bad\.csv: missing column"):
        read_landmarks_csv(bad)
    with pytest.raises(FileNotFoundError, match="landmarks file not found"):
        read_landmarks_csv(tmp_path / "absent.csv")


def test_landmarks_csv_decides_every_row_as_the_one_row_check_does(tmp_path: Path) -> None:
    """The table is parsed and checked all rows at once; rows at the limits (a spread of about 1 px, a coordinate
    of exactly 1e7 after the offset), non-numbers, NaN and repeats get what :func:`check_landmarks` gives one row,
    and the problems are listed in line order."""
    from faceforge.data.align import LandmarksError, check_landmarks

    header = "file,leye_x,leye_y,reye_x,reye_y,nose_x,nose_y,lmouth_x,lmouth_y,rmouth_x,rmouth_y\n"
    good = "30,50,80,50,55,70,35,90,75,90"
    rows = {
        "ok.jpg": good,
        "small.jpg": "1,0,-1,0,0,1,0,-1,0,0",  # rms distance to the centroid: sqrt(4/5) < 1
        "spread1.jpg": ",".join(
            f"{v * 1.25**0.5!r}" for v in (1, 0, -1, 0, 0, 1, 0, -1, 0, 0)
        ),  # ~1: at the limit
        "edge.jpg": "10000048,0,10000047,0,10000046,0,10000045,0,10000044,0",  # max |x| = 1e7 after -48
        "beyond.jpg": "10000049,0,10000047,0,10000046,0,10000045,0,10000044,0",
        "nan.jpg": "nan,50,80,50,55,70,35,90,75,90",
        "word.jpg": "30,fifty,80,50,55,70,35,90,75,90",
        "ok.jpg ": good,
    }
    csv = tmp_path / "lm.csv"
    csv.write_text(header + "".join(f"{k},{v}\n" for k, v in rows.items()) + f"ok.jpg,{good}\n")
    bad: list[dict[str, str]] = []
    table = read_landmarks_csv(csv, offset=(-48, -48), bad_rows=bad)
    expect_ok, expect_bad = [], {}
    for name, text in rows.items():
        try:
            pts = check_landmarks(np.array([float(v) for v in text.split(",")]).reshape(5, 2) - 48)
            expect_ok.append((name, pts))
        except (LandmarksError, ValueError) as exc:
            expect_bad[name] = str(exc)
    assert [n for n, _ in expect_ok] == list(table)
    assert {"ok.jpg", "edge.jpg", "ok.jpg "} <= set(table) and "small.jpg" not in table
    for name, pts in expect_ok:
        np.testing.assert_array_equal(table[name], pts)
    line = {name: str(i + 2) for i, name in enumerate(rows)}
    want = [(line[n], n, r) for n, r in expect_bad.items() if n != "word.jpg"]
    want += [(line["word.jpg"], "word.jpg", "leye_y='fifty' is not a number")]
    want += [(str(len(rows) + 2), "ok.jpg", "ok.jpg already has landmarks on line 2 (kept)")]
    assert [(b["row"].rsplit(":", 1)[1], b["file"], b["reason"]) for b in bad] == sorted(
        want, key=lambda w: int(w[0])
    )
    assert {"beyond.jpg", "nan.jpg"} <= set(expect_bad)
    with pytest.raises(ValueError, match=r"lm\.csv:3: the five points lie within"):
        read_landmarks_csv(csv, offset=(-48, -48))  # without bad_rows: the first problem, by line


def test_align_on_every_core_writes_the_one_process_files(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from faceforge.data import align_folder as module

    monkeypatch.setattr(module, "MIN_IMAGES_PER_WORKER", 16)  # two workers for 40 images
    lfw = data_dir / "lfw" / "images"
    files = [f for p in sorted(lfw.iterdir())[:30] for f in sorted(p.glob("*.jpg"))][:40]
    csv = data_dir / "lfw" / "landmarks_mtcnn_5pts_250px.csv"
    reports = {}
    for workers in (1, 2):
        rep = align_folder(
            lfw, csv, tmp_path / f"w{workers}", landmark_offset=(-48, -48), images=files, workers=workers,
            progress=False,
        )  # fmt: skip
        reports[workers] = {k: v for k, v in rep.to_dict().items() if k != "out_dir"}
    assert reports[1] == reports[2] and reports[1]["aligned"] == 40
    for f in files:
        rel = f.relative_to(lfw)
        assert (tmp_path / "w1" / rel).read_bytes() == (tmp_path / "w2" / rel).read_bytes(), rel
