"""MTLFace's two age objectives (Huang, Zhang, Shan, CVPR 2021; ``Hzzone/MTLFace`` ``models/fr.py``), on the feature maps of an ``aifr_*`` backbone.

* ``age``: the age estimator (:class:`~faceforge.methods.mtlface.age.AgeEstimator`) on ``X_age``,
  ``L_age = MSE(E[age], a) + CE(group logits, group(a))``; it learns age from the age part of the decomposition.
* ``age_adversarial``: a *second, separate* estimator on ``GRL(X_id)`` with the same loss: the estimator learns to
  read age from the identity part while the reversed gradient pushes the encoder to remove it (MTLFace's
  "cross-age domain adversarial" term). Its parameters get no weight decay (``optimizer_settings``), as the code.

With CosFace (s=64, m=0.35) these give ``L = L_CosFace + 0.001 * L_age + 0.002 * L_adv`` (the objective weights of
the ``mtlface`` method config). Rows without an age (a source without ages, an empty sidecar cell) are left out;
a batch with none gives a zero term that still touches the features and the estimator (zero gradients, so under
torchrun every rank has a gradient to average for the same parameters; every rank returns the same keys).

Logged per objective: ``mse``, ``group_ce``, ``mae`` (years), ``group_top1`` on the rows used, ``used`` (rows).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from faceforge.methods.mtlface.age import AgeEstimator, age_loss, check_groups, grad_reverse
from faceforge.objectives.base import (
    OBJECTIVES,
    Needs,
    Objective,
    ObjectiveContext,
    ObjectiveOutput,
    StepBatch,
)

__all__ = ["AgeAdversarialObjective", "AgeObjective"]


@OBJECTIVES.register("age")
class AgeObjective(Objective):
    """Age estimation on the backbone's ``X_age`` (see the module doc).

    Options: ``groups`` (7, or MTLFace's 4/5/6/8 variants), ``channels`` / ``spatial`` (the map's C and side: 512
    and 7 for every ``aifr_*`` backbone at 112 px), ``hidden`` (width of the estimator's hidden layer, 512 as
    MTLFace; its first Linear has C*s*s*hidden weights, 12.8M at 512), ``max_age`` (top of the DEX range the MSE
    target is clamped to; the estimator's ages are 0..100).
    """

    feature: ClassVar[str] = "x_age"
    needs = Needs(identity=False, attributes=("age",), features=("x_age",))

    def __init__(
        self,
        ctx: ObjectiveContext,
        *,
        groups: int = 7,
        channels: int = 512,
        spatial: int = 7,
        hidden: int = 512,
        max_age: float = 100.0,
    ) -> None:
        super().__init__(ctx)
        check_groups(groups)
        if not 0 < max_age <= 100:
            raise ValueError(f"max_age={max_age} must be in (0, 100]: the DEX estimator covers ages 0..100")
        self.groups = int(groups)
        self.max_age = float(max_age)
        self.estimator = AgeEstimator(channels, spatial, groups, hidden)

    def estimator_input(self, x: Tensor) -> Tensor:
        return x

    def forward(self, batch: StepBatch) -> ObjectiveOutput:
        fmap = batch.features[self.feature]
        self.estimator.check_input(fmap, self.feature)
        ages, mask = batch.attribute("age")
        used = int(mask.sum())
        if used == 0:  # zero gradients for the estimator too, so every rank averages the same parameters
            zero = fmap.sum() * 0.0 + sum(p.sum() for p in self.estimator.parameters()) * 0.0
            return ObjectiveOutput({"loss": zero}, {"used": 0.0})
        x = self.estimator_input(fmap[mask] if used < len(mask) else fmap)
        age_logits, group_logits = self.estimator(x)
        loss, parts = age_loss(age_logits, group_logits, ages[mask], self.groups, self.max_age)
        logs = {k: float(v) for k, v in parts.items()}
        logs["used"] = float(used)
        return ObjectiveOutput({"loss": loss}, logs)

    def describe(self) -> dict[str, Any]:
        return {
            "type": "age",
            "feature": self.feature,
            "groups": self.groups,
            "max_age": self.max_age,
            "estimator": self.estimator.describe(),
        }


@OBJECTIVES.register("age_adversarial")
class AgeAdversarialObjective(AgeObjective):
    """The adversarial estimator on ``GRL(X_id)`` (see the module doc); ``coeff`` scales the reversed gradient
    (MTLFace: 1). No weight decay on its parameters."""

    feature: ClassVar[str] = "x_id"
    needs = Needs(identity=False, attributes=("age",), features=("x_id",))

    def __init__(
        self,
        ctx: ObjectiveContext,
        *,
        groups: int = 7,
        channels: int = 512,
        spatial: int = 7,
        hidden: int = 512,
        max_age: float = 100.0,
        coeff: float = 1.0,
    ) -> None:
        super().__init__(
            ctx, groups=groups, channels=channels, spatial=spatial, hidden=hidden, max_age=max_age
        )
        self.coeff = float(coeff)

    def estimator_input(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.coeff)

    def optimizer_settings(self) -> dict[str, Any]:
        return {"weight_decay": 0.0}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "type": "age_adversarial", "coeff": self.coeff}
