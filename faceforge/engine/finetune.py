"""The fine-tuning options of a run (config section ``finetune``): what of the backbone trains, and how fast.

Fine-tuning is ``run.init`` plus these options, never a second trainer; each is also valid without run.init.

* ``freeze: [PATTERN, ...]``: backbone parameters whose names match an ``fnmatch`` pattern (``conv1.*``,
  ``layer1.*``, ``*`` for all) get ``requires_grad=False`` and are left out of the optimiser, so they stay
  bit-identical. A BatchNorm layer whose parameters are all frozen is also kept in eval mode, so its running
  statistics stay too and the frozen layer computes exactly what it did. A pattern that matches no parameter
  stops the run (a typo would otherwise freeze nothing).
* ``freeze_bn``: ``stats`` keeps every BatchNorm layer of the backbone in eval mode during training (it
  normalises with the loaded running statistics, which do not move: what small batches of new people would
  otherwise overwrite); ``all`` also freezes their affine weight and bias.
* ``backbone_lr_mult``: the backbone's parameters get their own parameter groups (``{"backbone": True,
  "lr_mult": m}``; weight decay grouped as everywhere) whose learning rate is ``m x`` the schedule's.
* ``head_only_epochs``: for the first ``round(E_h * steps_per_epoch)`` steps the whole backbone is frozen and in
  eval mode (no backward through it, so these steps are cheap) and only the head and the other objectives'
  parameters learn: the new head settles before its gradients reach the pretrained weights.
* ``backbone_warmup_epochs``: after that, the backbone's rate ramps linearly from 0 over ``W`` steps.

Backbone learning rate at optimiser step ``t`` (0-based), with ``lr(t)`` the run's schedule
(:func:`faceforge.engine.schedule.learning_rate`), ``H`` head-only steps and ``W`` ramp steps::

    lr_backbone(t) = 0                                        t < H   (frozen: no gradient, no update)
                   = lr(t) * m * min(1, (t - H + 1) / W)      t >= H  (W = 0: the factor is 1)

Every decision is a pure function of the step, re-applied before each step (:meth:`FineTuning.before_step`),
so ``run.resume`` continues exactly; the options themselves are resume keys
(:data:`faceforge.engine.state.RESUME_KEYS`). :meth:`FineTuning.describe` goes to ``meta.finetune`` of every
checkpoint and to ``report.json``.
"""

from __future__ import annotations

import fnmatch
import logging
from typing import Any

from torch import nn

__all__ = ["BN_FREEZE", "FineTuning", "matching_parameters"]

log = logging.getLogger(__name__)

#: ``finetune.freeze_bn`` -> (running statistics fixed, affine parameters frozen)
BN_FREEZE: dict[str, tuple[bool, bool]] = {
    "none": (False, False),
    "stats": (True, False),
    "all": (True, True),
}

_BN = nn.modules.batchnorm._BatchNorm


def matching_parameters(backbone: nn.Module, patterns: list[str]) -> list[str]:
    """Names of the backbone's parameters that match any of ``patterns`` (fnmatch); a pattern matching none
    stops with one line naming it and some of the names."""
    names = [n for n, _ in backbone.named_parameters()]
    matched: list[str] = []
    for pattern in patterns:
        hits = fnmatch.filter(names, pattern)
        if not hits:
            tops = sorted({n.split(".")[0] for n in names})
            raise ValueError(
                f"finetune.freeze: pattern {pattern!r} matches no parameter of the backbone; its names look like "
                f"{names[0]!r}, under {tops[:12]}{' ...' if len(tops) > 12 else ''} (fnmatch patterns, e.g. "
                f"'{tops[0]}.*')"
            )
        matched += [n for n in hits if n not in matched]
    return matched


