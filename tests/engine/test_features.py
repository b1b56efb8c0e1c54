"""Objectives that declare backbone feature outputs get them from the same forward pass, with gradient."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from faceforge.config import compose_config
from faceforge.engine.loop import Trainer
from faceforge.models.backbones import BACKBONES
from faceforge.objectives import OBJECTIVES, Needs, Objective, ObjectiveOutput, StepBatch


class PooledBackbone(nn.Module):
    """8x8 pooling -> linear embedding; its feature output ``pooled`` is the 8x8 map itself."""

    input_size = 112
    feature_names = ("pooled",)

    def __init__(self, embedding_size: int = 16, input_size: int = 112, dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, embedding_size)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        pooled = F.adaptive_avg_pool2d(self.conv(x), 8)
        emb = self.fc(pooled.flatten(1))
        return (emb, {"pooled": pooled}) if return_features else emb


class PooledEnergy(Objective):
    """Mean square of the declared feature map (so its gradient reaches the conv through the features only)."""

    needs = Needs(identity=False, features=("pooled",))

    def forward(self, batch: StepBatch) -> ObjectiveOutput:
        pooled = batch.features["pooled"]
        assert pooled.shape == (len(batch), 4, 8, 8) and pooled.requires_grad
        return ObjectiveOutput({"loss": pooled.pow(2).mean()})


@pytest.fixture(autouse=True, scope="module")
def _plugins():
    BACKBONES.register("test_pooled")(PooledBackbone)
    OBJECTIVES.register("test_pooled_energy")(PooledEnergy)
    yield
    BACKBONES.unregister("test_pooled")
    OBJECTIVES.unregister("test_pooled_energy")


def _cfg(root: Path, lf: Path, run: Path, *more: str):
    return compose_config(
        "lfw_mobilefacenet_arcface",
        [f"data.root={root}", f"data.list_file={lf}", f"run.dir={run}", "model=mobilefacenet",
         "model.name=test_pooled", "model.embedding_size=16", "data.exclude_pairs=[]", "data.batch_size=8",
         "optim.epochs=1", "run.max_steps=2", "run.progress=false", "run.precision=fp32", "run.channels_last=false",
         "run.log_every=1", "data.num_workers=0", "eval.pairs=null", *more],
    )  # fmt: skip


def test_features_reach_the_objective(lfw_small: Path, tmp_path: Path, list_file) -> None:
    lf = list_file(lfw_small, tmp_path / "train.txt", per_person=4, people=8)
    trainer = Trainer(_cfg(lfw_small, lf, tmp_path / "a", "objectives.energy.type=test_pooled_energy",
                           "objectives.margin=null"))  # fmt: skip
    before = trainer.backbone.conv.weight.detach().clone()
    report = trainer.fit()
    assert [r["energy"] > 0 for r in report["history"]] == [True, True]
    # the only loss is on the features: the conv moved, the embedding layer did not get a gradient
    assert not torch.equal(trainer.backbone.conv.weight.detach(), before)
    assert trainer.backbone.fc.weight.grad is None
    with pytest.raises(ValueError, match=r"feature outputs \['pooled'\], but model mobilefacenet gives none"):
        Trainer(_cfg(lfw_small, lf, tmp_path / "b", "model.name=mobilefacenet",
                     "objectives.energy.type=test_pooled_energy"))  # fmt: skip


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own, when torch.compile imports dynamo
def test_run_compile_wraps_the_step_not_the_checkpoint(lfw_small: Path, tmp_path: Path, list_file) -> None:
    """run.compile=true: the step's model is torch.compile's wrapper (compiled lazily, at the first step; not run
    here, compiling takes minutes on a CPU), checkpoints keep the plain backbone's keys; null is off on a CPU."""
    lf = list_file(lfw_small, tmp_path / "train.txt", per_person=4, people=8)
    on = Trainer(_cfg(lfw_small, lf, tmp_path / "a", "run.compile=true"))
    assert on.compiled and isinstance(on.model, torch._dynamo.eval_frame.OptimizedModule)
    assert on.model._orig_mod is on.backbone
    assert set(on.state.state(full=False)["backbone"]) == set(on.backbone.state_dict())
    default = Trainer(_cfg(lfw_small, lf, tmp_path / "b"))
    assert not default.compiled and default.model is default.backbone
