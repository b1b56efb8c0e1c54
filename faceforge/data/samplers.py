"""Distributed, resumable batch samplers: identity-balanced P x K batches and multi-branch batches.

Both are ``batch_sampler`` objects for ``torch.utils.data.DataLoader`` (they yield lists of dataset indices)
and share one contract:

* ``rank`` / ``world_size``: every global step draws ``world_size`` disjoint per-rank batches from one
  shared random stream, and rank ``r`` keeps the ``r``-th, so ranks never share an identity (balanced) or a
  sample (random) within a step, nor within one pass over the data;
* ``set_epoch(epoch, start_batch=0)``: the order is a pure function of ``(seed, epoch)``; ``start_batch``
  skips the first batches of the epoch, so a resumed run yields exactly the tail of the uninterrupted one;
* the stream is a sequence of "cycles", each a fresh permutation seeded by ``(seed, epoch, cycle)``; a cycle
  holds a whole number of global steps (the remainder of a permutation is dropped, as ``drop_last``), so
  no step straddles two permutations. Cycles repeat when an epoch asks for more steps than one pass holds.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


class _RandomStream:
    """Per-rank batches of ``batch_size`` distinct samples from ``range(n)``."""

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int, seed: int, salt: int = 0) -> None:
        self.n, self.bs, self.rank, self.world = n, batch_size, rank, world_size
        self.seed, self.salt = seed, salt
        self.steps_per_cycle = n // (batch_size * world_size)
        if self.steps_per_cycle < 1:
            raise ValueError(
                f"{n} samples cannot fill one step of {world_size} rank(s) x batch size {batch_size}"
            )
        self._cache: tuple[int, int, np.ndarray] | None = None

    def batch(self, epoch: int, step: int) -> np.ndarray:
        cycle, pos = divmod(step, self.steps_per_cycle)
        if self._cache is None or self._cache[:2] != (epoch, cycle):
            perm = np.random.default_rng((self.seed, self.salt, epoch, cycle)).permutation(self.n)
            self._cache = (epoch, cycle, perm)
        start = (pos * self.world + self.rank) * self.bs
        return self._cache[2][start : start + self.bs]


class _BalancedStream:
    """Per-rank batches of ``p`` identities x ``k`` images (with replacement for identities with < k)."""

    def __init__(self, labels: np.ndarray, p: int, k: int, rank: int, world_size: int, seed: int,
                 salt: int = 0, min_images: int = 1) -> None:  # fmt: skip
        labels = np.asarray(labels, dtype=np.int64).ravel()
        if p < 1 or k < 1:
            raise ValueError(f"P and K must be >= 1, got P={p}, K={k}")
        self.order = np.argsort(labels, kind="stable")  # sample indices grouped by label
        classes, starts, counts = np.unique(labels[self.order], return_index=True, return_counts=True)
        keep = counts >= max(1, min_images)
        self.classes, self.starts, self.counts = classes[keep], starts[keep], counts[keep]
        self.p, self.k, self.rank, self.world = p, k, rank, world_size
        self.seed, self.salt = seed, salt
        self.steps_per_cycle = len(self.classes) // (p * world_size)
        if self.steps_per_cycle < 1:
            raise ValueError(
                f"{len(self.classes)} identities (with >= {min_images} images) cannot fill one step of "
                f"{world_size} rank(s) x P={p} identities"
            )
        self._cache: tuple[int, int, np.ndarray] | None = None

    def batch(self, epoch: int, step: int) -> np.ndarray:
        cycle, pos = divmod(step, self.steps_per_cycle)
        if self._cache is None or self._cache[:2] != (epoch, cycle):
            perm = np.random.default_rng((self.seed, self.salt, epoch, cycle)).permutation(len(self.classes))
            self._cache = (epoch, cycle, perm)
        start = (pos * self.world + self.rank) * self.p
        ids = self._cache[2][start : start + self.p]
        # image choice depends only on (seed, epoch, step, rank): independent of what was drawn before
        rng = np.random.default_rng((self.seed, self.salt, epoch, step, self.rank, 1))
        out = np.empty(self.p * self.k, dtype=np.int64)
        for j, c in enumerate(ids):
            n = int(self.counts[c])
            local = rng.choice(n, self.k, replace=n < self.k)
            out[j * self.k : (j + 1) * self.k] = self.order[self.starts[c] + local]
        return out


class ResumableBatches:
    """Epoch bookkeeping of a resumable batch sampler: ``set_epoch(epoch, start_batch)`` skips the batches a
    resumed run already took; ``len`` counts the rest. Subclasses set ``batches_per_epoch``."""

    batches_per_epoch: int
    epoch: int = 0
    start_batch: int = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch must lie in [0, {self.batches_per_epoch}], got {start_batch}")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch


class IdentityBalancedBatchSampler(ResumableBatches):
    """Batches of ``p`` identities x ``k`` images each (``p * k`` indices, identity-major order).

    Identities with fewer than ``k`` images are sampled with replacement; identities with fewer than
    ``min_images`` images are never drawn. One pass (the default epoch length, ``batches_per_epoch=None``)
    visits every eligible identity at most once over all ranks: ``num_identities // (p * world_size)``
    batches per rank.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, p: int, k: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, batches_per_epoch: int | None = None, min_images: int = 1) -> None:  # fmt: skip
        _check_rank(rank, world_size)
        self._stream = _BalancedStream(np.asarray(labels), p, k, rank, world_size, int(seed), 0, min_images)
        self.p, self.k, self.seed, self.rank, self.world_size = p, k, int(seed), rank, world_size
        self.batch_size = p * k
        self.batches_per_epoch = int(batches_per_epoch or self._stream.steps_per_cycle)
        self.epoch = 0
        self.start_batch = 0

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_batch, self.batches_per_epoch):
            yield self._stream.batch(self.epoch, step).tolist()


