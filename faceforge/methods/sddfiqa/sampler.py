"""Batches balanced over bins of a numeric label (SDD-FIQA's quality pseudo-labels).

SDD-FIQA's pseudo-labels are roughly Beta-distributed (most images in the middle of [0, 100], few at the ends),
so a regressor trained on shuffled batches sees the extremes rarely; the maintainers advise balanced batches
(TFace issue #70). The paper does not say how; the choice here:

* the labelled rows are cut into ``bins`` **equal-width** bins over ``[min, max]`` of their labels (equal-count
  bins would be balanced by construction and change nothing); a bin without rows is dropped (and listed in
  :attr:`BinBalancedBatchSampler.bin_counts` as 0);
* every batch takes ``batch_size // B`` rows from each of the ``B`` non-empty bins, and the remaining
  ``batch_size mod B`` rows from one more row each of the bins ``(step * W + rank + j) mod B``, rotating, so no bin
  is favoured over an epoch;
* the rows of a bin are drawn without replacement within a batch when the bin has enough rows (with
  replacement otherwise), from a generator seeded by ``(seed, epoch, step, rank, bin)``: a batch is a pure
  function of those numbers, so ``set_epoch(epoch, start_batch)`` resumes exactly and ranks draw independently;
* rows without a label are never drawn (the objective would mask them anyway);
* an epoch has as many batches as a shuffled pass over the labelled rows: ``n_labelled // (batch_size * W)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from faceforge.data.samplers import ResumableBatches

__all__ = ["BinBalancedBatchSampler", "label_bins"]


def label_bins(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-width bin of every value over ``[min, max]`` (``bins`` bins; the maximum falls in the last one)
    and the ``bins + 1`` edges. All values equal: everything in bin 0."""
    v = np.asarray(values, dtype=np.float64)
    lo, hi = float(v.min()), float(v.max())
    edges = np.linspace(lo, hi, bins + 1)
    if hi == lo:
        return np.zeros(v.shape, dtype=np.int64), edges
    idx = np.floor((v - lo) / (hi - lo) * bins).astype(np.int64)
    return np.clip(idx, 0, bins - 1), edges


class BinBalancedBatchSampler(ResumableBatches):
    """Batch sampler (lists of dataset rows) balanced over equal-width bins of ``values[mask]`` (module doc)."""

    branch_names = ("all",)

    def __init__(
        self,
        values: np.ndarray,
        mask: np.ndarray,
        bins: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if bins < 2:
            raise ValueError(f"balanced sampling needs at least 2 label bins, got {bins}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        mask = np.asarray(mask, dtype=bool)
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            raise ValueError("balanced sampling over label bins: no row has a label")
        which, self.edges = label_bins(np.asarray(values, dtype=np.float64)[rows], bins)
        self.bin_counts = np.bincount(which, minlength=bins)
        self.bin_rows = [rows[which == b] for b in range(bins) if self.bin_counts[b] > 0]
        self.batch_size, self.seed, self.rank, self.world_size = int(batch_size), int(seed), rank, world_size
        self.n_labelled = int(rows.size)
        self.batches_per_epoch = self.n_labelled // (self.batch_size * world_size)
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"{self.n_labelled} labelled rows cannot fill one step of {world_size} rank(s) x batch size "
                f"{self.batch_size}"
            )
        self.epoch = 0
        self.start_batch = 0

    def per_bin(self, step: int) -> np.ndarray:
        """How many rows each non-empty bin gives to this rank's batch at ``step``."""
        b = len(self.bin_rows)
        counts = np.full(b, self.batch_size // b, dtype=np.int64)
        extra = self.batch_size % b
        start = step * self.world_size + self.rank
        counts[(start + np.arange(extra)) % b] += 1
        return counts

    def batch(self, step: int) -> list[int]:
        out: list[np.ndarray] = []
        for j, (rows, k) in enumerate(zip(self.bin_rows, self.per_bin(step), strict=True)):
            if k == 0:
                continue
            rng = np.random.default_rng((self.seed, self.epoch, step, self.rank, j))
            out.append(rows[rng.choice(rows.size, int(k), replace=rows.size < k)])
        return np.concatenate(out).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_batch, self.batches_per_epoch):
            yield self.batch(step)

    def describe(self) -> dict[str, object]:
        return {
            "kind": "balanced over equal-width label bins",
            "edges": [float(e) for e in self.edges],
            "rows_per_bin": [int(c) for c in self.bin_counts],
            "batches_per_epoch": self.batches_per_epoch,
        }