class FineTuning:
    """The ``finetune`` options applied to one run's backbone (see the module doc)."""

    def __init__(self, cfg: Any, backbone: nn.Module, steps_per_epoch: int, trains_backbone: bool) -> None:
        f = cfg.finetune
        self.backbone = backbone
        self.options = {
            "head_init": str(f.head_init),
            "head_row_norm": None if f.get("head_row_norm") is None else float(f.head_row_norm),
            "backbone_lr_mult": float(f.backbone_lr_mult),
            "freeze": list(f.freeze),
            "freeze_bn": str(f.freeze_bn),
            "head_only_epochs": float(f.head_only_epochs),
            "backbone_warmup_epochs": float(f.backbone_warmup_epochs),
        }
        self.lr_mult = float(f.backbone_lr_mult)
        self.head_only_steps = round(float(f.head_only_epochs) * steps_per_epoch)
        self.ramp_steps = round(float(f.backbone_warmup_epochs) * steps_per_epoch)
        params = dict(backbone.named_parameters())
        self.frozen = matching_parameters(backbone, list(f.freeze)) if trains_backbone else []
        stats, affine = BN_FREEZE[str(f.freeze_bn)]
        bns = {name: m for name, m in backbone.named_modules() if isinstance(m, _BN)}
        if affine:
            self.frozen += [
                f"{name}.{p}" for name, m in bns.items() for p, _ in m.named_parameters(recurse=False)
                if f"{name}.{p}" not in self.frozen
            ]  # fmt: skip
        for name in self.frozen:
            params[name].requires_grad_(False)
        frozen = set(self.frozen)
        # BN layers in eval mode: all of them (freeze_bn), or those whose parameters are all frozen
        self.bn_eval = [
            m
            for name, m in bns.items()
            if stats
            or (m.affine and all(f"{name}.{p}" in frozen for p, _ in m.named_parameters(recurse=False)))
        ]
        #: the backbone parameters the optimiser trains (the head-only phase switches them off and on)
        self.trainable = [p for p in backbone.parameters() if p.requires_grad] if trains_backbone else []
        if self.frozen or self.bn_eval:
            log.info(
                "finetune: %d backbone tensors frozen (%d parameters), %d BatchNorm layers with fixed statistics",
                len(self.frozen),
                sum(params[n].numel() for n in self.frozen),
                len(self.bn_eval),
            )

    # ------------------------------------------------------------------------------------------ optimiser
    @property
    def own_groups(self) -> bool:
        """Whether the backbone needs parameter groups of its own (a multiplier or a ramp); without them the
        optimiser's groups are exactly those of a run without fine-tuning options."""
        return bool(self.trainable) and (self.lr_mult != 1.0 or self.ramp_steps > 0)

    def group_settings(self) -> list[tuple[nn.Module, dict[str, Any]]]:
        """``(module, settings)`` whose parameters get groups of their own in the main optimiser."""
        return [(self.backbone, {"backbone": True, "lr_mult": self.lr_mult})] if self.own_groups else []

    def lr_factor(self, group: dict[str, Any], step: int) -> float:
        """The factor on the schedule's rate of one parameter group at ``step`` (1 for every non-backbone group)."""
        if not group.get("backbone"):
            return 1.0
        if step < self.head_only_steps:
            return 0.0
        ramp = min(1.0, (step - self.head_only_steps + 1) / self.ramp_steps) if self.ramp_steps > 0 else 1.0
        return self.lr_mult * ramp

    # ------------------------------------------------------------------------------------------- each step
    def backbone_trains(self, step: int) -> bool:
        return bool(self.trainable) and step >= self.head_only_steps

    def before_step(self, step: int) -> bool:
        """Set what trains at ``step`` (after the trainer put the backbone in train mode); returns whether the
        backbone trains at all this step (False: frozen and in eval mode, no backward through it)."""
        trains = self.backbone_trains(step)
        for p in self.trainable:
            p.requires_grad_(trains)
        if not trains and self.trainable:
            self.backbone.eval()
        for m in self.bn_eval:
            m.eval()
        return trains

    def logs(self, lr: float, step: int) -> dict[str, float]:
        """``lr_backbone`` for the training log, when it differs from the run's rate at some step."""
        if not (self.own_groups or (self.trainable and self.head_only_steps)):
            return {}
        return {"lr_backbone": lr * self.lr_factor({"backbone": True}, step)}

    def describe(self) -> dict[str, Any]:
        params = dict(self.backbone.named_parameters())
        return {
            **self.options,
            "frozen_tensors": len(self.frozen),
            "frozen_parameters": sum(params[n].numel() for n in self.frozen),
            "frozen_names": self.frozen[:50]
            + ([f"... {len(self.frozen) - 50} more"] if len(self.frozen) > 50 else []),
            "bn_layers_fixed_statistics": len(self.bn_eval),
            "trainable_backbone_parameters": sum(p.numel() for p in self.trainable),
            "head_only_steps": self.head_only_steps,
            "backbone_warmup_steps": self.ramp_steps,
            "backbone_lr_rule": "lr(t) * backbone_lr_mult * min(1, (t - head_only_steps + 1) / backbone_warmup_steps)"
            " from step head_only_steps on; 0 before",
        }
