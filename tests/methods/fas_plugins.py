"""A test plug-in for face age synthesis: a tiny encoder with the AIFR backbones' interface
(``forward(x, return_features=True) -> (embedding, {x_id, x_age, x1..x4})``) that a CI run trains in seconds;
the real ``age`` objective trains its estimator on the 32x7x7 ``X_age`` (``channels=32``)."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from faceforge.models.backbones import BACKBONES


class TinyAIFR(nn.Module):
    """Four stride-2 convs (8@56, 16@28, 16@14, 32@7); ``X_age = ½ X∘σ(conv(X))``, ``X_id = X − X_age``."""

    feature_names = ("x_id", "x_age", "x1", "x2", "x3", "x4")

    def __init__(self, embedding_size: int = 16, input_size: int = 112, dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding_size, self.input_size = embedding_size, input_size
        chans = [3, 8, 16, 16, 32]
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, 2, 1), nn.BatchNorm2d(b), nn.PReLU(b))
            for a, b in itertools.pairwise(chans)
        )
        self.attention = nn.Conv2d(32, 32, 1)
        self.fc = nn.Linear(32 * 7 * 7, embedding_size)

    def forward(self, x: Tensor, return_features: bool = False):
        maps = {}
        for i, stage in enumerate(self.stages, 1):
            x = stage(x)
            maps[f"x{i}"] = x
        x_age = 0.5 * x * torch.sigmoid(self.attention(x))
        x_id = x - x_age
        emb = self.fc(x_id.flatten(1))
        return (emb, {"x_id": x_id, "x_age": x_age, **maps}) if return_features else emb


if "test_tiny_aifr" not in BACKBONES:
    BACKBONES.register("test_tiny_aifr")(TinyAIFR)
