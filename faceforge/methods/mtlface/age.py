"""MTLFace's age estimation: age groups, the DEX expected age, the gradient reversal layer and the estimator.

From the MTLFace code (``common/ops.py``, ``common/grl.py``, ``backbone/aifr.py``, ``models/fr.py``
of ``Hzzone/MTLFace`` at commit d13f28f3; Huang, Zhang, Shan, CVPR 2021):

* :func:`age2group`: ``group = #{cuts c : age > c}`` (the cut age belongs to the lower group). ``G = 7`` (the
  default) cuts at 10, 20, ..., 60: groups 0-10, 11-20, ..., 61+; the code's other variants are in
  :data:`AGE_GROUP_CUTS` (4, 5, 6, 8 groups).
* :func:`dex_expectation`: ``E[age] = sum_k softmax(z)_k * k`` over the 101 ages 0..100 (DEX, Rothe et al. 2015).
* :class:`AgeEstimator` (``AgeEstimationModule``): ``x -> BN2d -> Flatten -> Linear(C*s*s, 512) -> ReLU ->
  Linear(512, 101)`` are the age logits ``z``; ``Linear(101, G)`` on those logits gives the group logits.
* :func:`age_loss`: ``L = MSE(E[age], age) + CE(group logits, group(age))``, the form of both MTLFace age terms.
* :func:`grad_reverse` / :class:`GradientReversal`: identity forward, gradient times ``-coeff`` backward (Ganin &
  Lempitsky 2015; MTLFace coefficient 1).

Checkpoint keys of an :class:`AgeEstimator` (stable; the ``age`` objective keeps it as ``estimator``, so a run's
checkpoint holds them under ``objectives["age"]["estimator.<key>"]``)::

    norm.weight, norm.bias, norm.running_mean, norm.running_var, norm.num_batches_tracked   BN2d(C)
    fc1.weight [512, C*s*s], fc1.bias [512]
    fc2.weight [101, 512], fc2.bias [101]                                                 age logits
    group.weight [G, 101], group.bias [G]                                                 group logits

:func:`load_age_estimator` rebuilds one from a checkpoint (sizes from the objective's description in the meta).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AGE_GROUP_CUTS",
    "AgeEstimator",
    "GradientReversal",
    "age2group",
    "age_loss",
    "dex_expectation",
    "grad_reverse",
    "load_age_estimator",
]

#: number of groups -> cut ages (``common/ops.py age2group``); a group index counts the cuts an age exceeds
AGE_GROUP_CUTS: dict[int, tuple[int, ...]] = {
    4: (30, 40, 50),
    5: (20, 30, 40, 50),
    6: (10, 20, 30, 40, 50),
    7: (10, 20, 30, 40, 50, 60),
    8: (12, 18, 25, 35, 45, 55, 65),
}
NUM_AGES = 101  # DEX over the integer ages 0..100


def check_groups(groups: int) -> tuple[int, ...]:
    if groups not in AGE_GROUP_CUTS:
        raise ValueError(f"age groups={groups} is not one of MTLFace's variants {sorted(AGE_GROUP_CUTS)}")
    return AGE_GROUP_CUTS[groups]


def age2group(age: Tensor, groups: int = 7) -> Tensor:
    """Age-group index (int64) of each age: the number of cuts of the ``groups`` variant the age exceeds."""
    cuts = torch.tensor(check_groups(groups), dtype=age.dtype, device=age.device)
    return (age[..., None] > cuts).sum(dim=-1).long()


def group_ranges(groups: int = 7) -> list[str]:
    """Readable ranges of the groups, e.g. ``['0-10', '11-20', ..., '61+']``."""
    cuts = check_groups(groups)
    lows = [0, *[c + 1 for c in cuts]]
    return [f"{lo}-{hi}" for lo, hi in zip(lows, cuts, strict=False)] + [f"{lows[-1]}+"]


def dex_expectation(logits: Tensor) -> Tensor:
    """``sum_k softmax(logits)_k * k`` over the last dimension (ages 0..K-1), in fp32."""
    p = F.softmax(logits.float(), dim=-1)
    return p @ torch.arange(p.shape[-1], dtype=p.dtype, device=p.device)


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, coeff: float) -> Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad.neg() * ctx.coeff, None


def grad_reverse(x: Tensor, coeff: float = 1.0) -> Tensor:
    """Identity in the forward pass; multiplies the gradient by ``-coeff`` in the backward pass."""
    return _GradReverse.apply(x, float(coeff))


class GradientReversal(nn.Module):
    """:func:`grad_reverse` as a module (coefficient fixed; MTLFace uses 1)."""

    def __init__(self, coeff: float = 1.0) -> None:
        super().__init__()
        self.coeff = float(coeff)

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.coeff)

    def extra_repr(self) -> str:
        return f"coeff={self.coeff}"


class AgeEstimator(nn.Module):
    """MTLFace's ``AgeEstimationModule`` on a [N, C, s, s] map (see the module doc for the layers and keys).

    ``forward(x) -> (age logits [N, 101], group logits [N, G])``; :meth:`predict` gives the expected age and
    the group logits' argmax.
    """

    def __init__(self, channels: int = 512, spatial: int = 7, groups: int = 7, hidden: int = 512) -> None:
        super().__init__()
        check_groups(groups)
        self.channels, self.spatial, self.groups, self.hidden = (
            int(channels),
            int(spatial),
            int(groups),
            hidden,
        )
        self.norm = nn.BatchNorm2d(self.channels)
        self.fc1 = nn.Linear(self.channels * self.spatial * self.spatial, hidden)
        self.fc2 = nn.Linear(hidden, NUM_AGES)
        self.group = nn.Linear(NUM_AGES, self.groups)

    def check_input(self, x: Tensor, what: str) -> None:
        want = (self.channels, self.spatial, self.spatial)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"the age estimator takes {what} maps of shape [N, {want[0]}, {want[1]}, {want[2]}], the backbone "
                f"gives {list(x.shape)}: set the objective's channels={x.shape[1]} and spatial={x.shape[-1]}"
            )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = F.relu(self.fc1(torch.flatten(self.norm(x), 1)))
        ages = self.fc2(h)
        return ages, self.group(ages)

    @torch.no_grad()
    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(expected age [N], group [N])`` (eval-mode statistics are the caller's choice: call ``.eval()``)."""
        ages, groups = self(x)
        return dex_expectation(ages), groups.argmax(dim=1)

    def describe(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "spatial": self.spatial,
            "groups": self.groups,
            "hidden": self.hidden,
        }

    def extra_repr(self) -> str:
        return f"channels={self.channels}, spatial={self.spatial}, groups={self.groups}"


