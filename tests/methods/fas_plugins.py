"""Test plug-ins for face age synthesis: a tiny encoder with the AIFR interface and a tiny age objective.

They stand in for the AIFR backbone and its ``age`` objective at a size a CI run trains in seconds; they follow
the same contract (``forward(x, return_features=True) -> (embedding, {x_id, x_age, x1..x4})``, an ``age``
objective whose ``estimator`` submodule maps ``X_age`` to (age logits over 0..100, group logits)).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceforge.models.backbones import BACKBONES
from faceforge.objectives import OBJECTIVES, Needs, Objective, ObjectiveContext, ObjectiveOutput, StepBatch

AGE_CUTS = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])


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


class TinyEstimator(nn.Module):
    def __init__(self, in_features: int = 32 * 49, groups: int = 7) -> None:
        super().__init__()
        self.age = nn.Linear(in_features, 101)
        self.group = nn.Linear(101, groups)

    def forward(self, x_age: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.age(x_age.flatten(1))
        return logits, self.group(logits)


class TinyAge(Objective):
    """Group cross-entropy of the estimator on ``X_age`` for rows with an age."""

    needs = Needs(identity=False, attributes=("age",), features=("x_age",))

    def __init__(self, ctx: ObjectiveContext, *, groups: int = 7) -> None:
        super().__init__(ctx)
        self.estimator = TinyEstimator(32 * 49, groups)

    def forward(self, batch: StepBatch) -> ObjectiveOutput:
        ages, mask = batch.attribute("age")
        if not bool(mask.any()):
            return ObjectiveOutput({"loss": batch.features["x_age"].sum() * 0.0})
        _, group_logits = self.estimator(batch.features["x_age"][mask])
        groups = torch.bucketize(ages[mask].float(), AGE_CUTS.to(ages.device), right=False)
        return ObjectiveOutput({"loss": F.cross_entropy(group_logits, groups)})


if "test_tiny_aifr" not in BACKBONES:
    BACKBONES.register("test_tiny_aifr")(TinyAIFR)
if "test_tiny_age" not in OBJECTIVES:
    OBJECTIVES.register("test_tiny_age")(TinyAge)
