"""Training configuration: YAML groups composed with Hydra, validated against a typed schema.

An experiment file lists its groups in a ``defaults`` list (``model``, ``head``, ``data``, ``optim``), each a
YAML file under ``faceforge/configs/<group>/``; command-line overrides (``optim.lr=0.05``,
``model=iresnet50``) are applied by Hydra's compose API. The result is merged into the :class:`TrainConfig`
schema, so an unknown key or a wrong type stops with a message naming the key. ``model`` and ``head``
take the keyword arguments of the registered constructor chosen by their ``name``, checked against its
signature.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from faceforge.core.schema import TrainConfig, to_dict

PACKAGE_CONFIGS = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and the fix."""


def _resolve_config_path(config: str) -> tuple[Path, str]:
    """A YAML path, or the name of a packaged experiment (``faceforge/configs/<name>.yaml``)."""
    p = Path(config)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        return p.resolve().parent, p.stem
    packaged = PACKAGE_CONFIGS / f"{config}.yaml"
    if packaged.is_file():
        return PACKAGE_CONFIGS, config
    names = sorted(f.stem for f in PACKAGE_CONFIGS.glob("*.yaml"))
    raise ConfigError(f"no config '{config}': give a .yaml path or one of the packaged configs {names}")


GROUPS = ("model", "head", "data", "optim", "method")


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """Group choices (``model=iresnet50``) go to Hydra; key overrides (``optim.lr=0.05``) are applied after
    the schema merge, so every schema key can be overridden whether or not the YAML files mention it."""
    groups, keys = [], []
    for ov in overrides:
        key, sep, _ = ov.partition("=")
        if not sep:
            raise ConfigError(f"override {ov!r} is not key=value")
        (groups if key.lstrip("+~") in GROUPS else keys).append(ov)
    return groups, keys


