"""dlib's ResNet through the Embedder contract, on real ArcFace-aligned LFW faces."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from faceforge.data.image_io import read_image_rgb


def test_module_imports_without_dlib_and_says_how_to_install() -> None:
    code = (
        "import sys; sys.modules['dlib'] = None\n"  # makes 'import dlib' fail like a missing package
        "from faceforge.embedders import EMBEDDERS, embedder_from_spec\n"
        "assert 'dlib' in EMBEDDERS\n"
        "try:\n"
        "    embedder_from_spec('dlib')\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install dlib-bin face-recognition-models" in out.stdout


def _need_dlib() -> None:
    pytest.importorskip("dlib")
    if importlib.util.find_spec("face_recognition_models") is None:
        pytest.skip("face-recognition-models not installed")


@pytest.fixture(scope="module")
def aligned_faces(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    from faceforge.data.align_folder import align_folder

    src = data_dir / "lfw" / "images"
    files = [
        src / "Colin_Powell" / "Colin_Powell_0001.jpg",
        src / "Colin_Powell" / "Colin_Powell_0002.jpg",
        src / "Serena_Williams" / "Serena_Williams_0001.jpg",
    ]
    out = tmp_path_factory.mktemp("dlib_aligned")
    align_folder(
        src,
        data_dir / "lfw" / "landmarks_mtcnn_5pts_250px.csv",
        out,
        landmark_offset=(-48, -48),
        images=files,
        progress=False,
    )
    return {f.stem: read_image_rgb((out / f.relative_to(src)).with_suffix(".jpg")) for f in files}


def test_dlib_embedder_on_real_faces(aligned_faces: dict[str, np.ndarray]) -> None:
    _need_dlib()
    from faceforge.embedders import embedder_from_spec

    emb = embedder_from_spec("dlib", device="cpu", batch_size=8)
    a, b, c = (aligned_faces[k] for k in ("Colin_Powell_0001", "Colin_Powell_0002", "Serena_Williams_0001"))
    e = emb.embed(np.stack([a, b]))
    assert e.dtype == np.float32 and e.shape == (2, 128) and np.isfinite(e).all()
    e = np.concatenate([e, emb.embed(c[None])])
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    same, diff = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert same > diff + 0.05, (same, diff)

    d = emb.describe()
    assert d["kind"] == "dlib" and len(d["sha256"]) == 64 and d["embedding_size"] == 128
    assert d["packages"]["dlib-bin"] == "20.0.1.post1" and d["packages"]["face-recognition-models"] == "0.3.0"
    assert d["preprocess"]["alignment"] == "arcface_112" and "shape predictor" in d["preprocess"]["dlib_chip"]
    pts = emb.landmarks(a[None])[0]
    assert pts.shape == (5, 2) and (pts > 0).all() and (pts < 112).all()


def test_dlib_rejects_a_model_path() -> None:
    _need_dlib()
    from faceforge.embedders import embedder_from_spec

    with pytest.raises(ValueError, match="takes no model path"):
        embedder_from_spec("dlib:some/file.dat")


def test_dlib_face_box_options(aligned_faces: dict[str, np.ndarray]) -> None:
    """The predictor's box: dlib's detector on the aligned face, the typical box when it finds none."""
    _need_dlib()
    from faceforge.embedders.dlib_resnet import ALIGNED_FACE_BOX, DlibResNetEmbedder

    detect, fixed = DlibResNetEmbedder(box="detect"), DlibResNetEmbedder(box="fixed")
    assert detect.describe()["box"] == "detect" and fixed.describe()["box"] == "fixed"
    # a flat grey image has no face: "detect" falls back to the fixed box, point for point
    blank = np.full((1, 112, 112, 3), 128, np.uint8)
    assert np.array_equal(detect.landmarks(blank), fixed.landmarks(blank))
    # on a real face the detector's box is where ALIGNED_FACE_BOX says (within a few pixels)
    face = aligned_faces["Colin_Powell_0001"]
    img, pad = detect._bordered(face)
    box = detect._box(img, pad, 112, 112)
    got = np.array([box.left(), box.top(), box.right(), box.bottom()]) - pad
    assert np.abs(got - np.array(ALIGNED_FACE_BOX) * 112).max() < 12, got
    with pytest.raises(ValueError, match="box must be one of"):
        DlibResNetEmbedder(box="whole")


def test_dlib_on_every_core_gives_the_one_process_embeddings(aligned_faces: dict[str, np.ndarray]) -> None:
    """Chunks of batch_size faces in worker processes: the same numbers as one process, in the same order."""
    _need_dlib()
    from faceforge.embedders import embedder_from_spec

    faces = np.stack([aligned_faces[k] for k in sorted(aligned_faces)] * 2)  # 6 faces: 3 chunks of 2
    one = embedder_from_spec("dlib", batch_size=2, workers=1)
    many = embedder_from_spec("dlib", batch_size=2, workers=2)
    try:
        np.testing.assert_array_equal(many.embed(faces), one.embed(faces))
        assert many._pool is not None and many._pool.workers == 2  # the workers did the work
        mirrored = one.embed(np.ascontiguousarray(faces[:, :, ::-1]))
        np.testing.assert_array_equal(many.embed_flip_sum(faces), one.embed(faces) + mirrored)
    finally:
        many.close()
