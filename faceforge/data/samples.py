"""Sample lists: which image files, with which identity labels.

Two sources: an ImageFolder tree (``root/<identity>/<image>``, identities sorted by name get labels
0..C-1) and ``path label`` list files (paths relative to a root, integer labels).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from faceforge.core.text_files import read_text
from faceforge.data.files import identity_folders

log = logging.getLogger(__name__)


@dataclass
class Samples:
    """Image paths with integer labels in [0, num_classes) and the class names."""

    paths: list[str]
    labels: np.ndarray
    classes: list[str]
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(
                f"labels must lie in [0, {len(self.classes)}), found range "
                f"[{self.labels.min()}, {self.labels.max()}]"
            )

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def images_per_class(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)


def scan_image_folder(
    root: str | Path,
    exclude_identities: Iterable[str] = (),
    min_images_per_identity: int = 1,
) -> Samples:
    """Scan ``root/<identity>/*`` into samples.

    Identity folders with no image files are skipped with a warning naming the folder; identities in
    ``exclude_identities`` or with fewer than ``min_images_per_identity`` images are left out. Labels are
    contiguous over the kept identities in sorted order.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(
            f"image folder not found: {base} (set data.root to an aligned ImageFolder tree)"
        )
    excluded = set(exclude_identities)
    paths: list[str] = []
    labels: list[int] = []
    classes: list[str] = []
    warnings: list[str] = []
    for ident_dir, images in identity_folders(base):
        if ident_dir.name in excluded:
            continue
        files = [str(f) for f in images]
        if not files:
            warnings.append(
                f"identity folder {ident_dir} holds no images and was skipped (add images or remove it)"
            )
            continue
        if len(files) < min_images_per_identity:
            continue
        label = len(classes)
        classes.append(ident_dir.name)
        paths.extend(files)
        labels.extend([label] * len(files))
    for w in warnings:
        log.warning(w)
    if not paths:
        raise ValueError(
            f"no training images found below {base} (expected {base}/<identity>/<image>.jpg; "
            f"excluded {len(excluded)} identities, min_images_per_identity={min_images_per_identity})"
        )
    return Samples(paths, np.asarray(labels), classes, warnings)


def read_list_file(list_file: str | Path, root: str | Path | None = None) -> Samples:
    """Read a ``path label`` list (whitespace separated; ``#`` comments allowed).

    Paths are relative to ``root`` (default: the list file's folder). Labels are used as given and must be
    contiguous integers 0..C-1; class names are the label numbers as strings.
    """
    lf = Path(list_file)
    if not lf.is_file():
        raise FileNotFoundError(f"list file not found: {lf}")
    base = Path(root) if root is not None else lf.parent
    paths: list[str] = []
    labels: list[int] = []
    for line_no, line in enumerate(read_text(lf).splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2:
            raise ValueError(f"{lf}:{line_no}: expected 'path label', got {line!r}")
        try:
            label = int(parts[-1])
        except ValueError:
            raise ValueError(f"{lf}:{line_no}: label {parts[-1]!r} is not an integer") from None
        if label < 0:
            raise ValueError(f"{lf}:{line_no}: negative label {label}")
        paths.append(str(base / " ".join(parts[:-1])))
        labels.append(label)
    if not paths:
        raise ValueError(f"{lf}: no samples")
    num_classes = max(labels) + 1
    counts = Counter(labels)
    empty = [c for c in range(num_classes) if c not in counts]
    warnings = [f"{lf}: labels {empty[:10]} have no images ({len(empty)} in all)"] if empty else []
    return Samples(paths, np.asarray(labels), [str(c) for c in range(num_classes)], warnings)
