"""MTLFace's CVPR face age synthesis generator: identity conditional blocks and a U-Net decoder.

Huang, Zhang, Shan, CVPR 2021, §3.3 (Fig. 2) and the CVPR code (``common/networks.py``: ``AgingModule``,
``ResidualBlock``, ``Upsample``). Input: the **identity** map ``X_id`` [N, C, h, w] of the source face (C = 512,
7x7 for a 112 face), the encoder's skip maps (deepest first, e.g. 256@14, 128@28, 64@56 for an IResNet), the
source image and the target age group ``g``:

1. 1x1 conv C → D, BN, PReLU, then route by ``g`` (:class:`~faceforge.methods.mtlface.router.TaskRouter`,
   D = int((G − (G−1)σ)u));
2. ``blocks`` identity conditional blocks (ICB), each residual: conv3x3 → BN → route → PReLU → conv3x3 → BN →
   route, added to its input, PReLU;
3. 1x1 conv D → C, BN, PReLU;
4. one up-block per skip and a last one for the image: the running map is resized (bilinear) to the skip's size,
   concatenated with it, passed through BN-PReLU-conv3x3 twice, plus a 1x1 shortcut of the running map, then
   a second residual BN-PReLU-conv pair (the code's ``Upsample``). Widths follow the skips (256, 128, 64) and
   ``final_channels`` (32) at the image's size;
5. 1x1 conv to 3 channels: the residual ``r``;

``output = image + r``, in the encoder's input space ((pixel/255 − 0.5)/0.5). **The output is not clamped**, as in
the CVPR code (the TPAMI StyleGAN2 generator clamps to [−1, 1]); :func:`to_uint8` clamps only when writing
pixels. Convolutions start from N(0, 0.01) with zero bias, as the code, so an untrained generator returns almost
its input: the identity term starts small and the adversarial and age terms shape the residual.

Differences from the code, chosen to work on any encoder: the skips and their widths come from the encoder's
feature maps (the code hard-codes an IResNet's 256/128/64), the resize goes to the skip's size rather than
doubling (the same for an IResNet's power-of-two sizes), and the decoder widths are an option.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceforge.methods.mtlface.router import TaskRouter, routed_width

__all__ = ["AgeGenerator", "IdentityConditionalBlock", "UpBlock", "to_uint8"]


class IdentityConditionalBlock(nn.Module):
    """Residual ICB: ``PReLU(x + route(BN(conv(PReLU(route(BN(conv(x)))))))``, routing by the target group."""

    def __init__(self, groups: int, units: int, sigma: float) -> None:
        super().__init__()
        d = routed_width(groups, units, sigma)
        self.conv1 = nn.Sequential(nn.Conv2d(d, d, 3, 1, 1), nn.BatchNorm2d(d))
        self.route1 = TaskRouter(groups, units, sigma)
        self.act1 = nn.PReLU(d)
        self.conv2 = nn.Sequential(nn.Conv2d(d, d, 3, 1, 1), nn.BatchNorm2d(d))
        self.route2 = TaskRouter(groups, units, sigma)
        self.act2 = nn.PReLU(d)

    def forward(self, x: Tensor, group: Tensor) -> Tensor:
        y = self.act1(self.route1(self.conv1(x), group))
        y = self.route2(self.conv2(y), group)
        return self.act2(x + y)


def _bn_prelu_conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(cin), nn.PReLU(cin), nn.Conv2d(cin, cout, 3, padding=1)]


class UpBlock(nn.Module):
    """The code's ``Upsample``: resize ``x`` to the skip's size, ``p = convs(cat[x, skip]) + shortcut(x)``,
    ``out = p + convs2(p)``."""

    def __init__(self, x_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            *_bn_prelu_conv(x_channels + skip_channels, out_channels),
            *_bn_prelu_conv(out_channels, out_channels),
        )
        self.conv2 = nn.Sequential(
            *_bn_prelu_conv(out_channels, out_channels), *_bn_prelu_conv(out_channels, out_channels)
        )
        self.shortcut = nn.Conv2d(x_channels, out_channels, 1)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        if x.shape[-2:] != skip.shape[-2:]:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        p = self.conv(torch.cat([x, skip], dim=1)) + self.shortcut(x)
        return p + self.conv2(p)


class AgeGenerator(nn.Module):
    """``G(image, x_id, skips, g) = image + residual`` (see the module doc).

    ``feature_channels``: channels of ``X_id`` (512); ``skip_channels``: channels of the skip maps, deepest
    first; ``groups`` G, ``units`` u, ``sigma`` σ of the routing; ``blocks``: number of ICBs (4);
    ``decoder_channels``: output widths of the up-blocks (default: the skips' widths, as the code);
    ``final_channels``: width at the image's size (32). Smaller ``units`` and decoder widths give a cheaper
    generator of the same shape (the CPU benchmark uses one; the paper's is the default).
    """

    def __init__(
        self,
        feature_channels: int = 512,
        skip_channels: Sequence[int] = (256, 128, 64),
        groups: int = 7,
        units: int = 128,
        sigma: float = 0.1,
        blocks: int = 4,
        final_channels: int = 32,
        image_channels: int = 3,
        decoder_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.groups = int(groups)
        d = routed_width(groups, units, sigma)
        self.width = d
        self.conv_in = nn.Sequential(nn.Conv2d(feature_channels, d, 1), nn.BatchNorm2d(d), nn.PReLU(d))
        self.route = TaskRouter(groups, units, sigma)
        self.icbs = nn.ModuleList(IdentityConditionalBlock(groups, units, sigma) for _ in range(blocks))
        self.conv_out = nn.Sequential(
            nn.Conv2d(d, feature_channels, 1), nn.BatchNorm2d(feature_channels), nn.PReLU(feature_channels)
        )
        widths = list(skip_channels if decoder_channels is None else decoder_channels)
        if len(widths) != len(skip_channels):
            raise ValueError(f"decoder_channels {widths} needs one width per skip map {list(skip_channels)}")
        ups, cin = [], feature_channels
        for c_skip, c_out in zip(skip_channels, widths, strict=True):
            ups.append(UpBlock(cin, c_skip, c_out))
            cin = c_out
        ups.append(UpBlock(cin, image_channels, final_channels))
        self.ups = nn.ModuleList(ups)
        self.to_rgb = nn.Conv2d(final_channels, image_channels, 1)
        self.skip_channels = tuple(int(c) for c in skip_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def residual(self, image: Tensor, x_id: Tensor, skips: Sequence[Tensor], group: Tensor) -> Tensor:
        if len(skips) != len(self.skip_channels):
            raise ValueError(f"AgeGenerator expects {len(self.skip_channels)} skip maps, got {len(skips)}")
        x = self.route(self.conv_in(x_id), group)
        for icb in self.icbs:
            x = icb(x, group)
        x = self.conv_out(x)
        for up, skip in zip(self.ups, [*skips, image], strict=True):
            x = up(x, skip)
        return self.to_rgb(x)

    def forward(self, image: Tensor, x_id: Tensor, skips: Sequence[Tensor], group: Tensor) -> Tensor:
        """The synthesised face, ``image + residual`` (not clamped; see the module doc)."""
        return image + self.residual(image, x_id, skips, group)


def to_uint8(
    x: Tensor, mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5)
) -> Tensor:
    """Network-space images [N, 3, H, W] back to uint8 RGB [N, H, W, 3] (clamped to 0..255 here, and only here)."""
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    pix = ((x.float() * s + m) * 255.0).round().clamp_(0, 255)
    return pix.to(torch.uint8).permute(0, 2, 3, 1).contiguous()
