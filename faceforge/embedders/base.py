"""The Embedder contract and the registry of embedder kinds.

This module imports no embedder: the built-in ones (``checkpoint``, ``onnx``, ``dlib``, ``sface``) register
themselves when :mod:`faceforge.embedders` (the package, which Python runs before any of its modules) imports
them, so :data:`EMBEDDERS` holds them whichever ``faceforge.embedders.*`` module was imported first.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from faceforge.core.registry import Registry
from faceforge.core.rules import check_call_options


@runtime_checkable
class Embedder(Protocol):
    """``embed(uint8 RGB aligned faces [N, H, W, 3]) -> float32 [N, D]`` (not normalised)."""

    embedding_size: int
    input_size: int

    def embed(self, faces: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]:
        """Identity and settings of the model, written into result files (kind, file hash, preprocessing)."""
        ...


EMBEDDERS: Registry[Embedder] = Registry("embedder")


def embedder_from_spec(spec: str, **kwargs: Any) -> Embedder:
    """``kind:ARG`` (e.g. ``checkpoint:run/model.pt``) or a bare path; ``.pt``/``.pth`` -> checkpoint, ``.onnx`` -> onnx.

    ``kwargs`` (``device``, ``batch_size`` and the ``--model-option`` values) must be parameters of the kind's
    constructor, of their annotated types: anything else is an :class:`~faceforge.core.rules.OptionError` that
    lists the valid ones.
    """
    kind, _, arg = spec.partition(":")
    if kind in EMBEDDERS:
        source: str | None = arg or None
    elif spec.endswith((".pt", ".pth")):
        kind, source = "checkpoint", spec
    elif spec.lower().endswith(".onnx"):
        kind, source = "onnx", spec
    else:
        kind = ""
    if kind:
        check_call_options(f"model option of the {kind} embedder", kwargs, EMBEDDERS.get(kind), ("source",))
        return EMBEDDERS.build(kind, source=source, **kwargs)
    raise ValueError(
        f"cannot tell which embedder '{spec}' is: use a .pt checkpoint, an .onnx file or kind:path with kind in "
        f"{EMBEDDERS.names()}"
    )
