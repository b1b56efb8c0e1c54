"""DDL as an objective: hard twins of every batch image, embedded in the same forward, distilled toward the easy
images' similarity distributions (:class:`faceforge.distill.ddl.DDLLoss`; Huang et al., ECCV 2020; TFace ``recognition/torchkit/loss/ddl.py``).

Batches hold P identities x 2 images (as many steps per epoch as a shuffled pass over the images). The hard
branch is the batch degraded on the fly by ``hard`` (augmentations by name; default continuous random low
resolution, 17-45 px for 112 px faces) with seed ``(seed, step, dataset row)``, or real hard photos of the same
identities from ``hard_images`` (a folder or a list; :mod:`faceforge.distill.hard_pool`) with seed
``(seed, step, identity)``, so a resumed run draws what an unbroken one would. The loss is computed on the batch
gathered from every rank (``gather: true``). The margin loss on the hard branch is the margin objective's
``extra_branch`` option (on in the packaged ``method=ddl``): TFace's separate per-branch heads exist because its
easy and hard sets are different datasets; here both branches keep their identities and share the one head.

Two batch layouts (``sampling``):

* ``pairs`` (faceforge's compact layout, the default): P identities x 2 images; the negatives are the first image
  of each pair, the positives the pairs themselves, in both branches.
* ``paper`` (TFace's ``train_ddl.py``): separate batches for the two roles, as the paper's recipe draws them: a
  ``normal`` batch of one image per identity (``normal_batch`` images; every pair in it is a negative, easy
  and, through its hard twins, hard) and a ``pairs`` batch of same-identity pairs (the rest of the batch,
  identities with two or more images) whose easy and hard versions give the positives. The margin loss trains on
  the normal batches only (``objectives.margin.branches=[normal]`` with ``extra_branch``, as TFace's heads see
  only its normal branches). ``hard_pairs``: ``both`` (both images of a hard pair degraded) or ``second`` (an
  easy image against a hard one, e.g. a mugshot against a surveillance crop).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from faceforge.data.samplers import (
    Branch,
    IdentityBalancedBatchSampler,
    MultiBranchBatchSampler,
    TaggedBranches,
)
from faceforge.data.transforms import build_augmentations
from faceforge.distill.ddl import DDLBranch, branches_from_pairs
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
SAMPLINGS = ("pairs", "paper")
HARD_PAIRS = ("both", "second")


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
        gather_grad: str = "exact",
        sampling: str = "pairs",
        normal_batch: int = 0,
        hard_pairs: str = "both",
        **loss_options: Any,
    ) -> None:
        super().__init__(ctx)
        if sampling not in SAMPLINGS:
            raise ValueError(f"objectives.ddl.sampling must be one of {list(SAMPLINGS)}, got {sampling!r}")
        if hard_pairs not in HARD_PAIRS:
            raise ValueError(
                f"objectives.ddl.hard_pairs must be one of {list(HARD_PAIRS)}, got {hard_pairs!r}"
            )
        if gather_grad not in ("exact", "tface"):
            raise ValueError(f"objectives.ddl.gather_grad must be 'exact' or 'tface', got {gather_grad!r}")
        self.sampling, self.normal_batch, self.hard_pairs = sampling, int(normal_batch), hard_pairs
        self.gather_grad = gather_grad
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

    def batch_sampler(self, request: SamplerRequest) -> IdentityBalancedBatchSampler | TaggedBranches:
        # as many steps per epoch as a shuffled pass over the images (one pass over the identities would be
        # len(identities) / (P * world) steps, a fraction of the data)
        steps = max(1, len(request.labels) // (request.batch_size * request.world_size))
        if self.sampling == "paper":
            normal = self.normal_batch or request.batch_size // 3
            rest = request.batch_size - normal
            if normal < 2 or rest < 2 or rest % 2:
                raise ValueError(
                    f"ddl sampling=paper splits data.batch_size={request.batch_size} into a normal batch of "
                    f"{normal} (objectives.ddl.normal_batch, default a third) and pairs: it needs >= 2 normal "
                    "images and an even rest of >= 2"
                )
            branches = [
                Branch(request.labels, normal, "balanced", k=1),
                Branch(request.labels, rest, "balanced", k=2, min_images=2),
            ]
            sampler = MultiBranchBatchSampler(
                branches, request.seed, request.rank, request.world_size, steps_per_epoch=steps
            )
            return TaggedBranches(sampler, ("normal", "pairs"))
        if request.batch_size % 2:
            raise ValueError(
                f"ddl batches are P identities x 2 images: data.batch_size={request.batch_size} is odd"
            )
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
        b = self.gathered_batch(batch)
        assert b.extra is not None
        branches = self._paper_branches(b) if self.sampling == "paper" else self._pair_branches(b)
        if branches is None:  # fewer than two identities or no pair: no negatives, no term for this batch
            zero = b.embeddings.sum() * 0.0
            return ObjectiveOutput({"loss": zero}, dict.fromkeys(TERMS, 0.0))
        easy, hard = branches
        loss = self.loss(easy, hard)
        parts = getattr(self.loss, "last_terms", None) or {}
        return ObjectiveOutput({"loss": loss}, {k: float(parts.get(k, 0.0)) for k in TERMS})

    @staticmethod
    def _pair_branches(b: StepBatch) -> tuple[DDLBranch, DDLBranch] | None:
        rows = complete_pairs(b.labels)
        if rows.numel() < 4:
            return None
        assert b.extra is not None
        return branches_from_pairs(b.embeddings[rows], b.extra[rows], b.labels[rows])

    def _paper_branches(self, b: StepBatch) -> tuple[DDLBranch, DDLBranch] | None:
        """Negatives from the normal rows (one per identity; a repeated identity, possible only when ranks
        overlap, is kept once), positives from the complete pairs of the pair rows."""
        assert b.extra is not None
        normal = torch.nonzero(b.in_branches(["normal"])).flatten()
        seen: set[int] = set()
        keep = torch.zeros(normal.numel(), dtype=torch.bool, device=normal.device)
        for j, lab in enumerate(b.labels[normal].tolist()):
            keep[j] = lab not in seen
            seen.add(lab)
        normal = normal[keep]
        pair_rows = torch.nonzero(b.in_branches(["pairs"])).flatten()
        pairs = pair_rows[complete_pairs(b.labels[pair_rows])]
        if normal.numel() < 2 or pairs.numel() < 2:
            return None
        a, c = pairs[0::2], pairs[1::2]
        easy = DDLBranch(normal=b.embeddings[normal], pos_a=b.embeddings[a], pos_b=b.embeddings[c])
        hard_a = b.extra[a] if self.hard_pairs == "both" else b.embeddings[a]
        hard = DDLBranch(normal=b.extra[normal], pos_a=hard_a, pos_b=b.extra[c])
        return easy, hard

    def describe(self) -> dict[str, Any]:
        return {
            "type": "ddl",
            "sampling": self.sampling,
            "hard_pairs": self.hard_pairs,
            "gather_grad": self.gather_grad if self.gathers else None,
            "hard_images": self.pool.describe() if self.pool is not None else None,
            "global_batch": self.gathers,
        }
