"""PyTorch distributed for faceforge: the process group that torchrun describes, or none at all.

``torchrun --nproc_per_node=N -m faceforge train CONFIG`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
the rendezvous variables; :func:`init_distributed` then joins the group (NCCL on CUDA, gloo on CPU). The
same command without torchrun runs in one process with **no** process group: every collective here is a
no-op at world size 1, so nothing asks for a group that does not exist (TFace's single-GPU failure).

A group this module opens is destroyed when the process exits (:func:`shutdown`, registered with ``atexit``):
left to the interpreter's own teardown, gloo's worker threads may outlive it and the rank dies with
"terminate called without an active exception" (SIGABRT) after its work is done (pytorch/pytorch#190489).
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size``, its ``local_rank`` on the node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_type: str) -> DistContext:
    """Join the torchrun process group if ``WORLD_SIZE > 1`` (gloo on CPU, NCCL on CUDA); else no group."""
    world = env_world_size()
    if world <= 1:
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        atexit.register(shutdown)
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def shutdown() -> None:
    """Destroy the default process group if there is one (a no-op otherwise, so it may run twice)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def current() -> DistContext:
    """The context of an already initialised group (or the single-process one)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistContext()


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def all_reduce(t: Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> Tensor:
    """In-place all-reduce (no autograd); returns ``t``. A no-op in one process."""
    if current().enabled:
        dist.all_reduce(t, op=op)
    return t


def all_gather_cat(t: Tensor) -> Tensor:
    """Concatenate equal-shaped tensors from every rank along dim 0 (no autograd)."""
    ctx = current()
    if not ctx.enabled:
        return t
    parts = [torch.empty_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    """Forward: concatenate every rank's [b, D] rows. Backward: sum the gradients of this rank's rows
    over all ranks (each rank's loss used every row), times ``grad_scale``."""

    @staticmethod
    def forward(ctx, x: Tensor, grad_scale: float) -> Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        ctx.rank, ctx.b, ctx.grad_scale = dist.get_rank(), x.shape[0], grad_scale
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        mine = grad[ctx.rank * ctx.b : (ctx.rank + 1) * ctx.b]
        return mine * ctx.grad_scale, None


def gather_with_grad(x: Tensor, grad_scale: float = 1.0) -> Tensor:
    """All-gather rows with gradient (identity in one process). See :class:`_GatherWithGrad`."""
    if not current().enabled:
        return x
    return _GatherWithGrad.apply(x, grad_scale)


def row_counts(n: int, device: torch.device | str = "cpu") -> list[int]:
    """How many rows each rank holds (``[n]`` in one process)."""
    if not current().enabled:
        return [n]
    return all_gather_cat(torch.tensor([n], device=device)).tolist()


def gather_rows(
    x: Tensor, with_grad: bool = False, counts: list[int] | None = None, grad_scale: float = 1.0
) -> Tensor:
    """Concatenate every rank's rows along dim 0 when ranks hold different numbers of rows (a batch
    that lost unreadable images): pad to the largest count, gather, drop the padding.  ``with_grad``
    sends gradients back as :func:`gather_with_grad` does (times ``grad_scale``); ``counts`` (from :func:`row_counts`) saves
    the exchange of row counts when several tensors of one batch are gathered.  Identity in one process."""
    if not current().enabled:
        return x
    counts = counts if counts is not None else row_counts(x.shape[0], x.device)
    most = max(counts)
    padded = x if x.shape[0] == most else torch.cat([x, x.new_zeros((most - x.shape[0], *x.shape[1:]))])
    full = gather_with_grad(padded, grad_scale) if with_grad else all_gather_cat(padded)
    if all(c == most for c in counts):
        return full
    keep = torch.cat([torch.arange(r * most, r * most + c, device=x.device) for r, c in enumerate(counts)])
    return full[keep]
