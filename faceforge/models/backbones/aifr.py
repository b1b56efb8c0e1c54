"""Age-invariant face recognition backbones (MTLFace, Huang, Zhang & Shan, CVPR 2021; TPAMI 2022 extension).

An encoder (IResNet or MobileFaceNet, the classes of this package, reused) keeps its last feature map
``X`` [N, C, 7, 7]; the **attention-based feature decomposition** (AFD, :class:`AttentionDecomposition`) splits it
into an age part and an identity part, and the encoder's own embedding head runs on the identity part::

    CA(X) = sigmoid(BN(W2 relu(W1 SPP(X))))           channel attention, [N, C, 1, 1]
    SPP(X) = avg-pyramid(X) + max-pyramid(X)          grids 1, 2, 3 (C * 14 values); TPAMI: concatenated
    SA(X) = sigmoid(BN(conv7x7([max_c X, mean_c X])))  spatial attention, [N, 1, 7, 7]
    CVPR:  X_age = (X * CA + X * SA) / 2,  X_id = X - X_age          (MTLFace code, backbone/aifr.py)
    TPAMI: X_id  = (X * CA + X * SA) / 2,  X_age = X - X_id          (the TPAMI package swaps the roles)
    embedding = head(X_id)

W1, W2 are 1x1 convs without bias (reduction 16), the BNs have momentum 0.01 as the code. Both variants satisfy
``X_id + X_age = X``. ``decomposition`` and ``channel_pooling`` choose among them (defaults: the CVPR code, whose
losses and weights the ``mtlface`` config follows).

The identity head is the encoder's own: for IResNet it *is* MTLFace's ``BN2d -> Dropout -> Flatten ->
Linear(C*7*7, 512) -> BN1d`` (arcface_torch's unit-scale BN1d; MTLFace uses Dropout 0.5, set ``dropout``); for
MobileFaceNet it is the GDC head, so that an AIFR MobileFaceNet and a plain one differ only by AFD and the age
losses (``id_head="flatten"`` puts MTLFace's flatten head there instead).

``forward(x)`` returns the embedding (so eval, embed, ONNX export and teachers use an AIFR model like any other);
``forward(x, return_features=True)`` returns ``(embedding, features)`` with ``x_id`` and ``x_age`` (C x 7 x 7) and
the encoder levels ``x1..x4`` (strides 2, 4, 8, 16: 56, 28, 14, 7 px), the skips of MTLFace's age-synthesis
decoder; ``feature_names`` lists them and ``skip_channels`` gives each one's channels. The age objectives read
``x_age`` / ``x_id`` (:mod:`faceforge.methods.mtlface`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from faceforge.core.precision import no_autocast

from .iresnet import IResNet, check_backbone_input
from .mobilefacenet import MobileFaceNet

__all__ = [
    "AIFRNet",
    "AttentionDecomposition",
    "FlattenHead",
    "aifr_iresnet18",
    "aifr_iresnet34",
    "aifr_iresnet50",
    "aifr_iresnet100",
    "aifr_iresnet_se50",
    "aifr_mobilefacenet",
]

DECOMPOSITIONS = ("cvpr", "tpami")
CHANNEL_POOLINGS = ("sum", "concat")


def adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` windows of adaptive pooling from ``size`` to ``out`` cells (PyTorch's rule:
    ``start = floor(i * size / out)``, ``end = ceil((i + 1) * size / out)``; 7 -> 2 gives [0, 4) and [3, 7))."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


class SpatialPyramid(nn.Module):
    """Adaptive ``mode`` pooling at each grid size, flattened and concatenated: [N, C, H, W] -> [N, C*sum(s^2), 1, 1]
    (each grid flattened channel-major, as ``SPPModule`` of the MTLFace code).

    The cells are pooled window by window (the windows of :func:`adaptive_bins`, the same numbers as
    ``F.adaptive_*_pool2d``), because ONNX has no adaptive pooling to grids that do not divide the map (7 -> 2, 3).
    """

    def __init__(self, mode: str, sizes: Sequence[int]) -> None:
        super().__init__()
        if mode not in ("avg", "max"):
            raise ValueError(f"pooling mode {mode!r} must be 'avg' or 'max'")
        self.mode = mode
        self.sizes = tuple(int(s) for s in sizes)

    def _pool(self, x: Tensor, s: int) -> Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if s == 1:
            return x.amax(dim=(2, 3)) if self.mode == "max" else x.mean(dim=(2, 3))
        cells = []
        for r0, r1 in adaptive_bins(h, s):
            for c0, c1 in adaptive_bins(w, s):
                win = x[:, :, r0:r1, c0:c1]
                cells.append(win.amax(dim=(2, 3)) if self.mode == "max" else win.mean(dim=(2, 3)))
        return torch.stack(cells, dim=2).flatten(
            1
        )  # [N, C, s*s] -> channel-major, like pool(x, s).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.cat([self._pool(x, s) for s in self.sizes], dim=1)
        return out[:, :, None, None]


class AttentionDecomposition(nn.Module):
    """AFD: ``X -> (X_id, X_age)`` with channel and spatial attention (see the module doc).

    Args:
        channels: C of the feature map.
        reduction: bottleneck of the channel attention (16).
        pyramid: grid sizes of the spatial pyramid pooling ((1, 2, 3)).
        kernel_size: spatial attention conv (7).
        decomposition: ``cvpr`` (the attended part is the age part) or ``tpami`` (the attended part is identity).
        channel_pooling: ``sum`` (CVPR code: avg + max pyramids added) or ``concat`` (TPAMI code: stacked,
            twice the input width of the first 1x1 conv).
    """

    def __init__(
        self,
        channels: int = 512,
        reduction: int = 16,
        pyramid: Sequence[int] = (1, 2, 3),
        kernel_size: int = 7,
        decomposition: str = "cvpr",
        channel_pooling: str = "sum",
    ) -> None:
        super().__init__()
        if decomposition not in DECOMPOSITIONS:
            raise ValueError(f"decomposition={decomposition!r} must be one of {list(DECOMPOSITIONS)}")
        if channel_pooling not in CHANNEL_POOLINGS:
            raise ValueError(f"channel_pooling={channel_pooling!r} must be one of {list(CHANNEL_POOLINGS)}")
        self.decomposition = decomposition
        self.channel_pooling = channel_pooling
        self.avg_pyramid = SpatialPyramid("avg", pyramid)
        self.max_pyramid = SpatialPyramid("max", pyramid)
        pooled = channels * sum(s * s for s in self.avg_pyramid.sizes)
        pooled *= 2 if channel_pooling == "concat" else 1
        self.channel = nn.Sequential(
            nn.Conv2d(pooled, pooled // reduction, kernel_size=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(pooled // reduction, channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(channels, eps=1e-5, momentum=0.01),
            nn.Sigmoid(),
        )
        self.spatial = nn.Sequential(
            nn.Conv2d(2, 1, kernel_size=kernel_size, padding=(kernel_size - 1) // 2, bias=False),
            nn.BatchNorm2d(1, eps=1e-5, momentum=0.01),
            nn.Sigmoid(),
        )

    def attention(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(CA [N, C, 1, 1], SA [N, 1, H, W])``, both in (0, 1)."""
        avg, mx = self.avg_pyramid(x), self.max_pyramid(x)
        pooled = avg + mx if self.channel_pooling == "sum" else torch.cat([avg, mx], dim=1)
        ca = self.channel(pooled)
        sa = self.spatial(torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1))
        return ca, sa

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(X_id, X_age)``; ``X_id + X_age = X``."""
        ca, sa = self.attention(x)
        attended = (x * ca + x * sa) * 0.5
        rest = x - attended
        return (rest, attended) if self.decomposition == "cvpr" else (attended, rest)

    def extra_repr(self) -> str:
        return f"decomposition={self.decomposition}, channel_pooling={self.channel_pooling}"


class FlattenHead(nn.Module):
    """MTLFace's identity head: BN2d -> Dropout -> Flatten -> Linear(C*s*s, D) -> BN1d (Linear and BN1d in
    fp32 with autocast off, as every faceforge embedding head)."""

    def __init__(self, channels: int, spatial: int, embedding_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(channels * spatial * spatial, embedding_size)
        self.bn_out = nn.BatchNorm1d(embedding_size)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.dropout(self.bn(x)), 1)
        with no_autocast(x.device):
            return self.bn_out(self.fc(x.float()))


class AIFRNet(nn.Module):
    """An encoder with ``forward_levels`` / ``embed_map`` (IResNet, MobileFaceNet) plus AFD (module doc).

    State dict: ``encoder.*`` (the encoder's own names) and ``afd.*``.
    """

    feature_names = ("x_id", "x_age", "x1", "x2", "x3", "x4")
    #: run.init_partial from the plain recogniser of the same encoder: its weight names gain this prefix
    partial_init_prefix = "encoder."

    def __init__(
        self,
        encoder: IResNet | MobileFaceNet,
        name: str,
        decomposition: str = "cvpr",
        channel_pooling: str = "sum",
        reduction: int = 16,
    ) -> None:
        super().__init__()
        self.name = name
        self.encoder = encoder
        self.embedding_size = encoder.embedding_size
        self.input_size = encoder.input_size
        self.map_channels = int(encoder.map_channels)
        # IResNet / MobileFaceNet: stride 16 (7 px at 112); other encoders say theirs (dlib's ResNet: 2 px)
        self.map_size = int(getattr(encoder, "map_size", self.input_size // 16))
        level_sizes = getattr(encoder, "level_sizes", [self.input_size // 2 ** (i + 1) for i in range(4)])
        self.afd = AttentionDecomposition(
            self.map_channels, reduction, decomposition=decomposition, channel_pooling=channel_pooling
        )
        self.skip_channels = {
            "x_id": self.map_channels,
            "x_age": self.map_channels,
            **{f"x{i + 1}": int(c) for i, c in enumerate(encoder.level_channels)},
        }
        self.skip_sizes = {
            "x_id": self.map_size,
            "x_age": self.map_size,
            **{f"x{i + 1}": int(size) for i, size in enumerate(level_sizes)},
        }

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        if not hasattr(self.encoder, "set_gradient_checkpointing"):
            raise ValueError(f"{self.name}: gradient checkpointing needs an IResNet encoder")
        self.encoder.set_gradient_checkpointing(enabled)

    def decompose(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``(X_id, X_age, [x1, x2, x3, x4])`` of a preprocessed batch (caller's autocast)."""
        levels, fmap = self.encoder.forward_levels(x)
        x_id, x_age = self.afd(fmap)
        return x_id, x_age, levels

    def forward(self, x: Tensor, return_features: bool = False):
        check_backbone_input(self.name, x, self.input_size)
        x_id, x_age, levels = self.decompose(x)
        emb = self.encoder.embed_map(x_id)
        if not return_features:
            return emb
        features = {"x_id": x_id, "x_age": x_age, **{f"x{i + 1}": t for i, t in enumerate(levels)}}
        return emb, features

    def extra_repr(self) -> str:
        return f"name={self.name}, map={self.map_channels}x{self.map_size}x{self.map_size}"


def _iresnet_factory(name: str, build: Callable[..., IResNet]) -> Callable[..., AIFRNet]:
    def factory(
        embedding_size: int = 512,
        input_size: int = 112,
        dropout: float = 0.0,
        decomposition: str = "cvpr",
        channel_pooling: str = "sum",
    ) -> AIFRNet:
        encoder = build(embedding_size=embedding_size, input_size=input_size, dropout=dropout)
        return AIFRNet(encoder, name, decomposition, channel_pooling)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (
        f"{name}: AFD on {build.__name__}'s last stage, its own BN2d-Dropout-Flatten-Linear-BN1d head on X_id "
        "(see :class:`AIFRNet`; MTLFace's IR encoder)."
    )
    return factory


def aifr_mobilefacenet(
    embedding_size: int = 512,
    input_size: int = 112,
    dropout: float = 0.0,
    scale: int = 1,
    decomposition: str = "cvpr",
    channel_pooling: str = "sum",
    id_head: str = "gdc",
) -> AIFRNet:
    """AFD on MobileFaceNet's 512 x 7 x 7 conv_sep map (``scale=1``: the paper widths, 1.2M parameters without
    AFD). ``id_head``: ``gdc`` (MobileFaceNet's own head, default: an AIFR and a plain MobileFaceNet then differ
    only by AFD and the age losses) or ``flatten`` (MTLFace's BN2d-Dropout-Flatten-Linear-BN1d, 12.8M
    parameters in its Linear)."""
    from .mobilefacenet import mobilefacenet

    if id_head not in ("gdc", "flatten"):
        raise ValueError(f"aifr_mobilefacenet: id_head={id_head!r} must be 'gdc' or 'flatten'")
    encoder = mobilefacenet(
        embedding_size=embedding_size, input_size=input_size, dropout=dropout, scale=scale
    )
    if id_head == "flatten":
        encoder.features = FlattenHead(encoder.map_channels, input_size // 16, embedding_size, dropout)
    return AIFRNet(encoder, "aifr_mobilefacenet", decomposition, channel_pooling)


def _iresnets() -> dict[str, Callable[..., AIFRNet]]:
    from . import iresnet as ir

    return {
        f"aifr_{n}": _iresnet_factory(f"aifr_{n}", getattr(ir, n))
        for n in ("iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet_se50")
    }


_IR = _iresnets()
aifr_iresnet18 = _IR["aifr_iresnet18"]
aifr_iresnet34 = _IR["aifr_iresnet34"]
aifr_iresnet50 = _IR["aifr_iresnet50"]
aifr_iresnet100 = _IR["aifr_iresnet100"]
aifr_iresnet_se50 = _IR["aifr_iresnet_se50"]
