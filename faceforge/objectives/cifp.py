"""CIFP as an objective: the margin head's cross-entropy with the Consistent Instance False Positive penalty.

Xu et al., "Consistent Instance False Positive Improves Fairness in Face Recognition", CVPR 2021; the
computation (TFace's reference, step by step, with the layouts and the ``code_mean`` / ``paper_ratio`` choice)
is :class:`faceforge.models.heads.cifp.CIFP`. The objective is the ``margin`` objective with that penalty as the
logit transform, so it composes with any margin head of the ``head`` group (CosFace as the paper, ArcFace,
CurricularFace), local, sharded or Partial FC, in one process or under torchrun. It *replaces* the margin
objective (both would train the same head): the packaged ``method=cifp`` sets ``objectives.margin: null`` and
``objectives.cifp``. Logged: the unified threshold ``cifp/tau``, ``cifp/k``, the already-violating negatives,
the rows with a false positive and the mean penalty.
"""

from __future__ import annotations

from typing import Any

from faceforge.models.heads.cifp import CIFP
from faceforge.objectives.base import OBJECTIVES, ObjectiveContext, ObjectiveOutput, StepBatch
from faceforge.objectives.margin import MarginObjective

__all__ = ["CIFPObjective"]


@OBJECTIVES.register("cifp")
class CIFPObjective(MarginObjective):
    """Margin cross-entropy with CIFP's penalty on the target logit (see the module doc)."""

    def __init__(
        self,
        ctx: ObjectiveContext,
        *,
        alpha: float | None = None,
        penalty: str = "code_mean",
        branches: list[str] | None = None,
        extra_branch: bool = False,
    ) -> None:
        self.options = {
            "alpha": alpha,
            "penalty": penalty,
        }  # read by logit_transform() inside super().__init__
        super().__init__(ctx, branches=branches, extra_branch=extra_branch)
        self.cifp = self.criterion.logit_transform

    def logit_transform(self) -> Any:
        return CIFP(**self.options)

    def forward(self, batch: StepBatch) -> ObjectiveOutput:
        out = super().forward(batch)
        last = self.cifp.last
        logs = {k.removeprefix("cifp/"): v for k, v in (last.log() if last is not None else {}).items()}
        out.logs.update(logs)
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "type": "cifp", "alpha": self.cifp.alpha, "penalty": self.cifp.penalty}
