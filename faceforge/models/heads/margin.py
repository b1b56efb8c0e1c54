"""Margin-based softmax heads: NormFace, CosFace, ArcFace, CurricularFace.

Notation: ``cos_j = cos(theta_j)`` between the normalised embedding and class ``j``; ``y`` is the
label, ``s`` the scale and ``m`` the margin. All heads return ``s * cos_j`` for non-target columns
unless stated otherwise, and every formula is applied in fp32.

The angle-margin helpers :func:`shifted_cos` and :func:`arc_target` are plain functions of the
target cosine so that a sharded head can reuse them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .base import MarginHead

__all__ = ["ArcFace", "CosFace", "CurricularFace", "NormFace", "arc_target", "shifted_cos"]

#: Lower clamp on ``1 - cos^2`` before the square root: d sqrt(u)/du is infinite at u = 0 (cos = +-1),
#: so ``sin = sqrt(clamp(1 - cos^2, min=SIN_SQ_EPS))`` keeps gradients finite. It changes
#: cos(theta + m) by at most sqrt(1e-7) * sin(m) (1.5e-4 for m = 0.5), only where |cos| > 0.99999995.
SIN_SQ_EPS = 1e-7


def _check_margin(head: str, margin: float, upper: float) -> float:
    m = float(margin)
    if not 0.0 <= m < upper:
        raise ValueError(f"{head}: margin must be in [0, {upper:.4g}), got {margin!r}")
    return m


def shifted_cos(cos: Tensor, margin: float) -> Tensor:
    """cos(theta + m) = cos*cos(m) - sin*sin(m) with ``sin = sqrt(clamp(1 - cos^2, min=1e-7))``.

    No fallback: for theta > pi - m this is no longer decreasing in theta.
    """
    sin = torch.sqrt(torch.clamp(1.0 - cos * cos, min=SIN_SQ_EPS))
    return cos * math.cos(margin) - sin * math.sin(margin)


def arc_target(cos: Tensor, margin: float, easy_margin: bool = False) -> Tensor:
    """ArcFace target cosine with the reference fallback.

    * ``easy_margin=False`` (default): ``cos(theta+m)`` where ``cos > th = cos(pi - m)``, else
      ``cos - mm`` with ``mm = sin(pi - m) * m``. This keeps the target monotone non-increasing in
      theta on [0, pi] (with a downward jump at theta = pi - m) and always <= cos.
    * ``easy_margin=True``: ``cos(theta+m)`` where ``cos > 0``, else ``cos`` unchanged.
    """
    shifted = shifted_cos(cos, margin)
    if easy_margin:
        return torch.where(cos > 0.0, shifted, cos)
    th = math.cos(math.pi - margin)
    mm = math.sin(math.pi - margin) * margin
    return torch.where(cos > th, shifted, cos - mm)


class NormFace(MarginHead):
    """NormFace: ``logits = s * cos_j`` for all classes, no margin.

    Source: Wang et al., "NormFace: L2 Hypersphere Embedding for Face Verification", ACM MM 2017;
    TFace ``recognition/torchkit/head/distfc/normface.py``. Default s = 64.
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0) -> None:
        super().__init__(embedding_size, num_classes, scale=scale, margin=0.0)


class CosFace(MarginHead):
    """CosFace / large-margin cosine loss: target ``s * (cos_y - m)``, others ``s * cos_j``.

    Source: Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition", CVPR 2018;
    TFace ``recognition/torchkit/head/localfc/cosface.py``.

    Defaults s = 64, m = 0.35 (the paper's value and MTLFace's ``--head_m 0.35``). TFace defaults to
    m = 0.40 and arcface_torch's CosFace configs use 0.4 as well; pass ``margin=0.4`` to match them.
    """

    def __init__(
        self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.35
    ) -> None:
        super().__init__(
            embedding_size, num_classes, scale=scale, margin=_check_margin("CosFace", margin, 2.0)
        )

    def _margin(self, cos: Tensor, is_target: Tensor, local_target: Tensor, target_cos: Tensor) -> Tensor:
        return cos - self.margin * is_target.to(cos.dtype)


