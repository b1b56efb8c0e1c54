"""Building a run's parts from its config: backbone, objectives, method, sampler, optimisers and schedules.

Objectives come from ``objectives:`` (instance name -> ``{type, weight, options...}``; ``type`` defaults to the
name; ``null`` removes one a packaged config added), the method from ``method:`` (``{name, options...}``); both are
looked up in their registries (:data:`faceforge.objectives.OBJECTIVES`, :data:`faceforge.engine.method.METHODS`),
so a new one needs no edit here. What the objectives declare (:class:`faceforge.objectives.Needs`) is checked
against the data before anything trains.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from faceforge.core.schema import to_dict
from faceforge.engine.method import METHODS, Method, MethodContext, OptimizerSpec
from faceforge.engine.optim import build_optimizer, parameter_groups
from faceforge.engine.schedule import ScheduleSpec
from faceforge.models.backbones import build_backbone
from faceforge.objectives import OBJECTIVES, Objective, ObjectiveContext

__all__ = [
    "build_method",
    "build_objectives",
    "import_plugins",
    "method_spec",
    "objective_specs",
    "schedule_spec",
]


def import_plugins(modules: Iterable[str]) -> None:
    """Import the modules named in ``run.plugins`` so their objectives / methods / backbones register."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ValueError(
                f"run.plugins: cannot import {name!r} ({exc}); give an importable module name (on PYTHONPATH)"
            ) from None


def objective_specs(objectives_cfg: Any) -> list[tuple[str, str, float, dict[str, Any]]]:
    """``(instance name, type, weight, options)`` of every configured objective, in config order."""
    specs = []
    raw = to_dict(objectives_cfg) if not isinstance(objectives_cfg, dict) else objectives_cfg
    for name, spec in (raw or {}).items():
        if spec is None:
            continue
        spec = dict(spec)
        kind = str(spec.pop("type", name))
        weight = float(spec.pop("weight", 1.0))
        specs.append((str(name), kind, weight, spec))
    return specs


def method_spec(method_cfg: Any) -> tuple[str, dict[str, Any]]:
    raw = dict(to_dict(method_cfg) if not isinstance(method_cfg, dict) else method_cfg)
    return str(raw.pop("name", "standard")), raw


