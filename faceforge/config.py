"""Training configuration: YAML groups composed with Hydra, validated against a typed schema.

An experiment file lists its groups in a ``defaults`` list (``model``, ``head``, ``data``, ``optim``, ``method``),
each a YAML file under ``faceforge/configs/<group>/``; command-line overrides (``optim.lr=0.05``,
``model=iresnet50``, ``method=rkd``) are applied by Hydra's compose API. The result is merged into the
:class:`~faceforge.core.schema.TrainConfig` schema, so an unknown key or a wrong type stops with a message naming
the key. ``model`` and ``head`` take the keyword arguments of the registered constructor chosen by their ``name``;
every ``objectives.<name>`` takes the options its objective class declares and ``method`` those of its method
class, all checked against their signatures (modules in ``run.plugins`` are imported first, so objectives and
methods defined outside the package are checked the same way).

``${faceforge_data:}`` in a YAML file is the real-data folder, ``$FACEFORGE_DATA`` (the folder that holds
``lfw/``); it is resolved only where a value still uses it, so a config that names LFW's protocol files works
without them once those keys are overridden (``data.exclude_pairs=[] eval.pairs=null``), and otherwise stops
with a message that says both ways out.
"""

from __future__ import annotations

import inspect
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from faceforge.core.bounded_yaml import YamlError, bounded_omegaconf, check_yaml_file
from faceforge.core.errors import FaceforgeError
from faceforge.core.rules import OptionError, matches_hint, type_name
from faceforge.core.schema import TrainConfig, to_dict
from faceforge.core.schema_rules import check_config_values
from faceforge.objectives.margin import HEAD_LAYOUT_KEYS

PACKAGE_CONFIGS = Path(__file__).resolve().parent / "configs"
#: sections of the configuration before objectives and teachers (0.1) and where their keys went
MOVED = {
    "distill": "distillation is configured as objectives (objectives.<name>.weight, objectives.<name>.<option>) "
    "with teachers=[{model: dlib, name: dlib}] and data.sources (faces without identities); see README "
    "'Distillation'",
}


class ConfigError(FaceforgeError, ValueError):
    """A configuration that cannot be used; the message names the key and the fix."""


def data_folder() -> str:
    """``$FACEFORGE_DATA``, else a :class:`ConfigError` that names the variable and the keys to override."""
    import os

    env = os.environ.get("FACEFORGE_DATA")
    if env:
        return str(Path(env).resolve())
    raise ConfigError(
        "this config reads files from ${faceforge_data:} (LFW's protocol files) but FACEFORGE_DATA is not set: "
        "export FACEFORGE_DATA=/path/to/data (the folder holding lfw/pairsDevTest.txt), or override the keys "
        "that use it, e.g. data.exclude_pairs=[] eval.pairs=null to train on your own folder without LFW"
    )


OmegaConf.register_new_resolver("faceforge_data", data_folder, replace=True)