class ArcFace(MarginHead):
    """ArcFace / additive angular margin: target ``s * cos(theta_y + m)``, others ``s * cos_j``.

    Source: Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019;
    TFace ``recognition/torchkit/head/localfc/arcface.py`` (formula, fallback and easy_margin);
    insightface ``recognition/arcface_torch/losses.py`` (straight-through gradient).

    Target value (see :func:`arc_target`), with ``sin = sqrt(clamp(1 - cos^2, min=1e-7))`` so the
    gradient stays finite at cos = +-1:

    * default: ``cos(theta+m) = cos*cos(m) - sin*sin(m)`` if ``cos > cos(pi - m)``, otherwise the
      fallback ``cos - m*sin(m)``, which keeps the target monotone in theta past theta = pi - m;
    * ``easy_margin=True``: the margin only where ``cos > 0``, else ``cos``.

    Which gradient does the margin use? (``margin_grad``)

    * ``"full"`` (default; TFace and the original ArcFace code): autograd differentiates the
      target formula, d target/d cos = cos(m) + sin(m) * cos/sin on the cos(theta+m) branch (1 on
      the fallback branch).
    * ``"straight_through"`` (insightface arcface_torch): the logit VALUES are the same, but the
      margin is treated as a constant offset computed without gradient, so d target/d cos = 1
      (the target logit's gradient w.r.t. cos is exactly ``s``). arcface_torch does this by editing
      the logits in place under ``torch.no_grad()``; its maintainers report it is more stable for
      ViT backbones. (Unlike this head, arcface_torch's ``CombinedMarginLoss`` applies no
      fallback, so values differ from it only where theta_y > pi - m.)

    Defaults s = 64, m = 0.5.
    """

    MARGIN_GRADS = ("full", "straight_through")

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        scale: float = 64.0,
        margin: float = 0.5,
        easy_margin: bool = False,
        margin_grad: str = "full",
    ) -> None:
        super().__init__(
            embedding_size, num_classes, scale=scale, margin=_check_margin("ArcFace", margin, math.pi)
        )
        if margin_grad not in self.MARGIN_GRADS:
            raise ValueError(
                f"ArcFace: margin_grad must be one of {', '.join(self.MARGIN_GRADS)}, got {margin_grad!r}"
            )
        self.easy_margin = bool(easy_margin)
        self.margin_grad = margin_grad

    def target(self, cos_y: Tensor) -> Tensor:
        """Margin-applied target cosine for raw target cosines ``cos_y`` (gradient per ``margin_grad``)."""
        if self.margin_grad == "full":
            return arc_target(cos_y, self.margin, self.easy_margin)
        base = cos_y.detach()
        return cos_y + (arc_target(base, self.margin, self.easy_margin) - base)

    def _margin(self, cos: Tensor, is_target: Tensor, local_target: Tensor, target_cos: Tensor) -> Tensor:
        return torch.where(is_target, self.target(local_target).unsqueeze(1), cos)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, easy_margin={self.easy_margin}, margin_grad={self.margin_grad}"


