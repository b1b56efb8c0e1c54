"""Argument helpers the command modules share: ``KEY=VALUE`` options, ``--precision``, and printing listed items
(file names with control characters) one per line."""

from __future__ import annotations

import argparse

from faceforge.core.errors import InputError


def parse_key_values(items: list[str], flag: str) -> dict[str, object]:
    """``KEY=VALUE`` strings to a dict; values are parsed as plain YAML (numbers, booleans, strings, lists)
    with the bounds of :mod:`faceforge.core.bounded_yaml` (size, aliases, depth; no ``!!python`` tags)."""
    from faceforge.core.bounded_yaml import load_yaml
    from faceforge.core.rules import OptionError

    options: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not key.strip().isidentifier():
            raise OptionError(f"{flag} {printable(item)!r} is not KEY=VALUE (KEY a name such as box or mean)")
        options[key.strip()] = load_yaml(value, f"{flag} {printable(key.strip())}")
    return options


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    """``--precision auto|fp32|bf16`` for commands that embed with a network (faceforge.embedders.parity)."""
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="inference precision of a faceforge checkpoint: auto (default) uses bf16 autocast + channels_last "
        "on CUDA or a CPU with native bf16 when the model's parity record keeps its numbers (min cosine to "
        "fp32 >= 0.999, pairs accuracy within 0.1 point), else fp32; other embedders ignore it",
    )


def precision_line(desc: dict) -> str | None:
    """``precision: <choice and why>`` for an embedder's ``describe()``, or None when it has no choice."""
    choice = desc.get("precision_choice")
    if not isinstance(choice, dict):
        return None
    return f"precision: {choice.get('note') or desc.get('precision')}"


def printable(text: object) -> str:
    """``text`` on one line: newlines, other control characters and undecodable bytes of file names
    (surrogate escapes) are shown as Python escapes, so one listed item is always one line."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def print_listed(what: str, entries: list, limit: int = 20, report: str = "") -> None:
    """Print ``  what: <file> (<reason>)`` for the first ``limit`` entries (str or {"file", "reason"})."""
    for e in entries[:limit]:
        if isinstance(e, dict):
            print(f"  {what}: {printable(e['file'])} ({printable(e.get('reason', ''))})")
        else:
            print(f"  {what}: {printable(e)}")
    if len(entries) > limit:
        print(f"  ... and {len(entries) - limit} more {what} in {report or 'the report'}")


def model_kwargs(args: argparse.Namespace, options: dict) -> dict:
    """The embedder's keyword arguments: ``--device``, ``--batch-size``, ``--precision`` and the
    ``--model-option`` values, which may not repeat one of those three (say ``--batch-size 8``, not
    ``--model-option batch_size=8``)."""
    from faceforge.core.rules import OptionError

    own = {"device": args.device, "batch_size": args.batch_size, "precision": args.precision}
    for key in sorted(set(options) & set(own)):
        raise OptionError(f"--model-option {key}=...: give it as --{key.replace('_', '-')} instead")
    return own | options


def finish_job(done: int, skipped: int, what: str, report: str = "the report") -> int:
    """The exit status of a job over many items: 0 when it used at least one (the skipped ones are listed),
    exit 2 (an :class:`~faceforge.core.errors.InputError`) when it was given items and could use none, so an
    empty output never passes for success."""
    if done == 0 and skipped > 0:
        raise InputError(
            f"none of the {skipped} {what} could be used; each is listed with its reason in {report}"
        )
    return 0
