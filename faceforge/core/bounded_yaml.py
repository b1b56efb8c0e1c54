"""YAML with bounds: every YAML text faceforge parses, from a config file or a command-line value.

PyYAML's safe loader builds no objects from tags, but it still follows aliases: a 324-byte file of nine
anchors, each a list of nine aliases to the one before ("billion laughs"), is a value of 10^9 leaves once
anything walks it, and OmegaConf walks it. Nesting is recursive too (``[[[[...]]]]`` 10,000 deep ends in
``RecursionError``). The loaders here count while composing, before any object is built, and stop at:

* :data:`MAX_YAML_BYTES` of text (1 MiB; faceforge's largest config file is under 4 kB);
* :data:`MAX_YAML_ALIASES` aliases (``*name``);
* :data:`MAX_YAML_VALUES` values (scalars, lists and mappings) counted *with aliases expanded*;
* :data:`MAX_YAML_DEPTH` levels of nesting.

Beyond a bound, and for text that is not UTF-8 or not YAML, they raise :class:`YamlError` naming the source.
:func:`load_yaml` parses one text (``--model-option`` values, override values); :func:`bounded_omegaconf`
makes OmegaConf (and Hydra, which loads config files through it) use the same bounds while a configuration is
composed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode

from faceforge.core.errors import InputError

__all__ = [
    "MAX_YAML_ALIASES",
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_VALUES",
    "YamlError",
    "bounded_loader",
    "bounded_omegaconf",
    "check_yaml_file",
    "load_yaml",
]

MAX_YAML_BYTES = 1 << 20
MAX_YAML_ALIASES = 1000
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 100


class YamlError(InputError):
    """YAML text that is too large, too deep, expands too far through aliases, or is not plain YAML."""


def _name(stream: Any, source: str | None) -> str:
    return source or str(getattr(stream, "name", "") or "YAML text")


class _Bounds:
    """Mixed into a PyYAML loader class: bounds checked in ``compose_node`` (see the module docstring)."""

    _source = "YAML text"

    def __init__(self, stream: Any) -> None:
        where = _name(stream, None)
        if hasattr(stream, "read"):
            try:
                stream = stream.read(MAX_YAML_BYTES + 1)
            except UnicodeDecodeError as exc:
                raise YamlError(
                    f"{where}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}): save it "
                    "as UTF-8"
                ) from None
        if isinstance(stream, bytes):
            try:
                stream = stream.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise YamlError(f"{where}: not UTF-8 text (byte at offset {exc.start})") from None
        if len(stream) > MAX_YAML_BYTES:
            raise YamlError(f"{where}: more than {MAX_YAML_BYTES >> 20} MiB of YAML; a config is a few kB")
        self._source = where
        self._depth = 0
        self._aliases = 0
        self._sizes: dict[int, int] = {}
        super().__init__(stream)  # type: ignore[call-arg]

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        alias = self.check_event(AliasEvent)  # type: ignore[attr-defined]
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise YamlError(f"{self._source}: YAML nested deeper than {MAX_YAML_DEPTH} levels")
            node = super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self._depth -= 1
        if alias:
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise YamlError(f"{self._source}: more than {MAX_YAML_ALIASES} YAML aliases (*name)")
            return node
        if isinstance(node, SequenceNode):
            size = 1 + sum(self._sizes.get(id(c), 1) for c in node.value)
        elif isinstance(node, MappingNode):
            size = 1 + sum(self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1) for k, v in node.value)
        else:
            size = 1
        if size > MAX_YAML_VALUES:
            raise YamlError(
                f"{self._source}: YAML that expands to more than {MAX_YAML_VALUES:,} values through its aliases "
                "(an alias bomb, 'billion laughs'?)"
            )
        self._sizes[id(node)] = size
        return node


def bounded_loader(base: type = yaml.SafeLoader) -> type:
    """``base`` (a pure-Python PyYAML loader class) with the bounds of this module."""
    return type(f"Bounded{base.__name__}", (_Bounds, base), {})


_SAFE_LOADER = bounded_loader(yaml.SafeLoader)


def load_yaml(text: str | bytes, source: str = "YAML text") -> Any:
    """Parse one YAML text with the bounds (plain YAML only: ``!!python`` tags are refused)."""
    loader = _SAFE_LOADER(text)
    loader._source = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise YamlError(f"{source}: not plain YAML ({_first_line(exc)})") from None
    finally:
        loader.dispose()


def check_yaml_file(path: str | Path) -> None:
    """Refuse a YAML file that is larger than :data:`MAX_YAML_BYTES` or not UTF-8 text, before a library
    (Hydra reads a header first) trips over it."""
    p = Path(path)
    with open(p, "rb") as fh:
        data = fh.read(MAX_YAML_BYTES + 1)
    if len(data) > MAX_YAML_BYTES:
        raise YamlError(f"{p}: more than {MAX_YAML_BYTES >> 20} MiB of YAML; a config is a few kB")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise YamlError(
            f"{p}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}, line {line}): save it as UTF-8"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__


@contextlib.contextmanager
def bounded_omegaconf() -> Iterator[None]:
    """While inside: OmegaConf's YAML loader (``OmegaConf.load``, ``OmegaConf.create`` of text, dotlist
    values; Hydra loads config files with ``OmegaConf.load``) has the bounds of this module."""
    import omegaconf._utils as utils
    import omegaconf.basecontainer as container

    original = utils.get_yaml_loader
    bounded = bounded_loader(original())

    def get_bounded_loader() -> Any:
        return bounded

    utils.get_yaml_loader = get_bounded_loader
    container.get_yaml_loader = get_bounded_loader  # imported by name at module level there
    try:
        yield
    finally:
        utils.get_yaml_loader = original
        container.get_yaml_loader = original
