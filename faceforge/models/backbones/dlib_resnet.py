"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``) as a trainable PyTorch backbone.

The network of dlib's ``dnn_face_recognition_ex.cpp`` (Davis King, 2017; Boost licence; 99.38 % on LFW as
published), layer for layer, so the weights that ``faceforge import dlib`` reads from the ``.dat`` file give
the same 128-d descriptors as dlib's own runtime:

* input: a 150x150 RGB "chip", ``x = (pixel - mean_rgb) / 256`` with mean (122.782, 117.001, 104.298);
* stem: conv 7x7/2 (32 filters, no padding, with bias) -> affine -> ReLU -> max-pool 3x3/2 (no padding);
* four stages of residual blocks, (32 x3), (64 x4), (128 x3), (256 x3), then one more down-sampling block of
  256: a block is conv 3x3 -> affine -> ReLU -> conv 3x3 -> affine, added to its input, then ReLU. A
  down-sampling block's first conv has stride 2 and no padding, and its shortcut is a 2x2/2 average pool of
  the input; when the two differ in channels or size, dlib's ``add_prev`` adds them zero-padded to the larger
  shape (the extra channels and the last row/column get the one that has them);
* global average pool -> fully connected 256 -> 128 without bias (the descriptor; dlib compares descriptors
  by Euclidean distance < 0.6, faceforge by cosine).

``affine`` is dlib's inference form of batch norm: ``y = gamma * x + beta`` per channel, with no batch
statistics. :class:`DlibAffine` keeps it so: fine-tuning trains gamma and beta and never re-estimates
statistics (the frozen-statistics regime that suits small fine-tuning sets; the statistics dlib trained with
are not in the file).

``input="arcface112"`` (the default for training on faceforge's aligned folders) takes ArcFace-aligned
112x112 faces and warps them inside the network, with a fixed similarity transform
(:data:`ARCFACE112_TO_CHIP150`), onto dlib's chip geometry (``dlib.get_face_chip`` with size 150 and
padding 0.25); parts of the chip outside the 112 crop repeat the border pixels. The transform is the mean of
the per-face transforms dlib's own 5-point landmarks give on ArcFace-aligned LFW faces (measured on the
pairsDevTrain people, see ``faceforge.importers.dlib_net``). ``input="chip150"`` takes dlib chips as they
are, for parity with dlib's runtime on identical chips.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: dlib's input normalisation (input_rgb_image_sized): x = (pixel - mean) / 256, RGB
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)
DLIB_SCALE = 256.0
CHIP_SIZE = 150
#: chip pixel (u, v, 1) -> ArcFace-112 pixel (x, y), pixel centres at integers (dlib's convention).
#: Measured: the mean of dlib's chip transforms (5-point predictor on the face, get_face_chip_details with
#: size 150, padding 0.25) over ArcFace-aligned LFW pairsDevTrain faces.
ARCFACE112_TO_CHIP150 = ((0.65027, 0.00527, 6.4504), (-0.00527, 0.65028, 22.0635))
INPUTS = {"arcface112": 112, "chip150": CHIP_SIZE}
#: (filters, blocks) per stage; the first block of every stage but the first down-samples
STAGES = ((32, 3), (64, 4), (128, 3), (256, 3), (256, 1))


class DlibAffine(nn.Module):
    """dlib's ``affine`` layer (conv mode): ``y = weight[c] * x + bias[c]``, no statistics."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def channel_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, shift)`` per channel: lets inference fold this layer into the convolution before it
        (:func:`faceforge.models.fusion.fold_batchnorm`)."""
        return self.weight, self.bias


