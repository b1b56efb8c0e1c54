"""The accuracy part of a model's reduced-precision parity record (:mod:`faceforge.embedders.parity`).

The first pairs evaluation (an ``lfw:PAIRS:IMAGES`` benchmark, e.g. LFW pairsDevTest) that runs a model in
bf16 while its parity record has no accuracy part embeds that benchmark's faces in fp32 as well (the same
network, shared weights; through the embedding cache, so a later ``--precision fp32`` run reads them back) and
records the insightface 10-fold accuracy of both and the change,

    ``delta_points = 100 * (acc_reduced - acc_fp32)``,

on the pairs both can score. This costs one fp32 pass over the benchmark's faces, once per model; every later
evaluation reads the record. When ``--precision auto`` finds ``|delta_points|`` above the bar, the caller
re-embeds in fp32 and the result says so.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from faceforge.core.hashing import file_sha256
from faceforge.embedders.cache import cached_embed_paths
from faceforge.eval.verification import kfold_accuracy

__all__ = ["measure_accuracy_part", "wants_accuracy_part"]


def wants_accuracy_part(embedder: Any) -> bool:
    """True when ``embedder`` runs in a reduced precision whose parity record lacks the accuracy part."""
    policy = getattr(embedder, "policy", None)
    record = getattr(policy, "record", None)
    return (
        record is not None
        and record.accuracy is None
        and getattr(embedder, "precision", "fp32") == record.precision
        and hasattr(embedder, "with_precision")
    )


def _accuracy(e1: np.ndarray, e2: np.ndarray, issame: np.ndarray, n_folds: int) -> float:
    dist = np.sum((e1 - e2) ** 2, axis=1)
    return float(kfold_accuracy(dist, issame, n_folds=n_folds).mean)


def measure_accuracy_part(
    embedder: Any,
    name: str,
    pairs_file: str,
    p1: Sequence[str],
    p2: Sequence[str],
    issame: np.ndarray,
    rows: Any,
    flip: bool,
    n_folds: int,
    cache_dir: Any,
    batch_size: int,
    progress: bool,
) -> bool:
    """Fill the record's accuracy part from one pairs benchmark; True when ``auto`` now chooses fp32.

    ``rows(paths)`` gives the reduced-precision, L2-normalised embeddings the run already computed.
    """
    t0 = time.perf_counter()
    files = sorted(set(p1) | set(p2))
    twin = embedder.with_precision("fp32")
    ref, _ = cached_embed_paths(
        twin, files, flip=flip, cache_dir=cache_dir, batch_size=batch_size, progress=progress
    )
    index = {f: i for i, f in enumerate(files)}
    f1, f2 = ref[[index[p] for p in p1]], ref[[index[p] for p in p2]]
    r1, r2 = rows(list(p1)), rows(list(p2))
    ok = ~(np.isnan(f1).any(1) | np.isnan(f2).any(1) | np.isnan(r1).any(1) | np.isnan(r2).any(1))
    same = np.asarray(issame, dtype=bool)[ok]
    if int(ok.sum()) < n_folds:
        return False  # too few scorable pairs to say anything; the benchmark itself reports why
    acc32 = _accuracy(f1[ok], f2[ok], same, n_folds)
    accr = _accuracy(r1[ok], r2[ok], same, n_folds)
    record = embedder.policy.record
    before = embedder.precision
    record.accuracy = {
        "benchmark": name,
        "pairs_file": str(pairs_file),
        "pairs_sha256": file_sha256(pairs_file),
        "pairs_scored": int(ok.sum()),
        "n_folds": int(n_folds),
        "flip": bool(flip),
        "fp32": acc32,
        record.precision: accr,
        "delta_points": 100.0 * (accr - acc32),
        "fp32_pass_seconds": time.perf_counter() - t0,
    }
    embedder.policy.update(record)
    return embedder.precision != before
