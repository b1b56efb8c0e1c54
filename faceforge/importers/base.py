"""The importer contract: a foreign model file -> a faceforge backbone, its weights and its metadata.

``IMPORTERS.build(kind, source=PATH_OR_NONE, **options) -> ImportedModel``. The model is saved with
:func:`save_imported` as a faceforge checkpoint (format ``faceforge-checkpoint``, weights only, read back with
``weights_only=True``), so nothing downstream needs to know it was imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from faceforge.core.checkpoint import FORMAT, VERSION, atomic_torch_save, check_model_meta
from faceforge.core.errors import InputError
from faceforge.core.registry import Registry
from faceforge.core.version import __version__
from faceforge.models.backbones import build_backbone

#: ``meta.predicts`` of an identity-embedding network (as faceforge.engine.state.IDENTITY_EMBEDDING)
IDENTITY_EMBEDDING = "identity embedding (compare with cosine similarity)"


class ModelImportError(InputError):
    """A model file that cannot be imported; the message names the file, what is wrong and what to do."""


@dataclass
class ImportedModel:
    """A foreign network as a faceforge backbone.

    ``backbone``: ``{"name": registered backbone, "kwargs": plain values}``; ``weights``: its state dict;
    ``preprocess``: the :class:`~faceforge.data.preprocess.Preprocess` fields (input size, colour, mean, std,
    alignment) as a dict; ``source``: where it came from (``path``, ``sha256``, ``format``, ``licence``,
    ``network`` and any converter notes), written to ``meta.source``.
    """

    backbone: dict[str, Any]
    weights: dict[str, torch.Tensor]
    embedding_size: int
    preprocess: dict[str, Any]
    source: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def build(self) -> torch.nn.Module:
        """The backbone with the imported weights loaded (eval mode)."""
        net = build_backbone(self.backbone["name"], **dict(self.backbone.get("kwargs", {})))
        net.load_state_dict(self.weights)
        return net.eval()

    def checkpoint(self) -> dict[str, Any]:
        """The faceforge checkpoint dict (weights and metadata only, no training state)."""
        meta = {
            "backbone": {"name": self.backbone["name"], "kwargs": dict(self.backbone.get("kwargs", {}))},
            "embedding_size": int(self.embedding_size),
            "preprocess": dict(self.preprocess),
            "predicts": IDENTITY_EMBEDDING,
            "source": dict(self.source),
            "import_notes": list(self.notes),
            "head": None,
            "faceforge_version": __version__,
            "torch_version": str(torch.__version__),
        }
        weights = {k: v.detach().cpu().contiguous() for k, v in self.weights.items()}
        return {"format": FORMAT, "version": VERSION, "meta": meta, "backbone": weights}


def save_imported(model: ImportedModel, out: str | Path) -> Path:
    """Check that the weights load into the named backbone, then write the checkpoint atomically to ``out``."""
    ckpt = model.checkpoint()
    check_model_meta(ckpt, out, require=True)
    try:
        model.build()
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:  # a converter bug, not the user's file
        raise RuntimeError(f"the imported weights do not load into {model.backbone['name']}: {exc}") from exc
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_torch_save(ckpt, out)


IMPORTERS: Registry[ImportedModel] = Registry("importer")
