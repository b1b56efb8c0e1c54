"""Training dataset, resumable sampler and collate for aligned face images.

Batches carry uint8 images [N, H, W, 3]; conversion to network input happens once, in
:class:`faceforge.data.preprocess.Preprocess`, on the training device. Unreadable images are skipped and
counted (a long job never dies for one bad file); images of the wrong size stop the job with a message,
because they mean the folder was not aligned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from faceforge.data.image_io import UnreadableImageError, read_image_rgb
from faceforge.data.samples import Samples
from faceforge.data.transforms import Compose


class WrongImageSizeError(UnreadableImageError):
    """A face of another size than the aligned input size: skipped and listed like an unreadable image (a folder
    where most images have another size was not aligned; the trainer stops on those, see ``data.max_skipped``)."""


class FaceDataset(Dataset):
    """Aligned faces with labels; ``preload=True`` decodes everything into one uint8 array up front.

    Images are read by ``read(index)`` (default: decode the file ``samples.paths[index]``); record formats
    pass their own reader and use ``samples.paths`` only to name images in messages. ``read`` returns RGB
    uint8 or raises :class:`UnreadableImageError`.
    """

    def __init__(
        self,
        samples: Samples,
        augment: Compose | None = None,
        seed: int = 0,
        image_size: int = 112,
        preload: bool = False,
        progress: bool = True,
        read: Callable[[int], np.ndarray] | None = None,
    ) -> None:
        self.samples = samples
        self.read = read if read is not None else self._read_file
        self.augment = augment or Compose([])
        self.seed = int(seed)
        self.image_size = image_size
        self.epoch = 0
        self.preload_skipped: list[str] = []
        self._cache: np.ndarray | None = None
        self._ok: np.ndarray | None = None
        self._reasons: dict[int, str] = {}
        if preload:
            self._preload(progress)

    def _preload(self, progress: bool) -> None:
        n, s = len(self.samples), self.image_size
        cache = np.zeros((n, s, s, 3), dtype=np.uint8)
        ok = np.ones(n, dtype=bool)
        for i in tqdm(range(n), desc="load images", unit="img", disable=not progress):
            try:
                cache[i] = self._load(i)
            except UnreadableImageError as exc:
                ok[i] = False
                self._reasons[i] = f"{exc.path}: {exc.reason}"
                self.preload_skipped.append(self._reasons[i])
        self._cache, self._ok = cache, ok

    def _read_file(self, index: int) -> np.ndarray:
        return read_image_rgb(self.samples.paths[index])

    def _load(self, index: int) -> np.ndarray:
        return self._check(self.read(index), self.samples.paths[index])

    def _check(self, img: np.ndarray, path: str) -> np.ndarray:
        if img.shape[0] != self.image_size or img.shape[1] != self.image_size:
            raise WrongImageSizeError(
                path,
                f"is {img.shape[1]}x{img.shape[0]}, expected an aligned {self.image_size}x{self.image_size} face: "
                "align the folder first with 'faceforge align' (or set data.image_size)",
            )
        return img

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def image(self, index: int) -> np.ndarray:
        """The aligned face of ``index`` without augmentation (raises ``UnreadableImageError``)."""
        if self._cache is not None:
            if not self._ok[index]:
                raise UnreadableImageError(self.samples.paths[index], "unreadable (see the preload report)")
            return self._cache[index]
        return self._load(index)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, int, bool] | tuple[None, str, int, bool]:
        """``(augmented face, identity, index, mirrored)``, or ``(None, reason, index, False)`` for an unreadable
        image; ``mirrored``: the augmentation mirrored the face (see :meth:`Compose.apply`)."""
        if self._cache is not None:
            if not self._ok[index]:
                return None, self._reasons.get(index, self.samples.paths[index]), index, False
            img = self._cache[index]
        else:
            try:
                img = self._load(index)
            except UnreadableImageError as exc:
                return None, f"{exc.path}: {exc.reason}", index, False
        rng = np.random.default_rng((self.seed, self.epoch, int(index)))
        out, mirrored = self.augment.apply(img, rng)
        return out, int(self.samples.labels[index]), index, mirrored


@dataclass
class Batch:
    images: torch.Tensor  # uint8 [N, H, W, 3]
    labels: torch.Tensor  # int64 [N]
    indices: torch.Tensor  # int64 [N], dataset indices
    skipped: list[str] = field(default_factory=list)
    branch: torch.Tensor | None = None  # int64 [N], the sampler branch of each row (see TaggedRows)
    mirrored: torch.Tensor | None = None  # bool [N], the augmentation mirrored the face

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class TaggedRows:
    """A dataset whose items may be asked for as ``(index, tag)``: the item gets the tag appended, so a
    batch sampler that draws rows in branches (a random half and a balanced half, say) can say which branch
    each row came from even when unreadable rows are dropped. Plain ``index`` keys get tag 0."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple:
        index, tag = (key, 0) if isinstance(key, int | np.integer) else key
        return (*self.dataset[int(index)], int(tag))


def collate_faces(items: list) -> Batch:
    """Stack good samples; unreadable ones (``None`` image) are dropped and reported in ``Batch.skipped``.

    Items are ``(image, label, index, mirrored)`` or, from :class:`TaggedRows`, ``(image, label, index, mirrored,
    tag)``."""
    good = [it for it in items if it[0] is not None]
    skipped = [it[1] for it in items if it[0] is None]
    tagged = bool(items) and len(items[0]) == 5
    if not good:
        empty = torch.empty(0, dtype=torch.long)
        return Batch(torch.empty(0, 0, 0, 3, dtype=torch.uint8), empty, empty, skipped,
                     empty if tagged else None)  # fmt: skip
    images = torch.from_numpy(np.stack([it[0] for it in good]))
    labels = torch.tensor([it[1] for it in good], dtype=torch.long)
    indices = torch.tensor([it[2] for it in good], dtype=torch.long)
    mirrored = torch.tensor([bool(it[3]) for it in good], dtype=torch.bool)
    branch = torch.tensor([it[4] for it in good], dtype=torch.long) if tagged else None
    return Batch(images, labels, indices, skipped, branch, mirrored)


class ResumableSampler(Sampler[int]):
    """Shuffled epochs, sharded over ranks, that can start part-way through an epoch.

    Epoch ``e`` uses the permutation of ``torch.Generator().manual_seed(seed + e)``; rank ``r`` of ``w``
    takes positions r, r+w, ... of it (padded by wrapping so every rank gets the same count, as
    ``DistributedSampler``). ``start`` skips the first samples of this rank's share, which is how a resumed
    run continues the exact sample order of an interrupted one.
    """

    def __init__(
        self, num_samples: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True
    ) -> None:
        if num_samples <= 0:
            raise ValueError("sampler needs at least one sample")
        self.num_samples = num_samples
        self.seed, self.rank, self.world_size, self.shuffle = int(seed), rank, world_size, shuffle
        self.epoch = 0
        self.start = 0
        self.per_rank = -(-num_samples // world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def _order(self) -> torch.Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        total = self.per_rank * self.world_size
        if total > self.num_samples:
            order = torch.cat([order, order[: total - self.num_samples]])
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.start :].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.start
