"""A model whose outputs are NaN or infinite is an error that names it, never "0 embeddings".

NaN weights (a diverged training run, a damaged file), a NaN ``mean``/``std`` option or a broken export make
every embedding NaN. Left alone, NaN rows read as "unreadable images" downstream: ``embed`` wrote 0 embeddings
and exited 0, ``eval`` asked to re-align the images, training used a NaN teacher. :func:`check_finite` is
called where embeddings are produced (:func:`faceforge.embedders.cache.embed_batch`, which serves ``eval``,
``embed``, ``quality``, teachers and quality models; the service's batcher; the Python API's ``Model.embed``;
``prepare``'s quality gate; ``export-onnx``'s check) and raises :class:`ModelOutputError`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from faceforge.core.errors import InputError

__all__ = ["ModelOutputError", "check_finite", "model_label", "probe_finite"]


class ModelOutputError(InputError):
    """A model that gave NaN or infinite outputs; nothing it gave is used."""


def model_label(embedder: Any) -> str:
    """``<kind> <file> (sha256 <12 hex>)`` from an embedder's ``describe()``, for messages."""
    try:
        desc = embedder.describe()
    except Exception:  # a message must not fail on a half-built embedder
        desc = {}
    where = desc.get("path") or desc.get("source") or desc.get("model_path") or ""
    sha = desc.get("sha256")
    text = " ".join(str(p) for p in (desc.get("kind") or type(embedder).__name__, where) if p)
    return text + (f" (sha256 {str(sha)[:12]})" if isinstance(sha, str) else "")


def check_finite(outputs: Any, embedder: Any, what: str = "embeddings") -> np.ndarray:
    """``outputs`` as float32 ``[N, D]``, or :class:`ModelOutputError` when any value is NaN or infinite."""
    out = np.asarray(outputs, dtype=np.float32)
    if out.size and not np.isfinite(out).all():
        rows = out.reshape(len(out), -1) if out.ndim else out.reshape(1, -1)
        bad = int((~np.isfinite(rows).all(axis=1)).sum())
        raise ModelOutputError(
            f"model {model_label(embedder)} gave NaN or infinite {what} for {bad} of {len(rows)} faces: its weights "
            "(or an option such as mean or std) are broken, so none of its outputs is used"
        )
    return out


def probe_finite(embedder: Any) -> None:
    """Embed one fixed synthetic face (seeded noise at the model's input size) and check the output: a model
    with NaN weights is refused when it is loaded (the service, ``search``), before any photo is read."""
    size = int(embedder.input_size)
    face = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    check_finite(embedder.embed(face), embedder, "outputs on a test face")
