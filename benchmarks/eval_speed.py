"""Time and peak memory of the evaluation protocols on 1M, 10M and 100M scored pairs.

Protocols timed (all numpy, on synthetic scores with a realistic genuine/impostor overlap):

- ``kfold``: :func:`faceforge.eval.verification.kfold_accuracy` (insightface 10-fold, 400 thresholds);
- ``roc_summary``: :func:`faceforge.eval.roc.summarize_verification` (ROC, AUC, EER, TAR@FAR both rules);
- ``allpairs``: :func:`faceforge.eval.allpairs.allpairs_verification` on embeddings of a labelled set
  with about N pairs (streamed histogram mode), i.e. scoring the pairs as well.

Baseline: insightface's ``calculate_roc`` algorithm, rewritten here as the reference loop it is (for each
of 10 contiguous folds, the accuracy of each of 400 thresholds on the training folds by boolean masks,
argmax, then the held-out fold), run on the same distances in the same process at 1M pairs (it scales
linearly, so 10M and 100M are skipped unless ``--baseline-all``). Target: at least 10x faster at 1M with
identical accuracy. Peak memory is the tracemalloc peak of each call (numpy allocations are traced).

    python benchmarks/eval_speed.py [--sizes 1000000 10000000 100000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import REPO

from faceforge.eval.allpairs import allpairs_verification
from faceforge.eval.roc import summarize_verification
from faceforge.eval.verification import fold_ids, kfold_accuracy


def insightface_kfold(dist: np.ndarray, issame: np.ndarray, n_folds: int = 10) -> float:
    """Reference 10-fold accuracy as insightface computes it: a Python loop over folds and thresholds."""
    thresholds = np.arange(0, 4, 0.01)
    folds = fold_ids(len(dist), n_folds)
    accs = []
    for f in range(n_folds):
        train, test = folds != f, folds == f
        d_tr, s_tr = dist[train], issame[train]
        acc_train = np.zeros(len(thresholds))
        for i, t in enumerate(thresholds):
            pred = d_tr < t
            acc_train[i] = (np.sum(pred & s_tr) + np.sum(~pred & ~s_tr)) / len(d_tr)
        best = thresholds[int(np.argmax(acc_train))]
        for t in thresholds:  # insightface also evaluates every threshold on the test fold (TPR/FPR)
            pred = dist[test] < t
            np.sum(pred & issame[test])
            np.sum(pred & ~issame[test])
        pred = dist[test] < best
        accs.append((np.sum(pred & issame[test]) + np.sum(~pred & ~issame[test])) / np.count_nonzero(test))
    return float(np.mean(accs))


def measure(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, peak / 2**20


def synthetic_pairs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores: genuine ~ N(0.55, 0.15), impostor ~ N(0.05, 0.1), 1 genuine in 10."""
    rng = np.random.default_rng(seed)
    issame = rng.random(n) < 0.1
    cos = np.where(issame, rng.normal(0.55, 0.15, n), rng.normal(0.05, 0.1, n)).clip(-1, 1)
    return cos, issame


def run_size(n: int, baseline: bool) -> dict[str, Any]:
    cos, issame = synthetic_pairs(n)
    dist = 2.0 - 2.0 * cos  # squared L2 of unit vectors
    row: dict[str, Any] = {"pairs": n}
    kf, t, m = measure(kfold_accuracy, dist, issame)
    row["kfold"] = {"seconds": round(t, 3), "peak_mb": round(m, 1), "accuracy": kf.mean}
    _, t, m = measure(summarize_verification, cos, issame, fars=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1))
    row["roc_summary"] = {"seconds": round(t, 3), "peak_mb": round(m, 1)}
    # a labelled set with about n pairs: N images, N (N - 1) / 2 pairs, 10 images per identity
    images = int((1 + np.sqrt(1 + 8 * n)) / 2)
    rng = np.random.default_rng(1)
    labels = np.arange(images) // 10
    centres = rng.normal(size=(images // 10 + 1, 128))
    emb = (centres[labels] + 0.9 * rng.normal(size=(images, 128))).astype(np.float32)
    _, t, m = measure(allpairs_verification, emb, labels, mode="histogram")
    row["allpairs"] = {
        "images": images,
        "pairs": images * (images - 1) // 2,
        "seconds": round(t, 3),
        "peak_mb": round(m, 1),
        "mode": "histogram",
    }
    if baseline:
        base_acc, t, m = measure(insightface_kfold, dist, issame)
        row["baseline_insightface_kfold"] = {
            "seconds": round(t, 3),
            "peak_mb": round(m, 1),
            "accuracy": base_acc,
        }
        row["kfold_speedup"] = round(t / row["kfold"]["seconds"], 1)
        row["kfold_identical_accuracy"] = bool(abs(base_acc - kf.mean) < 1e-12)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000, 100_000_000])
    ap.add_argument("--baseline-all", action="store_true", help="run the baseline at every size")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "eval_speed.json")
    args = ap.parse_args()
    rows = []
    for n in args.sizes:
        row = run_size(n, baseline=n == args.sizes[0] or args.baseline_all)
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {
        "benchmark": "eval_speed",
        "settings": {
            "scores": "synthetic cosines, genuine N(0.55, 0.15), impostor N(0.05, 0.1), 10 % genuine",
            "kfold": "10 contiguous folds, squared-L2 thresholds np.arange(0, 4, 0.01)",
            "roc_summary_fars": [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
            "memory": "tracemalloc peak of the call",
        },
        "target": "kfold at least 10x faster than the insightface loop at 1M pairs, identical accuracy",
        "results": rows,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "numpy": np.__version__},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
