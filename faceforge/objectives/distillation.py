"""Distillation objectives: the student's embeddings against frozen teachers' (``teachers:`` in the config).

Each objective wraps one loss of :mod:`faceforge.distill` (formulas, defaults and sources are in those modules)
and reads the teacher embedding of every batch row from the run's teacher tables (one row per training image,
computed before training through the embedding cache; teachers never run inside the step):

* ``feature_l2``, ``cosine``: per-sample feature matching; the student goes through a learned linear projection
  (student dim -> teacher dim, trained with the student, saved in the checkpoint) when the sizes differ or
  ``projection: linear``;
* ``rkd``, ``sp``: within-batch relations (distances and angles; similarity matrices), computed on the batch
  gathered from every rank (``gather: true``, TFace's all-gather), no projection;
* ``ekd``: TFace's evaluation-oriented KD (ranks at FPR thresholds), gathered, with its own batches: a uniformly
  random half plus an identity-balanced half of ``balanced_k`` images per identity (branches ``random`` and
  ``balanced``; its packaged config trains the margin head on the random half only);
* ``liaad``: angular distillation from two or more teachers weighted per sample by attention, one projection per
  teacher (a provisional reconstruction: see :mod:`faceforge.distill.liaad`); ``confidence`` attention reads each
  teacher's cosine between the image and its class centroid in that teacher's space.

The loss's own options (``distance_weight``, ``topk``, ``attention``...) are options of the objective.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from faceforge.data.samplers import Branch, MultiBranchBatchSampler, TaggedBranches
from faceforge.distill.registry import DISTILL_LOSSES
from faceforge.distill.teachers import class_centroids
from faceforge.objectives.base import (
    GATHER_GRADS,
    OBJECTIVES,
    Needs,
    Objective,
    ObjectiveContext,
    ObjectiveOutput,
    SamplerRequest,
    StepBatch,
)

__all__ = ["LIAADObjective", "TeacherObjective"]

PROJECTIONS = ("auto", "linear", "none")


def _check_projection(projection: str) -> None:
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {list(PROJECTIONS)}, got {projection!r}")


def _teacher_rows(
    table: Any, indices: torch.Tensor, device: torch.device, mirrored: torch.Tensor | None = None
) -> torch.Tensor:
    """The teacher embedding of each row; for a table cached on both views (``view: student``), of the view the
    student saw (the mirrored face where the augmentation mirrored it)."""
    idx = indices.cpu()
    rows = table.embeddings[idx]
    flipped = getattr(table, "mirrored_embeddings", None)
    if flipped is not None and mirrored is not None:
        rows = torch.where(mirrored.cpu()[:, None], flipped[idx], rows)
    return rows.to(device)


def check_gather_grad(value: str) -> str:
    if value not in GATHER_GRADS:
        raise ValueError(f"gather_grad must be one of {list(GATHER_GRADS)}, got {value!r}")
    return value


class TeacherObjective(Objective):
    """A loss between the student's embedding and one teacher's embedding of the same image."""

    loss_name: ClassVar[str]
    feature: ClassVar[bool] = False  # per-sample feature matching (gets a projection when sizes differ)
    needs = Needs(identity=False, teachers=True)

    def __init__(
        self,
        ctx: ObjectiveContext,
        *,
        teacher: str | None = None,
        projection: str = "auto",
        gather: bool = True,
        gather_grad: str = "exact",
        **loss_options: Any,
    ) -> None:
        super().__init__(ctx)
        _check_projection(projection)
        self.table = ctx.require_teacher(self.loss_name, teacher)
        self.gather = bool(gather)
        self.gather_grad = check_gather_grad(gather_grad)
        self.loss = DISTILL_LOSSES.build(self.loss_name, **loss_options)
        dim, student = self.table.dim, ctx.embedding_size
        wants = self.feature and (projection == "linear" or dim != student)
        if wants and projection == "none":
            raise ValueError(
                f"{self.loss_name}: student embeddings are {student}-d but teacher {self.table.name}'s are "
                f"{dim}-d: set projection=auto (a learned linear map) or match model.embedding_size"
            )
        self.projection = nn.Linear(student, dim, bias=False) if wants else None

    @classmethod
    def option_targets(cls) -> list[Callable[..., Any]]:
        return [cls.__init__, DISTILL_LOSSES.get(cls.loss_name).__init__]

    def forward(self, batch: StepBatch) -> ObjectiveOutput:
        b = self.gathered_batch(batch)
        t = _teacher_rows(self.table, b.indices, b.device, b.mirrored)
        student = self.projection(b.embeddings) if self.projection is not None else b.embeddings
        return ObjectiveOutput({"loss": self.loss(student, t, b.labels)})

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.loss_name,
            "teacher": self.table.name,
            "projection": None if self.projection is None else list(self.projection.weight.shape[::-1]),
            "global_batch": self.gathers,
            "gather_grad": self.gather_grad if self.gathers else None,
            "teacher_view": "student"
            if getattr(self.table, "mirrored_embeddings", None) is not None
            else "original",
        }


@OBJECTIVES.register("feature_l2")
class FeatureL2Objective(TeacherObjective):
    loss_name = "feature_l2"
    feature = True


@OBJECTIVES.register("cosine")
class CosineObjective(TeacherObjective):
    loss_name = "cosine"
    feature = True


@OBJECTIVES.register("rkd")
class RKDObjective(TeacherObjective):
    loss_name = "rkd"
    needs = Needs(identity=False, teachers=True, gathered=True)


@OBJECTIVES.register("sp")
class SPObjective(TeacherObjective):
    loss_name = "sp"
    needs = Needs(identity=False, teachers=True, gathered=True)


@OBJECTIVES.register("ekd")
class EKDObjective(TeacherObjective):
    """EKD with TFace's batches (see the module doc); needs an identity on every row."""

    loss_name = "ekd"
    needs = Needs(identity=True, teachers=True, gathered=True, sampler=True, unlabelled_rows=False)

    def __init__(self, ctx: ObjectiveContext, *, balanced_k: int = 4, **options: Any) -> None:
        super().__init__(ctx, **options)
        self.balanced_k = int(balanced_k)
        if ctx.accumulate_steps != 1:
            raise ValueError("ekd builds structured batches: set optim.accumulate_steps=1")

    @classmethod
    def option_targets(cls) -> list[Callable[..., Any]]:
        return [cls.__init__, TeacherObjective.__init__, DISTILL_LOSSES.get(cls.loss_name).__init__]

    def batch_sampler(self, request: SamplerRequest) -> TaggedBranches:
        half, k = request.batch_size // 2, self.balanced_k
        if request.batch_size % 2 or half % k:
            raise ValueError(
                f"ekd batches are a random half plus a balanced half of identities x {k} images: "
                f"data.batch_size={request.batch_size} must be even with a half divisible by "
                f"objectives.ekd.balanced_k={k}"
            )
        n = len(request.labels)
        branches = [Branch(n, half, "random"), Branch(request.labels, half, "balanced", k)]
        sampler = MultiBranchBatchSampler(branches, request.seed, request.rank, request.world_size)
        return TaggedBranches(sampler, ("random", "balanced"))


