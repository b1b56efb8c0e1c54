"""SFace (OpenCV Zoo, int8 block-quantised ONNX) imported as a trainable network: parity with onnxruntime on
200 real aligned LFW faces, and faceforge's default exporter on an imported graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faceforge.core.checkpoint import load_checkpoint
from faceforge.data.image_io import read_image_rgb
from faceforge.deploy.export_onnx import export_onnx
from faceforge.embedders.checkpoint import CheckpointEmbedder
from faceforge.importers.base import save_imported
from faceforge.importers.onnx_net import import_onnx
from tests.importers.graphs import save, tiny_net

N_FACES = 200


@pytest.fixture(scope="module")
def sface_path() -> Path:
    from faceforge.embedders.sface import default_sface_path

    try:
        return default_sface_path()
    except FileNotFoundError:
        pytest.skip("SFace is not fetched ('faceforge fetch sface')")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.slow
def test_sface_import_matches_onnxruntime_on_200_lfw_faces(
    sface_path: Path, lfw_small: Path, tmp_path: Path
) -> None:
    from faceforge.embedders.sface import SFaceEmbedder

    imported = import_onnx(sface_path)
    assert imported.backbone["name"] == "onnx_graph" and imported.embedding_size == 128
    assert imported.preprocess["colour"] == "BGR" and imported.preprocess["std"] == [1 / 255] * 3
    assert imported.source["licence"] == "Apache-2.0" and imported.source["sha256"].startswith("fb143eea")
    assert any("29 quantised weight tensors dequantised" in n for n in imported.notes)
    ckpt = save_imported(imported, tmp_path / "sface.pt")
    assert load_checkpoint(ckpt)["meta"]["source"]["network"].startswith("OpenCV Zoo SFace")

    files = sorted(lfw_small.rglob("*.jpg"))[:N_FACES]
    faces = np.stack([read_image_rgb(f) for f in files])
    assert faces.shape == (N_FACES, 112, 112, 3)
    reference = SFaceEmbedder(sface_path, device="cpu", batch_size=64).embed(faces)
    fp32 = CheckpointEmbedder(ckpt, device="cpu", batch_size=64).embed(faces)
    cos = _cosine(fp32, reference)
    assert cos.min() >= 0.999, f"fp32 cosine to onnxruntime: min {cos.min():.6f}"
    # bf16 autocast: a few faces (a CPU without AVX-512 BF16 emulates it, with a slow path for depthwise convs)
    bf16 = CheckpointEmbedder(ckpt, device="cpu", precision="bf16").embed(faces[:4])
    assert _cosine(bf16, reference[:4]).min() >= 0.99


@pytest.mark.slow
def test_dynamo_export_of_an_imported_graph(tmp_path: Path) -> None:
    """faceforge's default exporter traces the onnx_graph program; its parity check passes."""
    ckpt = save_imported(import_onnx(save(tiny_net(), tmp_path / "tiny.onnx")), tmp_path / "tiny.pt")
    report = export_onnx(ckpt, tmp_path / "again.onnx", exporter="dynamo")
    assert report.max_abs_diff <= report.tolerance and report.metadata["backbone"]["name"] == "onnx_graph"
    assert import_onnx(tmp_path / "again.onnx").embedding_size == 32