def build_backbone_from(cfg: Any, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    kwargs = {k: v for k, v in to_dict(cfg.model).items() if k != "name"}
    backbone = build_backbone(cfg.model.name, **kwargs).to(device)
    if cfg.run.channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    if cfg.run.gradient_checkpointing:
        if not hasattr(backbone, "set_gradient_checkpointing"):
            raise ValueError(
                f"run.gradient_checkpointing=true is not supported by model {cfg.model.name}; "
                "use an IResNet backbone or set run.gradient_checkpointing=false"
            )
        backbone.set_gradient_checkpointing(True)
    return backbone, {"name": cfg.model.name, "kwargs": kwargs}


def build_objectives(
    specs: Sequence[tuple[str, str, float, dict[str, Any]]],
    ctx: ObjectiveContext,
    attribute_names: Sequence[str],
) -> tuple[nn.ModuleDict, dict[str, float]]:
    """Build every objective and check what they declare against the data (see the module doc)."""
    objectives, weights = nn.ModuleDict(), {}
    for name, kind, weight, options in specs:
        cls = OBJECTIVES.get(kind)
        obj: Objective = cls(ctx, **options)
        obj.name = name
        needs = cls.needs
        if needs.identity and not needs.unlabelled_rows and bool((np.asarray(ctx.labels) < 0).any()):
            raise ValueError(
                f"objective {name} ({kind}) needs an identity on every training row: remove the data.sources "
                "without identities, or drop the objective"
            )
        missing = [a for a in needs.attributes if a not in attribute_names]
        if missing:
            raise ValueError(
                f"objective {name} ({kind}) needs the attribute(s) {missing}, which no source gives (have "
                f"{list(attribute_names)}): set data.attributes=FILE.csv or data.labeller=NAME (and the same in "
                "data.sources)"
            )
        objectives[name] = obj
        weights[name] = weight
    for role in ("sampler", "extra_branch"):
        owners = [n for n, o in objectives.items() if getattr(o.needs, role)]
        if len(owners) > 1:
            raise ValueError(
                f"objectives {owners} each bring their own {role.replace('_', ' ')}; a run takes one"
            )
    return objectives, weights


def needed_features(objectives: nn.ModuleDict, backbone: nn.Module, model_name: str) -> list[str]:
    """The backbone feature outputs the objectives declare; stops when the backbone does not give them."""
    names = sorted({f for o in objectives.values() for f in o.needs.features})
    have = list(getattr(backbone, "feature_names", ()))
    missing = [f for f in names if f not in have]
    if missing:
        raise ValueError(
            f"objectives need the backbone's feature outputs {missing}, but model {model_name} gives "
            f"{have or 'none'}: choose a backbone that returns them (forward(x, return_features=True))"
        )
    return names


def build_method(cfg: Any, ctx: MethodContext) -> Method:
    name, options = method_spec(cfg.method)
    return METHODS.get(name)(ctx, **options)


def schedule_spec(optim: Any, steps_per_epoch: int, total_steps: int) -> ScheduleSpec:
    return ScheduleSpec(
        base_lr=float(optim.lr),
        total_steps=total_steps,
        warmup_steps=round(float(optim.warmup_epochs) * steps_per_epoch),
        warmup_start_factor=float(optim.warmup_start_factor),
        decay=str(optim.schedule),
        power=float(optim.power),
        milestones=[round(m * steps_per_epoch) for m in optim.milestones],
        gamma=float(optim.gamma),
        min_lr=float(optim.min_lr),
    )


def build_optimizers(
    cfg: Any, main_modules: list[nn.Module], method: Method, steps_per_epoch: int, total_steps: int
) -> tuple[dict[str, torch.optim.Optimizer], dict[str, ScheduleSpec], dict[str, float]]:
    """The main optimiser (``optim``) over ``main_modules`` minus what the method's own optimisers take, and
    the method's optimisers (``optim`` with their settings on top), with their schedules and clip norms."""
    own: dict[str, OptimizerSpec] = method.optimizers()
    if "main" in own:
        raise ValueError(
            f"{type(method).__name__}.optimizers(): 'main' is the run's optimiser; pick another name"
        )
    taken = {id(p) for spec in own.values() for m in spec.modules for p in m.parameters()}
    optimizers, schedules, clip = {}, {}, {}
    # objectives whose parameters take other settings (e.g. no weight decay) get parameter groups of their own
    special: list[dict[str, Any]] = []
    for m in main_modules:
        for obj in m.modules():
            settings = obj.optimizer_settings() if isinstance(obj, Objective) else {}
            if not settings:
                continue
            wd = float(settings.get("weight_decay", cfg.optim.weight_decay))
            names = cfg.optim.no_decay_names
            groups = parameter_groups(
                [obj], wd, bool(cfg.optim.no_decay_bn_bias), taken, None if names is None else list(names)
            )
            special += [{**g, **{k: v for k, v in settings.items() if k != "weight_decay"}} for g in groups]
            taken = taken | {id(p) for g in groups for p in g["params"]}
    if special or any(p.requires_grad and id(p) not in taken for m in main_modules for p in m.parameters()):
        optimizers["main"] = build_optimizer(main_modules, cfg.optim, exclude=taken, extra_groups=special)
        schedules["main"] = schedule_spec(cfg.optim, steps_per_epoch, total_steps)
        clip["main"] = float(cfg.optim.grad_clip)
    for name, spec in own.items():
        settings = OmegaConf.merge(cfg.optim, OmegaConf.create(dict(spec.settings)))
        optimizers[name] = build_optimizer(list(spec.modules), settings)
        schedules[name] = schedule_spec(settings, steps_per_epoch, total_steps)
        clip[name] = float(settings.grad_clip)
    if not optimizers:
        raise ValueError("nothing to train: the backbone is frozen and no objective or method has parameters")
    return optimizers, schedules, clip
