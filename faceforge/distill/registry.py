"""The name -> class registry of distillation losses (``@DISTILL_LOSSES.register("name")`` on a class)."""

from __future__ import annotations

from torch import nn

from faceforge.core.registry import Registry

__all__ = ["DISTILL_LOSSES"]

DISTILL_LOSSES: Registry[nn.Module] = Registry("distillation loss")
