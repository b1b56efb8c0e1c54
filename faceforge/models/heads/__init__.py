"""Classification heads for face-recognition training, chosen by name.

>>> from faceforge.models.heads import build_head
>>> head = build_head("arcface", embedding_size=512, num_classes=85742)   # s=64, m=0.5
>>> out = head(embeddings, labels)          # HeadOutput
>>> loss = F.cross_entropy(out.logits, labels)
>>> acc = (out.plain_logits.argmax(1) == labels).float().mean()

Registered names: ``softmax``, ``normface``, ``cosface``, ``arcface``, ``curricularface``.
All margin heads share :class:`MarginHead` (``cosine`` / ``apply_margin`` / ``forward``); see
``base.py`` for the sharding contract of ``apply_margin``.
"""

from __future__ import annotations

from torch import nn

from faceforge.core.registry import Registry

from .base import ClassifierHead, HeadOutput, MarginHead
from .margin import ArcFace, CosFace, CurricularFace, NormFace, arc_target, shifted_cos
from .softmax import SoftmaxHead

HEADS: Registry[nn.Module] = Registry("head")

HEADS.register("softmax")(SoftmaxHead)
HEADS.register("normface")(NormFace)
HEADS.register("cosface")(CosFace)
HEADS.register("arcface")(ArcFace)
HEADS.register("curricularface")(CurricularFace)


def build_head(name: str, **kwargs) -> nn.Module:
    """Build a registered head: ``build_head("cosface", embedding_size=512, num_classes=10, margin=0.4)``.

    Raises KeyError listing the available names for an unknown ``name``.
    """
    return HEADS.build(name, **kwargs)


__all__ = [
    "HEADS",
    "ArcFace",
    "ClassifierHead",
    "CosFace",
    "CurricularFace",
    "HeadOutput",
    "MarginHead",
    "NormFace",
    "SoftmaxHead",
    "arc_target",
    "build_head",
    "shifted_cos",
]
