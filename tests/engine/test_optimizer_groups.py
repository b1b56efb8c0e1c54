"""The main optimiser's parameter groups: objectives may take other settings; a method's optimiser takes its own."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from omegaconf import OmegaConf
from torch import nn

from faceforge.core.schema import OptimConfig
from faceforge.engine.method import Method, MethodContext, OptimizerSpec
from faceforge.engine.setup import build_optimizers
from faceforge.objectives import Needs, Objective, ObjectiveContext


class Estimator(Objective):
    needs = Needs(identity=False)

    def __init__(self, ctx: ObjectiveContext, decay: bool) -> None:
        super().__init__(ctx)
        self.net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        self.decay = decay

    def optimizer_settings(self) -> dict:
        return {} if self.decay else {"weight_decay": 0.0}


class WithCritic(Method):
    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.critic = nn.Linear(4, 1)

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"critic": OptimizerSpec([self.critic], {"name": "adam", "lr": 1e-4, "betas": [0.5, 0.99]})}


def test_groups_by_hand() -> None:
    ctx = ObjectiveContext(embedding_size=4, num_classes=2, labels=None, classes=[], dataset=None)
    backbone = nn.Linear(4, 4)
    objectives = nn.ModuleDict({"age": Estimator(ctx, True), "adv": Estimator(ctx, False)})
    method = WithCritic(SimpleNamespace())  # type: ignore[arg-type]
    cfg = SimpleNamespace(optim=OmegaConf.structured(OptimConfig(weight_decay=5e-4)))
    opts, schedules, clip = build_optimizers(cfg, [backbone, objectives, method], method, 10, 100)
    assert set(opts) == {"main", "critic"} and isinstance(opts["critic"], torch.optim.Adam)
    assert opts["critic"].param_groups[0]["betas"] == (0.5, 0.99) and schedules["critic"].base_lr == 1e-4
    wd = {id(p): g["weight_decay"] for g in opts["main"].param_groups for p in g["params"]}
    adv, age = objectives["adv"].net, objectives["age"].net
    # decayed: weights of the backbone and of the plain objective; never: biases, BN, and the adv. objective
    assert wd[id(backbone.weight)] == 5e-4 and wd[id(age[0].weight)] == 5e-4
    assert wd[id(backbone.bias)] == 0.0 and wd[id(age[1].weight)] == 0.0
    assert wd[id(adv[0].weight)] == 0.0 and wd[id(adv[1].weight)] == 0.0
    assert id(method.critic.weight) not in wd  # the critic belongs to its own optimiser only
    assert len(wd) == 2 + 4 + 4 and clip["main"] == 5.0
