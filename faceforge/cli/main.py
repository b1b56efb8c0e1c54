"""``faceforge <command>``: thin command-line front ends that parse arguments and call the library.

Exit status: 0 when the command did its job (a long job that skipped bad items still succeeds: every file is
tried, each skipped one is listed with its reason on screen and in its report, and the summary line says how
many were skipped), 2 when it refused the input or an option, or when a job over many items could use none of
them (:func:`finish_job`), 1 when faceforge itself failed (a bug), 130 when interrupted.

Errors are told apart by what raised them (:func:`is_user_error`): every
:class:`~faceforge.core.errors.FaceforgeError`, every ``OSError`` (a missing, unreadable or unwritable
path), every exception of a class faceforge defines (also when a DataLoader worker re-raised it) and the
``ValueError``/``KeyError``/``RuntimeError`` that faceforge's own code raises with a message for the user
are printed as one line, ``faceforge <command>: error: <message>``. Anything else, and those
same types when a library raised them from inside (a shape mismatch in torch, an index error in numpy), is
a bug: its traceback is printed with a request to report it. ``--debug`` (or ``FACEFORGE_DEBUG=1``) lets
every exception through with its traceback; ``-v`` only turns on debug logging.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import typing
from pathlib import Path

from faceforge.cli.arguments import (  # noqa: F401  (the helpers' old home: kept importable from here)
    add_precision_argument,
    finish_job,
    model_kwargs,
    parse_key_values,
    precision_line,
    print_listed,
    printable,
)
from faceforge.cli.registry import COMMANDS, Command, command  # noqa: F401
from faceforge.core.errors import FaceforgeError

#: the package folder: exceptions raised by code in here carry messages written for the user
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _load_commands() -> None:
    import faceforge.cli.commands  # noqa: F401  (each command module registers its command)


class Parser(argparse.ArgumentParser):
    """An argparse parser whose refusals are one line on stderr (exit 2), as every other user error is."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {printable(' '.join(message.split()))} (see {self.prog} --help)\n")


def apply_option_rules(parser: argparse.ArgumentParser, where: str) -> None:
    """Make the rule of every option that has one (:data:`faceforge.core.options.OPTION_RULES`) its ``type=``,
    in ``parser`` and its sub-commands, and state the allowed values in its help."""
    from faceforge.core.options import rule_for

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                apply_option_rules(sub, f"{where} {name}")
            continue
        rule = rule_for(action.dest, where) if action.option_strings else None
        if rule is None or action.nargs == 0:
            continue
        action.type = rule.argparse_type(action.option_strings[-1])
        if action.help is not argparse.SUPPRESS:
            action.help = f"{action.help or ''} [{rule.describe()}]".strip().replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    _load_commands()
    parser = Parser(prog="faceforge", description="Face recognition research and deployment.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of any error (also FACEFORGE_DEBUG=1); without it, refused input "
        "is reported in one line",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS.names():
        cmd = COMMANDS.build(name)
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        apply_option_rules(p, name)
        p.set_defaults(_run=cmd.run)
    return parser


def _raised_by_faceforge(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is faceforge's own code (not a library's)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE_DIR)


def is_user_error(exc: BaseException) -> bool:
    """A refusal or user mistake to report in one line, as opposed to a bug (see the module docstring)."""
    if isinstance(exc, FaceforgeError | OSError):
        return True
    if type(exc).__module__.startswith("faceforge.") or _reraised_faceforge_error(exc):
        return True  # an error class of faceforge's own, also when a DataLoader worker re-raised it
    if isinstance(exc, ValueError | KeyError | RuntimeError):
        # a message faceforge wrote (``raise ValueError(f"...")``), not an error from inside a library;
        # a bare KeyError from a dict lookup has no message worth showing: treated as a bug
        return _raised_by_faceforge(exc) and not (isinstance(exc, KeyError) and _bare_key_error(exc))
    return False


def _reraised_faceforge_error(exc: BaseException) -> bool:
    """torch re-raises a worker's exception as ``RuntimeError("Caught X ... Original Traceback ...")`` when
    X cannot be rebuilt from one message; the last line then names X's class."""
    text = str(exc)
    if "\nOriginal Traceback" not in text:
        return False
    last = [ln for ln in text.splitlines() if ln.strip()][-1]
    return last.startswith("faceforge.")


def _bare_key_error(exc: KeyError) -> bool:
    return len(exc.args) != 1 or not isinstance(exc.args[0], str) or " " not in exc.args[0]


def user_message(exc: BaseException) -> str:
    """The one-line text of a user error."""
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, FaceforgeError):
        where = f"{exc.filename}: " if exc.filename is not None else ""
        text = f"{where}{exc.strerror}"
    elif isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    else:
        text = str(exc)
    if "\nOriginal Traceback" in text:  # re-raised from a DataLoader worker: keep the original message
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].count(".") else last
    return printable(" ".join(text.split()) if "\n" in text else text)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    if args.debug or os.environ.get("FACEFORGE_DEBUG"):
        return int(args._run(args) or 0)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("faceforge: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if is_user_error(exc):
            print(f"faceforge {args.command}: error: {user_message(exc)}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(
            f"faceforge {args.command}: internal error ({type(exc).__name__}): this is a bug in faceforge; "
            "please report it with the traceback above",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
