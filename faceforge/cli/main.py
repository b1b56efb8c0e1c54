"""``faceforge <command>``: thin command-line front ends that parse arguments and call the library."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from faceforge.core.registry import Registry


@dataclass(frozen=True)
class Command:
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    help: str


COMMANDS: Registry[Command] = Registry("command")


def command(name: str, help: str):
    """Register ``run(args) -> int`` with its ``add_arguments(parser)`` as ``faceforge <name>``.

    Used as ``@command("align", "...")(add_arguments)`` on the command's ``run`` function.
    """

    def with_arguments(add_arguments: Callable[[argparse.ArgumentParser], None]):
        def with_run(run: Callable[[argparse.Namespace], int]):
            COMMANDS.register(name)(lambda: Command(add_arguments, run, help))
            return run

        return with_run

    return with_arguments


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


def _load_commands() -> None:
    from faceforge.cli import align, attributes, embed, evaluate, export, fetch, prepare, synthesize, train  # noqa: F401


def build_parser() -> argparse.ArgumentParser:
    _load_commands()
    parser = argparse.ArgumentParser(
        prog="faceforge", description="Face recognition research and deployment."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS.names():
        cmd = COMMANDS.build(name)
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    if args.verbose or os.environ.get("FACEFORGE_DEBUG"):
        return int(args._run(args) or 0)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("faceforge: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"faceforge {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
