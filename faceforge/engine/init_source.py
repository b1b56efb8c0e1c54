"""What ``run.init``'s checkpoint brings besides its weights: the architecture and the preprocessing.

A network imported from another framework (``faceforge import dlib|onnx``) or trained by faceforge is used with
the input it was trained on: its checkpoint's ``meta.preprocess`` (input size, colour order RGB/BGR, mean, std,
alignment). Training from it must feed it the same input, and the fine-tuned ``model.pt`` must say so, or every
later ``eval`` / ``embed`` / ``serve`` would silently feed it the wrong pixels. So the run's preprocessing is,
in this order (:func:`input_preprocess`):

1. ``run.init``'s ``meta.preprocess`` (the weights were trained with it);
2. the backbone's own ``preprocess_meta`` attribute (or property), a dict of
   :class:`~faceforge.data.preprocess.Preprocess` fields (a network that always takes, say, dlib's mean and 1/256
   scaling, declares it once, in its module: ``faceforge.models.backbones.dlib_resnet``);
3. faceforge's default, ``Preprocess(input_size=data.image_size)`` (RGB, ``(x/255 - 0.5)/0.5``).

Its input size must be ``data.image_size`` (the training images are read at that size).

``model=from_init`` (``model.name: from_init``) builds the architecture the checkpoint names, with its options
(``meta.backbone`` ``{name, kwargs}``); an explicit ``model`` that differs from the checkpoint's stops in
:meth:`faceforge.engine.state.TrainingState.init_from` with one line.

The checkpoint is read once (``weights_only=True``) and held until the weights are copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from faceforge.core.checkpoint import CheckpointError, load_checkpoint
from faceforge.core.hashing import file_sha256
from faceforge.core.schema import to_dict
from faceforge.data.preprocess import Preprocess
from faceforge.models.backbones import BACKBONES

__all__ = ["FROM_INIT", "InitSource", "input_preprocess", "model_spec"]

#: ``model.name`` that builds the architecture of run.init's checkpoint
FROM_INIT = "from_init"


@dataclass
class InitSource:
    """``run.init``'s checkpoint, read once: its metadata and weights."""

    path: Path
    ckpt: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> InitSource:
        return cls(Path(path), load_checkpoint(path, map_location=device))

    @property
    def meta(self) -> dict[str, Any]:
        return self.ckpt["meta"]

    def backbone_spec(self) -> tuple[str, dict[str, Any]]:
        """``(name, kwargs)`` of the checkpoint's backbone; stops when the metadata names none this faceforge has."""
        spec = self.meta.get("backbone")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise CheckpointError(
                f"model=from_init: run.init={self.path} names no backbone in its metadata; choose the model "
                "by name (model=iresnet50 ...)"
            )
        if spec["name"] not in BACKBONES:
            raise CheckpointError(
                f"model=from_init: run.init={self.path} holds a {spec['name']!r} backbone, which this faceforge "
                f"does not have (known: {BACKBONES.names()}); install the version that wrote it"
            )
        return spec["name"], dict(spec.get("kwargs") or {})

    def preprocess(self) -> Preprocess | None:
        pre = self.meta.get("preprocess")
        return Preprocess.from_dict(pre) if isinstance(pre, dict) else None

    def lineage(self) -> dict[str, Any]:
        """What the fine-tuned checkpoint keeps of its origin (``meta.init``): the file and its SHA-256, and the
        checkpoint's own import record (``source``, ``import_notes``: file, hash, licence, converter) and ``init``
        (so a fine-tune of a fine-tune names every step back to the imported file)."""
        record: dict[str, Any] = {"path": str(self.path), "sha256": file_sha256(self.path)}
        for key in ("source", "import_notes", "init", "preprocess", "predicts"):
            if self.meta.get(key) is not None:
                record[key] = self.meta[key]
        return record


def model_spec(cfg: Any, init: InitSource | None) -> tuple[str, dict[str, Any]]:
    """The backbone to build: ``cfg.model`` (name + kwargs), or run.init's for ``model=from_init``."""
    model = to_dict(cfg.model)
    name = model.pop("name")
    if name != FROM_INIT:
        return name, model
    if init is None:
        raise ValueError("model=from_init builds run.init's architecture: set run.init=CHECKPOINT.pt")
    return init.backbone_spec()


def input_preprocess(cfg: Any, backbone: nn.Module, init: InitSource | None) -> tuple[Preprocess, str]:
    """The run's preprocessing and where it came from (see the module doc); stops, in one line, when its input
    size is not ``data.image_size``."""
    size = int(cfg.data.image_size)
    declared = getattr(backbone, "preprocess_meta", None)
    pre = init.preprocess() if init is not None else None
    if pre is not None:
        origin = f"run.init={init.path}"  # type: ignore[union-attr]
    elif isinstance(declared, dict):
        pre = Preprocess.from_dict({"input_size": getattr(backbone, "input_size", size), **declared})
        origin = f"the {type(backbone).__name__} backbone"
    else:
        pre, origin = Preprocess(input_size=size), "faceforge's default"
    if pre.input_size != size:
        raise ValueError(
            f"{origin} takes {pre.input_size}x{pre.input_size} faces ({pre.colour}, alignment {pre.alignment}) "
            f"but data.image_size={size}: align the training images as it expects and set "
            f"data.image_size={pre.input_size}"
        )
    return pre, origin
