"""What values an option or a config key takes: a :class:`Rule` per name, checked in one place.

A rule states a type (whole number, number, text, yes/no, a list of whole numbers), a range (closed or open at
either end), finiteness (every number rule refuses NaN and infinity), an allowed set or a pattern. The same
rule object serves the three ways a value comes in:

* the command line: :meth:`Rule.argparse_type` is the ``type=`` of an argparse option, so a bad value stops
  before anything loads, in one line that names the option, the value and what is allowed;
* configuration files: :meth:`Rule.check` on the composed config (``faceforge.config``);
* the Python API: :func:`check_values` on a function's keyword arguments.

Every refusal is an :class:`OptionError` (an :class:`~faceforge.core.errors.InputError`, so a ``ValueError``)
whose message reads ``NAME=VALUE must be DESCRIPTION``. The tables of rules live in
:mod:`faceforge.core.options` (command-line options and API arguments) and :mod:`faceforge.core.schema_rules`
(config keys).
"""

from __future__ import annotations

import argparse
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from faceforge.core.errors import InputError

__all__ = ["OptionError", "Rule", "check_call_options", "check_values", "matches_hint", "type_name"]

#: how each kind of rule names its values in messages
_KIND_WORDS = {int: "an integer", float: "a finite number", str: "text", bool: "true or false"}


class OptionError(InputError):
    """An option, argument or config value outside what its rule allows; the message names all three."""


