"""A faceforge checkpoint as an embedder: the backbone and preprocessing come from the checkpoint metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from faceforge.core.checkpoint import CheckpointError, check_model_meta, load_checkpoint
from faceforge.core.hashing import file_sha256
from faceforge.core.precision import autocast, resolve_device, resolve_precision
from faceforge.data.preprocess import Preprocess
from faceforge.embedders.base import EMBEDDERS
from faceforge.models.backbones import BACKBONES, build_backbone


def backbone_from_checkpoint(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> torch.nn.Module:
    """Build the backbone the metadata names and load its weights.

    The metadata is checked against the weights *before* anything is allocated: the backbone is first
    built on PyTorch's ``meta`` device (shapes only, no memory), and its parameter names and shapes and its
    output size must match the stored tensors and ``meta.embedding_size``. So a file whose metadata says
    ``embedding_size=1e9`` (or a width the weights do not have) is refused with :class:`CheckpointError`
    naming ``path`` instead of trying a multi-terabyte allocation. ``ckpt`` comes from
    :func:`faceforge.core.checkpoint.load_checkpoint`, which has already checked the metadata's types.
    """
    check_model_meta(ckpt, path, require=True)
    meta = ckpt["meta"]["backbone"]
    name, kwargs = meta["name"], dict(meta.get("kwargs", {}))
    fix = "the file is damaged or its metadata was edited; use the model.pt written by 'faceforge train'"
    if name not in BACKBONES:
        raise CheckpointError(
            f"{path}: unknown backbone {name!r} in its metadata (known: {BACKBONES.names()})"
        )
    try:
        with torch.device("meta"):
            skeleton = build_backbone(name, **kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{path}: its metadata asks for {name} with {kwargs}, which cannot be built ({exc})"
        ) from None
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in ckpt["backbone"].items()}
    diff = next((k for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)), None)
    if diff is not None:
        raise CheckpointError(
            f"{path}: the weights do not fit the {name} {kwargs} its metadata names (parameter {diff}: "
            f"{have.get(diff, 'missing')} stored, {want.get(diff, 'not expected')} expected); {fix}"
        )
    out = int(getattr(skeleton, "embedding_size", ckpt["meta"]["embedding_size"]))
    if out != ckpt["meta"]["embedding_size"]:
        raise CheckpointError(
            f"{path}: metadata says embedding_size={ckpt['meta']['embedding_size']} but the {name} weights give "
            f"{out}-d embeddings; {fix}"
        )
    model = build_backbone(name, **kwargs)
    model.load_state_dict(ckpt["backbone"])
    return model.eval()


@EMBEDDERS.register("checkpoint")
class CheckpointEmbedder:
    def __init__(
        self, source: str | Path, device: str = "auto", precision: str = "fp32", batch_size: int = 128
    ):
        self.path = Path(source)
        ckpt = load_checkpoint(self.path)
        check_model_meta(ckpt, self.path, require=True)
        self.meta = ckpt["meta"]
        self.preprocess = Preprocess.from_dict(self.meta["preprocess"])
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model = (
            backbone_from_checkpoint(ckpt, self.path).to(self.device).to(memory_format=torch.channels_last)
        )
        self.embedding_size = int(self.meta["embedding_size"])
        self.input_size = self.preprocess.input_size
        self.batch_size = batch_size
        self._sha256: str | None = None

    @torch.inference_mode()
    def embed(self, faces: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(faces), self.batch_size):
            x = self.preprocess(
                torch.from_numpy(np.ascontiguousarray(faces[i : i + self.batch_size])), self.device
            )
            with autocast(self.device, self.precision):
                out.append(self.model(x).float().cpu())
        if not out:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        return torch.cat(out).numpy().astype(np.float32, copy=False)

    def torch_network(self) -> tuple[torch.nn.Module, Preprocess]:
        """The backbone (eval mode) and its preprocessing, for gradient-based attacks
        (:func:`faceforge.embedders.differentiable.face_network`)."""
        return self.model.eval(), self.preprocess

    def describe(self) -> dict[str, Any]:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        desc = {
            "kind": "checkpoint",
            "path": str(self.path),
            "sha256": self._sha256,
            "backbone": self.meta["backbone"],
            "embedding_size": self.embedding_size,
            "preprocess": self.preprocess.to_dict(),
            "precision": self.precision,
        }
        if isinstance(self.meta.get("predicts"), str):  # what the output is (older checkpoints do not say)
            desc["predicts"] = self.meta["predicts"]
        return desc
