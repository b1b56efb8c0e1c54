"""Training dataset from the ``data`` config section, whatever the storage format.

``data.format`` chooses where the aligned faces come from:

* ``folder``: an ImageFolder tree under ``data.root`` (``root/<identity>/<image>``); when ``data.list_file``
  is set the folder format reads that list instead, exactly as ``list`` does (kept for old configs);
* ``list``: a ``path label`` file ``data.list_file`` with paths relative to ``data.root``;
* ``rec``: an insightface / MXNet face RecordIO ``data.rec`` (a ``.rec`` path or the prefix of
  ``<prefix>.rec`` + ``<prefix>.idx``; a relative path is taken below ``data.root``);
* ``tfr_index``: a TFace index ``data.index_file`` whose TFRecord shards lie below ``data.root``.

Every format gives the same dataset class (:class:`FaceDataset`, with a record reader in place of the file
reader), hence the same items ``(uint8 HWC RGB, label, index)``, the same
``(None, "<source>: reason", index)`` for unreadable images, the same size check and the same augmentation
seeded from (seed, epoch, index). Records are named ``<file>:<key>`` (``.rec``) or ``<shard>@<offset>``
(TFRecord) in messages and in the skipped-image list.

:func:`build_dataset` returns the dataset and a :class:`~faceforge.data.samples.Samples` describing it
(``num_classes``, ``len``, ``warnings``); for the record formats its ``paths`` are those record names.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from faceforge.data.dataset import FaceDataset
from faceforge.data.image_io import UnreadableImageError, decode_image_rgb
from faceforge.data.samples import Samples, read_list_file, scan_image_folder
from faceforge.data.transforms import Compose, build_augmentations

FORMATS = ("folder", "list", "rec", "tfr_index")
RECORD_FORMATS = ("rec", "tfr_index")


# ------------------------------------------------------------------------------------------- readers


class RecImageReader:
    """``index -> RGB image`` over the image keys of a face ``.rec`` (picklable; reopens after a fork)."""

    def __init__(self, reader: Any, keys: np.ndarray) -> None:
        self.reader = reader
        self.keys = np.asarray(keys, dtype=np.int64)

    def name(self, index: int) -> str:
        return f"{self.reader.rec_path}:{int(self.keys[index])}"

    def __call__(self, index: int) -> np.ndarray:
        from faceforge.data.recordio import RecordIOError, unpack

        source = self.name(index)
        try:
            _, payload = unpack(self.reader.read(int(self.keys[index])))
        except (RecordIOError, OSError, KeyError) as exc:
            raise UnreadableImageError(source, f"unreadable record ({exc})") from None
        return decode_image_rgb(payload, source)


class TfrImageReader:
    """``index -> RGB image`` over the samples of a TFace index (shards below ``root``)."""

    def __init__(self, index: Any, root: str | Path, positions: np.ndarray, feature: str = "image") -> None:
        self.index, self.root, self.feature = index, Path(root), feature
        self.positions = np.asarray(positions, dtype=np.int64)

    def name(self, index: int) -> str:
        i = int(self.positions[index])
        return f"{self.index.shard_path(i, self.root)}@{int(self.index.offsets[i])}"

    def __call__(self, index: int) -> np.ndarray:
        from faceforge.data.index_files import TFRecordError

        source = self.name(index)
        try:
            data = self.index.read_image(int(self.positions[index]), self.root, self.feature)
        except (TFRecordError, OSError) as exc:
            raise UnreadableImageError(source, f"unreadable record ({exc})") from None
        return decode_image_rgb(data, source)


# ------------------------------------------------------------------------------------------- dataset


class BuiltDataset(NamedTuple):
    dataset: FaceDataset
    samples: Samples  # num_classes, len(), warnings, and a name per image

    @property
    def num_classes(self) -> int:
        return self.samples.num_classes

    @property
    def num_samples(self) -> int:
        return len(self.samples)

    @property
    def warnings(self) -> list[str]:
        return self.samples.warnings


# ------------------------------------------------------------------------------------------- building


def effective_format(data_cfg: Any) -> str:
    """``data.format``, with ``folder`` + ``data.list_file`` meaning ``list``."""
    fmt = str(getattr(data_cfg, "format", "folder") or "folder")
    return "list" if fmt == "folder" and data_cfg.list_file else fmt


def rec_paths(rec: str | Path, root: str | Path | None = None) -> tuple[Path, Path | None]:
    """``data.rec`` -> (``.rec`` path, ``.idx`` path or None to scan): a ``.rec`` path or a prefix; a
    relative path is taken below ``root``."""
    p = Path(rec)
    if not p.is_absolute() and root is not None:
        p = Path(root) / p
    rec_path = p if p.suffix == ".rec" else p.with_name(p.name + ".rec")
    idx = rec_path.with_suffix(".idx")
    return rec_path, (idx if idx.is_file() else None)


def _relabel(
    labels: np.ndarray, min_images: int, source: str
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Keep identities with >= ``min_images`` images; returns (kept positions, contiguous labels, class
    names = original label numbers, warnings). Warns about labels in 0..max with no image when nothing is dropped."""
    counts = np.bincount(labels) if len(labels) else np.zeros(0, dtype=np.int64)
    keep_class = counts >= max(1, int(min_images))
    positions = np.flatnonzero(keep_class[labels])
    if not len(positions):
        raise ValueError(
            f"{source}: no identity has at least {min_images} images (data.min_images_per_identity)"
        )
    kept = np.flatnonzero(keep_class)
    new_label = np.full(len(counts), -1, dtype=np.int64)
    new_label[kept] = np.arange(len(kept))
    warnings = []
    empty = np.flatnonzero(counts == 0)
    if len(empty) and min_images <= 1:
        warnings.append(
            f"{source}: labels {empty[:10].tolist()} have no images ({len(empty)} in all); "
            "classes were renumbered contiguously"
        )
    return positions, new_label[labels[positions]], [str(int(c)) for c in kept], warnings


