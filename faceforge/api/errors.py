"""Errors of the Python API. Each is a :class:`~faceforge.core.errors.FaceforgeError` (and the builtin it always
was, so ``except ValueError`` keeps working), and its message names the input and the fix."""

from __future__ import annotations

from faceforge.core.errors import FaceforgeError, InputError


class NoFaceError(InputError):
    """A photo in which the detector found no usable face where one was needed (compare, enrol)."""


class UncalibratedError(FaceforgeError, ValueError):
    """A yes/no decision asked of a model that has no calibration for it, and no threshold was given."""


class ModelFileError(FaceforgeError, FileNotFoundError):
    """A model whose files are not on this machine; the message names the command that fetches them."""
