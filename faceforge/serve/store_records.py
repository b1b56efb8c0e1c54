"""The records the gallery database takes and gives: :class:`NewFace` (a face to store), :class:`GallerySnapshot`
(face ids and embeddings as of one change), :class:`IdentityRow` (a person and their faces), and the rule for
identity names (:func:`validate_name`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from faceforge.serve.sql import blob_bytes

__all__ = ["GallerySnapshot", "IdentityRow", "NewFace", "to_snapshot", "validate_name"]


@dataclass
class NewFace:
    """A face to store: its L2-normalised embedding and where it came from."""

    embedding: np.ndarray
    image_sha256: str
    box: Sequence[float]
    landmarks: Sequence[Sequence[float]]
    det_score: float
    quality: float
    crop_jpeg: bytes | None = None


@dataclass
class GallerySnapshot:
    """All faces' ids and embeddings as of change ``seq`` (read in one transaction)."""

    ids: np.ndarray  # int64 [N]
    embeddings: np.ndarray  # float32 [N, D]
    seq: int


@dataclass
class IdentityRow:
    id: int
    name: str
    created_at: float
    updated_at: float
    faces: int = 0
    face_rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "id": self.id,
            "name": self.name,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "faces": self.faces,
        }
        if self.face_rows:
            d["face_list"] = self.face_rows
        return d


def to_snapshot(rows: Sequence[Any], seq: int) -> GallerySnapshot:
    """``(face id, embedding blob)`` rows as a :class:`GallerySnapshot` at change ``seq``."""
    ids = np.fromiter((int(r[0]) for r in rows), dtype=np.int64, count=len(rows))
    if rows:
        emb = np.frombuffer(b"".join(blob_bytes(r[1]) for r in rows), dtype=np.float32).reshape(len(rows), -1)
    else:
        emb = np.zeros((0, 0), dtype=np.float32)
    return GallerySnapshot(ids, emb.copy(), seq)


_NAME_OK = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")


def validate_name(name: str) -> str:
    """An identity name: 1-200 printable characters, surrounding spaces removed."""
    name = str(name).strip()
    if not _NAME_OK.match(name):
        raise ValueError("an identity name must be 1 to 200 printable characters")
    return name
