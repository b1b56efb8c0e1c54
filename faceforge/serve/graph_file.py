"""The HNSW graph file (:mod:`faceforge.serve.index`, "Graph file"): one ``.npz`` with the serialised faiss
index (``index``, uint8), the tombstoned face ids (``tombstones``) and a JSON header (``meta``: layout
``format``, ``kind``, ``dim``, ``M``, ``ef_construction``, ``seq``, ``faces``). Written atomically, read
with ``allow_pickle=False``; a file that cannot be read or was made with other settings reads as ``None``
(the caller then builds from the database). The file holds the embeddings: keep it where the database is."""

from __future__ import annotations

import json
import logging
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from faceforge.core.atomic import atomic_writer

log = logging.getLogger(__name__)

#: version of the graph file layout; another version is ignored (full build)
GRAPH_FORMAT = 1


def write_graph(path: Path, index_bytes: np.ndarray, tombstones: np.ndarray, meta: dict[str, Any]) -> None:
    with atomic_writer(path) as fh:
        np.savez(
            fh,
            index=index_bytes,
            tombstones=tombstones,
            meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
        )


def read_graph(path: Path, want: dict[str, Any]) -> tuple[np.ndarray, set[int], int] | None:
    """``(index bytes, tombstones, seq)`` of the file at ``path`` if its header has every ``want`` value."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            differs = {k: (meta.get(k), v) for k, v in want.items() if meta.get(k) != v}
            if differs:
                log.info("graph file %s was made with other settings %s: building", path, differs)
                return None
            return (
                np.ascontiguousarray(z["index"], dtype=np.uint8),
                {int(i) for i in z["tombstones"]},
                int(meta["seq"]),
            )
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("graph file %s is unreadable (%s): building from the database", path, exc)
        return None


def remove_stale_writes(path: Path, older_than_s: float = 3600.0) -> None:
    """Delete the temporary files a writer killed mid-save left beside ``path`` (``.<name>.*.tmp``, see
    :func:`faceforge.core.atomic.atomic_writer`) once they are an hour old (a live writer's is younger)."""
    now = time.time()
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > older_than_s:
                tmp.unlink()
                log.info("removed %s, left by an interrupted graph save", tmp)
        except OSError:
            pass
