"""FAN: the loss terms by their formulas (alignment zero for identical inputs), the networks' shapes, the random-scale
twins, and a CI smoke run through ``faceforge train`` that writes the grid PNG of normalised faces."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from faceforge.cli.main import main
from faceforge.core.checkpoint import load_checkpoint
from faceforge.methods.fan.data import RandomScaleTwins
from faceforge.methods.fan.losses import (
    alignment_loss,
    decorrelation_loss,
    lsgan_discriminator,
    lsgan_generator,
)
from faceforge.methods.fan.modules import (
    FaceDecoder,
    FeatureDiscriminator,
    ImageDiscriminator,
    NonIdentityEncoder,
)


def test_alignment_loss_is_zero_for_identical_inputs_and_two_minus_two_cos_otherwise() -> None:
    f = torch.randn(5, 16)
    assert alignment_loss(f, f.clone()) == 0
    assert alignment_loss(3.0 * f, f) < 1e-6  # the direction matters, not the norm
    g = torch.randn(5, 16, requires_grad=True)
    cos = torch.nn.functional.cosine_similarity(g, f, dim=1)
    assert torch.allclose(alignment_loss(g, f), (2 - 2 * cos).mean(), atol=1e-6)
    alignment_loss(g, f).backward()
    assert g.grad is not None and f.grad is None  # the high-resolution feature is the target (stop-gradient)


def test_gan_and_decorrelation_terms_by_hand() -> None:
    real, fake = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0])
    assert lsgan_discriminator(real, fake) == pytest.approx(0.5 * (0.125 + 0.5))
    assert lsgan_generator(fake) == pytest.approx(0.25)
    z = torch.randn(256, 4)
    assert decorrelation_loss(z, torch.randn(256, 8)) < 0.02  # independent: near zero
    assert decorrelation_loss(z, torch.cat([z, -z], 1)) == pytest.approx(0.25, abs=0.01)  # 8 of 32 entries ±1


def test_networks_shapes() -> None:
    x = torch.randn(2, 3, 112, 112)
    z = NonIdentityEncoder(32)(x)
    out = FaceDecoder(16, 32)(torch.randn(2, 16), z)
    assert z.shape == (2, 32) and out.shape == (2, 3, 112, 112) and out.abs().max() <= 1
    assert ImageDiscriminator()(out).shape == (2, 1, 14, 14)
    assert FeatureDiscriminator(16)(torch.randn(2, 16)).shape == (2,)


def test_random_scale_twins_are_seeded_and_low_resolution() -> None:
    rng = np.random.default_rng(0)
    faces = torch.from_numpy(rng.integers(0, 256, (3, 112, 112, 3), dtype=np.uint8))
    twins = RandomScaleTwins(0.125, 0.25, ("cubic",), seed=1)
    a, b = twins(faces, torch.tensor([4, 5, 6]), 7), twins(faces, torch.tensor([4, 5, 6]), 7)
    assert torch.equal(a, b) and a.shape == faces.shape
    assert not torch.equal(a, twins(faces, torch.tensor([4, 5, 6]), 8))

    # at most 28 px of detail: shrinking to 28 and back changes the twin far less than the original
    def lost(img: np.ndarray) -> float:
        back = cv2.resize(cv2.resize(img, (28, 28), interpolation=cv2.INTER_AREA), (112, 112),
                          interpolation=cv2.INTER_CUBIC)  # fmt: skip
        return float(np.abs(back.astype(float) - img).mean())

    assert lost(a[0].numpy()) < 0.5 * lost(faces[0].numpy())


def test_fan_trains_through_faceforge_train_and_draws_the_grid(
    lfw_small: Path, tmp_path: Path, list_file
) -> None:
    run = tmp_path / "fan"
    rc = main(
        ["train", "lfw_mobilefacenet_arcface", f"data.root={lfw_small}",
         f"data.list_file={list_file(lfw_small, tmp_path / 'train.txt', per_person=4, people=4)}",
         "data.exclude_pairs=[]", "data.preload=true", "data.num_workers=0", "data.batch_size=8",
         "model.embedding_size=16", "optim.epochs=1", "run.progress=false", "run.precision=fp32",
         "run.channels_last=false", "run.log_every=1", "eval.pairs=null", f"run.dir={run}", "method=fan",
         "method.decoder_rows=4", "method.grid_faces=4", "run.max_steps=1"]
    )  # fmt: skip
    assert rc == 0
    hist = json.loads((run / "report.json").read_text())["history"]
    assert len(hist) == 1
    for key in ("fan/align", "fan/rec", "fan/ip", "fan/feature_gan", "fan/image_gan", "fan/disentangle",
                "fan/d_image", "fan/d_feature", "margin"):  # fmt: skip
        assert np.isfinite(hist[-1][key]), key
    grid = cv2.imread(str(run / "fan_grid.png"))
    assert grid is not None and grid.shape[0] > 4 * 112 and grid.shape[1] > 3 * 112
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["meta"]["backbone"]["name"] == "mobilefacenet"  # an ordinary recognition model
    assert set(state["optimizers"]) == {"main", "generator", "discriminators"}
    assert any(k.startswith("decoder.") for k in state["method"])
