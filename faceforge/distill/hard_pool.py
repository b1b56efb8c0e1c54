"""DDL's hard branch from real hard photos: ``objectives.ddl.hard_images``, a folder or a list.

DDL (Huang et al., ECCV 2020) pulls the similarity distributions of hard samples toward those of
easy ones.  faceforge's default hard sample is a degradation of the easy image (``objectives.ddl.hard``,
random low resolution).  With ``objectives.ddl.hard_images`` the hard twins are real images of the same
identities instead, for example low-quality captures or another age of the training people:

* a folder ``<hard_images>/<identity>/<image>``, identities named as in the training data
  (``data.root`` folder names; for list, RecordIO and TFace-index data the label number), or
* a list file of ``<path> <identity>`` lines (``#`` comments; paths relative to the list's folder).

For the batch rows of identity ``y`` at step ``s`` the pool of ``y`` is shuffled with
``default_rng((seed, s, y))`` and the rows take its images in turn, so the two rows of a P x 2 pair get
two different hard photos when the identity has two, and a resumed run draws exactly what an
unbroken one would.  Identities without hard photos use the ``objectives.ddl.hard`` degradation; if that is
empty, every training identity must have hard photos.  Unreadable hard photos fall back the same
way and are counted (``skipped``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from faceforge.core.text_files import read_text
from faceforge.data.files import identity_folders
from faceforge.data.image_io import UnreadableImageError, read_image_rgb

log = logging.getLogger(__name__)

__all__ = ["HardPool", "read_hard_source"]


def read_hard_source(source: str | Path) -> list[tuple[str, str]]:
    """``(path, identity)`` of every hard image in a folder tree or a ``path identity`` list file."""
    src = Path(source)
    if src.is_dir():
        return [
            (str(f), ident.name) for ident, images in identity_folders(src) for f in images if f.is_file()
        ]
    if not src.is_file():
        raise FileNotFoundError(f"objectives.ddl.hard_images: no folder or list file at {src}")
    out = []
    for line_no, line in enumerate(read_text(src).splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        fields = text.rsplit(maxsplit=1)
        if len(fields) != 2:
            raise ValueError(f"{src}:{line_no}: expected '<path> <identity>', got {line!r}")
        path = Path(fields[0])
        out.append((str(path if path.is_absolute() else src.parent / path), fields[1]))
    return out


class HardPool:
    """Hard photos per training label, drawn deterministically per step (module docstring)."""

    def __init__(
        self,
        source: str | Path,
        classes: Sequence[str],
        fallback: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None,
    ) -> None:
        entries = read_hard_source(source)
        if not entries:
            raise ValueError(f"objectives.ddl.hard_images: no images in {source}")
        index = {name: i for i, name in enumerate(classes)}
        self.pools: list[list[str]] = [[] for _ in classes]
        unknown: set[str] = set()
        for path, ident in entries:
            if ident in index:
                self.pools[index[ident]].append(path)
            else:
                unknown.add(ident)
        self.source = str(source)
        self.fallback = fallback
        self.unknown_identities = sorted(unknown)
        self.identities_covered = sum(bool(p) for p in self.pools)
        self.images = sum(len(p) for p in self.pools)
        if self.images == 0:
            raise ValueError(
                f"objectives.ddl.hard_images: none of the {len(unknown)} identities in {source} is a training "
                f"identity (e.g. {sorted(unknown)[:3]}; training names look like {list(classes[:3])})"
            )
        missing = len(classes) - self.identities_covered
        if missing and fallback is None:
            raise ValueError(
                f"objectives.ddl.hard_images: {missing} of {len(classes)} training identities have no hard image in "
                f"{source} and distill.hard is empty: add hard images for them or set a degradation in "
                "distill.hard as the fallback"
            )
        if unknown:
            log.warning(
                "objectives.ddl.hard_images: %d identities are not training identities, ignored", len(unknown)
            )
        self.skipped: list[str] = []
        self._bad: set[str] = set()
        self.drawn = 0
        self.degraded = 0

    def twins(
        self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, seed: int, step: int
    ) -> np.ndarray:
        """Hard twins ``[B, H, W, 3]`` of the batch ``images`` (uint8) with dataset labels/indices."""
        out = np.empty_like(images)
        used: dict[int, int] = {}
        orders: dict[int, np.ndarray] = {}
        for r, (img, y, i) in enumerate(zip(images, labels.tolist(), indices.tolist(), strict=True)):
            pool = self.pools[y] if y >= 0 else []
            twin = None
            if pool:
                if y not in orders:
                    orders[y] = np.random.default_rng((seed, step, y)).permutation(len(pool))
                k = used.get(y, 0)
                used[y] = k + 1
                twin = self._read(pool[orders[y][k % len(pool)]], img.shape)
            if twin is None:
                if self.fallback is None:  # only unreadable images get here (coverage is checked)
                    twin = img
                else:
                    twin = self.fallback(img, np.random.default_rng((seed, step, int(i))))
                self.degraded += 1
            else:
                self.drawn += 1
            out[r] = twin
        return out

    def _read(self, path: str, shape: tuple[int, ...]) -> np.ndarray | None:
        if path in self._bad:  # known unreadable: not read again at every draw
            return None
        try:
            img = read_image_rgb(path)
        except (UnreadableImageError, FileNotFoundError) as exc:
            self._bad.add(path)
            self.skipped.append(path)
            log.warning("objectives.ddl.hard_images: skipping %s (%s)", path, exc)
            return None
        if img.shape != tuple(shape):
            raise ValueError(
                f"objectives.ddl.hard_images: {path} is {img.shape[1]}x{img.shape[0]} but the training faces are "
                f"{shape[1]}x{shape[0]}: align the hard images to data.image_size first (faceforge align / "
                "faceforge prepare)"
            )
        return img

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "images": self.images,
            "identities_covered": self.identities_covered,
            "identities_total": len(self.pools),
            "unknown_identities": len(self.unknown_identities),
            "fallback": "distill.hard degradation" if self.fallback is not None else None,
            "drawn": self.drawn,
            "degraded": self.degraded,
            "skipped": list(self.skipped),
        }