@dataclass
class Branch:
    """One branch of a :class:`MultiBranchBatchSampler`.

    ``source`` is the branch's labels (array) or, for ``kind="random"``, just its length. ``kind`` is
    ``"random"`` (shuffled samples without replacement within a pass) or ``"balanced"`` (P x K with
    ``k`` images per identity and ``P = batch_size // k``; needs labels; identities with fewer than
    ``min_images`` images are never drawn).
    """

    source: int | Sequence[int] | np.ndarray
    batch_size: int
    kind: str = "random"
    k: int = 4
    min_images: int = 1

    @property
    def length(self) -> int:
        return int(self.source) if isinstance(self.source, int | np.integer) else len(self.source)


class MultiBranchBatchSampler(ResumableBatches):
    """Each step yields one batch per branch, concatenated into one flat list of global indices.

    The dataset is the branches' datasets concatenated (``torch.utils.data.ConcatDataset`` order): global
    index = ``offsets[b]`` + local index of branch ``b``, with ``offsets`` the cumulative branch lengths.
    Within a yielded list, branch 0's ``batch_size`` indices come first, then branch 1's, and so on;
    :meth:`split` cuts a batch (list, array or tensor along dim 0) back into per-branch parts and
    :meth:`to_local` also removes the offsets. Use-cases: DDL's easy/hard branches, EKD's general +
    identity-balanced batch, TFace's multi-dataset branches.

    Epoch length defaults to one pass of branch 0 (``steps_per_epoch=None``); other branches start new
    passes (fresh permutations) whenever they run out. Each branch has its own random stream, so changing
    one branch does not change the others' order.
    """

    def __init__(self, branches: Sequence[Branch | tuple], seed: int = 0, rank: int = 0, world_size: int = 1,
                 steps_per_epoch: int | None = None) -> None:  # fmt: skip
        _check_rank(rank, world_size)
        self.branches = [b if isinstance(b, Branch) else Branch(*b) for b in branches]
        if not self.branches:
            raise ValueError("MultiBranchBatchSampler needs at least one branch")
        lengths = [b.length for b in self.branches]
        self.offsets = [int(x) for x in np.concatenate([[0], np.cumsum(lengths)[:-1]])]
        self.sizes = [b.batch_size for b in self.branches]
        self._streams: list[_RandomStream | _BalancedStream] = []
        for i, b in enumerate(self.branches):
            if b.kind == "random":
                self._streams.append(_RandomStream(b.length, b.batch_size, rank, world_size, int(seed), i))
            elif b.kind == "balanced":
                if isinstance(b.source, int | np.integer):
                    raise ValueError(f"branch {i}: a 'balanced' branch needs labels, not a length")
                if b.batch_size % b.k:
                    raise ValueError(f"branch {i}: batch_size {b.batch_size} is not a multiple of k={b.k}")
                self._streams.append(
                    _BalancedStream(
                        np.asarray(b.source),
                        b.batch_size // b.k,
                        b.k,
                        rank,
                        world_size,
                        int(seed),
                        i,
                        b.min_images,
                    )
                )
            else:
                raise ValueError(f"branch {i}: unknown kind {b.kind!r} (use 'random' or 'balanced')")
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.batches_per_epoch = int(steps_per_epoch or self._streams[0].steps_per_cycle)
        self.batch_size = sum(self.sizes)
        self.epoch = 0
        self.start_batch = 0

    def batch(self, step: int) -> list[int]:
        parts = [s.batch(self.epoch, step) + off for s, off in zip(self._streams, self.offsets, strict=True)]
        return np.concatenate(parts).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_batch, self.batches_per_epoch):
            yield self.batch(step)

    def split(self, batch):
        """Cut a flat batch (list, numpy array or tensor, dim 0) into one part per branch."""
        if len(batch) != self.batch_size:
            raise ValueError(f"batch has {len(batch)} rows, expected {self.batch_size} (sizes {self.sizes})")
        bounds = np.cumsum([0, *self.sizes])
        return [batch[int(a) : int(b)] for a, b in itertools.pairwise(bounds)]

    def to_local(self, indices) -> list[np.ndarray]:
        """Global indices of one yielded batch -> per-branch local indices."""
        return [np.asarray(part) - off for part, off in zip(self.split(indices), self.offsets, strict=True)]


class TaggedBranches:
    """A :class:`MultiBranchBatchSampler` whose branches all index one dataset, yielding each step's rows as
    ``(local index, branch number)`` keys for :class:`~faceforge.data.dataset.TaggedRows` (branch 0 first).

    ``branch_names`` name the branches (e.g. ``("random", "balanced")``) for objectives that train on some.
    """

    def __init__(self, sampler: MultiBranchBatchSampler, branch_names: Sequence[str]) -> None:
        if len(branch_names) != len(sampler.branches):
            raise ValueError(f"{len(sampler.branches)} branches but names {list(branch_names)}")
        self.sampler = sampler
        self.branch_names = tuple(branch_names)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.sampler:
            parts = self.sampler.to_local(batch)
            yield [(int(i), b) for b, part in enumerate(parts) for i in part]
