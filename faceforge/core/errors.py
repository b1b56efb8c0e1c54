"""The base class of every error faceforge raises about the user's input, files or setup.

``faceforge <command>`` prints a :class:`FaceforgeError` as one line (the message names the file, the
problem and the fix) and exits with status 2; ``--debug`` shows the traceback. Anything else that escapes
a command is treated as a bug in faceforge and printed with its traceback (see :mod:`faceforge.cli.main`).

Concrete errors subclass both this class and the builtin they always were (``ValueError``,
``pickle.UnpicklingError``, ...), so ``except ValueError`` written before this class existed still works.
"""

from __future__ import annotations


class FaceforgeError(Exception):
    """A problem with an input file, an option or the environment, explained in one line."""


class InputError(FaceforgeError, ValueError):
    """A file or value that faceforge refuses, with a message naming it and the fix."""