@OBJECTIVES.register("liaad")
class LIAADObjective(Objective):
    """LIAAD over two or more teachers (see the module doc and :class:`faceforge.distill.liaad.LIAADLoss`)."""

    needs = Needs(identity=False, teachers=True)

    def __init__(
        self,
        ctx: ObjectiveContext,
        *,
        teachers: list[str] | None = None,
        projection: str = "auto",
        **loss_options: Any,
    ) -> None:
        super().__init__(ctx)
        _check_projection(projection)
        names = list(teachers) if teachers is not None else list(ctx.teacher_names)
        if len(names) < 2:
            raise ValueError(
                f"liaad distils two or more teachers (a general one and an age-invariant one), got {names}: "
                "add a second entry to teachers=[...] (and list both in objectives.liaad.teachers)"
            )
        self.tables = [ctx.require_teacher("liaad", n) for n in names]
        dims = [t.dim for t in self.tables]
        options = dict(loss_options)
        options.setdefault("num_teachers", len(dims))
        options.setdefault("teacher_dims", dims)
        self.loss = DISTILL_LOSSES.build("liaad", **options)
        student = ctx.embedding_size
        if projection == "none" and any(d != student for d in dims):
            raise ValueError(
                f"liaad: student embeddings are {student}-d but the teachers' are {dims}: "
                "set projection=auto (a learned linear map per teacher) or match model.embedding_size"
            )
        self.projections = nn.ModuleList(
            [] if projection == "none" else [nn.Linear(student, d, bias=False) for d in dims]
        )
        self.centroids: list[torch.Tensor] | None = None
        if self.loss.attention_name == "confidence":
            self.centroids = [class_centroids(t, ctx.labels, ctx.num_classes) for t in self.tables]

    @classmethod
    def option_targets(cls) -> list[Callable[..., Any]]:
        return [cls.__init__, DISTILL_LOSSES.get("liaad").__init__]

    def forward(self, batch: StepBatch) -> ObjectiveOutput:
        dev = batch.device
        teachers = [_teacher_rows(t, batch.indices, dev, batch.mirrored) for t in self.tables]
        if len(self.projections):
            students = [p(batch.embeddings) for p in self.projections]
        else:
            students = [batch.embeddings] * len(teachers)
        confidence = None
        if self.centroids is not None:
            lab = batch.labels.clamp(min=0)
            conf = [(t * c.to(dev)[lab]).sum(1) for t, c in zip(teachers, self.centroids, strict=True)]
            confidence = torch.stack(conf, dim=1) * batch.labelled.unsqueeze(1)
        loss = self.loss(students, teachers, batch.labels, confidence)
        logs = {}
        att = getattr(self.loss, "last_attention", None)
        if att is not None:
            logs = {f"attention_{t.name}": float(att[:, k].mean()) for k, t in enumerate(self.tables)}
        return ObjectiveOutput({"loss": loss}, logs)

    def describe(self) -> dict[str, Any]:
        return {
            "type": "liaad",
            "teachers": [t.name for t in self.tables],
            "attention": self.loss.attention_name,
            "projections": [list(p.weight.shape[::-1]) for p in self.projections],
        }
