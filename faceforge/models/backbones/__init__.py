"""Face-embedding backbones, chosen by name.

>>> from faceforge.models.backbones import build_backbone
>>> net = build_backbone("iresnet50", embedding_size=512)   # [N,3,112,112] in [-1,1] -> [N,512]

Every backbone accepts ``embedding_size`` (default 512), ``input_size`` (only 112) and
``dropout`` (default 0.0), exposes ``.embedding_size`` and ``.input_size``, and returns an
un-normalised fp32 embedding (its final Linear + BatchNorm1d run in fp32 even under autocast).
``dual_bn`` (:mod:`.dual_bn`) wraps any other one (``base``) with dual batch norm for adversarial training (AFA).
The ``sddfiqa_*`` backbones (:mod:`.quality`) are quality regressors: ``embedding_size`` 1, output ``[N, 1]``.
A backbone whose input is not faceforge's default (RGB, ``(x/255 - 0.5)/0.5``) declares it as ``preprocess_meta``,
a dict of :class:`faceforge.data.preprocess.Preprocess` fields; training uses it (``faceforge.engine.init_source``).
"""

from __future__ import annotations

from torch import nn

from .aifr import (
    AIFRNet,
    AttentionDecomposition,
    aifr_iresnet18,
    aifr_iresnet34,
    aifr_iresnet50,
    aifr_iresnet100,
    aifr_iresnet_se50,
    aifr_mobilefacenet,
)
from .dlib_resnet import DlibResNet, dlib_resnet
from .dlib_variants import aifr_dlib_resnet, sddfiqa_dlib_resnet
from .dual_bn import DualBNNet, dual_bn
from .iresnet import (
    IBasicBlock,
    IResNet,
    iresnet18,
    iresnet34,
    iresnet50,
    iresnet100,
    iresnet200,
    iresnet_se50,
    iresnet_se100,
)
from .mobilefacenet import MobileFaceNet, mobilefacenet
from .onnx_graph import OnnxGraphNet, onnx_graph
from .quality import (
    QualityIResNet,
    QualityMobileFaceNet,
    sddfiqa_iresnet18,
    sddfiqa_iresnet50,
    sddfiqa_iresnet100,
    sddfiqa_mobilefacenet,
)
from .registry import BACKBONES

BACKBONES.register("mobilefacenet")(mobilefacenet)
BACKBONES.register("iresnet18")(iresnet18)
BACKBONES.register("iresnet34")(iresnet34)
BACKBONES.register("iresnet50")(iresnet50)
BACKBONES.register("iresnet100")(iresnet100)
BACKBONES.register("iresnet200")(iresnet200)
BACKBONES.register("iresnet_se50")(iresnet_se50)
BACKBONES.register("iresnet_se100")(iresnet_se100)
# dlib's face-recognition ResNet (faceforge import dlib reads its weights from the .dat file)
BACKBONES.register("dlib_resnet")(dlib_resnet)
BACKBONES.register("aifr_dlib_resnet")(aifr_dlib_resnet)
BACKBONES.register("sddfiqa_dlib_resnet")(sddfiqa_dlib_resnet)
# quality regressors (SDD-FIQA): a recognition encoder with a one-number head, output [N, 1]
BACKBONES.register("sddfiqa_mobilefacenet")(sddfiqa_mobilefacenet)
BACKBONES.register("sddfiqa_iresnet18")(sddfiqa_iresnet18)
BACKBONES.register("sddfiqa_iresnet50")(sddfiqa_iresnet50)
BACKBONES.register("sddfiqa_iresnet100")(sddfiqa_iresnet100)
# age-invariant (MTLFace AFD) versions: forward(x, return_features=True) also gives x_id, x_age, x1..x4
BACKBONES.register("aifr_mobilefacenet")(aifr_mobilefacenet)
BACKBONES.register("aifr_iresnet18")(aifr_iresnet18)
BACKBONES.register("aifr_iresnet34")(aifr_iresnet34)
BACKBONES.register("aifr_iresnet50")(aifr_iresnet50)
BACKBONES.register("aifr_iresnet100")(aifr_iresnet100)
BACKBONES.register("aifr_iresnet_se50")(aifr_iresnet_se50)
# an imported ONNX recognition graph (faceforge import onnx): its program travels as the JSON kwarg 'graph'
BACKBONES.register("onnx_graph")(onnx_graph)
# any of the above with dual batch norm mixed by a predicted per-input weight (AFA): model.base names it
BACKBONES.register("dual_bn")(dual_bn)


def build_backbone(name: str, **kwargs) -> nn.Module:
    """Build a registered backbone; raises KeyError listing the available names for an unknown one."""
    return BACKBONES.build(name, **kwargs)


__all__ = [
    "BACKBONES",
    "AIFRNet",
    "AttentionDecomposition",
    "DlibResNet",
    "DualBNNet",
    "IBasicBlock",
    "IResNet",
    "MobileFaceNet",
    "OnnxGraphNet",
    "QualityIResNet",
    "QualityMobileFaceNet",
    "build_backbone",
]