def padded_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: ``a + b`` on the larger of each dimension, the smaller tensor zero-padded at the end
    (channels after its last, rows below, columns to the right)."""
    if a.shape == b.shape:
        return a + b
    shape = [max(x, y) for x, y in zip(a.shape, b.shape, strict=True)]

    def grow(t: torch.Tensor) -> torch.Tensor:
        pad = [0, shape[3] - t.shape[3], 0, shape[2] - t.shape[2], 0, shape[1] - t.shape[1]]
        return F.pad(t, pad) if any(pad) else t

    return grow(a) + grow(b)


class DlibBlock(nn.Module):
    """One residual block: conv3x3(/2) -> affine -> ReLU -> conv3x3 -> affine, + shortcut, ReLU."""

    def __init__(self, in_channels: int, channels: int, down: bool) -> None:
        super().__init__()
        self.down = down
        # dlib pads a convolution by kernel/2 only when its stride is 1
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.affine1 = DlibAffine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1)
        self.affine2 = DlibAffine(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(padded_add(y, shortcut))


class DlibResNet(nn.Module):
    """``forward(x [N, 3, S, S], normalised as dlib) -> [N, 128]``; see the module docstring.

    Args:
        input: ``"arcface112"`` (ArcFace-aligned 112 px faces, warped to dlib's chip inside) or ``"chip150"``.
        embedding_size: the descriptor size (128 is dlib's; another size needs a fresh ``fc``).
        input_size: must agree with ``input`` (112 or 150); accepted so every backbone takes it.
        dropout: dropout before the final fully connected layer (0 as dlib).
    """

    #: on a CPU, embed with concurrent forward passes of one thread each (the whole embed command 1.19x on 2
    #: cores; :class:`faceforge.embedders.checkpoint.ForwardStreams`)
    cpu_forward_streams = True

    def __init__(
        self,
        input: str = "arcface112",
        embedding_size: int = 128,
        input_size: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if input not in INPUTS:
            raise ValueError(f"dlib_resnet input must be one of {sorted(INPUTS)}, got {input!r}")
        if input_size is not None and input_size != INPUTS[input]:
            raise ValueError(
                f"dlib_resnet with input={input} takes {INPUTS[input]} px faces, not input_size={input_size}"
            )
        self.input = input
        self.input_size = INPUTS[input]
        self.embedding_size = int(embedding_size)
        self.conv1 = nn.Conv2d(3, 32, 7, stride=2, padding=0)
        self.affine1 = DlibAffine(32)
        blocks, width = [], 32
        for stage, (channels, count) in enumerate(STAGES):
            for i in range(count):
                blocks.append(DlibBlock(width, channels, down=stage > 0 and i == 0))
                width = channels
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(width, self.embedding_size, bias=False)
        if input == "arcface112":
            self.register_buffer("warp_grid", _chip_grid(), persistent=False)

    @property
    def preprocess_meta(self) -> dict[str, Any]:
        """The input this network expects (faceforge's Preprocess fields: x = (pixel/255 - mean) / std)."""
        return {
            "input_size": self.input_size,
            "colour": "RGB",
            "mean": [m / 255.0 for m in DLIB_MEAN_RGB],
            "std": [DLIB_SCALE / 255.0] * 3,
            "alignment": "arcface_112" if self.input == "arcface112" else "dlib_chip_150",
        }

    def to_chip(self, x: torch.Tensor) -> torch.Tensor:
        """ArcFace-112 input -> dlib 150 px chip (bilinear, border pixels repeated outside the crop)."""
        grid = self.warp_grid.to(dtype=x.dtype).expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # ---------------------------------------------------------------- the encoder interface (AIFR, quality)
    @property
    def level_channels(self) -> tuple[int, int, int, int]:
        """Channels of the four stage outputs of :meth:`forward_levels` (32, 64, 128, 256)."""
        return tuple(c for c, _ in STAGES[:4])  # type: ignore[return-value]

    @property
    def map_channels(self) -> int:
        """Channels of the last feature map (the input of :meth:`embed_map`)."""
        return STAGES[-1][0]

    #: side of the last feature map (150 px chip -> 2 x 2) and of the four stage outputs
    map_size = 2
    level_sizes = (35, 17, 8, 4)

    def forward_levels(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The outputs of the four residual stages (35, 17, 8 and 4 px) and the last feature map (the extra
        down-sampling block's output, 256 x 2 x 2); caller's autocast."""
        if self.input == "arcface112":
            x = self.to_chip(x)
        x = F.max_pool2d(F.relu(self.affine1(self.conv1(x))), 3, 2)
        levels, i = [], 0
        for _, count in STAGES[:4]:
            for block in self.blocks[i : i + count]:
                x = block(x)
            i += count
            levels.append(x)
        for block in self.blocks[i:]:
            x = block(x)
        return levels, x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map [N, 256, 2, 2] (caller's autocast)."""
        return self.forward_levels(x)[1]

    def embed_map(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding head on the last map: global average pool -> (dropout) -> fc, fc in fp32."""
        x = torch.flatten(x.mean(dim=(2, 3)), 1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.fc(self.dropout(x.float()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_map(self.forward_features(x))


def _chip_grid() -> torch.Tensor:
    """The ``grid_sample`` grid [1, 150, 150, 2] that reads chip pixel (u, v) from ArcFace-112 pixel
    T(u, v) (:data:`ARCFACE112_TO_CHIP150`), in normalised coordinates with ``align_corners=False``."""
    (a, b, tx), (c, d, ty) = ARCFACE112_TO_CHIP150
    v, u = torch.meshgrid(
        torch.arange(CHIP_SIZE, dtype=torch.float64),
        torch.arange(CHIP_SIZE, dtype=torch.float64),
        indexing="ij",
    )
    x = a * u + b * v + tx
    y = c * u + d * v + ty
    size = INPUTS["arcface112"]
    grid = torch.stack([(2 * x + 1) / size - 1, (2 * y + 1) / size - 1], dim=-1)
    return grid.unsqueeze(0).float()


def dlib_resnet(**kwargs: Any) -> DlibResNet:
    return DlibResNet(**kwargs)