def age_loss(
    age_logits: Tensor, group_logits: Tensor, ages: Tensor, groups: int = 7, max_age: float = NUM_AGES - 1
) -> tuple[Tensor, dict[str, Tensor]]:
    """``MSE(E[age], a) + CE(group logits, group(a))`` with the MSE target clamped to the DEX range [0, max_age]
    (MTLFace's lists have no older faces; UTKFace goes to 116); the group comes from the unclamped age.

    Returns the loss and its parts (``mse``, ``group_ce``, ``mae``, ``group_top1``) as detached tensors.
    """
    ages = ages.float()
    expected = dex_expectation(age_logits)
    mse = F.mse_loss(expected, ages.clamp(0.0, max_age))
    target_group = age2group(ages, groups)
    ce = F.cross_entropy(group_logits.float(), target_group)
    parts = {
        "mse": mse.detach(),
        "group_ce": ce.detach(),
        "mae": (expected.detach() - ages).abs().mean(),
        "group_top1": (group_logits.detach().argmax(dim=1) == target_group).float().mean(),
    }
    return mse + ce, parts


def load_age_estimator(
    checkpoint: str | Path | dict[str, Any], objective: str = "age", map_location: str = "cpu"
) -> AgeEstimator:
    """The trained estimator of objective ``objective`` (default ``age``: the one on ``X_age``; the adversarial
    one is ``age_adversarial``) from a faceforge checkpoint (a path or the loaded dict), in eval mode."""
    from faceforge.core.checkpoint import CheckpointError, load_checkpoint

    ckpt = (
        checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint, map_location=map_location)
    )
    described = (ckpt.get("meta", {}).get("objectives") or {}).get(objective)
    state = (ckpt.get("objectives") or {}).get(objective)
    if described is None or state is None or "estimator" not in described:
        have = sorted((ckpt.get("meta", {}).get("objectives") or {}).keys())
        raise CheckpointError(
            f"the checkpoint has no age estimator objective {objective!r} (objectives: {have}); train one with "
            "objectives.age={} on an aifr_* backbone"
        )
    est = AgeEstimator(**described["estimator"])
    prefix = "estimator."
    est.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return est.eval()
