"""``faceforge quality-labels`` and ``faceforge quality`` on a few real LFW identities: the CSV is an attribute
sidecar, a blurred face gets a low pseudo-label and the lowest sharpness, bad images are skipped and listed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from faceforge.cli.main import main
from faceforge.data.attributes import read_sidecar
from faceforge.data.image_io import read_image_rgb, write_image_rgb

PEOPLE = ["Al_Gore", "Al_Sharpton", "Ali_Naimi", "Amelia_Vega", "Ana_Guevara"]  # 7-8 images each
SINGLE = "Aaron_Eckhart"  # one image
BLURRED = "Al_Gore/Al_Gore_blurred.jpg"  # Al_Gore_0001 shrunk to 12 px and back
BAD = "Ali_Naimi/Ali_Naimi_broken.jpg"


@pytest.fixture(scope="module")
def faces(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from faceforge.data.align_folder import align_folder

    src = data_dir / "lfw" / "images"
    out = tmp_path_factory.mktemp("quality_faces")
    files = [f for p in [*PEOPLE, SINGLE] for f in sorted((src / p).glob("*.jpg"))]
    lmk = data_dir / "lfw" / "landmarks_mtcnn_5pts_250px.csv"
    align_folder(src, lmk, out, landmark_offset=(-48, -48), images=files, progress=False)
    img = read_image_rgb(out / "Al_Gore" / "Al_Gore_0001.jpg")
    small = cv2.resize(img, (12, 12), interpolation=cv2.INTER_AREA)
    write_image_rgb(out / BLURRED, cv2.resize(small, (112, 112), interpolation=cv2.INTER_LINEAR))
    (out / BAD).write_bytes(b"\xff\xd8 truncated")
    return out


def test_quality_sharpness_scores_and_lists_bad_images(faces: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sharp.csv"
    assert main(["quality", "--measure", "sharpness", "--images", str(faces), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table, names = read_sidecar(out)
    assert (
        names == ["quality"]
        and len(table) == sum(len(list((faces / p).glob("*.jpg"))) for p in [*PEOPLE, SINGLE]) - 1
    )
    assert BAD not in table and BAD in printed
    vals = {k: v["quality"] for k, v in table.items()}
    assert min(vals, key=vals.get) == BLURRED
    assert vals[BLURRED] < 0.2 * vals["Al_Gore/Al_Gore_0001.jpg"]
    report = json.loads((tmp_path / "sharp_report.json").read_text())
    assert report["n_scored"] == len(table) and len(report["skipped"]) == 1 and BAD in report["skipped"][0]
    assert report["source"]["source"] == "sharpness" and "Laplacian" in report["source"]["definition"]


def _need_dlib() -> None:
    pytest.importorskip("dlib")
    if importlib.util.find_spec("face_recognition_models") is None:
        pytest.skip("face-recognition-models not installed")


@pytest.mark.slow
def test_quality_labels_with_dlib_on_real_faces(faces: Path, tmp_path: Path, capsys) -> None:
    _need_dlib()
    out = tmp_path / "labels.csv"
    args = ["quality-labels", "--model", "dlib", "--images", str(faces), "--out", str(out), "--no-progress"]
    args += ["--m", "6", "--rounds", "4", "--seed", "0", "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    table, _ = read_sidecar(out)
    labels = {k: v["quality"] for k, v in table.items()}
    report = json.loads((tmp_path / "labels_report.json").read_text())
    # the broken file is listed, the one-image identity has no label (rule 'drop'), everything else has one
    assert len(report["unreadable_images"]) == 1 and BAD in report["unreadable_images"][0] and BAD in printed
    assert (
        report["singleton_images"] == [f"{SINGLE}/{SINGLE}_0001.jpg"]
        and f"{SINGLE}/{SINGLE}_0001.jpg" not in labels
    )
    assert report["n_labelled"] == len(labels) == report["n_images_found"] - 2
    assert min(labels.values()) >= 0 and max(labels.values()) <= 100
    assert (
        report["settings"]["m"] == 6
        and report["settings"]["rounds"] == 4
        and report["model"]["kind"] == "dlib"
    )
    # the 12-px face is far from Al Gore's other faces: among the lowest labels of the set
    gore = [v for k, v in labels.items() if k.startswith("Al_Gore/") and k != BLURRED]
    assert labels[BLURRED] < min(gore)
    assert labels[BLURRED] <= np.quantile(list(labels.values()), 0.1)
    # seeded: the same command gives the same file
    again = tmp_path / "again.csv"
    assert main([*args[:6], str(again), *args[7:]]) == 0
    assert again.read_text() == out.read_text()
    # zero rule: the singleton gets 0
    zero = tmp_path / "zero.csv"
    assert main([*args[:6], str(zero), *args[7:], "--singletons", "zero"]) == 0
    assert read_sidecar(zero)[0][f"{SINGLE}/{SINGLE}_0001.jpg"]["quality"] == 0.0


@pytest.mark.slow
def test_quality_refuses_a_recogniser_as_quality_model(faces: Path, tmp_path: Path, capsys) -> None:
    _need_dlib()
    assert main(["quality", "--model", "dlib", "--images", str(faces), "--out", str(tmp_path / "q.csv")]) == 2
    err = capsys.readouterr().err
    assert "gives 128 values per face" in err and "Traceback" not in err
