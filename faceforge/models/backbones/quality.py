"""Quality-regression backbones: a recognition encoder whose embedding head is replaced by a one-number head.

SDD-FIQA (Ou et al., CVPR 2021; TFace ``quality/.../model.py`` and ``model_mobilefaceNet.py``, the ``Qua`` mode)
regresses a face's quality pseudo-label with a recognition network whose output layer is swapped for::

    quality(x) = Linear_{C*S*S -> 1}( Dropout_p( PReLU_{C*S*S}( Flatten(F(x)) ) ) )

where ``F(x)`` is the encoder's last ``[N, C, S, S]`` feature map (``C = 512``, ``S = 7`` at 112 px) and the
PReLU has one slope per flattened element (``C*S*S`` = 25,088 slopes, initial 0.25), ``p = 0.5``.

The encoders are faceforge's own classes (not copies): :class:`QualityMobileFaceNet` is a
:class:`~faceforge.models.backbones.mobilefacenet.MobileFaceNet` and :class:`QualityIResNet` an
:class:`~faceforge.models.backbones.iresnet.IResNet` without their embedding heads (MobileFaceNet's GDC; IResNet's
dropout, ``fc`` and ``features`` BatchNorm1d), with ``forward_features`` feeding :class:`QualityHead` (module name
``quality``). The encoder's parameter names are those of the recognition backbone, so a recognition checkpoint
initialises it with ``run.init=CKPT run.init_partial=true`` (the encoder's weights are copied, the ``quality`` head
starts fresh, the recognition head is left out). The feature maps are what TFace's ``Qua`` head reads: MobileFaceNet
after ``conv_6_sep`` (faceforge's ``conv_sep``); IResNet after the last residual stage, here followed by faceforge's
(arcface_torch's) final BatchNorm2d ``bn2``, which TFace's IR-50 does not have in front of its head (its weights come
from the recognition checkpoint too).

The output is an ``[N, 1]`` tensor treated everywhere as a one-dimensional "embedding" (``embedding_size = 1``), so
a quality model is an ordinary faceforge checkpoint: ``faceforge quality --model``, the ``model=`` quality source,
``faceforge export-onnx`` and the ONNX embedder take it unchanged. :attr:`predicts` says what the number is; the
trainer writes it to the checkpoint metadata (``meta.predicts``).

Initialisation of the new head: PyTorch's defaults (``Linear``: weights and bias uniform in
``+-1/sqrt(fan_in)``; ``PReLU``: 0.25). TFace's MobileFaceNet never calls its Kaiming initialiser, so these are the
reference's values too; its IR-50 draws the Linear from Kaiming-normal with fan_out = 1 (std 1.41, outputs in the
hundreds at the start), which is not reproduced. The head runs in fp32 with autocast disabled, like the embedding
layers of the recognition backbones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from faceforge.core.precision import no_autocast

from .iresnet import IResNet, check_backbone_input
from .mobilefacenet import MobileFaceNet

__all__ = [
    "QUALITY_PREDICTS",
    "QualityHead",
    "QualityIResNet",
    "QualityMobileFaceNet",
    "sddfiqa_iresnet18",
    "sddfiqa_iresnet50",
    "sddfiqa_iresnet100",
    "sddfiqa_mobilefacenet",
]

#: what the quality backbones' single output is (recorded in checkpoint metadata as ``meta.predicts``)
QUALITY_PREDICTS = (
    "face image quality: one score per face, higher = better, on the scale of the training labels "
    "(SDD-FIQA pseudo-labels: 0-100)"
)


def _check_one_output(name: str, embedding_size: int, dropout: float) -> None:
    if embedding_size != 1:
        raise ValueError(
            f"{name} predicts one quality number per face: embedding_size must be 1, got {embedding_size} "
            "(set model.embedding_size=1, or use a recognition backbone for embeddings)"
        )
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout!r}")


class QualityHead(nn.Module):
    """``Flatten -> PReLU(C*S*S) -> Dropout(p) -> Linear(C*S*S, 1)`` on an ``[N, C, S, S]`` map (fp32)."""

    def __init__(self, channels: int = 512, spatial: int = 7, dropout: float = 0.5) -> None:
        super().__init__()
        width = channels * spatial * spatial
        self.prelu = nn.PReLU(width)
        self.dropout = nn.Dropout(p=dropout)
        self.linear = nn.Linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(x, 1)
        with no_autocast(x.device):
            return self.linear(self.dropout(self.prelu(x.float())))


class QualityMobileFaceNet(MobileFaceNet):
    """MobileFaceNet's encoder (``layers``, ``conv_sep``) + :class:`QualityHead`: ``[N, 3, 112, 112] -> [N, 1]``.

    Args as :class:`MobileFaceNet` (``scale=1``: the MobileFaceNet paper's and TFace's widths; 2: arcface_torch's
    ``mbf``); ``embedding_size`` must be 1; ``dropout`` is the head's (TFace: 0.5).
    """

    predicts = QUALITY_PREDICTS

    def __init__(
        self,
        embedding_size: int = 1,
        input_size: int = 112,
        dropout: float = 0.5,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 2,
    ) -> None:
        _check_one_output("sddfiqa_mobilefacenet", embedding_size, dropout)
        super().__init__(embedding_size=512, input_size=input_size, dropout=0.0, blocks=blocks, scale=scale)
        del self.features  # the recognition head (GDC); its weights are not part of this network
        self.quality = QualityHead(512, input_size // 16, dropout)
        self.embedding_size = 1

    @property
    def dropout(self) -> nn.Dropout:
        return self.quality.dropout

    def forward(self, x: Tensor) -> Tensor:
        check_backbone_input("sddfiqa_mobilefacenet", x, self.input_size)
        return self.quality(self.forward_features(x))

    def extra_repr(self) -> str:
        return f"blocks={list(self.blocks)}, scale={self.scale}, output=quality [N, 1]"


class QualityIResNet(IResNet):
    """IResNet's encoder (stem, four stages, ``bn2``) + :class:`QualityHead`: ``[N, 3, 112, 112] -> [N, 1]``."""

    predicts = QUALITY_PREDICTS

    def __init__(
        self,
        layers: Sequence[int],
        embedding_size: int = 1,
        input_size: int = 112,
        dropout: float = 0.5,
        name: str = "sddfiqa_iresnet",
    ) -> None:
        _check_one_output(name, embedding_size, dropout)
        super().__init__(layers, embedding_size=512, input_size=input_size, dropout=0.0, name=name)
        del self.dropout, self.fc, self.features  # the recognition head
        self.quality = QualityHead(self.stage_channels[-1], input_size // 16, dropout)
        self.embedding_size = 1

    def forward(self, x: Tensor) -> Tensor:
        check_backbone_input(self.name, x, self.input_size)
        return self.quality(self.forward_features(x))

    def extra_repr(self) -> str:
        return f"layers={list(self.layers_per_stage)}, output=quality [N, 1]"


def sddfiqa_mobilefacenet(
    embedding_size: int = 1, input_size: int = 112, dropout: float = 0.5, scale: int = 2
) -> QualityMobileFaceNet:
    """SDD-FIQA's quality network on MobileFaceNet (blocks (1, 4, 6, 2); ``scale`` as ``mobilefacenet``)."""
    if scale not in (1, 2, 4):
        raise ValueError(f"sddfiqa_mobilefacenet scale must be 1, 2 or 4, got {scale}")
    return QualityMobileFaceNet(embedding_size, input_size, dropout, scale=scale)


def _iresnet(name: str, layers: tuple[int, int, int, int]):
    def factory(embedding_size: int = 1, input_size: int = 112, dropout: float = 0.5) -> QualityIResNet:
        return QualityIResNet(layers, embedding_size, input_size, dropout, name=name)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"{name}: SDD-FIQA's quality network on IResNet stage depths {list(layers)}."
    return factory


sddfiqa_iresnet18 = _iresnet("sddfiqa_iresnet18", (2, 2, 2, 2))
sddfiqa_iresnet50 = _iresnet("sddfiqa_iresnet50", (3, 4, 14, 3))
sddfiqa_iresnet100 = _iresnet("sddfiqa_iresnet100", (3, 13, 30, 3))