class CurricularFace(MarginHead):
    """CurricularFace: ArcFace target plus adaptive re-weighting of hard negatives.

    Source: Huang et al., "CurricularFace: Adaptive Curriculum Learning Loss for Deep Face
    Recognition", CVPR 2020; official ``HuangYG123/CurricularFace/head/metrics.py``; TFace
    ``recognition/torchkit/head/localfc/curricularface.py`` and ``distfc/curricularface.py``.

    Logits: ``s * T(cos_y)`` for the target, ``s * N(t, cos_j)`` for the others, with

    * ``T(cos_y)``: the ArcFace target with the ``th``/``mm`` fallback (full gradient);
    * ``N(t, cos_j) = cos_j * (t + cos_j)`` if ``cos_j > cos(theta_y + m)`` (hard negative, the raw
      cos(theta_y+m) without fallback), else ``cos_j``. ``t`` is a constant for autograd, so a hard
      negative's gradient w.r.t. ``cos_j`` is ``t + 2 cos_j``;
    * ``t``: EMA of the batch mean raw target cosine, ``t <- alpha * mean_i cos_y_i + (1 - alpha) * t``,
      ``t0 = 0``; updated under no_grad in training mode only, kept in eval mode. It is a
      persistent buffer (``state_dict()['t']``), so it is checkpointed.

    Order of operations (as the reference code): raw cos(theta_y+m) -> hard mask over all columns ->
    update ``t`` -> modulate hard negatives with the UPDATED ``t`` -> write the fallback-aware target
    into the target column (overwriting any modulation there) -> multiply by ``s``.

    ``alpha`` defaults to 0.01, the official code's weight on the batch mean (the paper writes the
    EMA with 0.99 on the old value; the author confirmed the code, CurricularFace#8). TFace defaults
    to ``alpha = 0.1``. With model-parallel shards, pass the globally gathered ``target_cos`` to
    :meth:`apply_margin` so every shard sees the same ``t`` (as TFace distfc).

    The batch statistic is the **global** batch's, whatever the layout:

    * replicated head under DDP: ``stat_reduce`` (set by :class:`~faceforge.models.heads.criterion.LocalCriterion`
      when a process group is up) all-reduces ``(sum, count)`` of the target cosines, so every rank computes the
      ``t`` one process would compute on the whole batch and the copies never drift;
    * gradient accumulation (``begin_accumulation`` / ``end_accumulation``, called by the engine around the
      micro-batches of one optimiser step): micro-batch ``j`` uses ``t_j = (1 - alpha) t + alpha mean_j`` (the
      step's starting ``t`` and its own statistic) and ``t`` itself is updated **once per optimiser step**, with the
      mean over all the step's micro-batches, so after a step ``t`` equals what one batch of the full size gives.
      The hard-negative modulation inside micro-batch ``j`` uses ``t_j`` (it cannot use the full batch's mean
      before the other micro-batches exist); this is the one way K micro-batches differ from one batch.

    Defaults s = 64, m = 0.5, alpha = 0.01.
    """

    t: Tensor

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        scale: float = 64.0,
        margin: float = 0.5,
        alpha: float = 0.01,
    ) -> None:
        super().__init__(
            embedding_size, num_classes, scale=scale, margin=_check_margin("CurricularFace", margin, math.pi)
        )
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(
                f"CurricularFace: alpha (EMA weight of the batch mean) must be in [0, 1], got {alpha!r}"
            )
        self.alpha = float(alpha)
        self.register_buffer("t", torch.zeros(1), persistent=True)
        self.stat_reduce: Callable[[Tensor], Tensor] | None = None  # in-place sum over ranks of [sum, count]
        self._pending: Tensor | None = None  # [sum, count] of the micro-batches of this optimiser step

    def begin_accumulation(self) -> None:
        self._pending = torch.zeros(2, dtype=torch.float64, device=self.t.device)

    def end_accumulation(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and float(pending[1]) > 0:
            mean = (pending[0] / pending[1]).to(self.t.dtype)
            self.t.mul_(1.0 - self.alpha).add_(self.alpha * mean)

    def observe(self, target_cos: Tensor) -> Tensor:
        """The ``t`` a (micro-)batch with these raw target cosines uses; stored now, or at ``end_accumulation``
        (see the class doc). Under DDP every rank must call it (an empty tensor for a rank with no row)."""
        if self.stat_reduce is None and self._pending is None:
            if target_cos.numel():
                self.t.mul_(1.0 - self.alpha).add_(
                    self.alpha * target_cos.mean()
                )  # the reference, bit for bit
            return self.t
        stats = torch.stack(
            [target_cos.double().sum(), target_cos.new_tensor(target_cos.numel(), dtype=torch.float64)]
        )
        if self.stat_reduce is not None:
            self.stat_reduce(stats)
        if float(stats[1]) == 0:
            return self.t
        mean = (stats[0] / stats[1]).to(self.t.dtype)
        t = self.t * (1.0 - self.alpha) + self.alpha * mean
        if self._pending is None:
            self.t.copy_(t)
        else:
            self._pending += stats.to(self._pending.device)
        return t

    def _margin(self, cos: Tensor, is_target: Tensor, local_target: Tensor, target_cos: Tensor) -> Tensor:
        with torch.no_grad():
            hard = cos > shifted_cos(target_cos, self.margin).unsqueeze(1)
            t = self.observe(target_cos) if self.training else self.t
        t = t.detach().to(cos.dtype)
        out = torch.where(hard, cos * (t + cos), cos)
        target = arc_target(local_target, self.margin).unsqueeze(1)
        return torch.where(is_target, target, out)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}, t={float(self.t):.4f}"
