"""The Python API on real photos: inputs and their colour order, batching, decisions and their calibration, the
gallery on the service's store, refusals that name the fix, and a cheap ``import faceforge``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import faceforge
from faceforge.api.training import override_strings

REPO = Path(__file__).resolve().parents[2]


def test_import_faceforge_is_cheap_and_exports_the_api() -> None:
    """``import faceforge`` loads neither torch nor OpenCV; the public names resolve on first use (PEP 562)."""
    code = (
        "import sys, faceforge\n"
        "assert 'torch' not in sys.modules and 'cv2' not in sys.modules, 'import faceforge is not cheap'\n"
        "faceforge.Face, faceforge.load_model, faceforge.Gallery\n"
        "assert 'torch' not in sys.modules, 'the API types pulled in torch'\n"
    )
    env_path = {"PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, env={**_env(), **env_path}, cwd=REPO)
    import faceforge.api

    assert set(faceforge.__all__) - {"__version__"} == set(faceforge.api.__all__)
    for name in faceforge.api.__all__:
        assert getattr(faceforge, name) is getattr(faceforge.api, name)
    with pytest.raises(AttributeError):
        faceforge.no_such_name  # noqa: B018


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_arrays_state_their_colour_order(data_dir: Path) -> None:
    """A path, an RGB array and a BGR array give the same faces; an array without its order, a float array and a
    crop of the wrong size are refused with the fix."""
    path = data_dir / "photos" / "insightface_t1.jpg"
    bgr = cv2.imread(str(path))
    from_path = faceforge.detect_faces(path)
    from_bgr = faceforge.detect_faces(bgr, colour="BGR")
    from_rgb = faceforge.detect_faces(np.ascontiguousarray(bgr[:, :, ::-1]), colour="RGB")
    assert len(from_path) == len(from_bgr) == len(from_rgb) == 6
    for a, b, c in zip(from_path, from_bgr, from_rgb, strict=True):
        assert np.array_equal(a.aligned, b.aligned) and np.array_equal(a.aligned, c.aligned)
        assert a.box == b.box
    with pytest.raises(faceforge.ImageError, match="colour='BGR'"):
        faceforge.detect_faces(bgr)
    with pytest.raises(faceforge.ImageError, match="uint8"):
        faceforge.detect_faces(bgr.astype(np.float32) / 255, colour="BGR")
    with pytest.raises(faceforge.ImageError, match="for numpy arrays"):
        faceforge.detect_faces(path, colour="BGR")
    largest = faceforge.detect_faces(path, select="largest")
    assert len(largest) == 1 and largest[0].box == max(
        (f.box for f in from_path), key=lambda b: (b[2] - b[0]) * (b[3] - b[1])
    )
    assert faceforge.detect_faces(np.zeros((200, 200, 3), np.uint8), colour="RGB") == []


def test_embed_batches_normalises_and_checks_crops(sface, data_dir: Path) -> None:
    faces = faceforge.detect_faces(data_dir / "photos" / "insightface_t1.jpg")
    whole = sface.embed(faces)
    assert whole.shape == (6, 128) and whole.dtype == np.float32
    assert np.allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)
    in_twos = sface.embed(faces, batch_size=2)
    assert np.abs(whole - in_twos).max() < 1e-5
    crops_bgr = np.stack([f.aligned[:, :, ::-1] for f in faces])
    assert np.abs(sface.embed(crops_bgr, colour="BGR") - whole).max() < 1e-6
    flipped = sface.embed(faces, flip=True)
    assert (
        np.allclose(np.linalg.norm(flipped, axis=1), 1.0, atol=1e-5) and np.abs(flipped - whole).max() > 1e-3
    )
    with pytest.raises(faceforge.ImageError, match="112x112"):
        sface.embed(np.zeros((2, 100, 100, 3), np.uint8), colour="RGB")
    with pytest.raises(faceforge.ImageError, match="112x112"):
        sface.embed([data_dir / "photos" / "insightface_t1.jpg"])  # a photo is not an aligned crop
    reference = data_dir / "photos" / "insightface_Tom_Hanks_54745_aligned112.png"  # an aligned crop on disk
    assert (
        np.abs(sface.embed([reference]) - sface.embed(faceforge.read_image(reference), colour="RGB")).max()
        == 0
    )
    photo_faces = sface.embed_photo(data_dir / "photos" / "insightface_t1.jpg")
    assert np.abs(np.stack([f.embedding for f in photo_faces]) - whole).max() < 1e-5


def test_compare_decides_at_a_calibrated_fmr_and_says_which(sface, data_dir: Path) -> None:
    lfw = data_dir / "lfw" / "images"
    gore1, gore2 = lfw / "Al_Gore" / "Al_Gore_0001.jpg", lfw / "Al_Gore" / "Al_Gore_0002.jpg"
    same = sface.compare(gore1, gore2)
    assert same.match and bool(same) and same.rule.fmr == 1e-4
    assert same.rule.calibrated_with["detector"] == "yunet" and "pairsDevTrain" in same.rule.calibration
    assert same.rule.calibrated_with["model_sha256"] == sface.info.sha256
    other = sface.compare(gore1, lfw / "Ben_Affleck" / "Ben_Affleck_0001.jpg")
    assert not other.match and other.score < same.score
    # stricter targets use higher thresholds; a target between rows takes the stricter row
    assert sface.rule(1e-2).threshold < sface.rule(1e-4).threshold < sface.rule(1e-6).threshold
    assert sface.rule(5e-4).threshold == sface.rule(1e-4).threshold
    with pytest.raises(ValueError, match="below the lowest calibrated FMR"):
        sface.rule(1e-9)
    # sides given as a Face or an embedding give the same score
    fa, fb = same.faces
    assert fa is not None and fb is not None
    assert sface.compare(fa, fb.embedding).score == pytest.approx(same.score, abs=1e-6)
    fixed = sface.compare(gore1, gore2, threshold=0.99)
    assert not fixed.match and fixed.rule.fmr is None and "given by the caller" in fixed.rule.calibration
    with pytest.raises(faceforge.NoFaceError, match="min_score"):
        sface.compare(np.zeros((120, 120, 3), np.uint8), gore2, colour="RGB")
    with pytest.raises(ValueError, match="128"):
        sface.compare(np.ones(64, np.float32), gore2)


def test_uncalibrated_model_needs_a_threshold(sface, tmp_path: Path) -> None:
    """A model without a calibration (here SFace with its calibration taken away) decides nothing unless given
    a threshold; the error names both ways out."""
    uncalibrated = faceforge.Model(
        sface.embedder,
        detector=sface.detector,
        calibration=None,
        spec="mine.pt",
        device="cpu",
        precision="fp32",
    )
    with pytest.raises(faceforge.UncalibratedError, match=r"threshold=T.*faceforge serve calibrate"):
        uncalibrated.rule()
    assert uncalibrated.rule(threshold=0.5).threshold == 0.5
    with pytest.raises(faceforge.UncalibratedError):
        faceforge.Gallery(tmp_path / "unused.db", model=uncalibrated)
    assert not (tmp_path / "unused.db").exists()


def test_model_refusals_name_the_fix(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FACEFORGE_MODELS", str(tmp_path))
    with pytest.raises(faceforge.ModelFileError, match=r"faceforge fetch sface.*faceforge\.fetch\('sface'\)"):
        faceforge.load_model("sface")
    with pytest.raises(ValueError, match="precision"):
        faceforge.load_model("sface", precision="fp8")
    with pytest.raises(ValueError, match="device"):
        faceforge.load_model("sface", device="gpu")
    with pytest.raises(ValueError, match="unknown detector"):
        faceforge.Detector("nope")
    with pytest.raises(ValueError, match="valid"):
        faceforge.Detector("yunet", no_such_option=1)


def test_fp32_only_models_refuse_other_precisions(sface) -> None:
    from faceforge.core.model_files import find_model_dir

    assert find_model_dir("sface")  # the sface fixture skipped otherwise
    with pytest.raises(ValueError, match="runs in fp32, not bf16"):
        faceforge.load_model("sface", precision="bf16")


def test_gallery_shares_the_service_store(sface, data_dir: Path, tmp_path: Path) -> None:
    """Enrol, search, add, rename, delete and reopen; the database is the service's (read back through Store)."""
    from faceforge.serve.store import Store

    lfw = data_dir / "lfw" / "images"
    db = tmp_path / "gallery.db"
    with faceforge.Gallery(db, model=sface) as gallery:
        first = gallery.enrol("Al_Gore", [lfw / "Al_Gore" / f"Al_Gore_000{i}.jpg" for i in (1, 2)])
        assert first.created and len(first.face_ids) == 2
        bgr = cv2.imread(str(lfw / "Al_Gore" / "Al_Gore_0003.jpg"))
        more = gallery.enrol("Al_Gore", bgr, colour="BGR")
        assert not more.created and more.identity_id == first.identity_id
        gallery.enrol("Ben_Affleck", lfw / "Ben_Affleck" / "Ben_Affleck_0001.jpg")
        with pytest.raises(faceforge.NoFaceError, match="nothing was stored"):
            gallery.enrol("Nobody", np.zeros((160, 160, 3), np.uint8), colour="RGB")
        assert "Nobody" not in gallery and len(gallery) == 2
        hits = gallery.search(lfw / "Al_Gore" / "Al_Gore_0004.jpg", k=2)
        assert len(hits) == 1 and hits[0].identity == "Al_Gore" and len(hits[0].matches) == 2
        assert hits[0].matches[0].match and not hits[0].matches[1].match
        by_embedding = gallery.search_faces(np.stack([hits[0].face.embedding]))
        assert by_embedding[0].identity == "Al_Gore"
        assert by_embedding[0].matches[0].score == pytest.approx(hits[0].matches[0].score, abs=1e-5)
        gallery.rename("Ben_Affleck", "Ben")
        assert [i.name for i in gallery.identities()] == ["Al_Gore", "Ben"]
        assert gallery.delete("Al_Gore") == 3
        assert gallery.search(lfw / "Al_Gore" / "Al_Gore_0004.jpg")[0].identity is None
    store = Store(str(db))
    try:
        assert store.counts()["identities"] == 1 and store.counts()["faces"] == 1
    finally:
        store.close()
    with faceforge.Gallery(db, model=sface) as again:
        assert [i.name for i in again.identities()] == ["Ben"]
        assert repr(again).endswith("identities=1)")
    assert repr(again).endswith("closed)")
    strict = faceforge.Detector("yunet", min_score=0.99)  # LFW's faces score about 0.93: none is kept
    with faceforge.Gallery(db, model=sface, detector=strict) as picky:
        assert picky.search(lfw / "Ben_Affleck" / "Ben_Affleck_0002.jpg") == []


