"""Argument helpers the command modules share: ``KEY=VALUE`` options, ``--precision``, and printing listed items
(file names with control characters) one per line."""

from __future__ import annotations

import argparse


def parse_key_values(items: list[str], flag: str) -> dict[str, object]:
    """``KEY=VALUE`` strings to a dict; values are parsed as YAML scalars (numbers, booleans, strings)."""
    import yaml

    options: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {item!r} is not KEY=VALUE")
        options[key.strip()] = yaml.safe_load(value)
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
