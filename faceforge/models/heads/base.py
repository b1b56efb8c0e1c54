"""Shared pieces of the classification heads: the output record, input checks and the margin-head base.

Conventions (TFace ``recognition/torchkit/head/localfc/*.py``; official CurricularFace
``HuangYG123/CurricularFace`` ``head/metrics.py``):

* the class weight ``W`` is stored as [num_classes, embedding_size] and initialised N(0, 0.01);
* margin heads L2-normalise the embedding and every class row of ``W``, so
  ``cos[i, j] = clamp(x_i/|x_i| . w_j/|w_j|, -1, 1)``;
* the head math runs in fp32 with autocast disabled, whatever precision the backbone used;
* ``logits`` (scale * margin-modified cosine) feed cross-entropy, ``plain_logits``
  (scale * cosine, detached) are only for top-1 accuracy logging.

Sharding contract (for a model-parallel head that owns a slice of the classes): a shard builds a
head with ``num_classes = shard size``, computes ``cos = head.cosine(emb)`` for the global batch,
remaps labels to shard-local indices with ``-1`` for rows whose class lives on another shard,
gathers the raw target cosine of every row globally (e.g. all-reduce of the per-shard values) and
calls ``head.apply_margin(cos, local_labels, target_cos=global_target_cos)``. The margin maths is
the same code path as the single-device ``forward``, so the concatenation over shards equals the
unsharded result (tested in tests/models/test_heads.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceforge.core.precision import no_autocast

__all__ = ["ClassifierHead", "HeadOutput", "MarginHead"]


@dataclass
class HeadOutput:
    """What every head returns.

    Attributes:
        logits: [B, C] fp32 logits including the margin (and scale); feed these to cross-entropy.
        plain_logits: [B, C] fp32 logits without margin, detached; use for accuracy logging only.
    """

    logits: Tensor
    plain_logits: Tensor


def _check_positive_int(head: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{head}: {name} must be a positive int, got {value!r}")


class ClassifierHead(nn.Module):
    """Base class: holds ``weight`` [num_classes, embedding_size] and validates forward inputs."""

    def __init__(self, embedding_size: int, num_classes: int) -> None:
        super().__init__()
        head = type(self).__name__
        _check_positive_int(head, "embedding_size", embedding_size)
        _check_positive_int(head, "num_classes", num_classes)
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, mean=0.0, std=0.01)

    def check_inputs(self, embeddings: Tensor, labels: Tensor) -> None:
        """Raise ValueError (with what to fix) unless the batch matches this head."""
        head = type(self).__name__
        if not isinstance(embeddings, Tensor) or not isinstance(labels, Tensor):
            raise ValueError(
                f"{head}.forward expects tensors (embeddings, labels), got "
                f"{type(embeddings).__name__} and {type(labels).__name__}"
            )
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"{head} expects embeddings of shape [B, {self.embedding_size}], "
                f"got {list(embeddings.shape)}; "
                "check that the head's embedding_size matches the backbone's embedding_size"
            )
        if not embeddings.is_floating_point():
            raise ValueError(f"{head} expects floating-point embeddings, got dtype {embeddings.dtype}")
        if embeddings.shape[0] == 0:
            raise ValueError(f"{head} got an empty batch (0 embeddings)")
        if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"{head} expects labels of shape [{embeddings.shape[0]}] (one class index per embedding), "
                f"got {list(labels.shape)}"
            )
        if labels.dtype != torch.long:
            raise ValueError(
                f"{head} expects int64 (torch.long) class labels, got {labels.dtype}; "
                "convert with labels.long()"
            )
        lo, hi = int(labels.min()), int(labels.max())
        if hi >= self.num_classes:
            raise ValueError(
                f"label {hi} out of range for head with {self.num_classes} classes: "
                "check num_classes in the data/head config"
            )
        if lo < 0:
            raise ValueError(
                f"label {lo} is negative; labels passed to forward must be in [0, {self.num_classes}) "
                "(-1 'not in this shard' labels are only accepted by apply_margin)"
            )

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}"


class MarginHead(ClassifierHead):
    """Normalised-softmax head with an optional target-logit margin; subclasses override ``_margin``.

    ``forward(x, y)`` computes ``cos = cosine(x)``, ``logits = scale * apply_margin(cos, y)`` and
    ``plain_logits = (scale * cos).detach()``. The base class applies no margin (NormFace).
    """

    def __init__(
        self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.0
    ) -> None:
        super().__init__(embedding_size, num_classes)
        head = type(self).__name__
        if not (float(scale) > 0.0 and float(scale) < float("inf")):
            raise ValueError(f"{head}: scale must be a positive finite number, got {scale!r}")
        self.scale = float(scale)
        self.margin = float(margin)

    # ----------------------------------------------------------------- maths
    def cosine(self, embeddings: Tensor) -> Tensor:
        """[B, D] embeddings -> [B, C] fp32 cosines against each class row of ``weight``, in [-1, 1].

        Autocast is disabled and both operands are cast to fp32, so this is fp32 under bf16/fp16 AMP.
        """
        with no_autocast(embeddings.device):
            x = F.normalize(embeddings.float(), dim=1)
            w = F.normalize(self.weight.float(), dim=1)
            return F.linear(x, w).clamp(-1.0, 1.0)

    def apply_margin(self, cos: Tensor, labels: Tensor, target_cos: Tensor | None = None) -> Tensor:
        """Return the margin-modified cosines (before ``scale``) for a [B, C] block of cosines.

        Args:
            cos: [B, C] raw cosines (C may be a shard of the classes).
            labels: [B] long, index of each row's target class within ``cos``'s columns, or ``-1``
                when the row's target class is not among these columns (another shard owns it);
                such rows keep their cosines except for batch-level effects (CurricularFace still
                re-weights their hard negatives using ``target_cos``).
            target_cos: [B] raw target cosine cos(theta_y) of every row, gathered over all shards.
                Only used as a statistic (hard-negative threshold, CurricularFace ``t``), never
                differentiated: the target column written into ``cos`` is computed from ``cos``
                itself so gradients flow into the owning shard. When None it is read from ``cos``
                at ``labels``, so no row may be ``-1``.
        """
        head = type(self).__name__
        if cos.dim() != 2:
            raise ValueError(f"{head}.apply_margin expects cos of shape [B, C], got {list(cos.shape)}")
        if labels.dim() != 1 or labels.shape[0] != cos.shape[0] or labels.dtype != torch.long:
            raise ValueError(
                f"{head}.apply_margin expects int64 labels of shape [{cos.shape[0]}], "
                f"got {labels.dtype} {list(labels.shape)}"
            )
        if labels.numel():
            lo, hi = int(labels.min()), int(labels.max())
            if lo < -1 or hi >= cos.shape[1]:
                bad = lo if lo < -1 else hi
                raise ValueError(
                    f"{head}.apply_margin: label {bad} out of range for {cos.shape[1]} columns; "
                    "use shard-local indices in [0, C) or -1 for classes held by another shard"
                )
        if target_cos is None:
            if labels.numel() and bool((labels < 0).any()):
                raise ValueError(
                    f"{head}.apply_margin: labels contain -1 but target_cos was not given; a sharded "
                    "caller must pass the globally gathered raw target cosine for every row"
                )
        elif target_cos.shape != labels.shape:
            raise ValueError(
                f"{head}.apply_margin expects target_cos of shape {list(labels.shape)}, "
                f"got {list(target_cos.shape)}"
            )
        return self._apply_margin_unchecked(cos, labels, target_cos)

    def _apply_margin_unchecked(self, cos: Tensor, labels: Tensor, target_cos: Tensor | None) -> Tensor:
        """Unchecked ``apply_margin``: builds the per-row target view and calls ``_margin``."""
        with no_autocast(cos.device):
            cos = cos.float()
            # Differentiable cos(theta_y) for rows owned here (value for -1 rows is a placeholder).
            local_target = cos.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)
            # Bool [B, C] target mask; a -1 label matches no column.
            columns = torch.arange(cos.shape[1], device=cos.device)
            is_target = labels.unsqueeze(1) == columns.unsqueeze(0)
            # Statistic only: never differentiated (see apply_margin).
            target_cos = local_target.detach() if target_cos is None else target_cos.detach().float()
            return self._margin(cos, is_target, local_target, target_cos)

    def _margin(self, cos: Tensor, is_target: Tensor, local_target: Tensor, target_cos: Tensor) -> Tensor:
        """Margin hook.

        Args:
            cos: [B, C] fp32 cosines (differentiable).
            is_target: [B, C] bool, True at (i, labels[i]) for rows whose target is in these columns.
            local_target: [B] differentiable cos at the label column (placeholder for -1 rows).
            target_cos: [B] detached global raw target cosine of every row.
        """
        return cos

    # --------------------------------------------------------------- forward
    def forward(self, embeddings: Tensor, labels: Tensor) -> HeadOutput:
        self.check_inputs(embeddings, labels)
        cos = self.cosine(embeddings)
        with no_autocast(cos.device):
            logits = self._apply_margin_unchecked(cos, labels, None) * self.scale
            plain = (cos * self.scale).detach()
        return HeadOutput(logits=logits, plain_logits=plain)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}, margin={self.margin}"
