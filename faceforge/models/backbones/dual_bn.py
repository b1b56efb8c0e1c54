"""Dual batch normalisation mixed per input: any backbone with a clean and an adversarial branch of every BN.

Every ``BatchNorm{1,2}d`` of the wrapped backbone becomes a :class:`DualBatchNorm` holding two copies, ``clean``
and ``adv``; their outputs are mixed by a per-input fusing weight ``λ ∈ [0, 1]``::

    DualBN(x_i) = (1 − λ_i) · BN_clean(x_i) + λ_i · BN_adv(x_i)

so ``λ = 0`` is the network with the clean statistics and affine parameters and ``λ = 1`` the one with the
adversarial ones. Dual BN for clean and adversarial inputs is AdvProp's (Xie et al., "Adversarial Examples
Improve Image Recognition", CVPR 2020); mixing the two with a weight **predicted per input** by a small network
(:class:`FusingWeightPredictor`) is AFA's (Zhao et al., "Adaptive Feature Alignment for Adversarial Training",
arXiv 2105.15157, 2021), whose published description stops at the mechanism: the predictor's architecture and
input below are this reconstruction's choices (options of :class:`DualBNNet`).

:class:`DualBNNet` (backbone ``dual_bn``) computes ``λ = predictor(x)`` in every forward and, unless a training
step fixes the route (:meth:`DualBNNet.routing`), mixes with it: nothing is set at test time, and an exported
ONNX graph holds the predictor and the mixing. During training (:mod:`faceforge.methods.afa`):

* ``routing(None)``: the clean path only, ``BN_clean`` in train mode (batch statistics, running statistics
  updated): exactly the plain network;
* ``routing(lam, clean_rows=n)``: the first ``n`` rows take the clean path as above, the others are mixed with
  the given ``λ``: ``BN_adv`` with the batch statistics of those rows (its running statistics updated) and
  ``BN_clean`` with its running statistics (so adversarial batches never move the clean statistics; option
  ``clean_stats``: ``running``, or ``batch`` to normalise with the rows' own statistics without updating).

The λ the predictor gave in the last forward (with gradient) is :attr:`DualBNNet.last_lambda`, for its
supervision.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceforge.models.backbones.registry import BACKBONES

__all__ = ["DualBNNet", "DualBatchNorm", "FusingWeightPredictor", "Route", "convert_dual_bn", "dual_bn"]

CLEAN_STATS = ("running", "batch")


class Route:
    """Shared by the network and all its :class:`DualBatchNorm` layers: the λ of the current forward."""

    def __init__(self, clean_stats: str = "running") -> None:
        if clean_stats not in CLEAN_STATS:
            raise ValueError(f"clean_stats={clean_stats!r}: use one of {CLEAN_STATS}")
        self.clean_stats = clean_stats
        self.lam: Tensor | None = None  # [N] weights of the adversarial branch; None: the clean path only
        self.clean_rows = 0  # leading rows that take the clean path (training)
        self.fixed: Any = "predict"  # "predict" | None (clean path) | Tensor (given λ)
        self.last: Tensor | None = None  # the predictor's λ in the last forward


class DualBatchNorm(nn.Module):
    """``(1 − λ) BN_clean(x) + λ BN_adv(x)`` per sample (module doc); ``clean`` keeps the original layer."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, route: Route) -> None:
        super().__init__()
        self.clean = bn
        self.adv = copy.deepcopy(bn)
        self.route = route  # a plain object, not a module: shared, not saved

    def _clean_frozen(self, x: Tensor) -> Tensor:
        """The clean branch on adversarial rows: its running statistics (or the rows' own), never updated."""
        bn = self.clean
        use_batch = self.training and self.route.clean_stats == "batch"
        return F.batch_norm(x, None if use_batch else bn.running_mean, None if use_batch else bn.running_var,
                            bn.weight, bn.bias, use_batch, 0.0, bn.eps)  # fmt: skip

    def _mix(self, x: Tensor, lam: Tensor) -> Tensor:
        clean = self._clean_frozen(x) if self.training else self.clean(x)
        w = lam.to(clean.dtype).view(-1, *([1] * (x.dim() - 1)))
        return (1.0 - w) * clean + w * self.adv(x)  # exact at λ = 0 and λ = 1

    def forward(self, x: Tensor) -> Tensor:
        lam = self.route.lam
        if lam is None:
            return self.clean(x)
        n = self.route.clean_rows
        if n <= 0:
            return self._mix(x, lam)
        if n >= x.shape[0]:
            return self.clean(x)
        return torch.cat([self.clean(x[:n]), self._mix(x[n:], lam[n:])])


