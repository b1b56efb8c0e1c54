"""An AIFR model is a backbone like any other: its checkpoint embeds through the checkpoint embedder (eval, embed,
teachers) and exports to ONNX (verified against PyTorch), the embedding being the identity head on X_id."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from faceforge.cli.main import main
from faceforge.core.checkpoint import FORMAT, VERSION, atomic_torch_save
from faceforge.data.image_io import read_image_rgb
from faceforge.data.preprocess import Preprocess
from faceforge.embedders.checkpoint import CheckpointEmbedder
from faceforge.models.backbones import build_backbone

BACKBONE = {"name": "aifr_mobilefacenet", "kwargs": {"embedding_size": 32}}


@pytest.fixture(scope="module")
def checkpoint(lfw_small: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """An AIFR MobileFaceNet whose BatchNorm statistics come from 24 real LFW faces (no gradient step)."""
    faces = np.stack([read_image_rgb(f) for f in sorted(lfw_small.rglob("*.jpg"))[:24]])
    torch.manual_seed(0)
    model = build_backbone(BACKBONE["name"], **BACKBONE["kwargs"]).train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model(Preprocess()(torch.from_numpy(faces)))
    model.eval()
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "meta": {"backbone": BACKBONE, "embedding_size": 32, "preprocess": Preprocess().to_dict()},
        "backbone": model.state_dict(),
    }
    return atomic_torch_save(ckpt, tmp_path_factory.mktemp("aifr_ckpt") / "model.pt"), faces


def test_checkpoint_embedder_gives_the_identity_embedding(checkpoint: tuple[Path, np.ndarray]) -> None:
    path, faces = checkpoint
    emb = CheckpointEmbedder(path, device="cpu", precision="fp32").embed(faces)
    model = build_backbone(BACKBONE["name"], **BACKBONE["kwargs"])
    model.load_state_dict(torch.load(path, weights_only=True)["backbone"])
    model.eval()
    with torch.no_grad():
        _, feats = model(Preprocess()(torch.from_numpy(faces)), return_features=True)
        ref = model.encoder.embed_map(feats["x_id"]).numpy()
    assert emb.shape == (24, 32) and np.abs(emb).max() > 0.1
    np.testing.assert_allclose(emb, ref, atol=1e-4)


@pytest.mark.slow
def test_aifr_exports_to_onnx(checkpoint: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from faceforge.embedders.onnx_model import OnnxEmbedder

    path, faces = checkpoint
    out = tmp_path / "aifr.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["export-onnx", str(path), str(out), "--opset", "18"]) == 0
    ref = CheckpointEmbedder(path, device="cpu", precision="fp32").embed(faces)
    got = OnnxEmbedder(out, device="cpu").embed(faces)
    assert np.abs(got - ref).max() < 1e-4
