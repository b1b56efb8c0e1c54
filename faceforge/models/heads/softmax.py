"""Plain (un-normalised) softmax classifier head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceforge.core.precision import no_autocast

from .base import ClassifierHead, HeadOutput

__all__ = ["SoftmaxHead"]


class SoftmaxHead(ClassifierHead):
    """Linear classifier ``logits = x W^T + b`` with no normalisation, scale or margin.

    Computed in fp32 with autocast disabled. ``plain_logits`` is ``logits.detach()``. ``W`` is
    initialised N(0, 0.01) like the margin heads and ``b`` to zero (``bias=False`` drops it).
    """

    def __init__(self, embedding_size: int, num_classes: int, bias: bool = True) -> None:
        super().__init__(embedding_size, num_classes)
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None

    def forward(self, embeddings: Tensor, labels: Tensor) -> HeadOutput:
        self.check_inputs(embeddings, labels)
        with no_autocast(embeddings.device):
            bias = None if self.bias is None else self.bias.float()
            logits = F.linear(embeddings.float(), self.weight.float(), bias)
        return HeadOutput(logits=logits, plain_logits=logits.detach())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bias={self.bias is not None}"
