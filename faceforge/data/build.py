"""Training dataset from the ``data`` config section, whatever the storage format.

``data.format`` chooses where the aligned faces come from:

* ``folder``: an ImageFolder tree under ``data.root`` (``root/<identity>/<image>``); when ``data.list_file``
  is set the folder format reads that list instead, exactly as ``list`` does (kept for old configs);
* ``list``: a ``path label`` file ``data.list_file`` with paths relative to ``data.root``;
* ``rec``: an insightface / MXNet face RecordIO ``data.rec`` (a ``.rec`` path or the prefix of
  ``<prefix>.rec`` + ``<prefix>.idx``; a relative path is taken below ``data.root``);
* ``tfr_index``: a TFace index ``data.index_file`` whose TFRecord shards lie below ``data.root``.

Each format is a :class:`DataFormat` in the registry :data:`DATA_FORMATS`: its builder, the ``data`` key
it needs and a description.  :func:`build_dataset` and the config check (:func:`data_format_problem`,
called by :mod:`faceforge.config`) both read it; a new format is one ``@data_format(...)`` builder.

Every format gives the same dataset class (:class:`FaceDataset`, with a record reader in place of the file
reader), hence the same items ``(uint8 HWC RGB, label, index)``, the same
``(None, "<source>: reason", index)`` for unreadable images, the same size check and the same augmentation
seeded from (seed, epoch, index). Records are named ``<file>:<key>`` (``.rec``) or ``<shard>@<offset>``
(TFRecord) in messages and in the skipped-image list.

:func:`build_dataset` returns the dataset and a :class:`~faceforge.data.samples.Samples` describing it
(``num_classes``, ``len``, ``warnings``); for the record formats its ``paths`` are those record names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from faceforge.core.registry import Registry
from faceforge.data.dataset import FaceDataset
from faceforge.data.image_io import UnreadableImageError, decode_image_rgb
from faceforge.data.pairs import pairs_people
from faceforge.data.samples import Samples, read_list_file, scan_image_folder
from faceforge.data.transforms import Compose, build_augmentations

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


# ------------------------------------------------------------------------------------------- formats


@dataclass(frozen=True)
class FormatParts:
    """What a record format's builder returns: labels, class names and warnings of the kept records, and
    the reader of their images."""

    labels: np.ndarray  # contiguous labels of the kept records
    classes: list[str]
    warnings: list[str]
    read: Any  # index -> RGB image, with .name(index)


@dataclass(frozen=True)
class DataFormat:
    """One ``data.format``: how to build it and what the config must give for it."""

    name: str
    description: str
    build: Callable[[Any], Samples | FormatParts]  # data_cfg -> file samples, or record parts
    needs: str | None = None  # the data.<key> this format cannot do without
    needs_what: str = ""  # what that key names, for the error message
    numeric_labels: bool = False  # labels are numbers, not person names: data.exclude_pairs cannot apply


DATA_FORMATS: Registry[DataFormat] = Registry("data format")


def data_format(
    name: str, description: str, needs: str | None = None, needs_what: str = "", numeric_labels: bool = False
):
    """Register ``build(data_cfg)`` as ``data.format=name``."""

    def deco(build: Callable[[Any], Samples | FormatParts]) -> Callable[[Any], Samples | FormatParts]:
        fmt = DataFormat(name, description, build, needs, needs_what, numeric_labels)
        DATA_FORMATS.register(name)(lambda: fmt)
        return build

    return deco


def get_format(name: str) -> DataFormat:
    return DATA_FORMATS.build(name)


def data_format_problem(data_cfg: Any) -> str | None:
    """The first problem of the ``data`` section's format choice, as one line naming the key and the fix
    (None when there is none): an unknown format, the key the format needs, data.exclude_pairs with
    records that carry label numbers."""
    fmt = str(getattr(data_cfg, "format", "folder") or "folder")
    if fmt not in DATA_FORMATS:
        return f"data.format={fmt!r} is not one of {DATA_FORMATS.ordered_names()}"
    spec = get_format(fmt)
    if spec.needs and not getattr(data_cfg, spec.needs, None):
        return f"data.format={fmt} needs data.{spec.needs} ({spec.needs_what}): add data.{spec.needs}=..."
    if spec.numeric_labels and getattr(data_cfg, "exclude_pairs", None):
        return (
            f"data.exclude_pairs cannot be applied with data.format={fmt}: records carry label "
            "numbers, not person names; set data.exclude_pairs=[] (leave those people out when writing "
            "the records)"
        )
    return None


@data_format(
    "folder", "an ImageFolder tree data.root/<identity>/<image> (with data.list_file set: that list)"
)
def _folder(data_cfg: Any) -> Samples:
    excluded = pairs_people(*data_cfg.exclude_pairs)
    return scan_image_folder(data_cfg.root, excluded, data_cfg.min_images_per_identity)


@data_format(
    "list", "a 'path label' list file, paths relative to data.root", "list_file", "a 'path label' list file"
)
def _list(data_cfg: Any) -> Samples:
    return read_list_file(data_cfg.list_file, data_cfg.root)


@data_format(
    "rec", "an insightface / MXNet face RecordIO", "rec", "a .rec path or prefix", numeric_labels=True
)
def _rec(data_cfg: Any) -> FormatParts:
    from faceforge.data.recordio import read_face_rec

    rec_path, idx_path = rec_paths(data_cfg.rec, data_cfg.root)
    reader, keys, labels = read_face_rec(rec_path, idx_path)
    positions, new_labels, classes, warnings = _relabel(
        labels, data_cfg.min_images_per_identity, str(rec_path)
    )
    return FormatParts(new_labels, classes, warnings, RecImageReader(reader, keys[positions]))


@data_format(
    "tfr_index",
    "a TFace index file over TFRecord shards below data.root",
    "index_file",
    "a TFace index file",
    numeric_labels=True,
)
def _tfr_index(data_cfg: Any) -> FormatParts:
    from faceforge.data.index_files import read_index_file

    index = read_index_file(data_cfg.index_file)
    positions, new_labels, classes, warnings = _relabel(
        index.labels, data_cfg.min_images_per_identity, str(data_cfg.index_file)
    )
    return FormatParts(new_labels, classes, warnings, TfrImageReader(index, data_cfg.root, positions))


def build_dataset(
    data_cfg: Any, seed: int = 0, progress: bool = True, augment: Compose | None = None
) -> BuiltDataset:
    """Dataset + sample description for ``data_cfg`` (a ``data`` config section). ``augment`` defaults to
    ``data.augment``."""
    from faceforge.core.schema import to_dict

    problem = data_format_problem(data_cfg)
    if problem:
        raise ValueError(problem)
    if augment is None:
        augment = build_augmentations(to_dict(data_cfg.augment) if data_cfg.augment else None)
    common = dict(
        augment=augment,
        seed=seed,
        image_size=data_cfg.image_size,
        preload=data_cfg.preload,
        progress=progress,
    )
    parts = get_format(effective_format(data_cfg)).build(data_cfg)
    if isinstance(parts, Samples):
        return BuiltDataset(FaceDataset(parts, **common), parts)
    names = [parts.read.name(i) for i in range(len(parts.labels))]
    samples = Samples(names, parts.labels, parts.classes, parts.warnings)
    return BuiltDataset(FaceDataset(samples, read=parts.read, **common), samples)