def _resolve_config_path(config: str) -> tuple[Path, str]:
    """A YAML path, or the name of a packaged experiment (``faceforge/configs/<name>.yaml``)."""
    p = Path(config)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        check_yaml_file(p)
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
    for ov in key_overrides:
        section = ov.lstrip("+~").partition("=")[0].split(".")[0]
        if section in MOVED:
            raise ConfigError(f"override {ov}: '{section}' is gone: {MOVED[section]}")
    hydra_overrides = [f"hydra.searchpath=[file://{PACKAGE_CONFIGS}]", *group_overrides]
    # every YAML text read below (the config file, its group files, override values) has the bounds of
    # faceforge.core.bounded_yaml: size, aliases, expanded values, depth; a YamlError names the file
    with bounded_omegaconf():
        try:
            with initialize_config_dir(config_dir=str(config_dir), version_base=None):
                raw = compose(config_name=name, overrides=hydra_overrides)
        except YamlError:
            raise
        except (HydraException, OmegaConfBaseException) as exc:
            raise ConfigError(f"cannot compose config '{config}': {exc}") from None
        except UnicodeDecodeError as exc:  # a group file next to the config (Hydra reads its header first)
            raise ConfigError(
                f"config '{config}' uses a group file that is not UTF-8 text ({exc.reason} at offset {exc.start})"
            ) from None
        except (
            yaml.YAMLError
        ) as exc:  # broken YAML, or tags such as !!python/object that only code could build
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(
                f"config '{config}' (or a group file it uses) is not plain YAML: {first}"
            ) from None
        for section, why in MOVED.items():
            if section in raw:
                raise ConfigError(f"config '{config}' has a '{section}' section, which is gone: {why}")
        raw = OmegaConf.masked_copy(raw, [k for k in raw if k != "hydra"]) if "hydra" in raw else raw
        # keys through a list element (distill.teachers.1.model=...) cannot be merged as a dotlist config
        # (a dict would meet a list): they are applied one by one after the merge
        indexed = [ov for ov in key_overrides if any(p.isdigit() for p in ov.partition("=")[0].split("."))]
        plain = [ov for ov in key_overrides if ov not in indexed]
        try:
            dotlist = OmegaConf.from_dotlist(plain)
            updates = [
                (ov.partition("=")[0], OmegaConf.from_dotlist([f"v={ov.partition('=')[2]}"]).v)
                for ov in indexed
            ]
        except YamlError:
            raise
        except OmegaConfBaseException as exc:
            raise ConfigError(f"cannot parse overrides {key_overrides}: {exc}") from None
        except yaml.YAMLError as exc:  # a !!python tag in an override value
            bad = next((ov for ov in key_overrides if "!!" in ov), key_overrides)
            raise ConfigError(
                f"override {bad} is not plain YAML: {' '.join(str(exc).split())[:160]}"
            ) from None
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
        with (
            open_dict(cfg.model),
            open_dict(cfg.head),
            open_dict(cfg.data.augment),
            open_dict(cfg.objectives),
            open_dict(cfg.method),
        ):
            for extra in more:
                cfg.merge_with(extra)
            for key, value in updates or []:
                if OmegaConf.select(cfg, key.rpartition(".")[0], default=None) is None:
                    raise ConfigError(f"override {key}={value}: there is no {key.rpartition('.')[0]} to set")
                OmegaConf.update(cfg, key, value, merge=True)
            OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        text = str(getattr(exc, "msg", None) or exc).strip().splitlines()[0]
        text = text.split(" raised while resolving interpolation: ", 1)[-1]  # a resolver's own message
        raise ConfigError(
            f"invalid config{f' at {key}' if key else ''}: {text}{_valid_keys_hint(key)}"
        ) from None
    # list elements as the command line writes them: distill.teachers.1.model, not distill.teachers[1].model
    missing = sorted(
        {re.sub(r"\[(\d+)\]", r".\1", k) for k in OmegaConf.missing_keys(cfg)}
        | _required_by_yaml(raw, more, updates)
    )
    if missing:
        raise ConfigError(
            f"config value(s) {missing} must be set, e.g. on the command line: {missing[0]}=..."
        )
    from faceforge.models.backbones import BACKBONES
    from faceforge.models.heads import HEADS

    _check_model(cfg, BACKBONES)
    head_layout = {k: cfg.head[k] for k in HEAD_LAYOUT_KEYS if k in cfg.head}
    head_args = OmegaConf.create({k: v for k, v in to_dict(cfg.head).items() if k not in HEAD_LAYOUT_KEYS})
    check_constructor_args("head", head_args, HEADS, reserved=("embedding_size", "num_classes"))
    _check_head_layout(head_layout)
    from faceforge.engine.optim import OPTIMIZERS

    _check_choice("optim.name", cfg.optim.name, OPTIMIZERS)
    try:
        check_config_values(lambda key: OmegaConf.select(cfg, key))  # faceforge.core.schema_rules
    except OptionError as exc:
        raise ConfigError(str(exc)) from None
    _check_finetune(cfg)
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
    _check_plugins_objectives_method(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _required_by_yaml(
    raw: DictConfig | dict, more: tuple[DictConfig | dict, ...], updates: list[tuple[str, Any]] | None
) -> set[str]:
    """Keys a YAML file marks ``???`` (must be set) that neither the overrides nor the other files set.

    Merging into the schema would hide them where the schema has a default (``run.init: ???`` merged over the
    schema's ``None`` stays ``None``: OmegaConf never lets a missing value replace one), so they are found on
    the composed YAML before that merge."""
    try:
        composed = OmegaConf.merge(OmegaConf.create(raw) if isinstance(raw, dict) else raw, *more)
        for key, value in updates or []:
            OmegaConf.update(composed, key, value, merge=True)
    except OmegaConfBaseException:
        return set()  # the schema merge reports what is wrong with these
    return {re.sub(r"\[(\d+)\]", r".\1", k) for k in OmegaConf.missing_keys(composed)}


def _valid_keys_hint(full_key: str | None) -> str:
    """``; valid keys: [...]`` of the schema section holding ``full_key`` (empty when there is none)."""
    if not full_key or "." not in full_key:
        return ""
    section = OmegaConf.select(OmegaConf.structured(TrainConfig), full_key.rpartition(".")[0], default=None)
    return f"; valid keys: {sorted(section.keys())}" if isinstance(section, DictConfig) else ""


def _check_model(cfg: DictConfig, backbones: Any) -> None:
    """``model``: a registered backbone and its arguments, or ``from_init`` (run.init's architecture, no options)."""
    from faceforge.engine.init_source import FROM_INIT

    if cfg.model.get("name") != FROM_INIT:
        check_constructor_args("model", cfg.model, backbones, reserved=())
        return
    if not cfg.run.init:
        raise ConfigError(
            "model=from_init builds run.init's architecture: set run.init=CHECKPOINT.pt (or choose a model by name)"
        )
    extra = [k for k in cfg.model if k != "name"]
    if extra:
        raise ConfigError(
            f"model=from_init takes the architecture and its options from run.init's checkpoint: remove "
            f"model.{extra[0]} (or choose the model by name, e.g. model=iresnet50, to set its options)"
        )


def _check_finetune(cfg: DictConfig) -> None:
    """The ``finetune`` section: names from their tables, patterns not empty (they are matched against the
    backbone when the run is built), the head-only phase shorter than the run (the numbers' own ranges are
    rules of faceforge.core.schema_rules)."""
    from faceforge.engine.finetune import BN_FREEZE
    from faceforge.engine.head_init import HEAD_INITS

    f = cfg.finetune
    _check_choice("finetune.head_init", f.head_init, tuple(HEAD_INITS.names()))
    _check_choice("finetune.freeze_bn", f.freeze_bn, tuple(BN_FREEZE))
    bad = [p for p in f.freeze if not isinstance(p, str) or not p.strip()]
    if bad:
        raise ConfigError(f"finetune.freeze: {bad[0]!r} is not a name pattern (e.g. 'conv1.*', 'layer1.*')")
    if float(f.head_only_epochs) >= cfg.optim.epochs:
        raise ConfigError(
            f"finetune.head_only_epochs={f.head_only_epochs} leaves no epoch of optim.epochs={cfg.optim.epochs} to "
            "train the backbone: lower it, or freeze the backbone for the whole run with finetune.freeze=['*']"
        )


def _check_plugins_objectives_method(cfg: DictConfig) -> None:
    """``run.plugins`` import; every ``objectives.<name>`` and ``method`` against its class's options."""
    import faceforge.methods  # noqa: F401  (registers the packaged methods)
    from faceforge.engine.method import METHODS, Method
    from faceforge.engine.setup import import_plugins, method_spec, objective_specs
    from faceforge.objectives import OBJECTIVES

    try:
        import_plugins(cfg.run.plugins)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for name, spec in to_dict(cfg.objectives).items():
        if spec is not None and not isinstance(spec, dict):
            raise ConfigError(
                f"objectives.{name} must be a mapping of options (or null to remove it), got {spec!r}"
            )
        weight = (spec or {}).get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ConfigError(f"objectives.{name}.weight={weight!r} must be a number")
    specs = objective_specs(cfg.objectives)
    mname, moptions = method_spec(cfg.method)
    if mname not in METHODS:
        raise ConfigError(f"method.name: unknown method '{mname}'; available: {METHODS.names()}")
    # a method with a step of its own (a GAN on a frozen encoder) may train without any objective
    if not specs and METHODS.get(mname).step is Method.step:
        raise ConfigError("no objective left: objectives needs at least one (e.g. objectives.margin={})")
    for name, kind, _, options in specs:
        if kind not in OBJECTIVES:
            raise ConfigError(
                f"objectives.{name}: unknown objective type '{kind}'; available: {OBJECTIVES.names()} "
                "(or register one in a module listed in run.plugins)"
            )
        check_options(f"objectives.{name}", options, OBJECTIVES.get(kind).option_targets())
    check_options("method", moptions, [METHODS.get(mname).__init__])


def check_options(section: str, options: dict[str, Any], targets: list[Any]) -> None:
    """``options`` against the keyword parameters of several callables (an objective and the loss it wraps):
    every key must be one of them, of its annotated type; ``ctx`` and ``self`` are the engine's."""
    params: dict[str, tuple[inspect.Parameter, Any]] = {}
    for target in targets:
        try:
            hints = typing.get_type_hints(target)
        except Exception:
            hints = {}
        for n, prm in inspect.signature(target).parameters.items():
            if n in ("self", "ctx") or prm.kind in (prm.VAR_KEYWORD, prm.VAR_POSITIONAL):
                continue
            params.setdefault(n, (prm, hints.get(n)))
    for key, value in options.items():
        if key not in params:
            raise ConfigError(f"{section}: unknown key '{key}'; valid keys: {sorted(params)}")
        hint = params[key][1]
        if hint is not None and not matches_hint(value, hint):
            raise ConfigError(f"{section}.{key}={value!r} has the wrong type: expected {type_name(hint)}")


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
        if hint is not None and not matches_hint(value, hint):
            raise ConfigError(f"{section}.{key}={value!r} has the wrong type: expected {type_name(hint)}")