def _fmt(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Rule:
    """The values one option takes.

    Attributes:
        kind: ``int``, ``float``, ``str``, ``bool`` or ``list`` (comma-separated numbers of type ``item``).
        low, high: bounds (inclusive unless ``low_open`` / ``high_open``); for ``list``, bounds of each item.
        item, count: a list's item type (``int`` or ``float``) and, when fixed, its length.
        choices: the allowed values (text options).
        pattern: a regular expression the whole text must match (text options), described by ``pattern_text``.
        extra: text values allowed besides the number rule (``--batch dynamic``).
        optional: ``None`` is allowed (an unset option or a ``null`` config value).
        note: what the value means, appended to the message (``"0: one per core"``).
    """

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    item: type = int
    count: int | None = None
    choices: tuple[str, ...] | None = None
    pattern: str | None = None
    pattern_text: str = ""
    extra: tuple[str, ...] = ()
    optional: bool = False
    note: str = ""

    # ------------------------------------------------------------------ description
    def describe(self) -> str:
        """``an integer >= 1``, ``a finite number in (0, 1)``, ``one of fp32, bf16``, ..."""
        if self.choices is not None:
            text = "one of " + ", ".join(self.choices)
        elif self.pattern is not None:
            text = self.pattern_text or f"text matching {self.pattern}"
        elif self.kind is list:
            what = "integers" if self.item is int else "finite numbers"
            text = f"{self.count} comma-separated {what}" if self.count else f"comma-separated {what}"
            text += self._range_text()
        else:
            text = _KIND_WORDS[self.kind] + ("" if self.kind in (str, bool) else self._range_text())
        if self.extra:
            text = " or ".join([*map(repr, self.extra), text])
        return text + (f" ({self.note})" if self.note else "")

    def _range_text(self) -> str:
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            return (
                f" in {'(' if self.low_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if self.high_open else ']'}"
            )
        if lo is not None:
            return f" {'>' if self.low_open else '>='} {_fmt(lo)}"
        if hi is not None:
            return f" {'<' if self.high_open else '<='} {_fmt(hi)}"
        return ""

    # ------------------------------------------------------------------ checks
    def _in_range(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return not (self.high is not None and (v >= self.high if self.high_open else v > self.high))

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, or None when it is (``value`` already of the rule's type)."""
        if value is None:
            return None if self.optional else "a value is required"
        if isinstance(value, str) and value in self.extra:
            return None
        if self.kind is bool:
            return None if isinstance(value, bool) else "not true or false"
        if self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"not {_KIND_WORDS[self.kind]}"
            if self.kind is int and isinstance(value, float) and not value.is_integer():
                return "not an integer"
            return None if self._in_range(float(value)) else "out of range"
        if self.kind is list:
            if not isinstance(value, list | tuple):
                return "not a list"
            if self.count is not None and len(value) != self.count:
                return f"{len(value)} values, not {self.count}"
            items = [self._item_problem(v) for v in value]
            return next((p for p in items if p), None)
        if not isinstance(value, str):
            return "not text"
        if self.choices is not None and value not in self.choices:
            return "not an allowed value"
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return "not of the allowed form"
        return None

    def _item_problem(self, v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, self.item if self.item is int else int | float):
            return f"{v!r} is not {_KIND_WORDS[self.item]}"
        return None if self._in_range(float(v)) else f"{v} is out of range"

    def check(self, name: str, value: Any) -> Any:
        """``value`` if allowed, else :class:`OptionError` ``NAME=VALUE must be ...``."""
        if self.problem(value) is not None:
            raise OptionError(f"{name}={_show(value)} must be {self.describe()}")
        return value

    # ------------------------------------------------------------------ text (command line)
    def parse(self, text: str) -> Any:
        """The value of command-line ``text`` (``ValueError`` with the reason when it is not one)."""
        s = text.strip()
        if s in self.extra:
            return s
        if self.kind is int:
            try:
                value: Any = int(s, 10)
            except ValueError:
                try:
                    f = float(s)
                except ValueError:
                    raise ValueError("not an integer") from None
                if not (math.isfinite(f) and f.is_integer()):
                    raise ValueError("not an integer") from None
                value = int(f)
        elif self.kind is float:
            try:
                value = float(s)
            except ValueError:
                raise ValueError("not a number") from None
        elif self.kind is bool:
            table = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
            if s.lower() not in table:
                raise ValueError("not true or false")
            value = table[s.lower()]
        elif self.kind is list:
            try:
                value = [self.item(v) for v in s.split(",") if v.strip()]
            except ValueError:
                raise ValueError("not a list of numbers") from None
        else:
            value = text
        why = self.problem(value)
        if why is not None:
            raise ValueError(why)
        return value

    def argparse_type(self, flag: str) -> Callable[[str], Any]:
        """An argparse ``type=``: refuses with ``argument FLAG: VALUE must be ...`` (one line)."""

        def parse(text: str) -> Any:
            try:
                return self.parse(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{_show(text)} must be {self.describe()}") from None

        parse.__name__ = flag.lstrip("-").replace("-", "_")  # argparse names the type in some messages
        return parse


def _show(value: Any) -> str:
    """A value as one short line for a message (control characters escaped, long text cut)."""
    s = value if isinstance(value, str) else repr(value)
    s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
    return s if len(s) <= 80 else s[:77] + "..."


def check_values(rules: Mapping[str, Rule], **values: Any) -> None:
    """Check keyword arguments against their rules (API entry points): ``check_values(RULES, k=k, fmr=fmr)``."""
    for name, value in values.items():
        rules[name].check(name, value)


# ---------------------------------------------------------------------------------------------------- signatures
def matches_hint(value: Any, hint: Any) -> bool:
    """Whether ``value`` (from YAML or JSON) fits a type annotation (unions, ``int``, ``float``, lists, dicts)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches_hint(value, h) for h in typing.get_args(hint))
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
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def check_call_options(
    what: str,
    options: Mapping[str, Any],
    target: Any,
    reserved: tuple[str, ...] = (),
    rules: Mapping[str, Rule] | None = None,
) -> None:
    """Keyword ``options`` for ``target`` (a class or function): every name one of its parameters (unless it
    takes ``**kwargs``), every value of the annotated type and, where ``rules`` has the name, in its range.
    ``what`` names the options in messages (``model option of the checkpoint embedder``)."""
    import inspect

    fn = target.__init__ if inspect.isclass(target) else target
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    variadic = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    params = {n: p for n, p in sig.parameters.items() if n not in ("self", *reserved)}
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = sorted(n for n, p in params.items() if p.kind not in variadic)
    for key, value in options.items():
        if key not in named:
            if open_ended:
                continue
            raise OptionError(f"{what}: unknown option {_show(key)!r}; valid: {', '.join(named) or '(none)'}")
        hint = hints.get(key)
        if hint is not None and not matches_hint(value, hint):
            raise OptionError(f"{what}: {key}={_show(value)} has the wrong type: expected {type_name(hint)}")
        rule = (rules or {}).get(key)
        if rule is not None and rule.problem(list(value) if isinstance(value, tuple) else value) is not None:
            raise OptionError(f"{what}: {key}={_show(value)} must be {rule.describe()}")
