"""Improved ResNet (IResNet) face backbones, as defined in insightface ``recognition/arcface_torch``.

Layout (``backbones/iresnet.py`` in arcface_torch; TFace ``IR_*`` uses the same stage depths):

* stem: 3x3 conv (64, stride 1) -> BN -> PReLU, keeping 112x112;
* four stages of :class:`IBasicBlock` with 64/128/256/512 channels, each starting with a stride-2
  block, so 112 -> 56 -> 28 -> 14 -> 7;
* head: BN2d -> Dropout -> Flatten -> Linear(512*7*7, embedding_size) -> BatchNorm1d whose weight is
  fixed to 1 (``requires_grad=False``, as in arcface_torch), so only its shift and running
  statistics are learned.

Stage depths: r18 [2,2,2,2], r34 [3,4,6,3], r50 [3,4,14,3], r100 [3,13,30,3], r200 [6,26,60,6].

SE variants (``iresnet_se50``, ``iresnet_se100``; TFace's ``IR_SE_50``/``IR_SE_101``, the CurricularFace and
MTLFace backbones): every residual unit ends with squeeze-and-excitation (Hu et al., CVPR 2018) before the
shortcut is added, ``y <- y * sigmoid(W2 relu(W1 avgpool(y)))`` with 1x1 convs, no bias, reduction 16, as
TFace's ``SEModule``. The rest of the unit is the same BN-conv-BN-PReLU-conv-BN residual as IResNet.

Gradient checkpointing (``set_gradient_checkpointing(True)``, ``run.gradient_checkpointing=true``) recomputes
each residual unit in the backward pass instead of storing its activations: less memory for large
backbones at about one extra forward of compute.
With 512-d embeddings r50 has about 43.6M parameters and r100 about 65.2M. Module names match
arcface_torch, so its r18-r100 checkpoints load with ``load_state_dict(strict=True)``.

Mixed precision: the convolutional body follows whatever autocast context the caller sets up
(bf16 on CPU, fp16/bf16 on GPU). The final Linear and BatchNorm1d always run in fp32 with autocast
disabled, as arcface_torch does, because the 25088-wide dot products are where low precision
hurts most. The returned embedding is therefore always fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from faceforge.core.precision import no_autocast

__all__ = [
    "IBasicBlock",
    "IResNet",
    "check_backbone_args",
    "check_backbone_input",
    "iresnet18",
    "iresnet34",
    "iresnet50",
    "iresnet100",
    "iresnet200",
    "iresnet_se50",
    "iresnet_se100",
]

SUPPORTED_INPUT_SIZES = (112,)


def check_backbone_args(name: str, embedding_size: int, input_size: int, dropout: float) -> None:
    """Validate the keyword arguments shared by every backbone; raise ValueError with a fix hint."""
    if input_size not in SUPPORTED_INPUT_SIZES:
        raise ValueError(
            f"{name}: input_size={input_size} is not supported; only 112 (aligned 112x112 crops) "
            "is implemented. Align/resize faces to 112x112 or set input_size: 112 in the model config."
        )
    if not isinstance(embedding_size, int) or embedding_size <= 0:
        raise ValueError(f"{name}: embedding_size must be a positive int, got {embedding_size!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout!r}")


def check_backbone_input(name: str, x: Tensor, input_size: int) -> None:
    """Raise ValueError unless ``x`` is an [N, 3, input_size, input_size] floating-point batch."""
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != input_size or x.shape[3] != input_size:
        raise ValueError(
            f"{name} expects a float batch of shape [N, 3, {input_size}, {input_size}] (RGB in [-1, 1]), "
            f"got shape {list(x.shape)}; check the alignment/crop size and that images are NCHW"
        )
    if not x.is_floating_point():
        raise ValueError(
            f"{name} expects floating-point input normalised to [-1, 1], got dtype {x.dtype}; "
            "apply (x / 255 - 0.5) / 0.5 in the data pipeline"
        )


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class SEModule(nn.Module):
    """Squeeze-and-excitation: ``x * sigmoid(fc2(relu(fc1(avgpool(x)))))``, 1x1 convs without bias."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class IBasicBlock(nn.Module):
    """Residual unit: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN [-> SE], plus shortcut.

    The shortcut is the identity, or conv1x1(stride) + BN when the shape changes.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, se: bool = False) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch, eps=1e-5)
        self.conv1 = _conv3x3(in_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch, eps=1e-5)
        self.prelu = nn.PReLU(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch, stride)
        self.bn3 = nn.BatchNorm2d(out_ch, eps=1e-5)
        self.se = SEModule(out_ch) if se else None
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch, eps=1e-5),
            )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        if self.se is not None:
            y = self.se(y)
        return y + shortcut


class IResNet(nn.Module):
    """IResNet: [N, 3, 112, 112] RGB in [-1, 1] -> un-normalised [N, embedding_size] embedding.

    Args:
        layers: number of :class:`IBasicBlock` units in each of the four stages.
        embedding_size: output width (512 in all reference recipes).
        input_size: side of the square input; only 112 is supported.
        dropout: dropout probability on the flattened 512x7x7 feature map (arcface_torch uses 0,
            some configs 0.4).
        name: used in error messages.

    Weight init: convs use Kaiming-normal (fan_out, ReLU gain); BN weight 1 and bias 0. (arcface_torch's
    IResNet draws conv weights from N(0, 0.1) instead; every conv is followed by BN, so the choice only
    affects the first few iterations.)
    """

    stage_channels = (64, 128, 256, 512)

    def __init__(
        self,
        layers: Sequence[int],
        embedding_size: int = 512,
        input_size: int = 112,
        dropout: float = 0.0,
        name: str = "iresnet",
        se: bool = False,
    ) -> None:
        super().__init__()
        check_backbone_args(name, embedding_size, input_size, dropout)
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"{name}: layers must be four positive stage depths, got {list(layers)}")
        self.name = name
        self.embedding_size = embedding_size
        self.input_size = input_size
        self.layers_per_stage = tuple(int(n) for n in layers)
        self.se = bool(se)
        self.gradient_checkpointing = False

        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        in_ch = 64
        stages = []
        for out_ch, depth in zip(self.stage_channels, self.layers_per_stage, strict=True):
            blocks = [IBasicBlock(in_ch, out_ch, stride=2, se=se)]
            blocks += [IBasicBlock(out_ch, out_ch, se=se) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

        spatial = input_size // 16  # four stride-2 stages: 112 -> 7
        self.bn2 = nn.BatchNorm2d(in_ch, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_ch * spatial * spatial, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Frozen unit scale on the embedding BN (arcface_torch): the output norm is set by the FC only.
        self.features.weight.requires_grad_(False)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.gradient_checkpointing = bool(enabled)

    @property
    def level_channels(self) -> tuple[int, int, int, int]:
        """Channels of the four stage outputs of :meth:`forward_levels` (strides 2, 4, 8, 16)."""
        return self.stage_channels

    @property
    def map_channels(self) -> int:
        """Channels of the last feature map (the input of :meth:`embed_map`)."""
        return self.stage_channels[-1]

    def forward_levels(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """The four stage outputs (56, 28, 14 and 7 px for a 112 input; 64/128/256/512 channels) and the last
        feature map, here the last stage's output itself (before the head's BN2d); caller's autocast."""
        x = self.prelu(self.bn1(self.conv1(x)))
        levels = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
            levels.append(x)
        return levels, x

    def embed_map(self, x: Tensor) -> Tensor:
        """The embedding head on a [N, 512, 7, 7] map: BN2d -> Dropout -> Flatten -> Linear -> BN1d (the last
        two in fp32 with autocast off)."""
        x = torch.flatten(self.dropout(self.bn2(x)), 1)
        with no_autocast(x.device):
            return self.features(self.fc(x.float()))

    def forward_features(self, x: Tensor) -> Tensor:
        """Return the [N, 512, 7, 7] map after the final BN2d (runs under the caller's autocast)."""
        return self.bn2(self.forward_levels(x)[1])

    def forward(self, x: Tensor) -> Tensor:
        check_backbone_input(self.name, x, self.input_size)
        return self.embed_map(self.forward_levels(x)[1])

    def extra_repr(self) -> str:
        se = ", se=True" if self.se else ""
        return f"layers={list(self.layers_per_stage)}, embedding_size={self.embedding_size}{se}"


def _make(name: str, layers: tuple[int, int, int, int], se: bool = False):
    def factory(embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0) -> IResNet:
        return IResNet(
            layers, embedding_size=embedding_size, input_size=input_size, dropout=dropout, name=name, se=se
        )

    factory.__name__ = factory.__qualname__ = name
    kind = "IResNet with squeeze-and-excitation" if se else "IResNet"
    factory.__doc__ = f"{name}: {kind} with stage depths {list(layers)} (see :class:`IResNet`)."
    return factory


iresnet18 = _make("iresnet18", (2, 2, 2, 2))
iresnet34 = _make("iresnet34", (3, 4, 6, 3))
iresnet50 = _make("iresnet50", (3, 4, 14, 3))
iresnet100 = _make("iresnet100", (3, 13, 30, 3))
iresnet200 = _make("iresnet200", (6, 26, 60, 6))
iresnet_se50 = _make("iresnet_se50", (3, 4, 14, 3), se=True)
iresnet_se100 = _make("iresnet_se100", (3, 13, 30, 3), se=True)
