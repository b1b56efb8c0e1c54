"""The identity objective: margin-softmax cross-entropy over the head of the ``head:`` config section.

``loss = CE(s * margin(cos(x, W)), y)`` through :class:`~faceforge.models.heads.criterion.LocalCriterion` (the head
replicated on every rank) or :class:`~faceforge.models.heads.criterion.ShardedCriterion` (classes split over ranks,
``head.sharded=true``, and Partial FC with ``head.sample_rate < 1``); the formulas are the heads' own
(:mod:`faceforge.models.heads.margin`). Rows without an identity are left out; ``branches`` keeps the rows of
some sampler branches only (EKD trains the head on its random half); ``extra_branch`` also trains the head on the
extra branch's embeddings with the same labels (DDL's hard twins), logged as ``margin/extra``.

Logs ``top1``, the training accuracy of the margin-free logits. Under gradient accumulation a CurricularFace
head updates its ``t`` once per optimiser step from the whole step's statistic (see
:class:`~faceforge.models.heads.margin.CurricularFace`).
"""

from __future__ import annotations

from typing import Any

import torch

from faceforge.core import distributed as D
from faceforge.models.heads import build_head
from faceforge.models.heads.criterion import LocalCriterion, ShardedCriterion, shard_range
from faceforge.objectives.base import (
    OBJECTIVES,
    Needs,
    Objective,
    ObjectiveContext,
    ObjectiveOutput,
    StepBatch,
)

#: head keys that choose how the classifier is laid out over ranks, not arguments of the head itself
HEAD_LAYOUT_KEYS = ("sharded", "sample_rate")


def head_layout(head_config: dict[str, Any]) -> tuple[bool, float]:
    rate = float(head_config.get("sample_rate", 1.0))
    return bool(head_config.get("sharded", False)) or rate < 1.0, rate


def find_margin(objectives: Any) -> MarginObjective | None:
    """The run's margin objective (the first of that type, whatever its instance name), or None."""
    return next((o for o in objectives.values() if isinstance(o, MarginObjective)), None)


@OBJECTIVES.register("margin")
class MarginObjective(Objective):
    """Cross-entropy of the run's margin head (see the module doc)."""

    needs = Needs(identity=True)

    def __init__(
        self, ctx: ObjectiveContext, *, branches: list[str] | None = None, extra_branch: bool = False
    ):
        super().__init__(ctx)
        cfg = dict(ctx.head_config or {"name": "arcface"})
        name = cfg.pop("name")
        self.head_name = name
        self.sharded, rate = head_layout(cfg)
        kwargs = {k: v for k, v in cfg.items() if k not in HEAD_LAYOUT_KEYS}
        self.num_classes = int(ctx.num_classes)
        if self.num_classes < 2:
            raise ValueError(
                f"the training data holds {self.num_classes} identity: a margin head needs at least 2 classes "
                "(check data.root / data.min_images_per_identity)"
            )
        classes = self.num_classes
        if self.sharded:
            dist = D.current()
            start, end = shard_range(classes, dist.rank, dist.world_size)
            if end <= start:
                raise ValueError(f"{classes} classes cannot be sharded over {dist.world_size} ranks")
            classes = end - start
            if bool((ctx.labels < 0).any()):
                raise ValueError(
                    "a sharded head (head.sharded / head.sample_rate < 1) needs an identity on every row: "
                    "data.sources without identities need a replicated head"
                )
        # a sharded head initialises only its own block (N(0, 0.01), like the full head)
        self.head = build_head(name, embedding_size=ctx.embedding_size, num_classes=classes, **kwargs)
        transform = self.logit_transform()
        self.criterion = (
            ShardedCriterion(self.head, self.num_classes, rate, logit_transform=transform)
            if self.sharded
            else LocalCriterion(self.head, logit_transform=transform)
        )
        self.branches = list(branches) if branches is not None else None
        self.extra_branch = bool(extra_branch)

    def logit_transform(self) -> Any:
        """A transform of the head's logits (see :class:`~faceforge.models.heads.criterion.LogitContext`); the
        plain margin objective has none, CIFP's objective returns its penalty."""
        return None

    def begin_step(self, accumulate: int) -> None:
        if accumulate > 1 and hasattr(self.head, "begin_accumulation"):
            self.head.begin_accumulation()

    def end_step(self) -> None:
        if hasattr(self.head, "end_accumulation"):
            self.head.end_accumulation()

    def forward(self, batch: StepBatch) -> ObjectiveOutput:
        emb, labels = batch.embeddings, batch.labels
        rows = batch.labelled & batch.in_branches(self.branches)
        if bool(rows.all()):
            out = self.criterion(emb, labels)
            loss, top1 = out.loss, out.top1
        elif bool(rows.any()):
            out = self.criterion(emb[rows], labels[rows])
            loss, top1 = out.loss, out.top1
        else:  # a batch of faces without identities only
            loss, top1 = emb.sum() * 0.0, torch.zeros((), device=emb.device)
            if self.training and getattr(self.head, "stat_reduce", None) is not None:
                self.head.observe(emb.new_zeros(0))  # the other ranks' batch statistic waits for this rank
        terms = {"loss": loss}
        if self.extra_branch:
            if batch.extra is None:
                raise ValueError(
                    "objectives.margin.extra_branch=true needs an objective that adds an extra branch (ddl)"
                )
            # the same rows as the main term (DDL's paper sampling trains the head on its normal batches only)
            terms["extra"] = (
                self.criterion(batch.extra, labels).loss
                if bool(rows.all())
                else self.criterion(batch.extra[rows], labels[rows]).loss
            )
        return ObjectiveOutput(terms, {"top1": float(top1)})

    # ------------------------------------------------------------------------------------- checkpoints
    def sharded_parameters(self) -> dict[int, Any]:
        return {id(self.head.weight): self.criterion} if self.sharded else {}

    def checkpoint_state(self) -> dict[str, Any]:
        return self.criterion.full_state_dict()

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.criterion.load_full_state_dict(state)

    def describe(self) -> dict[str, Any]:
        return {
            "type": "margin",
            "head": self.head_name,
            "num_classes": self.num_classes,
            "sharded": self.sharded,
            "branches": self.branches,
            "extra_branch": self.extra_branch,
        }
