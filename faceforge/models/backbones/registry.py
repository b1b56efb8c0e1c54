"""The backbone registry (name -> constructor). It imports no backbone: the package (:mod:`faceforge.models.backbones`)
registers every built-in one, so a backbone that builds others by name (``dual_bn``) looks them up here without
importing the package that imports it."""

from __future__ import annotations

from torch import nn

from faceforge.core.registry import Registry

BACKBONES: Registry[nn.Module] = Registry("backbone")
