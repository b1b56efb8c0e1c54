"""Optimisers with the usual face-recognition parameter groups.

Weight decay is not applied to normalisation layers (BatchNorm, PReLU slopes) or biases when
``no_decay_bn_bias`` is set (faceforge's rule); the classifier weight is decayed. ``no_decay_names`` replaces that
rule by TFace's (``separate_resnet_bn_paras``): no decay for the parameters whose qualified name contains one of
the strings (TFace: ``["bn"]``), decay for every other, PReLU slopes and biases included.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

_NO_DECAY_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.PReLU)


def parameter_groups(
    modules: Iterable[nn.Module],
    weight_decay: float,
    no_decay_bn_bias: bool,
    exclude: set[int] | None = None,
    no_decay_names: Sequence[str] | None = None,
) -> list[dict]:
    """Decay and no-decay groups over the trainable parameters of ``modules`` (ids in ``exclude`` left out)."""
    decay, no_decay, seen = [], [], set(exclude or ())
    for module in modules:
        for sub_name, sub in module.named_modules():
            for name, p in sub.named_parameters(recurse=False):
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                if no_decay_names is not None:
                    full = f"{sub_name}.{name}" if sub_name else name
                    skip = any(key in full for key in no_decay_names)
                else:
                    skip = no_decay_bn_bias and (
                        isinstance(sub, _NO_DECAY_TYPES) or name == "bias" or p.ndim <= 1
                    )
                (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}] if decay or not no_decay else []
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


OPTIMIZERS = ("sgd", "adamw", "adam")


def build_optimizer(
    modules: Iterable[nn.Module], cfg, exclude: set[int] | None = None, extra_groups: list[dict] | None = None
) -> torch.optim.Optimizer:
    """``cfg.name``: ``sgd`` (momentum, nesterov), ``adamw`` (decoupled weight decay) or ``adam`` (weight decay
    as an L2 term in the gradient, as the MTLFace and SDD-FIQA reference code use it). ``extra_groups`` are
    appended as they are (parameter groups with settings of their own)."""
    names = getattr(cfg, "no_decay_names", None)
    groups = parameter_groups(
        modules, cfg.weight_decay, cfg.no_decay_bn_bias, exclude, None if names is None else list(names)
    ) + list(extra_groups or [])
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    raise ValueError(f"unknown optimiser '{cfg.name}' (use one of {list(OPTIMIZERS)})")
