"""MobileFaceNet, the ``mbf`` network of insightface ``recognition/arcface_torch/backbones/mobilefacenet.py``.

Structure (width multiplier ``scale=2``, stage repeats ``blocks=(1, 4, 6, 2)``):

====================  ===========================================================  ==========
stage                 op                                                           output
====================  ===========================================================  ==========
stem                  conv 3x3 s2 -> 128, BN, PReLU                                128x56x56
stage 0 (blocks[0]=1) grouped conv 3x3 (64 groups), BN, PReLU                      128x56x56
down 1                bottleneck: 1x1 -> 128, dw 3x3 s2, linear 1x1 -> 128          128x28x28
stage 1               blocks[1] residual bottlenecks (expansion 128)               128x28x28
down 2                bottleneck: 1x1 -> 256, dw 3x3 s2, linear 1x1 -> 256          256x14x14
stage 2               blocks[2] residual bottlenecks (expansion 256)               256x14x14
down 3                bottleneck: 1x1 -> 512, dw 3x3 s2, linear 1x1 -> 256          256x7x7
stage 3               blocks[3] residual bottlenecks (expansion 256)               256x7x7
conv_sep              conv 1x1 -> 512, BN, PReLU                                   512x7x7
GDC head              linear depthwise 7x7 conv, BN, Flatten, [Dropout],           emb
                      Linear(512, emb, bias=False), BatchNorm1d
====================  ===========================================================  ==========

"Linear" blocks are conv + BN without activation. Activations are PReLU throughout, as in the
reference. ``dropout`` (default 0; the reference has none) is applied to the flattened GDC output
just before the final Linear.

Module names follow the reference, so arcface_torch ``mbf`` checkpoints load with
``load_state_dict(strict=True)``.

Mixed precision: the convolutional body follows the caller's autocast context; the final Linear
and BatchNorm1d run in fp32 with autocast disabled, so the embedding is always fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from faceforge.core.precision import no_autocast

from .iresnet import check_backbone_args, check_backbone_input

__all__ = ["GDC", "Bottleneck", "ConvBN", "MobileFaceNet", "ResidualStage", "mobilefacenet"]


class ConvBN(nn.Module):
    """Conv (no bias) -> BN, followed by PReLU when ``act`` (ConvBlock) or not (LinearBlock)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        super().__init__()
        mods: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if act:
            mods.append(nn.PReLU(out_ch))
        self.layers = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class Bottleneck(nn.Module):
    """Inverted bottleneck: 1x1 expand (PReLU) -> depthwise 3x3 (PReLU) -> 1x1 linear projection.

    ``hidden`` is the expanded width. With ``residual=True`` the input is added to the output
    (requires stride 1 and in_ch == out_ch).
    """

    def __init__(self, in_ch: int, out_ch: int, hidden: int, stride: int = 1, residual: bool = False) -> None:
        super().__init__()
        if residual and (stride != 1 or in_ch != out_ch):
            raise ValueError("a residual bottleneck needs stride 1 and equal input/output widths")
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBN(in_ch, hidden, kernel=1),
            ConvBN(hidden, hidden, kernel=3, stride=stride, padding=1, groups=hidden),
            ConvBN(hidden, out_ch, kernel=1, act=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.layers(x)
        return x + y if self.residual else y


class ResidualStage(nn.Module):
    """``n`` residual bottlenecks of width ``ch`` and expansion ``hidden``."""

    def __init__(self, ch: int, hidden: int, n: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[Bottleneck(ch, ch, hidden, residual=True) for _ in range(n)])

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise conv head: linear depthwise kxk conv + BN -> Flatten -> [Dropout] -> Linear -> BN1d.

    The Linear and BatchNorm1d run in fp32 with autocast disabled.
    """

    def __init__(self, embedding_size: int, spatial: int = 7, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            ConvBN(512, 512, kernel=spatial, groups=512, act=False),
            nn.Flatten(),
            nn.Linear(512, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: Tensor) -> Tensor:
        conv, flatten, fc, bn = self.layers
        x = self.dropout(flatten(conv(x)))
        with no_autocast(x.device):
            return bn(fc(x.float()))


class MobileFaceNet(nn.Module):
    """MobileFaceNet (arcface_torch ``mbf``): [N, 3, 112, 112] RGB in [-1, 1] -> [N, embedding_size].

    Args:
        embedding_size: output width.
        input_size: only 112 is supported.
        dropout: dropout before the final Linear of the GDC head (0 = reference behaviour).
        blocks: residual repeats per stage; the reference ``mbf`` uses (1, 4, 6, 2).
        scale: width multiplier of the trunk (2 in ``mbf``).

    Weight init (as the reference): Kaiming-normal (fan_out, ReLU gain) for convs and the Linear,
    BN weight 1 / bias 0.
    """

    def __init__(
        self,
        embedding_size: int = 512,
        input_size: int = 112,
        dropout: float = 0.0,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 2,
    ) -> None:
        super().__init__()
        check_backbone_args("mobilefacenet", embedding_size, input_size, dropout)
        if len(blocks) != 4 or any(int(b) < 1 for b in blocks):
            raise ValueError(f"mobilefacenet: blocks must be four positive repeats, got {list(blocks)}")
        self.embedding_size = embedding_size
        self.input_size = input_size
        self.blocks = tuple(int(b) for b in blocks)
        self.scale = scale
        c1, c2 = 64 * scale, 128 * scale

        stage0: nn.Module
        if self.blocks[0] == 1:
            stage0 = ConvBN(c1, c1, kernel=3, padding=1, groups=64)
        else:
            stage0 = ResidualStage(c1, 128, self.blocks[0])
        self.layers = nn.ModuleList(
            [
                ConvBN(3, c1, kernel=3, stride=2, padding=1),
                stage0,
                Bottleneck(c1, c1, hidden=128, stride=2),
                ResidualStage(c1, 128, self.blocks[1]),
                Bottleneck(c1, c2, hidden=256, stride=2),
                ResidualStage(c2, 256, self.blocks[2]),
                Bottleneck(c2, c2, hidden=512, stride=2),
                ResidualStage(c2, 256, self.blocks[3]),
            ]
        )
        self.conv_sep = ConvBN(c2, 512, kernel=1)
        self.features = GDC(embedding_size, spatial=input_size // 16, dropout=dropout)
        self._init_weights()

    @property
    def dropout(self) -> nn.Dropout:
        return self.features.dropout

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    #: positions in ``layers`` whose outputs are the four levels of :meth:`forward_levels`
    LEVEL_LAYERS = (1, 3, 5, 7)

    @property
    def level_channels(self) -> tuple[int, int, int, int]:
        """Channels of the four levels of :meth:`forward_levels` (strides 2, 4, 8, 16)."""
        c1, c2 = 64 * self.scale, 128 * self.scale
        return (c1, c1, c2, c2)

    @property
    def map_channels(self) -> int:
        """Channels of the last feature map (conv_sep's output, the input of :meth:`embed_map`)."""
        return 512

    def forward_levels(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """The outputs of stage 0 and of the three downsampling stages (56, 28, 14 and 7 px for a 112 input;
        ``level_channels``) and the last feature map (conv_sep, 512 x 7 x 7); caller's autocast."""
        levels = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.LEVEL_LAYERS:
                levels.append(x)
        return levels, self.conv_sep(x)

    def embed_map(self, x: Tensor) -> Tensor:
        """The GDC embedding head on the [N, 512, 7, 7] map."""
        return self.features(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """Return the [N, 512, 7, 7] map after conv_sep (runs under the caller's autocast)."""
        return self.forward_levels(x)[1]

    def forward(self, x: Tensor) -> Tensor:
        check_backbone_input("mobilefacenet", x, self.input_size)
        return self.embed_map(self.forward_levels(x)[1])

    def extra_repr(self) -> str:
        return f"blocks={list(self.blocks)}, scale={self.scale}, embedding_size={self.embedding_size}"


def mobilefacenet(
    embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0, scale: int = 2
) -> MobileFaceNet:
    """MobileFaceNet with blocks (1, 4, 6, 2) (see :class:`MobileFaceNet`).

    ``scale=2`` (default) is arcface_torch ``mbf`` (2.06M parameters at 512-d, loads its checkpoints);
    ``scale=1`` has the channel widths of the MobileFaceNet paper (Chen et al., CCBR 2018: 64/128
    channels, 1.20M parameters at 512-d) and trains about twice as fast on a CPU.
    """
    if scale not in (1, 2, 4):
        raise ValueError(f"mobilefacenet scale must be 1, 2 or 4, got {scale}")
    return MobileFaceNet(embedding_size=embedding_size, input_size=input_size, dropout=dropout, scale=scale)
