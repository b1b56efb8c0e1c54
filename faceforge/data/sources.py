"""Training data as a mixture of sources: the main data set plus more folders, each with its own labels.

``data`` describes the main source (any :data:`data.format`, see :mod:`faceforge.data.build`); ``data.sources`` adds
more, each ``{root, identities, attributes, labeller}``:

* ``identities: true``: an ImageFolder tree ``root/<identity>/<image>`` whose identities become new classes after
  those of the sources before it (classes of different sources are distinct even when their names match);
* ``identities: false``: every image under ``root`` (recursive; or the images a list file names) with no identity (label ``-1``): objectives that
  need identities mask these rows, others (a teacher-based distillation term, an age loss) use them.

Per-image attributes come from each source's ``attributes`` sidecar (CSV/TSV keyed by the path relative to that
source's root) and/or ``labeller`` (a file-name labeller such as ``utkface``); an attribute one source lacks is
masked on its rows (:class:`faceforge.data.attributes.Attributes`). Dataset rows are the sources' rows in order,
so a row index names one image for the whole run (teacher tables and hard pools are indexed by it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from faceforge.data.attributes import Attributes, attributes_for
from faceforge.data.build import build_dataset
from faceforge.data.dataset import FaceDataset
from faceforge.data.files import list_images
from faceforge.data.samples import Samples, scan_image_folder

log = logging.getLogger(__name__)

__all__ = ["JoinedFaces", "TrainingData", "build_training_data"]


class JoinedFaces:
    """Several face datasets one after the other; identities of part ``p`` are shifted by ``offsets[p]`` and
    parts without identities give ``-1``. Items are ``(image, label, global index, mirrored)`` as
    :class:`FaceDataset`'s (``(None, reason, index, False)`` for an unreadable image)."""

    def __init__(self, parts: list[Any], label_offsets: list[int | None]) -> None:
        self.parts = parts
        self.label_offsets = label_offsets
        self.starts = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        p = int(np.searchsorted(self.starts, index, side="right") - 1)
        return p, index - int(self.starts[p])

    def __getitem__(self, index: int) -> tuple[Any, Any, int, bool]:
        p, local = self._locate(int(index))
        img, label, _, mirrored = self.parts[p][local]
        if img is None:
            return None, label, int(index), False
        off = self.label_offsets[p]
        return img, (-1 if off is None else label + off), int(index), mirrored

    def set_epoch(self, epoch: int) -> None:
        for p in self.parts:
            p.set_epoch(epoch)

    @property
    def preload_skipped(self) -> list[str]:
        return [s for p in self.parts for s in p.preload_skipped]

    @property
    def augment(self) -> Any:
        return self.parts[0].augment

    def image(self, index: int) -> np.ndarray:
        """The un-augmented aligned face of row ``index`` (raises ``UnreadableImageError``)."""
        p, local = self._locate(int(index))
        return self.parts[p].image(local)


@dataclass
class TrainingData:
    """Everything the engine needs to know about the training rows."""

    dataset: Any  # FaceDataset or JoinedFaces: items (uint8 HWC RGB, label, index)
    samples: Samples  # the main source (names, labels, classes, warnings)
    labels: np.ndarray  # identity of every row, -1 where a source has none
    classes: list[str]  # every class of every identity source
    attributes: Attributes
    sources: list[dict[str, Any]] = field(default_factory=list)  # a description per source (for reports)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def warnings(self) -> list[str]:
        return self.samples.warnings


def build_training_data(data_cfg: Any, seed: int = 0, progress: bool = True) -> TrainingData:
    """The main source of ``data_cfg`` (any format) followed by every ``data.sources`` entry."""
    main = build_dataset(data_cfg, seed=seed, progress=progress)
    attrs = attributes_for(main.samples.paths, data_cfg.root, data_cfg.attributes, data_cfg.labeller)
    labels = [main.samples.labels]
    classes = list(main.samples.classes)
    parts: list[Any] = [main.dataset]
    offsets: list[int | None] = [0]
    described = [
        {
            "root": str(data_cfg.root),
            "format": str(data_cfg.format),
            "images": len(main.samples),
            "identities": main.num_classes,
            "attributes": attrs.names,
        }
    ]
    for i, src in enumerate(data_cfg.sources or []):
        if src.identities:
            samples = scan_image_folder(src.root, (), data_cfg.min_images_per_identity)
            offsets.append(len(classes))
            labels.append(samples.labels + len(classes))
            classes.extend(samples.classes)
        else:
            files = [str(f) for f in list_images(src.root, what=f"data.sources[{i}].root")]
            samples = Samples(files, np.zeros(len(files), dtype=np.int64), ["unlabelled"])
            offsets.append(None)
            labels.append(np.full(len(files), -1, dtype=np.int64))
        parts.append(
            FaceDataset(
                samples,
                augment=main.dataset.augment,
                seed=seed,
                image_size=data_cfg.image_size,
                preload=data_cfg.preload,
                progress=progress,
            )
        )
        extra = attributes_for(samples.paths, src.root, src.attributes, src.labeller)
        attrs = attrs.extend(extra)
        described.append(
            {
                "root": str(src.root),
                "images": len(samples),
                "identities": bool(src.identities),
                "attributes": extra.names,
            }
        )
        log.info(
            "data.sources[%d]: %d images from %s (%s)",
            i,
            len(samples),
            src.root,
            f"{samples.num_classes} identities" if src.identities else "no identities",
        )
    dataset = main.dataset if len(parts) == 1 else JoinedFaces(parts, offsets)
    return TrainingData(dataset, main.samples, np.concatenate(labels), classes, attrs, described)
