"""A faceforge checkpoint as an embedder: the backbone and preprocessing come from the checkpoint metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from faceforge.core.checkpoint import load_checkpoint
from faceforge.core.hashing import file_sha256
from faceforge.core.precision import autocast, resolve_device, resolve_precision
from faceforge.data.preprocess import Preprocess
from faceforge.embedders.base import EMBEDDERS
from faceforge.models.backbones import build_backbone


def backbone_from_checkpoint(ckpt: dict[str, Any]) -> torch.nn.Module:
    meta = ckpt["meta"]["backbone"]
    model = build_backbone(meta["name"], **meta.get("kwargs", {}))
    model.load_state_dict(ckpt["backbone"])
    return model.eval()


@EMBEDDERS.register("checkpoint")
class CheckpointEmbedder:
    def __init__(
        self, source: str | Path, device: str = "auto", precision: str = "fp32", batch_size: int = 128
    ):
        self.path = Path(source)
        ckpt = load_checkpoint(self.path)
        self.meta = ckpt["meta"]
        self.preprocess = Preprocess.from_dict(self.meta["preprocess"])
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model = backbone_from_checkpoint(ckpt).to(self.device).to(memory_format=torch.channels_last)
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

    def describe(self) -> dict[str, Any]:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        return {
            "kind": "checkpoint",
            "path": str(self.path),
            "sha256": self._sha256,
            "backbone": self.meta["backbone"],
            "embedding_size": self.embedding_size,
            "preprocess": self.preprocess.to_dict(),
            "precision": self.precision,
        }
