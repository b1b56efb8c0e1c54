"""How close the HNSW index comes to exact search on a gallery: recall@1 and time per query for several
``efSearch``, measured in one run (``faceforge serve recall``, ``benchmarks/serve_load.py``).

* Recall@1: the fraction of queries whose best face from the index is the best face of exact
  inner-product search (``faiss.IndexFlatIP``) over the same live faces. Optionally also over the queries
  whose exact best score reaches a decision threshold (the searches that end in a match).
* Time per query: one-query searches on ``threads`` OpenMP threads (1: as the server searches), mean over
  the timing queries after one warm-up; exact search is timed on the same queries just before, so the
  speed-up is a ratio from one run on one machine.
* Queries: real probe embeddings when there are some; :func:`probe_like_queries` makes stand-ins from the
  gallery itself: a face's embedding plus isotropic Gaussian noise scaled so that the query's cosine with
  its source is about ``target_cosine`` (0.6 by default: SFace's median genuine cosine on LFW pairsDevTest
  probes is 0.63), renormalised. Such queries are what makes HNSW miss: their best face is barely closer
  than the crowd (near-duplicates, cosine 0.99, are found at any setting). This noise model is a
  reconstruction of "a probe of an enrolled person", not a measured distribution; real probes decide.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from faceforge.serve.index import FaceIndex, _faiss


def probe_like_queries(
    embeddings: np.ndarray, n: int, target_cosine: float, rng: np.random.Generator
) -> np.ndarray:
    """``n`` unit queries ``(x + s z) / |x + s z|`` from random rows ``x`` of ``embeddings`` (unit, d-dim),
    ``z ~ N(0, I)``, ``s = sqrt((1/c^2 - 1) / d)``: then ``|s z|^2 ~ (1/c^2 - 1)`` and the cosine with ``x``
    is about ``c = target_cosine``."""
    if not 0.0 < target_cosine <= 1.0:
        raise ValueError(f"target cosine must lie in (0, 1], got {target_cosine}")
    emb = np.asarray(embeddings, dtype=np.float32)
    if not len(emb):
        raise ValueError("the gallery is empty: no queries to make")
    d = emb.shape[1]
    src = emb[rng.choice(len(emb), size=n, replace=len(emb) < n)]
    s = np.sqrt((1.0 / target_cosine**2 - 1.0) / d)
    q = src + rng.standard_normal(src.shape).astype(np.float32) * np.float32(s)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def per_query_ms(search: Callable[[np.ndarray], Any], queries: np.ndarray) -> float:
    """Mean milliseconds of one-query calls of ``search`` over ``queries``, after one warm-up call."""
    search(queries[:1])
    t0 = time.perf_counter()
    for q in queries:
        search(q[None])
    return (time.perf_counter() - t0) / len(queries) * 1000


def recall_sweep(
    index: FaceIndex,
    query_sets: dict[str, np.ndarray],
    ef_values: Sequence[int],
    match_threshold: float | None = None,
    timing_set: str | None = None,
    timing_queries: int = 200,
    threads: int = 1,
) -> dict[str, Any]:
    """Recall@1 of ``index`` against exact search over its own live faces, per query set and ``efSearch``,
    and time per query (module doc). ``timing_set``: the query set timed (default: the first)."""
    faiss = _faiss()
    ids, emb = index.contents()
    if not len(ids):
        raise ValueError("the index is empty")
    exact = faiss.IndexIDMap2(faiss.IndexFlatIP(emb.shape[1]))
    exact.add_with_ids(emb, ids)
    sets = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in query_sets.items() if len(v)}
    if not sets:
        raise ValueError("no queries")
    timed = sets[timing_set or next(iter(sets))][:timing_queries]
    truth = {k: exact.search(q, 1) for k, q in sets.items()}
    index.search(timed[:1], 1)  # the index sets its own per-thread OpenMP count on a thread's first search
    faiss.omp_set_num_threads(int(threads))
    try:
        exact_ms = per_query_ms(lambda q: exact.search(q, 1), timed)
        rows = []
        efs = sorted({int(e) for e in ef_values}) if index.kind == "hnsw" else [None]
        for ef in efs:
            row: dict[str, Any] = {"ef_search": ef}
            for name, q in sets.items():
                scores, best = truth[name]
                _, got = index.search(q, 1, ef_search=ef)
                hit = got[:, 0] == best[:, 0]
                row[f"recall_at_1 {name}"] = round(float(hit.mean()), 4)
                if match_threshold is not None:
                    m = scores[:, 0] >= match_threshold
                    row[f"recall_at_1 {name} (matches)"] = round(float(hit[m].mean()), 4) if m.any() else None
            ms = per_query_ms(lambda q, ef=ef: index.search(q, 1, ef_search=ef), timed)
            row.update(ms_per_query=round(ms, 3), speedup_vs_exact=round(exact_ms / ms, 2))
            rows.append(row)
    finally:
        if index.settings.threads > 0:
            faiss.omp_set_num_threads(int(index.settings.threads))
    out: dict[str, Any] = {
        "index": index.describe(),
        "faces": len(ids),
        "exact_ms_per_query": round(exact_ms, 3),
        "queries": {k: len(v) for k, v in sets.items()},
        "timing": {"set": timing_set or next(iter(sets)), "queries": len(timed), "threads": int(threads)},
        "rows": rows,
    }
    if match_threshold is not None:
        out["match_threshold"] = float(match_threshold)
        out["matches"] = {k: int((truth[k][0][:, 0] >= match_threshold).sum()) for k in sets}
    return out
