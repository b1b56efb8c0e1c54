"""Share one embedder between concurrent requests: a queue and a pool of worker threads that run batches.

A request puts its aligned faces on the queue and waits for its own rows. A worker takes the first waiting
job, then keeps taking jobs for up to ``max_wait_ms`` or until ``max_batch`` faces, runs the embedder once
on all of them and hands each job its slice. With ``workers`` > 1 several batches run at once (for
embedders that do not use every core themselves; onnxruntime and torch already do, so 1 is the default).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from faceforge.core.finite import check_finite

log = logging.getLogger(__name__)


@dataclass
class _Job:
    faces: np.ndarray
    future: Future


class Batcher:
    """``embed(faces) -> embeddings`` from any thread, batched across threads; see the module doc."""

    def __init__(
        self,
        embedder: Any,
        workers: int = 1,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.embedder = embedder
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.on_batch = on_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"faceforge-embed-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for t in self._threads:
            t.start()

    def embed(self, faces: np.ndarray, timeout: float | None = 120.0) -> np.ndarray:
        if self._closed:
            raise RuntimeError("the embedding pool is closed")
        fut: Future = Future()
        self._queue.put(_Job(np.asarray(faces), fut))
        return fut.result(timeout=timeout)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            n = len(job.faces)
            deadline = time.perf_counter() + self.max_wait
            while n < self.max_batch:
                left = deadline - time.perf_counter()
                try:
                    nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # let the other workers see the stop too
                    break
                jobs.append(nxt)
                n += len(nxt.faces)
            self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        t0 = time.perf_counter()
        try:
            out = check_finite(self.embedder.embed(np.concatenate([j.faces for j in jobs])), self.embedder)
        except Exception as exc:  # every waiting request gets the error, the worker lives on
            for j in jobs:
                j.future.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(sum(len(j.faces) for j in jobs), time.perf_counter() - t0)
        start = 0
        for j in jobs:
            j.future.set_result(out[start : start + len(j.faces)])
            start += len(j.faces)

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        for t in self._threads:
            t.join(timeout=10)
