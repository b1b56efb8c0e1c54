"""MTLFace's conditional PatchGAN discriminator (CVPR code ``common/networks.py``: ``PatchDiscriminator`` with
``norm_layer='sn', repeat_num=4`` as built in ``models/fas.py``).

``D(x, g)``: a 4x4 stride-2 conv (3 → 64) and LeakyReLU(0.2); the **one-hot target group** [N, G] is tiled to the
map's size and concatenated to it (the conditioning); then ``layers − 1`` spectrally normalised 4x4 stride-2 convs
doubling the width (capped at 8·64), each with LeakyReLU(0.2); a spectrally normalised 4x4 stride-1 conv and
LeakyReLU(0.2); a 4x4 stride-1 conv to one channel. The output is a map of patch scores (5x5 for a 112 face),
which the LSGAN losses average. As in the code, the first and the last conv carry no spectral norm
(``spectral_norm_all=True`` puts it on every conv).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["PatchDiscriminator", "tile_groups"]


def tile_groups(group: Tensor, groups: int, size: tuple[int, int], dtype: torch.dtype) -> Tensor:
    """One-hot ``group`` [N] → [N, G, h, w], constant over space."""
    onehot = F.one_hot(group.long(), groups).to(dtype)
    return onehot[:, :, None, None].expand(-1, -1, *size)


class PatchDiscriminator(nn.Module):
    def __init__(
        self,
        groups: int = 7,
        width: int = 64,
        layers: int = 4,
        image_channels: int = 3,
        spectral_norm_all: bool = False,
    ) -> None:
        super().__init__()
        self.groups = int(groups)
        sn = spectral_norm
        first = nn.Conv2d(image_channels, width, 4, 2, 1)
        self.conv1 = sn(first) if spectral_norm_all else first
        seq: list[nn.Module] = []
        mult = 1
        for n in range(1, layers):
            prev, mult = mult, min(2**n, 8)
            cin = width * prev + (self.groups if n == 1 else 0)
            seq += [sn(nn.Conv2d(cin, width * mult, 4, 2, 1)), nn.LeakyReLU(0.2)]
        prev, mult = mult, min(2**layers, 8)
        last = nn.Conv2d(width * mult, 1, 4, 1, 1)
        seq += [
            sn(nn.Conv2d(width * prev + (self.groups if layers == 1 else 0), width * mult, 4, 1, 1)),
            nn.LeakyReLU(0.2),
            sn(last) if spectral_norm_all else last,
        ]
        self.main = nn.Sequential(*seq)

    def forward(self, x: Tensor, group: Tensor) -> Tensor:
        """Patch scores [N, 1, h', w'] of images ``x`` [N, 3, H, W] judged as faces of group ``group`` [N]."""
        h = F.leaky_relu(self.conv1(x), 0.2)
        cond = tile_groups(group, self.groups, (h.shape[2], h.shape[3]), h.dtype)
        return self.main(torch.cat([h, cond], dim=1))
