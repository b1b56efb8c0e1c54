"""Classification losses with one interface for local, sharded (model-parallel) and Partial FC heads.

``criterion(local_embeddings [b, D], local_labels [b]) -> LossOutput(loss, top1)`` for every variant, so the
trainer (and any method built on it) never branches on how the classifier is laid out. This is what TFace
lacked: its local and distributed heads took different arguments and returned different things.

* :class:`LocalCriterion`: any registered head, replicated on every rank (DDP averages its gradients);
  ``loss = CE(head(x, y).logits, y)`` over this rank's batch.
* :class:`ShardedCriterion`: the classes are split over ranks in contiguous blocks (rank r owns
  ``[start_r, end_r)``). Each rank gathers the embeddings and labels of the global batch ``B``, computes
  cosines against its block only, and the softmax cross-entropy is computed across ranks (global max and
  sum of exponentials by all-reduce), so no rank ever holds ``B x C`` logits. The margin code is the head's
  own ``apply_margin`` (``base.py``'s sharding contract), fed the globally gathered target cosine, so the
  result equals the single-process head on the same global batch (tested with 2 gloo processes).
* ``sample_rate < 1`` turns on **Partial FC** (An et al., "Partial FC: Training 10 Million Identities on a
  Single Machine", ICCVW 2021; arcface_torch PartialFC v2): each rank keeps every class of its block that
  is a label in the global batch and adds uniformly sampled negatives up to ``ceil(sample_rate * C_r)``
  classes; cosines, margins and softmax are computed over those only, and labels are remapped to positions
  in the sampled set. At ``sample_rate = 1`` nothing is sampled.

Gradient scale under DDP: the sharded loss is the mean over the **global** batch, and every rank gets the
gradient of that mean for its own embeddings (the gather's backward sums the contributions of all ranks).
DDP then *averages* backbone gradients over ranks, so the gather multiplies embedding gradients by the world
size to make the averaged result the gradient of the global mean, as arcface_torch does.

Logit transforms (``logit_transform=``, optional, both criteria): a callable
``transform(logits, ctx: LogitContext) -> logits`` that edits the scaled, margin-applied logits before the
cross-entropy, given the raw cosines, the labels, the normalised embeddings and class weights behind them
and the layout (:class:`LogitContext`). CIFP (``cifp.py``) is one. With no transform, both criteria run
exactly the code they ran before the hook existed.

Checkpoints: :meth:`ShardedCriterion.full_state_dict` gathers the blocks into one ``[C, D]`` weight (with
the head's buffers), and :meth:`load_full_state_dict` takes this rank's block out of it, so a run saved at
one world size resumes at any other and a sharded model is evaluated anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceforge.core import distributed as D
from faceforge.core.precision import no_autocast

from .base import MarginHead


@dataclass
class LossOutput:
    """``loss``: scalar to backpropagate; ``top1``: detached training accuracy of the (margin-free) logits."""

    loss: Tensor
    top1: Tensor


@dataclass
class LogitContext:
    """What a logit transform may read besides the logits (fp32, autocast off).

    Attributes:
        cos: [B, C_blk] raw cosines ``clamp(embeddings @ weight.T, -1, 1)``, differentiable.
        labels: [B] long, column of each row's class in this block, ``-1`` when another rank holds it.
        target_cos: [B] detached raw target cosine of every row (global over the ranks' blocks).
        embeddings: [B, D] the L2-normalised embeddings behind ``cos`` (differentiable).
        weight: [C_blk, D] the L2-normalised class weights behind ``cos`` (differentiable).
        scale: the head's ``s``; the logits are ``s x`` the margin-applied cosines.
        num_classes: classes of the whole classifier (all ranks, before Partial FC sampling).
        rows_shared: True when every rank holds these same rows and another block of classes
            (:class:`ShardedCriterion`); False when the rows are this rank's own and the block is every
            class (:class:`LocalCriterion`, one process or DDP).
    """

    cos: Tensor
    labels: Tensor
    target_cos: Tensor
    embeddings: Tensor
    weight: Tensor
    scale: float
    num_classes: int
    rows_shared: bool


LogitTransform = Callable[[Tensor, LogitContext], Tensor]


def _check_transform(head: nn.Module, logit_transform: LogitTransform | None) -> None:
    if logit_transform is not None and not isinstance(head, MarginHead):
        raise ValueError(
            f"a logit transform needs a margin head (normface, cosface, arcface, curricularface), got "
            f"{type(head).__name__}"
        )


class LocalCriterion(nn.Module):
    """Cross-entropy over a head that holds every class (``head(x, y) -> HeadOutput``).

    ``logit_transform`` (optional, margin heads only): see the module doc and :class:`LogitContext`.
    """

    sharded = False

    def __init__(self, head: nn.Module, logit_transform: LogitTransform | None = None) -> None:
        super().__init__()
        _check_transform(head, logit_transform)
        self.head = head
        self.logit_transform = logit_transform
        if D.current().enabled and hasattr(head, "stat_reduce"):
            # batch statistics of the head (CurricularFace's t) over the global batch, not this rank's part
            head.stat_reduce = D.all_reduce

    def forward(self, embeddings: Tensor, labels: Tensor) -> LossOutput:
        if self.logit_transform is not None:
            return self._forward_transformed(embeddings, labels)
        out = self.head(embeddings, labels)
        loss = F.cross_entropy(out.logits, labels)
        top1 = (out.plain_logits.argmax(1) == labels).float().mean()
        return LossOutput(loss, top1.detach())

    def _forward_transformed(self, embeddings: Tensor, labels: Tensor) -> LossOutput:
        """``head.forward``'s computation (same operations) with the transform before the cross-entropy."""
        head = self.head
        head.check_inputs(embeddings, labels)
        with no_autocast(embeddings.device):
            x = F.normalize(embeddings.float(), dim=1)
            w = F.normalize(head.weight.float(), dim=1)
            cos = F.linear(x, w).clamp(-1.0, 1.0)
            logits = head.apply_margin(cos, labels) * head.scale
            target = cos.detach().gather(1, labels.unsqueeze(1)).squeeze(1)
            ctx = LogitContext(cos, labels, target, x, w, head.scale, head.num_classes, rows_shared=False)
            logits = self.logit_transform(logits, ctx)
            loss = F.cross_entropy(logits, labels)
            top1 = (cos.detach().argmax(1) == labels).float().mean()
        return LossOutput(loss, top1)

    def full_state_dict(self) -> dict[str, Tensor]:
        return self.head.state_dict()

    def load_full_state_dict(self, state: dict[str, Tensor]) -> None:
        self.head.load_state_dict(state)


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous block of classes owned by ``rank``: the first ``C mod W`` ranks get one class more."""
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class _DistSoftmaxCE(torch.autograd.Function):
    """Mean softmax cross-entropy over ``[N, C_r]`` logit blocks spread over ranks.

    ``loss = mean_i( log sum_r sum_j exp(z_ij) - z_{i,y_i} )``; ``label = -1`` marks rows whose class is
    on another rank. Backward needs no communication: ``dL/dz = (softmax(z) - onehot(y)) / N``.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor) -> Tensor:  # type: ignore[override]
        n = logits.shape[0]
        row_max = logits.detach().max(dim=1).values
        D.all_reduce(row_max, D.dist.ReduceOp.MAX)
        prob = (logits.detach() - row_max[:, None]).exp_()
        denom = prob.sum(dim=1)
        D.all_reduce(denom)
        prob.div_(denom[:, None])
        here = labels >= 0
        rows = torch.nonzero(here).squeeze(1)
        target_p = torch.zeros(n, dtype=prob.dtype, device=prob.device)
        target_p[rows] = prob[rows, labels[rows]]
        D.all_reduce(target_p)
        ctx.save_for_backward(prob, labels)
        return -target_p.clamp_min(1e-30).log().mean()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        prob, labels = ctx.saved_tensors
        rows = torch.nonzero(labels >= 0).squeeze(1)
        g = prob  # saved for this one backward: reuse its memory
        g[rows, labels[rows]] -= 1.0
        g.mul_(grad / prob.shape[0])
        return g, None


