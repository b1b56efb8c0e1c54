"""Face detection (YuNet) and the detect-select-align folder job, on real photos and broken files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from faceforge.data.align import ARCFACE_TEMPLATE_112, estimate_similarity, transform_points, warp_face
from faceforge.data.image_io import read_image_rgb
from faceforge.deploy.detect import DETECTORS, Detection, YuNetDetector, select_faces
from faceforge.deploy.prepare import REPORT_NAME, prepare_folder

YUNET = "face_detection_yunet_2026may.onnx"


@pytest.fixture(scope="module")
def yunet(data_dir: Path) -> YuNetDetector:
    model = data_dir / "models" / YUNET
    if not model.is_file():
        pytest.skip(f"YuNet model not found at {model}")
    return DETECTORS.build("yunet", model_path=model)


def _det(x1: float, y1: float, x2: float, y2: float, score: float = 0.9) -> Detection:
    return Detection(np.array([x1, y1, x2, y2], float), score, np.zeros((5, 2)))


def test_select_faces_policies() -> None:
    big_corner, small_centre = _det(0, 0, 60, 60), _det(45, 45, 55, 55)
    dets = [small_centre, big_corner]
    assert select_faces(dets, (100, 100, 3), "largest") == [big_corner]
    assert select_faces(dets, (100, 100, 3), "central") == [small_centre]
    assert select_faces(dets, (100, 100, 3), "all") == [big_corner, small_centre]  # left to right
    assert select_faces([], (100, 100, 3), "largest") == []
    with pytest.raises(ValueError, match="selection policy"):
        select_faces(dets, (100, 100, 3), "biggest")


def test_yunet_finds_the_six_faces_of_a_group_photo(data_dir: Path, yunet: YuNetDetector) -> None:
    img = read_image_rgb(data_dir / "photos" / "insightface_t1.jpg")
    dets = yunet(img)
    assert len(dets) == 6  # default threshold 0.7; the six real faces score about 0.9
    for d in dets:
        assert d.box.shape == (4,) and d.landmarks.shape == (5, 2) and 0.7 <= d.score <= 1.0
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= img.shape[1] and 0 <= y1 < y2 <= img.shape[0]
        # landmark order: image-left eye first, nose between, mouth below the eyes, all inside the box
        (lex, ley), (rex, rey), (_nx, ny), (lmx, lmy), (rmx, rmy) = d.landmarks
        assert lex < rex and lmx < rmx
        assert min(lmy, rmy) > max(ley, rey) and max(ley, rey) < ny < min(lmy, rmy)
        assert np.all((d.landmarks >= d.box[:2] - 2) & (d.landmarks <= d.box[2:] + 2))


def test_large_image_is_detected_downscaled_and_mapped_back(data_dir: Path) -> None:
    img = read_image_rgb(data_dir / "photos" / "insightface_t1.jpg")  # 1280 px wide
    full = DETECTORS.build("yunet", model_path=data_dir / "models" / YUNET)(img)
    half = DETECTORS.build("yunet", model_path=data_dir / "models" / YUNET, max_side=640)(img)
    assert len(half) == len(full) == 6
    key = lambda d: d.box[0]  # noqa: E731
    for a, b in zip(sorted(full, key=key), sorted(half, key=key), strict=True):
        # back in original pixels (unscaled points would be off by hundreds); at half size the ~50 px faces
        # move their points by up to about 9 % of the face width
        width = a.box[2] - a.box[0]
        assert np.abs(a.landmarks - b.landmarks).max() < 0.15 * width
        assert np.abs(a.box - b.box).max() < 0.15 * width


def test_astronaut_aligns_onto_the_template(data_dir: Path, yunet: YuNetDetector) -> None:
    img = read_image_rgb(data_dir / "photos" / "skimage_astronaut.png")
    dets = yunet(img)
    assert len(dets) == 1
    lmk = dets[0].landmarks
    moved = transform_points(lmk, estimate_similarity(lmk))
    # A least-squares similarity cannot put all 5 points exactly on the template: on this (smiling) face the
    # fit leaves the eyes 3.8 and 3.5 px from it (measured), the mouth corners about 4.5 px. A wrong point
    # order or a wrong transform would be off by tens of pixels.
    eye_err = np.linalg.norm(moved[:2] - ARCFACE_TEMPLATE_112[:2], axis=1)
    assert eye_err.max() < 4.5 and np.linalg.norm(moved - ARCFACE_TEMPLATE_112, axis=1).mean() < 4.0
    crop = warp_face(img, lmk)
    # re-detect on the aligned crop at twice the size (YuNet is more precise on bigger faces) and scale back:
    # the eyes must be where the warp put them
    again = yunet(cv2.resize(crop, (224, 224), interpolation=cv2.INTER_CUBIC))
    assert len(again) == 1
    eyes = again[0].landmarks[:2] / 2.0
    assert np.linalg.norm(eyes - moved[:2], axis=1).max() < 3.0
    assert np.linalg.norm(eyes - ARCFACE_TEMPLATE_112[:2], axis=1).max() < 5.0


def test_missing_model_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--detector-model"):
        DETECTORS.build("yunet", model_path=tmp_path / "nope.onnx")


def _photo_tree(data_dir: Path, root: Path) -> Path:
    lfw = data_dir / "lfw" / "images"
    src = root / "photos"
    for person in ("Aaron_Eckhart", "Serena_Williams"):
        (src / person).mkdir(parents=True)
        shutil.copy(lfw / person / f"{person}_0001.jpg", src / person)
    good = (lfw / "Aaron_Guiel" / "Aaron_Guiel_0001.jpg").read_bytes()
    (src / "Broken").mkdir()
    (src / "Broken" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (src / "Broken" / "text.jpg").write_text("this is not an image")
    return src


def test_prepare_folder_reports_bad_files_resumes_and_writes_rec(
    data_dir: Path, yunet: YuNetDetector, tmp_path: Path
) -> None:
    from faceforge.data.image_io import decode_image_rgb
    from faceforge.data.recordio import read_face_rec, unpack

    src = _photo_tree(data_dir, tmp_path)
    out = tmp_path / "faces"
    report = prepare_folder(src, out, yunet, progress=False)
    assert report.images == 4 and report.aligned_images == 2 and report.faces_written == 2
    assert sorted(u["file"] for u in report.unreadable) == ["Broken/text.jpg", "Broken/truncated.jpg"]
    assert all(u["reason"] for u in report.unreadable) and report.no_face == []
    for person in ("Aaron_Eckhart", "Serena_Williams"):
        face = read_image_rgb(out / person / f"{person}_0001.jpg")
        assert face.shape == (112, 112, 3)
    saved = json.loads((out / REPORT_NAME).read_text())
    assert saved["skipped"] == 2 and saved["template"] == "arcface_112" and saved["detector"] == "yunet"

    mtime = (out / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg").stat().st_mtime_ns
    again = prepare_folder(src, out, yunet, progress=False)  # resume: aligned outputs are kept
    assert again.aligned_images == 0 and again.kept_existing == 2 and len(again.unreadable) == 2
    assert (out / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg").stat().st_mtime_ns == mtime

    rec_out = tmp_path / "rec"
    rep = prepare_folder(src, rec_out, yunet, out_format="rec", progress=False)
    assert rep.rec_images == 2 and rep.num_classes == 2  # Broken got no face, so it takes no label
    reader, keys, labels = read_face_rec(rec_out / "train.rec")
    assert labels.tolist() == [0, 1]
    assert (rec_out / "labels.txt").read_text() == "0\tAaron_Eckhart\n1\tSerena_Williams\n"
    img = decode_image_rgb(unpack(reader.read(int(keys[1])))[1])
    assert img.shape == (112, 112, 3)
    reader.close()


def test_prepare_all_faces_and_several_faces(data_dir: Path, yunet: YuNetDetector, tmp_path: Path) -> None:
    src = tmp_path / "group"
    src.mkdir()
    shutil.copy(data_dir / "photos" / "insightface_t1.jpg", src / "t1.jpg")
    one = prepare_folder(src, tmp_path / "one", yunet, select="central", progress=False)
    assert one.faces_written == 1 and [s["file"] for s in one.several_faces] == ["t1.jpg"]
    assert one.several_faces[0]["faces"] == 6
    again = prepare_folder(src, tmp_path / "one", yunet, select="central", progress=False)
    assert again.kept_existing == 1 and [s["file"] for s in again.several_faces] == ["t1.jpg"]
    every = prepare_folder(src, tmp_path / "all", yunet, select="all", progress=False)
    assert every.faces_written == 6 and every.several_faces == []
    assert sorted(p.name for p in (tmp_path / "all").glob("*.jpg")) == [f"t1_{k}.jpg" for k in range(6)]


def test_cli_prepare(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from faceforge.cli.main import main

    src = _photo_tree(data_dir, tmp_path)
    out = tmp_path / "cli_out"
    argv = ["prepare", "--images", str(src), "--out", str(out), "--no-progress", "--size", "112"]
    argv += ["--detector-model", str(data_dir / "models" / YUNET), "--format", "rec"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "aligned 2 faces" in printed and "unreadable: Broken/text.jpg" in printed
    saved = json.loads((out / REPORT_NAME).read_text())
    assert saved["rec_images"] == 2 and (out / "train.idx").is_file()
    assert main(["prepare", "--images", str(src), "--out", str(out), "--detector", "nope"]) == 2
