"""DDL as an objective: hard twins of every batch image, embedded in the same forward, distilled toward the easy
images' similarity distributions (:class:`faceforge.distill.ddl.DDLLoss`, TFace's loss; methods.md §2).

Batches hold P identities x 2 images (as many steps per epoch as a shuffled pass over the images). The hard
branch is the batch degraded on the fly by ``hard`` (augmentations by name; default continuous random low
resolution, 17-45 px for 112 px faces) with seed ``(seed, step, dataset row)``, or real hard photos of the same
identities from ``hard_images`` (a folder or a list; :mod:`faceforge.distill.hard_pool`) with seed
``(seed, step, identity)``, so a resumed run draws what an unbroken one would. The loss is computed on the batch
gathered from every rank (``gather: true``). The margin loss on the hard branch is the margin objective's
``extra_branch`` option (on in the packaged ``method=ddl``): TFace's separate per-branch heads exist because its
easy and hard sets are different datasets; here both branches keep their identities and share the one head.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from faceforge.data.samplers import IdentityBalancedBatchSampler
from faceforge.data.transforms import build_augmentations
from faceforge.distill.ddl import branches_from_pairs
from faceforge.distill.hard_pool import HardPool
from faceforge.distill.registry import DISTILL_LOSSES
from faceforge.objectives.base import (
    OBJECTIVES,
    Needs,
    Objective,
    ObjectiveContext,
    ObjectiveOutput,
    SamplerRequest,
    StepBatch,
)

__all__ = ["DDLObjective", "complete_pairs"]

DEFAULT_HARD = {"lowres": {"min_scale": 0.15, "max_scale": 0.4, "p": 1.0}}
TERMS = ("kl_pos", "kl_neg", "order")


def complete_pairs(labels: Tensor) -> Tensor:
    """Row indices of the consecutive same-label pairs ``(2i, 2i + 1)`` whose label occurs in no other
    pair (a P x 2 batch minus pairs broken by unreadable images)."""
    n = labels.shape[0] - labels.shape[0] % 2
    a, b = labels[0:n:2], labels[1:n:2]
    ok = a == b
    uniq, counts = torch.unique(a[ok], return_counts=True)
    once = torch.isin(a, uniq[counts == 1]) & ok
    first = torch.nonzero(once).flatten() * 2
    return torch.stack([first, first + 1], dim=1).flatten()


@OBJECTIVES.register("ddl")
class DDLObjective(Objective):
    """Distribution distillation between each image and its hard twin (see the module doc)."""

    needs = Needs(identity=True, unlabelled_rows=False, gathered=True, sampler=True, extra_branch=True)

    def __init__(
        self,
        ctx: ObjectiveContext,
        *,
        hard: dict[str, Any] | None = None,
        hard_images: str | None = None,
        gather: bool = True,
        **loss_options: Any,
    ) -> None:
        super().__init__(ctx)
        if ctx.accumulate_steps != 1:
            raise ValueError("ddl builds structured batches: set optim.accumulate_steps=1")
        hard = DEFAULT_HARD if hard is None else hard
        self.hard = build_augmentations(dict(hard)) if hard else None
        self.pool = HardPool(hard_images, list(ctx.classes), self.hard) if hard_images else None
        if self.hard is None and self.pool is None:
            raise ValueError(
                "ddl needs hard samples: a degradation in objectives.ddl.hard (e.g. {lowres: {}}) or real "
                "hard images in objectives.ddl.hard_images"
            )
        self.seed = int(ctx.seed)
        self.row_labels = np.asarray(ctx.labels)
        self.gather = bool(gather)
        self.loss = DISTILL_LOSSES.build("ddl", **loss_options)

    @classmethod
    def option_targets(cls) -> list[Callable[..., Any]]:
        return [cls.__init__, DISTILL_LOSSES.get("ddl").__init__]

    def batch_sampler(self, request: SamplerRequest) -> IdentityBalancedBatchSampler:
        if request.batch_size % 2:
            raise ValueError(
                f"ddl batches are P identities x 2 images: data.batch_size={request.batch_size} is odd"
            )
        # as many steps per epoch as a shuffled pass over the images (one pass over the identities would be
        # len(identities) / (P * world) steps, a fraction of the data)
        steps = max(1, len(request.labels) // (request.batch_size * request.world_size))
        return IdentityBalancedBatchSampler(
            request.labels,
            request.batch_size // 2,
            2,
            request.seed,
            request.rank,
            request.world_size,
            batches_per_epoch=steps,
            min_images=2,
        )

    def extra_images(self, images: Tensor, indices: Tensor, labels: Tensor, step: int) -> Tensor:
        if self.pool is not None:
            idx = indices.numpy()
            twins = self.pool.twins(images.numpy(), self.row_labels[idx], idx, self.seed, step)
            return torch.from_numpy(twins)
        assert self.hard is not None
        out = [
            self.hard(img, np.random.default_rng((self.seed, step, int(i))))
            for img, i in zip(images.numpy(), indices.tolist(), strict=True)
        ]
        return torch.from_numpy(np.stack(out))

    def forward(self, batch: StepBatch) -> ObjectiveOutput:
        if batch.extra is None:
            raise RuntimeError("ddl needs its hard branch: the engine embeds extra_images() with the batch")
        b = batch.gathered() if self.gathers else batch
        assert b.extra is not None
        rows = complete_pairs(b.labels)
        if rows.numel() < 4:  # fewer than two identities: no negatives, no term for this batch
            zero = b.embeddings.sum() * 0.0
            return ObjectiveOutput({"loss": zero}, dict.fromkeys(TERMS, 0.0))
        easy, hard = branches_from_pairs(b.embeddings[rows], b.extra[rows], b.labels[rows])
        loss = self.loss(easy, hard)
        parts = getattr(self.loss, "last_terms", None) or {}
        return ObjectiveOutput({"loss": loss}, {k: float(parts.get(k, 0.0)) for k in TERMS})

    def describe(self) -> dict[str, Any]:
        return {
            "type": "ddl",
            "hard_images": self.pool.describe() if self.pool is not None else None,
            "global_batch": self.gathers,
        }