class ShardedCriterion(nn.Module):
    """Model-parallel margin head with optional Partial FC; see the module doc.

    Args:
        head: a :class:`MarginHead` built with ``num_classes`` = this rank's block size.
        num_classes: total classes over all ranks.
        sample_rate: Partial FC rate in (0, 1]; 1 means the full sharded softmax.
        logit_transform: optional, see the module doc and :class:`LogitContext` (``rows_shared=True``:
            every rank calls it on the global batch and its block, so it must run its collectives on
            every rank).
    """

    sharded = True

    def __init__(
        self,
        head: MarginHead,
        num_classes: int,
        sample_rate: float = 1.0,
        logit_transform: LogitTransform | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(head, MarginHead):
            raise ValueError(
                f"head.sharded needs a margin head (normface, cosface, arcface, curricularface), got "
                f"{type(head).__name__}"
            )
        if not 0.0 < float(sample_rate) <= 1.0:
            raise ValueError(f"head.sample_rate must be in (0, 1], got {sample_rate}")
        ctx = D.current()
        self.rank, self.world_size = ctx.rank, ctx.world_size
        self.num_classes = int(num_classes)
        self.start, self.end = shard_range(self.num_classes, self.rank, self.world_size)
        if head.num_classes != self.end - self.start:
            raise ValueError(
                f"rank {self.rank} owns classes [{self.start}, {self.end}) but the head has {head.num_classes}"
            )
        self.head = head
        self.sample_rate = float(sample_rate)
        self.last_sampled: Tensor | None = None  # class ids (global) used in the last step, for tests/logs
        self.logit_transform = logit_transform

    def num_sampled(self, positives: int) -> int:
        local = self.end - self.start
        return min(local, max(positives, math.ceil(self.sample_rate * local)))

    def sample(self, local_labels: Tensor) -> tuple[Tensor | None, Tensor]:
        """Partial FC: (sorted shard-local class indices kept, labels remapped into them, -1 elsewhere)."""
        local = self.end - self.start
        if self.sample_rate >= 1.0:
            return None, local_labels
        positives = torch.unique(local_labels[local_labels >= 0])
        k = self.num_sampled(int(positives.numel()))
        score = torch.rand(local, device=local_labels.device)
        score[positives] = 2.0  # every positive class is kept
        index = torch.topk(score, k, sorted=False).indices.sort().values
        remapped = torch.full_like(local_labels, -1)
        here = local_labels >= 0
        remapped[here] = torch.searchsorted(index, local_labels[here])
        return index, remapped

    def forward(self, embeddings: Tensor, labels: Tensor) -> LossOutput:
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"labels must be in [0, {self.num_classes}), got [{int(labels.min())}, {int(labels.max())}]"
            )
        emb = D.gather_with_grad(embeddings.float(), grad_scale=float(self.world_size))
        all_labels = D.all_gather_cat(labels)
        here = (all_labels >= self.start) & (all_labels < self.end)
        local_labels = torch.where(here, all_labels - self.start, torch.full_like(all_labels, -1))
        index, sub_labels = self.sample(local_labels)
        self.last_sampled = None if index is None else index + self.start
        weight = self.head.weight if index is None else self.head.weight[index]
        with no_autocast(emb.device):
            x, w = F.normalize(emb, dim=1), F.normalize(weight.float(), dim=1)
            cos = F.linear(x, w).clamp(-1.0, 1.0)
            rows = torch.nonzero(sub_labels >= 0).squeeze(1)
            target = torch.zeros(cos.shape[0], device=cos.device)
            target[rows] = cos.detach()[rows, sub_labels[rows]]
            D.all_reduce(target)  # each row's target cosine lives on exactly one rank
            logits = self.head.apply_margin(cos, sub_labels, target_cos=target) * self.head.scale
            if self.logit_transform is not None:
                ctx = LogitContext(
                    cos, sub_labels, target, x, w, self.head.scale, self.num_classes, rows_shared=True
                )
                logits = self.logit_transform(logits, ctx)
            loss = _DistSoftmaxCE.apply(logits, sub_labels)
            top1 = self._top1(cos.detach(), sub_labels)
        return LossOutput(loss, top1)

    def _top1(self, cos: Tensor, sub_labels: Tensor) -> Tensor:
        """Global top-1 of the margin-free cosines: a row is a hit on the rank holding its best class."""
        best = cos.max(dim=1)
        global_best = best.values.clone()
        D.all_reduce(global_best, D.dist.ReduceOp.MAX)
        mine = best.values >= global_best  # this rank holds the row's best class
        hit = (mine & (best.indices == sub_labels)).float()
        D.all_reduce(hit)
        return hit.clamp(max=1.0).mean()

    # ---------------------------------------------------------------------------------------- checkpoints
    def gather_rows(self, t: Tensor, dst: int = 0) -> Tensor | None:
        """This rank's block of per-class rows joined with the other ranks' blocks, on rank ``dst`` only
        (the others get ``None`` and never hold the whole ``[C, ...]`` matrix; checkpoints are written
        by rank 0)."""
        if self.world_size == 1:
            return t.detach().clone()
        size = shard_range(self.num_classes, 0, self.world_size)
        size = size[1] - size[0]  # rank 0 holds the largest block
        padded = torch.zeros((size, *t.shape[1:]), dtype=t.dtype, device=t.device)
        padded[: t.shape[0]] = t.detach()
        is_dst = D.current().rank == dst
        parts = [torch.empty_like(padded) for _ in range(self.world_size)] if is_dst else None
        D.dist.gather(padded, parts, dst=dst)
        if not is_dst:
            return None
        blocks = []
        for r, p in enumerate(parts):
            s, e = shard_range(self.num_classes, r, self.world_size)
            blocks.append(p[: e - s])
        return torch.cat(blocks)

    def take_rows(self, full: Tensor) -> Tensor:
        if full.shape[0] != self.num_classes:
            raise ValueError(
                f"checkpoint head has {full.shape[0]} classes but this run has {self.num_classes}"
            )
        return full[self.start : self.end].clone()

    def full_state_dict(self) -> dict[str, Tensor]:
        state = self.head.state_dict()
        state["weight"] = self.gather_rows(self.head.weight)
        return state

    def load_full_state_dict(self, state: dict[str, Tensor]) -> None:
        state = dict(state)
        state["weight"] = self.take_rows(state["weight"])
        self.head.load_state_dict(state)
