"""FAN's networks besides the identity encoder (the run's backbone): a non-identity encoder, the decoder that
normalises (super-resolves) a face from its identity and non-identity features, an image discriminator and a
feature discriminator. Their published description (Yin, Tai, Huang, Liu, ACCV 2020, arXiv 1911.11680) names
the parts, not their layers: the layers below are this reconstruction's, small enough to train on a CPU, with
widths as options.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FaceDecoder", "FeatureDiscriminator", "ImageDiscriminator", "NonIdentityEncoder"]


def _down(c_in: int, c_out: int, norm: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return layers


class NonIdentityEncoder(nn.Module):
    """``x [N, 3, 112, 112] -> z [N, dim]``: four stride-2 4x4 convolutions (BN, LeakyReLU 0.2) to 7x7, global
    average pooling, a linear layer. What the identity feature leaves out (pose, light, expression, blur)."""

    def __init__(self, dim: int = 64, widths: Sequence[int] = (16, 32, 64, 64)) -> None:
        super().__init__()
        chans = [3, *[int(w) for w in widths]]
        self.features = nn.Sequential(*[m for a, b in pairwise(chans) for m in _down(a, b)])
        self.fc = nn.Linear(chans[-1], int(dim))
        self.dim = int(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean((2, 3)))


class FaceDecoder(nn.Module):
    """``(identity [N, D], non-identity [N, d]) -> face [N, 3, 112, 112]`` in ``[-1, 1]`` (tanh).

    A linear layer to ``widths[0] x 7 x 7``, then per width a x2 nearest up-sampling and a 3x3 convolution (BN,
    ReLU): 7 -> 14 -> 28 -> 56 -> 112 with four widths, and a 3x3 convolution to RGB."""

    def __init__(
        self, id_dim: int, nonid_dim: int, widths: Sequence[int] = (128, 64, 32, 16), size: int = 112
    ) -> None:
        super().__init__()
        w = [int(v) for v in widths]
        start = size // 2 ** len(w)
        if start * 2 ** len(w) != size or start < 1:
            raise ValueError(
                f"decoder: {len(w)} up-samplings cannot reach {size} px from a whole-pixel start"
            )
        self.start, self.w0 = start, w[0]
        self.fc = nn.Linear(int(id_dim) + int(nonid_dim), w[0] * start * start)
        blocks: list[nn.Module] = []
        for a, b in pairwise([w[0], *w]):
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, b, 3, 1, 1, bias=False),
                       nn.BatchNorm2d(b), nn.ReLU(inplace=True)]  # fmt: skip
        self.blocks = nn.Sequential(*blocks)
        self.to_rgb = nn.Conv2d(w[-1], 3, 3, 1, 1)

    def forward(self, identity: Tensor, non_identity: Tensor) -> Tensor:
        h = self.fc(torch.cat([identity, non_identity], 1)).view(-1, self.w0, self.start, self.start)
        return torch.tanh(self.to_rgb(self.blocks(F.relu(h))))


class ImageDiscriminator(nn.Module):
    """A patch discriminator: three stride-2 4x4 convolutions (no BN on the first) and a 3x3 convolution to one
    logit per 14x14 patch (LSGAN scores)."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        chans = [3, *[int(w) for w in widths]]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(pairwise(chans)):
            layers += _down(a, b, norm=i > 0)
        self.body = nn.Sequential(*layers, nn.Conv2d(chans[-1], 1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class FeatureDiscriminator(nn.Module):
    """``normalised identity feature [N, D] -> score [N]``: Linear(D, hidden), LeakyReLU 0.2, Linear(hidden, 1)."""

    def __init__(self, dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(int(dim), int(hidden)), nn.LeakyReLU(0.2, inplace=True),
                                  nn.Linear(int(hidden), 1))  # fmt: skip

    def forward(self, f: Tensor) -> Tensor:
        return self.body(f).squeeze(1)
