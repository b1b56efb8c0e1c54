"""BatchNorm folding for inference: what folds is read from the dataflow, and the output stays the same."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from faceforge.models.backbones import build_backbone
from faceforge.models.fusion import fold_batchnorm


def _randomise_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if m.weight is not None:
                m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model.eval()


class Residual(nn.Module):
    """``bn(conv(x)) + conv(x)``: the conv output has a second reader, so its BN must not fold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.PReLU(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.head(self.bn(y) + y)


def test_folds_only_a_bn_whose_input_nothing_else_reads() -> None:
    net = _randomise_bn(Residual())
    folded_net = copy.deepcopy(net)
    x = torch.randn(2, 3, 8, 8)
    assert fold_batchnorm(folded_net, x[:1]) == ["head.1"]
    assert isinstance(folded_net.bn, nn.BatchNorm2d) and isinstance(folded_net.head[1], nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(folded_net(x), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["mobilefacenet", "iresnet18"])
def test_backbones_give_the_same_embeddings_folded(name: str) -> None:
    torch.manual_seed(0)
    net = _randomise_bn(build_backbone(name, embedding_size=64))
    folded_net = copy.deepcopy(net)
    x = torch.randn(1, 3, 112, 112)
    names = fold_batchnorm(folded_net, x[:1])
    bns = [n for n, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    # MobileFaceNet: every BN follows a conv (or the final linear); IResNet: all but the pre-activation ones
    # (bn1 of each block, bn2 before the flatten), which read a block input
    pre = [n for n in bns if n.endswith(".bn1") or n == "bn2"]
    assert sorted(names) == sorted(n for n in bns if n not in pre)
    with torch.no_grad():
        a, b = net(x), folded_net(x)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()


class ChannelAffine(nn.Module):
    """``y = w[c] * x + b[c]`` that says so (``channel_affine``), as dlib's affine layer does."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(c) + 0.5)
        self.bias = nn.Parameter(torch.rand(c) - 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def channel_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight, self.bias


def test_a_declared_channel_affine_folds_like_a_batchnorm() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), ChannelAffine(4), nn.ReLU(), nn.Conv2d(4, 2, 1), ChannelAffine(2)
    )
    folded_net = copy.deepcopy(net).eval()
    x = torch.randn(2, 3, 8, 8)
    assert fold_batchnorm(folded_net, x[:1]) == ["1", "4"]
    with torch.no_grad():
        torch.testing.assert_close(folded_net(x), net(x), rtol=1e-5, atol=1e-5)
