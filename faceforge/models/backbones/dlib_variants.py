"""dlib's ResNet as the encoder of the other faceforge networks: MTLFace's age-invariant model and SDD-FIQA's
quality regressor (each initialised from an imported dlib checkpoint with ``run.init=dlib.pt run.init_partial=true``).

* ``aifr_dlib_resnet``: :class:`~faceforge.models.backbones.aifr.AIFRNet` around
  :class:`~faceforge.models.backbones.dlib_resnet.DlibResNet`: the attention-based feature decomposition on dlib's
  last feature map (256 x 2 x 2 for its 150 px chip, where MTLFace's IR-50 has 512 x 7 x 7: the spatial attention
  has four positions to weigh) and dlib's own head (global average pool -> fc) on ``X_id``. A reconstruction
  choice, recorded here: MTLFace decomposes the last map of its encoder, and this is dlib's.
* ``sddfiqa_dlib_resnet``: dlib's encoder with SDD-FIQA's quality head (Flatten -> PReLU -> Dropout -> Linear) on
  the same 256 x 2 x 2 map in place of its fc.
"""

from __future__ import annotations

from torch import Tensor

from .aifr import AIFRNet
from .dlib_resnet import DlibResNet
from .quality import QUALITY_PREDICTS, QualityHead, _check_one_output

__all__ = ["QualityDlibResNet", "aifr_dlib_resnet", "sddfiqa_dlib_resnet"]


def aifr_dlib_resnet(
    input: str = "arcface112",
    embedding_size: int = 128,
    dropout: float = 0.0,
    decomposition: str = "cvpr",
    channel_pooling: str = "sum",
) -> AIFRNet:
    """MTLFace's AFD on dlib's ResNet (module doc); ``input`` as :class:`DlibResNet`."""
    encoder = DlibResNet(input=input, embedding_size=embedding_size, dropout=dropout)
    net = AIFRNet(encoder, "aifr_dlib_resnet", decomposition, channel_pooling)
    net.preprocess_meta = encoder.preprocess_meta  # type: ignore[attr-defined]
    return net


class QualityDlibResNet(DlibResNet):
    """dlib's encoder + :class:`QualityHead` on its 256 x 2 x 2 map: ``[N, 3, S, S] -> [N, 1]``."""

    predicts = QUALITY_PREDICTS

    def __init__(self, input: str = "arcface112", embedding_size: int = 1, dropout: float = 0.5) -> None:
        _check_one_output("sddfiqa_dlib_resnet", embedding_size, dropout)
        super().__init__(input=input, embedding_size=128)
        del self.fc  # the recognition head; its weights are not part of this network
        self.quality = QualityHead(self.map_channels, self.map_size, dropout)
        self.embedding_size = 1

    def forward(self, x: Tensor) -> Tensor:
        return self.quality(self.forward_features(x))


def sddfiqa_dlib_resnet(
    input: str = "arcface112", embedding_size: int = 1, dropout: float = 0.5
) -> QualityDlibResNet:
    """SDD-FIQA's quality network on dlib's ResNet (module doc)."""
    return QualityDlibResNet(input, embedding_size, dropout)
