"""Frozen teachers: embeddings of every training image, computed once through the on-disk cache.

A teacher is any embedder (:func:`faceforge.embedders.embedder_from_spec`): a faceforge checkpoint
(``.pt``), an ONNX file (``.onnx``) or ``dlib`` (dlib's 128-d ResNet, about 13 faces/s per core).
Teachers never run inside the training step.  Before training, every training image (the aligned,
un-augmented face) is embedded by every teacher through :func:`faceforge.embedders.cache.cached_embed`:
the cache key of an image is the sha1 of its decoded pixels (so a JPEG folder, a ``.rec`` and a
TFace index of the same faces share entries), and the cache folder is keyed by the teacher's
identity (its ``describe()``: kind, weights hash, preprocessing) and settings (flip).  A second run,
a resumed run or another method on the same data reads the table back in seconds.

The table is L2-normalised (rows of unreadable images are zero and flagged).  By default the training-time
flip augmentation is not applied to the teacher: with ``flip: true`` the teacher embedding is the
sum of the original and mirrored face (twice the teacher time), which makes it flip-invariant; with
``view: "student"`` the teacher embeds both the face and its mirror image (twice the teacher time, cached like
any other image) and a row reads the embedding of the view the student's augmentation produced, which is what
TFace's EKD does by running its teacher on the student's (flipped) batch.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faceforge.data.image_io import UnreadableImageError
from faceforge.embedders.cache import cached_embed, default_cache_dir, model_key

log = logging.getLogger(__name__)

__all__ = ["TeacherTable", "build_teacher_tables", "class_centroids", "image_key"]


def image_key(img: np.ndarray) -> str:
    """Content key of a decoded face: sha1 over its shape and uint8 pixels."""
    a = np.ascontiguousarray(img)
    return hashlib.sha1(f"{a.shape}".encode() + a.tobytes()).hexdigest()


@dataclass
class TeacherTable:
    """One teacher's embeddings of every training image (row ``i`` = dataset index ``i``)."""

    name: str
    embeddings: torch.Tensor  # float32 [N, D], L2-normalised; zero rows where ``valid`` is false
    valid: torch.Tensor  # bool [N]
    description: dict[str, Any]
    cache_folder: str | None
    computed: int  # images the teacher embedded in this run (the rest came from the cache)
    #: float32 [N, D], the mirrored faces' embeddings (``view: "student"``), else None
    mirrored_embeddings: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


def build_teacher_tables(
    teachers: Sequence[Any],
    n: int,
    read: Callable[[int], np.ndarray],
    names: Sequence[str],
    flips: Sequence[bool],
    cache_dir: str | Path | None,
    batch_size: int = 256,
    progress: bool = True,
    views: Sequence[str] | None = None,
) -> list[TeacherTable]:
    """Embed images ``0..n-1`` (``read(i)`` -> aligned RGB uint8) with each teacher, through the cache.

    ``batch_size`` images go to a teacher per call (read and decoded ahead in a thread): enough chunks for a
    teacher that spreads them over every core (dlib: one process per core, 32 faces per chunk).

    ``teachers`` are embedder objects; ``names`` label them in logs and checkpoints; ``flips`` pick
    the flip-sum per teacher; ``views`` (default all ``"original"``): ``"student"`` also embeds every mirrored
    face (:attr:`TeacherTable.mirrored_embeddings`).  ``cache_dir=None`` disables the cache (every run re-embeds).
    """
    cache = None if cache_dir is None else Path(cache_dir)
    views = list(views) if views is not None else ["original"] * len(teachers)
    keys: dict[bool, list[str | None]] = {False: [None] * n, True: [None] * n}
    tables = []

    def loader(
        mirror: bool,
    ) -> Callable[[int], tuple[str | None, Callable[[], tuple[np.ndarray | None, str]]]]:
        def load(i: int) -> tuple[str | None, Callable[[], tuple[np.ndarray | None, str]]]:
            try:
                img = read(i)
            except UnreadableImageError as exc:
                return None, lambda exc=exc: (None, f"{exc.path}: {exc.reason}")
            if mirror:
                img = np.ascontiguousarray(img[:, ::-1])
            keys[mirror][i] = image_key(img)
            return keys[mirror][i], lambda: (img, f"training image {i}" + (" (mirrored)" if mirror else ""))

        return load

    def embed(
        teacher: Any, name: str, flip: bool, mirror: bool, stats: dict[str, int]
    ) -> tuple[np.ndarray, list]:
        log.info(
            "teacher %s: embedding %d training images%s (cache %s)",
            name,
            n,
            " mirrored" if mirror else "",
            cache or "off",
        )
        emb, failed = cached_embed(
            teacher,
            n,
            keys[mirror] if all(k is not None for k in keys[mirror]) else None,
            loader(mirror),
            flip=flip,
            cache_dir=cache,
            batch_size=batch_size,
            normalize=True,
            progress=progress,
            stats=stats,
        )
        return emb, failed

    for teacher, name, flip, view in zip(teachers, names, flips, views, strict=True):
        stats: dict[str, int] = {}
        emb, failed = embed(teacher, name, flip, False, stats)
        mirrored = None
        if view == "student":
            more: dict[str, int] = {}
            m_emb, _ = embed(teacher, name, flip, True, more)
            stats["computed"] = stats.get("computed", 0) + more.get("computed", 0)
            valid_m = ~np.isnan(m_emb).any(axis=1)
            mirrored = np.where(valid_m[:, None], m_emb, 0.0).astype(np.float32)
        valid = ~np.isnan(emb).any(axis=1)
        if mirrored is not None:
            valid &= ~np.isnan(m_emb).any(axis=1)
        emb = np.where(valid[:, None], emb, 0.0).astype(np.float32)
        desc = teacher.describe()
        tables.append(
            TeacherTable(
                name=name,
                embeddings=torch.from_numpy(emb),
                valid=torch.from_numpy(valid),
                description=desc,
                cache_folder=None if cache is None else str(cache / model_key(desc)),
                computed=stats.get("computed", 0),
                mirrored_embeddings=None if mirrored is None else torch.from_numpy(mirrored),
            )
        )
        if failed:
            log.warning(
                "teacher %s: %d unreadable training images (no distillation target)", name, len(failed)
            )
    return tables


def class_centroids(table: TeacherTable, labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """L2-normalised mean teacher embedding of each class (labels < 0 and invalid rows ignored).

    LIAAD's confidence attention reads a teacher's confidence on sample ``x`` of class ``y`` as
    ``cos(t(x), c_y)``: how typical the teacher finds ``x`` for its identity.
    """
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    keep = (lab >= 0) & table.valid
    sums = torch.zeros(num_classes, table.dim)
    sums.index_add_(0, lab[keep], table.embeddings[keep])
    return torch.nn.functional.normalize(sums, dim=1)


def default_teacher_cache() -> Path:
    """The evaluation embedding cache doubles as the teacher cache (same keys, same layout)."""
    return default_cache_dir()
