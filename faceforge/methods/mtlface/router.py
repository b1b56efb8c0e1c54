"""MTLFace's identity conditional module (ICM): channel routing per age group with overlap (TaskRouter).

Huang, Zhang, Shan, "When Age-Invariant Face Recognition Meets Face Age Synthesis", CVPR 2021, §3.3; the
CVPR code (``common/networks.py``, ``TaskRouter``) and the TPAMI inference package (``modules.py``).

With ``G`` age groups, ``u`` units per group and overlap ``σ`` the routed layer has

    D = int((G − (G − 1)·σ)·u)

channels. Group ``i`` owns the channels ``[start_i, start_i + u)`` with ``start_0 = 0`` and
``start_{i+1} = int(start_i + (1 − σ)·u)`` (``int()`` truncates, as in the code, so the overlap of adjacent
groups is ``u − (start_{i+1} − start_i)``: exactly 13 channels for ``u = 128, σ = 0.1``, not 12.8; and the last
group ends at channel 818 of D = 819, so one channel is never routed, as in the code). A binary
mask chosen by the target group multiplies the feature map, so each group has filters of its own and shares a
few with its neighbours, which smooths the transition between adjacent ages.

Defaults: the CVPR code's ``σ = 0.1``, ``u = 128`` (D = 819 for G = 7); the TPAMI paper and code use
``σ = 1/8`` (pass ``sigma=0.125``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["TaskRouter", "routed_width", "unit_starts"]


def routed_width(groups: int, units: int, sigma: float) -> int:
    """``D = int((G − (G − 1)·σ)·u)``: the channel count of a routed layer."""
    return int((groups - (groups - 1) * sigma) * units)


def unit_starts(groups: int, units: int, sigma: float) -> list[int]:
    """First channel of each group: ``start_{i+1} = int(start_i + (1 − σ)·u)`` (int truncation as the code)."""
    starts, start = [], 0
    for _ in range(groups):
        starts.append(start)
        start = int(start + (1 - sigma) * units)
    return starts


class TaskRouter(nn.Module):
    """``forward(x [N, D, H, W], group [N]) = x * mask[group]``; ``mask`` [G, D] is a fixed 0/1 buffer."""

    def __init__(self, groups: int = 7, units: int = 128, sigma: float = 0.1) -> None:
        super().__init__()
        if groups < 1 or units < 1 or not 0.0 <= sigma < 1.0:
            raise ValueError(
                f"TaskRouter needs groups >= 1, units >= 1 and 0 <= sigma < 1 (got {groups}, {units}, {sigma})"
            )
        self.groups, self.units, self.sigma = int(groups), int(units), float(sigma)
        self.width = routed_width(groups, units, sigma)
        mask = torch.zeros(groups, self.width)
        for i, start in enumerate(unit_starts(groups, units, sigma)):
            if start + units > self.width:
                raise ValueError(
                    f"TaskRouter: group {i} would end at channel {start + units} > D = {self.width} "
                    f"(groups={groups}, units={units}, sigma={sigma})"
                )
            mask[i, start : start + units] = 1.0
        # not saved: it is a function of (groups, units, sigma), which the checkpoint's config records
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor, group: Tensor) -> Tensor:
        m = self.mask.index_select(0, group.long()).to(x.dtype)
        return x * m[:, :, None, None]

    def extra_repr(self) -> str:
        return f"groups={self.groups}, units={self.units}, sigma={self.sigma}, width={self.width}"