def compose_config(config: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose ``config`` with ``overrides`` and validate it; returns a read-only DictConfig."""
    config_dir, name = _resolve_config_path(config)
    group_overrides, key_overrides = split_overrides(list(overrides or []))
    hydra_overrides = [f"hydra.searchpath=[file://{PACKAGE_CONFIGS}]", *group_overrides]
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            raw = compose(config_name=name, overrides=hydra_overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"cannot compose config '{config}': {exc}") from None
    raw = OmegaConf.masked_copy(raw, [k for k in raw if k != "hydra"]) if "hydra" in raw else raw
    # keys through a list element (distill.teachers.1.model=...) cannot be merged as a dotlist config
    # (a dict would meet a list): they are applied one by one after the merge
    indexed = [ov for ov in key_overrides if any(p.isdigit() for p in ov.partition("=")[0].split("."))]
    plain = [ov for ov in key_overrides if ov not in indexed]
    try:
        dotlist = OmegaConf.from_dotlist(plain)
        updates = [
            (ov.partition("=")[0], OmegaConf.from_dotlist([f"v={ov.partition('=')[2]}"]).v) for ov in indexed
        ]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot parse overrides {key_overrides}: {exc}") from None
    return validate_config(raw, dotlist, updates=updates)


def validate_config(
    raw: DictConfig | dict, *more: DictConfig | dict, updates: list[tuple[str, Any]] | None = None
) -> DictConfig:
    """Merge into the schema (unknown keys, wrong types -> ConfigError) and check model/head arguments.

    ``updates``: ``(dotted key, value)`` pairs set after the merge (keys that index into lists).
    """
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), raw)
        # model/head/augment take the arguments of the constructor chosen by name: open them here and
        # check them against its signature below, so the message names the valid keys
        with open_dict(cfg.model), open_dict(cfg.head), open_dict(cfg.data.augment):
            for extra in more:
                cfg.merge_with(extra)
            for key, value in updates or []:
                if OmegaConf.select(cfg, key.rpartition(".")[0], default=None) is None:
                    raise ConfigError(f"override {key}={value}: there is no {key.rpartition('.')[0]} to set")
                OmegaConf.update(cfg, key, value, merge=True)
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise ConfigError(
            f"invalid config{f' at {key}' if key else ''}: {exc.msg if hasattr(exc, 'msg') else exc}"
        ) from None
    # list elements as the command line writes them: distill.teachers.1.model, not distill.teachers[1].model
    missing = sorted(re.sub(r"\[(\d+)\]", r".\1", k) for k in OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"config value(s) {missing} must be set, e.g. on the command line: {missing[0]}=..."
        )
    from faceforge.models.backbones import BACKBONES
    from faceforge.models.heads import HEADS

    check_constructor_args("model", cfg.model, BACKBONES, reserved=())
    head_layout = {k: cfg.head[k] for k in HEAD_LAYOUT_KEYS if k in cfg.head}
    head_args = OmegaConf.create({k: v for k, v in to_dict(cfg.head).items() if k not in HEAD_LAYOUT_KEYS})
    check_constructor_args("head", head_args, HEADS, reserved=("embedding_size", "num_classes"))
    _check_head_layout(head_layout)
    _check_choice("run.device", cfg.run.device, ("auto", "cpu", "cuda"))
    _check_choice("run.precision", cfg.run.precision, ("auto", "fp32", "bf16", "fp16"))
    _check_choice("optim.name", cfg.optim.name, ("sgd", "adamw"))
    _check_data_format(cfg.data)
    from faceforge.engine.schedule import SCHEDULES

    _check_choice("optim.schedule", cfg.optim.schedule, tuple(SCHEDULES.names()))
    from faceforge.data.transforms import AUGMENTATIONS

    for aug, kwargs in (cfg.data.augment or {}).items():
        if aug not in AUGMENTATIONS:
            raise ConfigError(
                f"data.augment: unknown augmentation '{aug}'; available: {AUGMENTATIONS.names()}"
            )
        check_kwargs(f"data.augment.{aug}", dict(kwargs or {}), AUGMENTATIONS.get(aug), reserved=())
    OmegaConf.set_readonly(cfg, True)
    return cfg


HEAD_LAYOUT_KEYS = ("sharded", "sample_rate")
"""Head keys that choose how the classifier is laid out over ranks, not arguments of the head itself."""


def _check_head_layout(layout: dict[str, Any]) -> None:
    sharded = layout.get("sharded", False)
    if not isinstance(sharded, bool):
        raise ConfigError(f"head.sharded={sharded!r} has the wrong type: expected bool")
    rate = layout.get("sample_rate", 1.0)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 < float(rate) <= 1.0:
        raise ConfigError(f"head.sample_rate={rate!r} must be a number in (0, 1] (Partial FC rate; 1 = off)")


def _check_data_format(data: DictConfig) -> None:
    """data.format, the key it needs and what it allows, from the registry faceforge.data.build.DATA_FORMATS."""
    from faceforge.data.build import data_format_problem

    problem = data_format_problem(data)
    if problem:
        raise ConfigError(problem)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {list(choices)}")


def check_constructor_args(section: str, node: DictConfig, registry: Any, reserved: tuple[str, ...]) -> None:
    kwargs = dict(OmegaConf.to_container(node, resolve=True))
    name = kwargs.pop("name", None)
    if name is None:
        raise ConfigError(f"{section}.name is required; choose one of {registry.names()}")
    if name not in registry:
        raise ConfigError(f"{section}.name: unknown {registry.kind} '{name}'; available: {registry.names()}")
    check_kwargs(section, kwargs, registry.get(name), reserved)


def check_kwargs(section: str, kwargs: dict[str, Any], ctor: Any, reserved: tuple[str, ...]) -> None:
    """Check ``kwargs`` against ``ctor``'s signature: no unknown names, values of the annotated types."""
    target = ctor.__init__ if inspect.isclass(ctor) else ctor
    sig = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target)
    except Exception:
        hints = {}
    params = {n: p for n, p in sig.parameters.items() if n not in ("self", *reserved)}
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in kwargs.items():
        if key in reserved:
            raise ConfigError(f"{section}.{key} is set by faceforge itself; remove it from the config")
        if key not in params:
            if accepts_any:
                continue
            valid = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
            raise ConfigError(f"{section}: unknown key '{key}'; valid keys: {valid}")
        hint = hints.get(key)
        if hint is not None and not _matches(value, hint):
            raise ConfigError(f"{section}.{key}={value!r} has the wrong type: expected {_type_name(hint)}")


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple, typing.Sequence):
        return isinstance(value, list | tuple)
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))
