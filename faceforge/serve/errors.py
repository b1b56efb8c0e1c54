"""The errors of the gallery database (:mod:`~faceforge.serve.store`, its SQL plumbing
:mod:`~faceforge.serve.sql` and its API keys :mod:`~faceforge.serve.keys`), in a module of their own so
that each of those can raise them without importing the others. Every one is a :class:`StoreError`; the
message says why and what to do.
"""

from __future__ import annotations


class StoreError(RuntimeError):
    """A store operation that cannot be done as asked (the message says why and what to do)."""


class ModelMismatchError(StoreError):
    """The gallery's embeddings come from another model than the one in use."""


class NotFoundError(StoreError):
    """An identity, face or key that does not exist."""


class ConflictError(StoreError):
    """A name that is already taken."""
