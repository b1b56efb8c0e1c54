"""The command registry: every ``faceforge <command>`` registers here with :func:`command`.

This module imports no command; :mod:`faceforge.cli.commands` imports them all (each registers itself), and
:mod:`faceforge.cli.main` builds the parser from :data:`COMMANDS` after that. Registration is one-way: the
command modules import this module, nothing here imports them.
"""

from __future__ import annotations

import argparse
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
