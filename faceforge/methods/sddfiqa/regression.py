"""SDD-FIQA's quality regression as a training objective (Ou et al., CVPR 2021; TFace ``quality/train.py``,
``quality/train_config.py``).

The network is a quality backbone (``model=sddfiqa_mobilefacenet`` / ``sddfiqa_iresnet50``,
:mod:`faceforge.models.backbones.quality`) whose one-number output arrives as the ``[B, 1]`` "embedding"; the
target is the per-image ``quality`` attribute (the ``path,quality`` CSV written by ``faceforge quality-labels``,
given as ``data.attributes``). With prediction ``q_i`` and pseudo-label ``Q_i`` over the rows ``L`` of the batch
that have a label (rows without one are masked out; a batch with none gives a zero loss that keeps the graph)::

    smooth_l1 (default, TFace's default):  (1/|L|) sum_{i in L} { 0.5 d_i^2 / beta   if |d_i| < beta
                                                                 { |d_i| - 0.5 beta  otherwise,      d_i = q_i - Q_i
    l1:                                    (1/|L|) sum |d_i|
    l2:                                    (1/|L|) sum d_i^2      (TFace's "L2", nn.MSELoss)

``beta`` = 1 is ``torch.nn.SmoothL1Loss()``'s default, as TFace uses it; on labels spread over 0..100 it is L1 for
all but the last point of error.

``balanced_bins=B`` (B >= 2) makes the objective provide the batch sampler: batches balanced over B equal-width
bins of the labels (:class:`~faceforge.methods.sddfiqa.sampler.BinBalancedBatchSampler`; the advice of TFace
issue #70 for Beta-shaped labels). 0 (default, TFace's recipe) keeps the engine's shuffled epochs.

Logged per step: ``quality`` (the loss), ``quality/mae`` (mean absolute error on the labelled rows),
``quality/pred_mean`` and ``quality/label_mean``, ``quality/used`` (labelled rows in the batch).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from faceforge.methods.sddfiqa.sampler import BinBalancedBatchSampler
from faceforge.objectives.base import (
    OBJECTIVES,
    Needs,
    Objective,
    ObjectiveContext,
    ObjectiveOutput,
    SamplerRequest,
    StepBatch,
)

__all__ = ["LOSSES", "QualityRegression", "regression_loss"]

ATTRIBUTE = "quality"
LOSSES = ("smooth_l1", "l1", "l2")


def regression_loss(pred: Tensor, target: Tensor, kind: str = "smooth_l1", beta: float = 1.0) -> Tensor:
    """Mean regression loss of ``pred`` against ``target`` (both ``[n]``; formulas in the module doc)."""
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=beta)
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "l2":
        return F.mse_loss(pred, target)
    raise ValueError(f"unknown regression loss {kind!r}; choose one of {list(LOSSES)}")


@OBJECTIVES.register("quality_regression")
class QualityRegression(Objective):
    """Regress the ``quality`` attribute with the backbone's single output (see the module doc).

    Options: ``loss`` smooth_l1 | l1 | l2; ``beta`` (SmoothL1's switch point, > 0); ``balanced_bins`` (0: shuffled
    batches; B >= 2: batches balanced over B equal-width label bins).
    """

    needs = Needs(identity=False, attributes=(ATTRIBUTE,))

    def __init__(
        self, ctx: ObjectiveContext, *, loss: str = "smooth_l1", beta: float = 1.0, balanced_bins: int = 0
    ) -> None:
        super().__init__(ctx)
        if ctx.embedding_size != 1:
            raise ValueError(
                f"objective quality_regression regresses one number per face, but the backbone gives "
                f"{ctx.embedding_size}: use a quality backbone (model=sddfiqa_mobilefacenet, "
                "sddfiqa_mobilefacenet_paper or sddfiqa_iresnet50)"
            )
        if loss not in LOSSES:
            raise ValueError(f"objectives.quality.loss={loss!r}: choose one of {list(LOSSES)}")
        if not beta > 0:
            raise ValueError(f"objectives.quality.beta must be > 0, got {beta}")
        if balanced_bins < 0 or balanced_bins == 1:
            raise ValueError(
                f"objectives.quality.balanced_bins={balanced_bins}: 0 (shuffled batches) or at least 2 bins"
            )
        self.loss, self.beta, self.balanced_bins = loss, float(beta), int(balanced_bins)
        if self.balanced_bins:
            # this instance brings the batch sampler (read per instance by the engine)
            self.needs = Needs(identity=False, attributes=(ATTRIBUTE,), sampler=True)
        self.label_summary = self._summary(ctx.attributes)
        self.sampler_summary: dict[str, Any] | None = None

    @staticmethod
    def _summary(attributes: Any) -> dict[str, Any]:
        if attributes is None or ATTRIBUTE not in attributes.names:
            return {}
        values, mask = attributes.numeric(ATTRIBUTE)
        v = values[mask]
        if v.size == 0:
            return {"rows_with_label": 0}
        return {
            "rows_with_label": int(v.size),
            "rows": int(mask.size),
            "mean": float(v.mean()),
            "std": float(v.std()),
            "min": float(v.min()),
            "max": float(v.max()),
        }

    def batch_sampler(self, request: SamplerRequest) -> BinBalancedBatchSampler | None:
        if not self.balanced_bins:
            return None
        values, mask = request.attributes.numeric(ATTRIBUTE)
        sampler = BinBalancedBatchSampler(
            values,
            mask,
            self.balanced_bins,
            request.batch_size,
            request.seed,
            request.rank,
            request.world_size,
        )
        self.sampler_summary = sampler.describe()
        return sampler

    def forward(self, batch: StepBatch) -> ObjectiveOutput:
        values, mask = batch.attribute(ATTRIBUTE)
        pred = batch.embeddings[:, 0]
        used = int(mask.sum())
        if used == 0:
            return ObjectiveOutput(
                {"loss": pred.sum() * 0.0},
                {"used": 0.0, "mae": 0.0, "pred_mean": float(pred.detach().mean()), "label_mean": 0.0},
            )
        p, t = pred[mask], values[mask].to(pred.dtype)
        loss = regression_loss(p, t, self.loss, self.beta)
        with torch.no_grad():
            logs = {
                "used": float(used),
                "mae": float((p - t).abs().mean()),
                "pred_mean": float(p.mean()),
                "label_mean": float(t.mean()),
            }
        return ObjectiveOutput({"loss": loss}, logs)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": type(self).__name__,
            "target": f"attribute '{ATTRIBUTE}'",
            "loss": self.loss,
            "beta": self.beta if self.loss == "smooth_l1" else None,
            "balanced_bins": self.balanced_bins,
            "labels": self.label_summary,
        }
        if self.sampler_summary is not None:
            out["sampler"] = self.sampler_summary
        return out
