"""Work on every core: how many, and a process pool whose workers each build their own copy of a tool once.

Runtimes that compute on one core (dlib's DNN, OpenCV's JPEG codec, PyTorch on many small tensors) reach the
machine's limit only with one process per core. :class:`ProcessPool` starts ``workers`` processes
(:func:`start_method`: ``fork`` where that is safe, a parent with no other thread that has not imported
PyTorch, so the workers start at once with the parent's modules; ``spawn`` otherwise, since a forked child of
a process holding PyTorch/OpenMP threads can hang), builds the tool in each worker once (``build(**options)``, a module-level function, so it
can be named across processes), limits each worker to one compute thread (OpenCV, PyTorch, OpenMP, and the
BLAS libraries through ``threadpoolctl``: an OpenBLAS left at one thread per core spins a helper thread that
takes the core another worker runs on), and maps
a module-level function over items **in order**. The results are those of one process doing the same items
in the same order with one compute thread (:func:`one_thread`): each item is computed alone, whatever the
number of workers.

A script that starts a pool must guard its entry point with ``if __name__ == "__main__":`` (the ``spawn``
start method imports the main module in every worker); the ``faceforge`` command does. Spawning costs each
worker its imports (about half a second for OpenCV and scikit-image, a second more for PyTorch on this
project's 2-core machine): on a job of a few thousand photos that is most of what separates two workers
from twice one.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from threadpoolctl import threadpool_limits

__all__ = [
    "ProcessPool",
    "available_cores",
    "one_thread",
    "resolve_workers",
    "start_method",
    "worker_tool",
]

_TOOL: Any = None


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int) -> int:
    """``workers`` if positive, else one per available core (0 or negative means "all cores")."""
    return int(workers) if workers and workers > 0 else available_cores()


def start_method() -> str:
    """``fork`` if this process may fork safely (the platform has it, only one thread runs, and PyTorch, whose
    OpenMP pool a child cannot use after a fork, is not imported), else ``spawn``."""
    safe = (
        "fork" in multiprocessing.get_all_start_methods()
        and threading.active_count() == 1
        and "torch" not in sys.modules
    )
    return "fork" if safe else "spawn"


def _noop() -> None:
    return None


def _one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one compute thread (OpenCV, PyTorch, BLAS, and ``OMP_NUM_THREADS`` for what starts
    in it), as every pool worker does; all restored after.

    PyTorch's results change in the last bits with its thread count (oneDNN splits the sums differently), so
    the one-process path of a job whose output must equal the pool's runs its compute this way too."""
    torch = sys.modules.get("torch")
    before_torch = torch.get_num_threads() if torch is not None else None
    before_omp = os.environ.get("OMP_NUM_THREADS")
    try:
        import cv2

        before_cv2: int | None = cv2.getNumThreads()
    except ImportError:
        before_cv2 = None
    _one_thread()
    try:
        with threadpool_limits(limits=1):  # (restores the BLAS thread counts on exit)
            yield
    finally:
        if before_omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before_omp
        if torch is not None and before_torch is not None:
            torch.set_num_threads(before_torch)
        if before_cv2 is not None:
            import cv2

            cv2.setNumThreads(before_cv2)


def _init(build: Callable[..., Any] | None, options: dict[str, Any]) -> None:
    global _TOOL
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # a BLAS library loaded from here on starts with one thread
    _one_thread()
    threadpool_limits(limits=1)  # those already loaded (numpy's, scipy's, OpenCV's OpenBLAS)
    _TOOL = build(**options) if build is not None else None
    threadpool_limits(limits=1)  # and any the tool's build loaded


def worker_tool() -> Any:
    """The tool this worker built (inside a function mapped by :class:`ProcessPool`)."""
    return _TOOL


class ProcessPool:
    """``workers`` processes, each holding ``build(**options)``; :meth:`map` keeps the input order.

    The processes start here (:attr:`method` is :func:`start_method`'s choice, decided now), not at the first
    :meth:`map`: a pool made before a progress bar's monitor thread exists can still fork."""

    def __init__(
        self, workers: int, build: Callable[..., Any] | None = None, options: dict[str, Any] | None = None
    ) -> None:
        self.workers = resolve_workers(workers)
        self.method = start_method()
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context(self.method),
            initializer=_init,
            initargs=(build, dict(options or {})),
        )
        self._pool.submit(_noop)  # with fork, every worker starts on the first submit (none is waited for)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int = 1) -> Iterator[Any]:
        return self._pool.map(fn, items, chunksize=chunksize)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