def people_in_pairs(pairs_files: Iterable[str]) -> set[str]:
    from faceforge.data.pairs import read_lfw_pairs

    return {n for f in pairs_files for p in read_lfw_pairs(f) for n in (p.name1, p.name2)}


def build_samples(data_cfg: Any) -> Samples:
    """The image list of the ``folder`` / ``list`` formats (as the trainer always built it)."""
    if effective_format(data_cfg) == "list":
        return read_list_file(data_cfg.list_file, data_cfg.root)
    excluded = people_in_pairs(list(data_cfg.exclude_pairs))
    return scan_image_folder(data_cfg.root, excluded, data_cfg.min_images_per_identity)


def build_dataset(
    data_cfg: Any, seed: int = 0, progress: bool = True, augment: Compose | None = None
) -> BuiltDataset:
    """Dataset + sample description for ``data_cfg`` (a ``data`` config section). ``augment`` defaults to
    ``data.augment``."""
    from faceforge.core.schema import to_dict

    if augment is None:
        augment = build_augmentations(to_dict(data_cfg.augment) if data_cfg.augment else None)
    fmt = effective_format(data_cfg)
    common = dict(
        augment=augment,
        seed=seed,
        image_size=data_cfg.image_size,
        preload=data_cfg.preload,
        progress=progress,
    )
    if fmt in ("folder", "list"):
        samples = build_samples(data_cfg)
        return BuiltDataset(FaceDataset(samples, **common), samples)
    if fmt == "rec":
        from faceforge.data.recordio import read_face_rec

        if not data_cfg.rec:
            raise ValueError("data.format=rec needs data.rec (a .rec path or prefix)")
        rec_path, idx_path = rec_paths(data_cfg.rec, data_cfg.root)
        reader, keys, labels = read_face_rec(rec_path, idx_path)
        positions, new_labels, classes, warnings = _relabel(
            labels, data_cfg.min_images_per_identity, str(rec_path)
        )
        read = RecImageReader(reader, keys[positions])
    elif fmt == "tfr_index":
        from faceforge.data.index_files import read_index_file

        if not data_cfg.index_file:
            raise ValueError("data.format=tfr_index needs data.index_file (a TFace index file)")
        index = read_index_file(data_cfg.index_file)
        positions, new_labels, classes, warnings = _relabel(
            index.labels, data_cfg.min_images_per_identity, str(data_cfg.index_file)
        )
        read = TfrImageReader(index, data_cfg.root, positions)
    else:
        raise ValueError(f"data.format={fmt!r} is not one of {list(FORMATS)}")
    names = [read.name(i) for i in range(len(positions))]
    samples = Samples(names, new_labels, classes, warnings)
    return BuiltDataset(FaceDataset(samples, read=read, **common), samples)