def convert_dual_bn(module: nn.Module, route: Route) -> int:
    """Replace every BatchNorm1d/2d/3d under ``module`` by a :class:`DualBatchNorm` (in place); returns how many."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, DualBatchNorm(child, route))
            count += 1
        else:
            count += convert_dual_bn(child, route)
    return count


class FusingWeightPredictor(nn.Module):
    """``x [N, 3, H, W] -> λ [N] ∈ (0, 1)``: three stride-2 3x3 convolutions (``width``, ``2 width``,
    ``4 width`` channels, ReLU), global average pooling and a linear layer with a sigmoid.

    Reconstruction: AFA says only "a small predictor"; this one reads the input image, where an L∞ perturbation
    shows as high-frequency energy, and has no batch normalisation, so λ of one face never depends on the
    others in its batch. The last layer's bias starts at −2 (λ ≈ 0.12: mostly clean until trained)."""

    def __init__(self, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"predictor width={width} must be >= 1")
        w = int(width)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.fc = nn.Linear(4 * w, 1)
        nn.init.zeros_(self.fc.weight)
        nn.init.constant_(self.fc.bias, -2.0)

    def logits(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).float().mean((2, 3))).squeeze(1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(x))


class DualBNNet(nn.Module):
    """A registered backbone ``base`` (built with ``base_kwargs``) with dual BN and a fusing-weight predictor.

    Config: ``model: {name: dual_bn, base: mobilefacenet, scale: 1, ...}``: every key other than this class's
    options goes to the base backbone. Options: ``predictor_width`` (16), ``clean_stats`` (``running``).
    """

    def __init__(
        self,
        base: str = "mobilefacenet",
        predictor_width: int = 16,
        clean_stats: str = "running",
        **base_kwargs: Any,
    ) -> None:
        super().__init__()
        if base == "dual_bn" or base not in BACKBONES:
            raise ValueError(
                f"dual_bn: base={base!r} must be another registered backbone: {BACKBONES.names()}"
            )
        self.route = Route(clean_stats)
        try:
            self.net = BACKBONES.build(base, **base_kwargs)
        except TypeError as exc:
            raise ValueError(f"dual_bn: backbone {base} does not take {sorted(base_kwargs)} ({exc}); set model.base "
                             "to the backbone these options belong to") from None  # fmt: skip
        self.converted = convert_dual_bn(self.net, self.route)
        if self.converted == 0:
            raise ValueError(f"dual_bn: backbone {base} has no batch normalisation to duplicate")
        self.predictor = FusingWeightPredictor(predictor_width)
        self.embedding_size = int(self.net.embedding_size)
        self.input_size = int(getattr(self.net, "input_size", 112))
        self.feature_names = tuple(getattr(self.net, "feature_names", ()))

    @property
    def last_lambda(self) -> Tensor | None:
        """The predictor's λ ``[N]`` of the last forward (with gradient in training)."""
        return self.route.last

    @contextlib.contextmanager
    def routing(self, lam: Tensor | None, clean_rows: int = 0) -> Iterator[None]:
        """Fix the route of the forwards inside: ``None`` the clean path, else the given ``λ [N]`` (module doc)."""
        saved = (self.route.fixed, self.route.clean_rows)
        self.route.fixed, self.route.clean_rows = lam, int(clean_rows)
        try:
            yield
        finally:
            self.route.fixed, self.route.clean_rows = saved

    def forward(self, x: Tensor, return_features: bool = False) -> Any:
        predicted = self.predictor(x)
        self.route.last = predicted
        fixed = self.route.fixed
        self.route.lam = predicted if isinstance(fixed, str) else fixed
        try:
            return self.net(x, return_features=True) if return_features else self.net(x)
        finally:
            self.route.lam = None


def dual_bn(
    base: str = "mobilefacenet", predictor_width: int = 16, clean_stats: str = "running", **base_kwargs: Any
) -> DualBNNet:
    """The ``dual_bn`` backbone (see :class:`DualBNNet`)."""
    return DualBNNet(base, predictor_width, clean_stats, **base_kwargs)