def test_override_strings() -> None:
    assert override_strings(["optim.lr=0.1"]) == ["optim.lr=0.1"]
    assert override_strings({"run.dir": Path("runs/a b"), "run.plugins": ["x.y"], "run.seed": 3}) == [
        'run.dir="runs/a b"',
        'run.plugins=["x.y"]',
        "run.seed=3",
    ]
    with pytest.raises(TypeError):
        override_strings("optim.lr=0.1")  # type: ignore[arg-type]


def test_dlib_by_name_with_its_packaged_calibration(data_dir: Path) -> None:
    """``load_model("dlib")`` (face_recognition's network) decides at its own packaged calibration (dlib misses
    22 % of genuine pairs at FMR 1e-4, so this pair is asked at 1e-2)."""
    pytest.importorskip("dlib")
    lfw = data_dir / "lfw" / "images"
    dlib_model = faceforge.load_model("dlib")
    assert dlib_model.info.kind == "dlib" and dlib_model.info.embedding_size == 128
    result = faceforge.compare(
        lfw / "Al_Gore" / "Al_Gore_0001.jpg", lfw / "Al_Gore" / "Al_Gore_0002.jpg", model=dlib_model, fmr=1e-2
    )
    assert result.match and result.rule.calibrated_with["model_kind"] == "dlib"
    assert result.rule.calibrated_with["model_sha256"] == dlib_model.info.sha256
