"""The faiss index over the gallery's face embeddings, kept equal to the database.

* Exact search (``faiss.IndexFlatIP``: inner product = cosine on L2-normalised embeddings) up to
  ``hnsw_above`` faces; past that an HNSW graph (``faiss.IndexHNSWFlat``, Malkov & Yashunin, "Efficient and
  robust approximate nearest neighbor search using Hierarchical Navigable Small World graphs", TPAMI 2018)
  with ``M`` links per node, ``ef_construction`` and ``ef_search``. Both sit in a ``faiss.IndexIDMap2``,
  so faiss ids are the database's face ids (which are never reused).
* Deletion: the exact index removes vectors (``remove_ids``). HNSW graphs cannot drop a node, so a deleted
  face is kept in a tombstone set that every search excludes (an ``IDSelectorNot`` in the search
  parameters); when tombstones pass ``compact_fraction`` of the index it is rebuilt without them.
* Builds while serving: the compaction and the switch from exact search to HNSW at ``hnsw_above`` build
  the new index in a background thread (minutes for a million faces) while searches go on against the
  current one; enrolments and deletions made meanwhile go to the current index and are replayed onto the
  new one before it takes over. Only a re-embedded face (an id added back after its deletion) rebuilds
  synchronously.
* Source of truth: :meth:`FaceIndex.rebuild` loads the database's snapshot, :meth:`FaceIndex.sync` applies
  the database's change feed after the last applied ``seq`` (so other server processes' enrolments and
  deletions arrive too), and :meth:`FaceIndex.verify` compares the index with the database by count and by
  :func:`embedding_checksum`. A crash between a commit and the index update loses nothing: the next sync or
  start-up reads the committed change.
* Graph file (``graph_file``, layout in :mod:`~faceforge.serve.graph_file`): saved after a build and at
  :meth:`FaceIndex.save_graph` (on shutdown); at start-up :meth:`FaceIndex.rebuild` loads it, applies the
  database's later changes and checks the result like a build (count and checksum). A missing, unreadable
  or stale file, other settings or another dimension mean a full build from the database.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faceforge.serve.graph_file import GRAPH_FORMAT, read_graph, remove_stale_writes, write_graph

log = logging.getLogger(__name__)


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a dependency of faceforge[serve]
        raise RuntimeError(
            "the face index needs faiss: pip install faiss-cpu (or 'faceforge[serve]')"
        ) from exc
    return faiss


def embedding_checksum(ids: np.ndarray, embeddings: np.ndarray) -> str:
    """Order-independent SHA-256 of (id, embedding) pairs: rows sorted by id, then the int64 ids and the
    float32 embeddings hashed as bytes. Equal iff the same faces hold bit-identical embeddings."""
    ids = np.asarray(ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(ids[order]).astype("<i8").tobytes())
    if len(ids):
        h.update(
            np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32)[order]).astype("<f4").tobytes()
        )
    return h.hexdigest()


@dataclass
class IndexSettings:
    """How the index searches. ``hnsw_above``: faces at which exact search gives way to HNSW (0: never)."""

    hnsw_above: int = 250_000
    #: M 48 / efConstruction 400 / efSearch 1024: recall@1 against exact search 0.993 (300 real probes) at
    #: 1M face-like 128-d vectors, 3.05x faster than exact on one thread; efSearch 512 gave 0.987 (6.1x) in
    #: the same run, 0.997 on another build (benchmarks/serve_load.py; README "Numbers")
    hnsw_m: int = 48
    ef_construction: int = 400
    ef_search: int = 1024
    compact_fraction: float = 0.1
    #: OpenMP threads faiss may use per search (set in each thread that searches: OpenMP keeps the count per
    #: thread). 1 suits a server: concurrent requests already fill the cores, and OpenMP's thread start-up
    #: dominates a single query on a small index.
    threads: int = 1
    #: where the HNSW graph is saved and loaded from (module doc); ``None``: always build at start-up
    graph_file: str | None = None


@dataclass
class VerifyResult:
    ok: bool
    index_count: int
    db_count: int
    index_checksum: str
    db_checksum: str
    seq: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "index_faces": self.index_count,
            "db_faces": self.db_count,
            "index_checksum": self.index_checksum,
            "db_checksum": self.db_checksum,
            "seq": self.seq,
        }


class FaceIndex:
    """faiss over face ids; thread-safe (one lock: searches are short, writes are rare)."""

    def __init__(self, dim: int, settings: IndexSettings | None = None) -> None:
        self.dim = int(dim)
        self.settings = settings or IndexSettings()
        self.seq = 0
        self._lock = threading.RLock()
        self._tombstones: set[int] = set()
        if self.settings.threads > 0:
            _faiss().omp_set_num_threads(int(self.settings.threads))
        self._index = self._new_index("flat")
        self.kind = "flat"
        self._saved_seq = -1  # seq of the last graph file written or loaded (-1: none)
        self._threads_set = threading.local()  # OpenMP's thread count is per calling thread
        self._builder: threading.Thread | None = None  # a background build (compaction, exact -> HNSW)
        self._replay: list[tuple[str, np.ndarray, Any]] | None = None  # changes made during that build
        #: where the last :meth:`rebuild` got the index: "database" (built) or "graph file" (loaded, checked)
        self.source = "database"

    # -- construction
    def _new_index(self, kind: str) -> Any:
        faiss = _faiss()
        if kind == "flat":
            inner = faiss.IndexFlatIP(self.dim)
        else:
            inner = faiss.IndexHNSWFlat(self.dim, self.settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = self.settings.ef_construction
            inner.hnsw.efSearch = self.settings.ef_search
        return faiss.IndexIDMap2(inner)

    def _kind_for(self, n: int) -> str:
        return "hnsw" if self.settings.hnsw_above and n >= self.settings.hnsw_above else "flat"

    def _build(self, ids: np.ndarray, emb: np.ndarray, kind: str | None = None) -> None:
        kind = kind or self._kind_for(len(ids))
        index = self._fill(self._new_index(kind), ids, emb)
        self._index, self.kind, self._tombstones = index, kind, set()

    def _fill(self, index: Any, ids: np.ndarray, emb: np.ndarray) -> Any:
        """Add ``(ids, emb)`` to an empty ``index`` on every core; returns it."""
        if len(ids):
            faiss = _faiss()
            faiss.omp_set_num_threads(os.cpu_count() or 1)  # a (re)build uses every core
            try:
                index.add_with_ids(
                    np.ascontiguousarray(emb, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64)
                )
            finally:
                if self.settings.threads > 0:
                    faiss.omp_set_num_threads(int(self.settings.threads))
        return index

    def rebuild(self, store: Any, save: bool = True) -> VerifyResult:
        """Make the index equal to ``store`` and check it (count and checksum): from the graph file when it
        holds a graph that, after the database's later changes, matches; else built from the database (and
        saved to the graph file unless ``save`` is false)."""
        t0 = time.perf_counter()
        self.wait_for_build()  # a background build would replace what this makes
        path = Path(self.settings.graph_file) if self.settings.graph_file else None
        if path is not None:
            remove_stale_writes(path)
        if path is not None and path.is_file() and self._load_graph(path):
            n_changes = store.latest_seq() - self.seq
            while self.sync(store):  # the changes after the file's seq (sync applies them in slices)
                pass
            result = self.verify(store)
            if result.ok:
                log.info(
                    "index loaded from %s: %d faces (%s), %d later changes applied, in %.1f s; checksum matches",
                    path,
                    result.index_count,
                    self.kind,
                    max(0, n_changes),
                    time.perf_counter() - t0,
                )
                self._saved_seq = result.seq if n_changes == 0 else -1
                self.source = "graph file"
                return result
            log.warning(
                "the graph in %s does not match the database %s: building from the database", path, result
            )
        self.source = "database"
        snap = store.snapshot()
        with self._lock:
            if len(snap.ids) and snap.embeddings.shape[1] != self.dim:
                raise ValueError(
                    f"the gallery's embeddings have {snap.embeddings.shape[1]} values, the model gives {self.dim}"
                )
            self._build(snap.ids, snap.embeddings)
            self.seq = snap.seq
            ids, emb = self._contents()
        result = VerifyResult(
            ok=bool(len(ids) == len(snap.ids)),
            index_count=len(ids),
            db_count=len(snap.ids),
            index_checksum=embedding_checksum(ids, emb),
            db_checksum=embedding_checksum(snap.ids, snap.embeddings),
            seq=snap.seq,
        )
        result.ok = result.ok and result.index_checksum == result.db_checksum
        log.info(
            "index rebuilt from the database: %d faces (%s) in %.1f s, checksum %s",
            len(ids),
            self.kind,
            time.perf_counter() - t0,
            "matches" if result.ok else "DIFFERS",
        )
        if result.ok and save:
            self.save_graph()
        return result

    # -- the graph file
    def _graph_meta(self) -> dict[str, Any]:
        s = self.settings
        return {
            "format": GRAPH_FORMAT,
            "kind": self.kind,
            "dim": self.dim,
            "M": s.hnsw_m,
            "ef_construction": s.ef_construction,
        }

    def save_graph(self) -> Path | None:
        """Write the HNSW index to ``graph_file`` (atomically) unless it is exact search (fast to build),
        no file is configured or nothing changed since the last save; returns the path written."""
        if not self.settings.graph_file:
            return None
        faiss = _faiss()
        with self._lock:
            if self.kind != "hnsw" or self.seq == self._saved_seq:
                return None
            meta = {**self._graph_meta(), "seq": self.seq, "faces": int(self._index.ntotal)}
            data = faiss.serialize_index(self._index)
            tomb = np.asarray(sorted(self._tombstones), dtype=np.int64)
            seq = self.seq
        path = Path(self.settings.graph_file)
        t0 = time.perf_counter()
        write_graph(path, data, tomb, meta)
        self._saved_seq = seq
        log.info(
            "index graph saved to %s (%d faces, seq %d) in %.1f s",
            path,
            meta["faces"],
            seq,
            time.perf_counter() - t0,
        )
        return path

    def _load_graph(self, path: Path) -> bool:
        """Replace the index by the one in ``path`` if it is readable and was made with these settings."""
        faiss = _faiss()
        found = read_graph(path, {**self._graph_meta(), "kind": "hnsw"})
        if found is None:
            return False
        data, tomb, seq = found
        try:
            index = faiss.deserialize_index(data)
        except RuntimeError as exc:
            log.warning("graph file %s is unreadable (%s): building from the database", path, exc)
            return False
        if index.d != self.dim or not hasattr(index, "id_map"):
            log.warning("graph file %s holds another kind of index: building from the database", path)
            return False
        faiss.downcast_index(index.index).hnsw.efSearch = self.settings.ef_search
        with self._lock:
            self._index, self.kind, self._tombstones, self.seq = index, "hnsw", tomb, seq
        return True

    # -- changes
    def add(self, ids: np.ndarray, emb: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return
        with self._lock:
            present = [int(i) for i in ids if self._has(int(i))]
            if present:  # applying the same change twice is harmless
                keep = ~np.isin(ids, present)
                ids, emb = ids[keep], np.asarray(emb)[keep]
                if not len(ids):
                    return
            if any(int(i) in self._tombstones for i in ids):
                # a re-added id (re-embedding) still has its old node in the HNSW graph: rebuild without it
                # (synchronously: a re-embedding moves the whole gallery, which needs a new graph anyway);
                # a background build running meanwhile sees the add and gives way (_replay_onto)
                if self._replay is not None:
                    self._replay.append(("add", ids, np.ascontiguousarray(emb, dtype=np.float32)))
                cur_ids, cur_emb = self._contents()
                self._build(
                    np.concatenate([cur_ids, ids]), np.concatenate([cur_emb, np.asarray(emb, np.float32)])
                )
                return
            emb = np.ascontiguousarray(emb, dtype=np.float32)
            self._index.add_with_ids(emb, ids)
            if self._replay is not None:
                self._replay.append(("add", ids, emb))
            if self.kind == "flat" and self._kind_for(self.count) == "hnsw":
                self._build_in_background("hnsw")

    def remove(self, ids: np.ndarray) -> None:
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64)]
        if not ids:
            return
        faiss = _faiss()
        with self._lock:
            if self._replay is not None:
                self._replay.append(("del", np.asarray(ids, dtype=np.int64), None))
            if self.kind == "flat":
                self._index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64)))
                return
            self._tombstones.update(i for i in ids if self._has_vector(i))
            if len(self._tombstones) > self.settings.compact_fraction * max(1, self._index.ntotal):
                self._build_in_background(self._kind_for(self.count))

    # -- background builds
    def _build_in_background(self, kind: str) -> None:
        """Build a new index of ``kind`` over the live faces in a thread while searches go on against the
        current one (call with the lock held). Changes made meanwhile are recorded and replayed onto the new
        index before it replaces the current one, so nothing is lost; one build at a time (a build due
        while one runs is left to the next change)."""
        if self._builder is not None:
            return
        ids, emb = self._contents()
        self._replay = []
        self._builder = threading.Thread(
            target=self._background_build, args=(ids, emb, kind), name="faceforge-index-build", daemon=True
        )
        self._builder.start()

    def _background_build(self, ids: np.ndarray, emb: np.ndarray, kind: str) -> None:
        t0 = time.perf_counter()
        try:
            index = self._fill(self._new_index(kind), ids, emb)
            with self._lock:
                tombstones = self._replay_onto(index, kind, self._replay or [])
                if tombstones is None:  # a re-added face: only a build over the current contents will do
                    cur_ids, cur_emb = self._contents()
                    self._build(cur_ids, cur_emb, kind)
                else:
                    self._index, self.kind, self._tombstones = index, kind, tombstones
                log.info(
                    "index rebuilt in the background: %d faces (%s) in %.1f s, %d changes replayed",
                    self.count,
                    self.kind,
                    time.perf_counter() - t0,
                    len(self._replay or []),
                )
        except Exception:  # the current index stays in use; the next change due a build tries again
            log.exception("background index build failed; the current index stays in use")
        finally:
            with self._lock:
                self._replay, self._builder = None, None

    def _replay_onto(self, index: Any, kind: str, ops: list[tuple[str, np.ndarray, Any]]) -> set[int] | None:
        """Apply recorded ``(op, ids, embeddings)`` to a freshly built ``index``; returns its tombstones, or
        None when an add hits a tombstoned id (a graph cannot take a node back)."""
        faiss = _faiss()
        tombstones: set[int] = set()
        for op, ids, emb in ops:
            if op == "add":
                if any(int(i) in tombstones for i in ids):
                    return None
                index.add_with_ids(emb, ids)
            elif kind == "flat":
                index.remove_ids(faiss.IDSelectorBatch(ids))
            else:
                tombstones.update(int(i) for i in ids)
        return tombstones

    def wait_for_build(self, timeout: float | None = None) -> bool:
        """Wait for a background build to finish; True when none is running (any more)."""
        builder = self._builder
        if builder is not None:
            builder.join(timeout)
        return self._builder is None

    def _has_vector(self, face_id: int) -> bool:
        try:
            self._index.reconstruct(int(face_id))
            return True
        except RuntimeError:
            return False

    def _has(self, face_id: int) -> bool:
        return face_id not in self._tombstones and self._has_vector(face_id)

    def sync(self, store: Any) -> int:
        """Apply the database's changes after :attr:`seq`; returns how many were applied."""
        with self._lock:
            changes = store.changes_since(self.seq)
            if not changes:
                return 0
            # net effect per face in order: the last op wins; adds need the embedding as it is now
            last: dict[int, str] = {}
            for _, face_id, op in changes:
                last[face_id] = op
            dels = [f for f, op in last.items() if op == "del"]
            adds = [f for f, op in last.items() if op == "add"]
            # an add that follows a del of the same face (re-embedding) replaces the vector
            readd = [f for f in adds if any(c[1] == f and c[2] == "del" for c in changes)]
            self.remove(np.asarray(dels + readd, dtype=np.int64))
            if adds:
                snap = store.embeddings_of(adds)
                self.add(snap.ids, snap.embeddings)
            self.seq = changes[-1][0]
            return len(changes)

    # -- queries
    @property
    def count(self) -> int:
        with self._lock:
            return int(self._index.ntotal) - len(self._tombstones)

    def search(
        self, queries: np.ndarray, k: int, ef_search: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores [Q, k], face ids [Q, k]) by inner product; missing entries have id -1.
        ``ef_search`` overrides the HNSW beam width for this call (ignored by exact search)."""
        faiss = _faiss()
        if self.settings.threads > 0 and not getattr(self._threads_set, "done", False):
            # omp_set_num_threads holds for the calling thread only: set it in each request thread
            faiss.omp_set_num_threads(int(self.settings.threads))
            self._threads_set.done = True
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        with self._lock:
            k_eff = max(1, min(int(k), max(1, self.count)))
            if self.kind == "hnsw" and (self._tombstones or ef_search is not None):
                kwargs: dict[str, Any] = {"efSearch": int(ef_search or self.settings.ef_search)}
                if self._tombstones:
                    kwargs["sel"] = faiss.IDSelectorNot(
                        faiss.IDSelectorBatch(np.asarray(sorted(self._tombstones), dtype=np.int64))
                    )
                scores, ids = self._index.search(q, k_eff, params=faiss.SearchParametersHNSW(**kwargs))
            else:
                scores, ids = self._index.search(q, k_eff)
        return scores, ids

    def contents(self) -> tuple[np.ndarray, np.ndarray]:
        """The live ``(face ids, embeddings)`` the index holds (read back from faiss, tombstones left out)."""
        with self._lock:
            return self._contents()

    def _contents(self) -> tuple[np.ndarray, np.ndarray]:
        """The live (id, embedding) pairs held by the faiss index itself (read back, not from a copy)."""
        faiss = _faiss()
        n = int(self._index.ntotal)
        ids = faiss.vector_to_array(self._index.id_map).astype(np.int64) if n else np.zeros(0, np.int64)
        emb = self._index.index.reconstruct_n(0, n) if n else np.zeros((0, self.dim), np.float32)
        if self._tombstones:
            keep = ~np.isin(ids, np.fromiter(self._tombstones, dtype=np.int64))
            ids, emb = ids[keep], emb[keep]
        return ids, np.asarray(emb, dtype=np.float32)

    def verify(self, store: Any) -> VerifyResult:
        """Sync, then compare the index with the database (count and checksum) as of the same ``seq``."""
        with self._lock:
            snap = store.snapshot()
            self.sync(store)
            if self.seq != snap.seq:  # writes landed between the two reads: compare at the newer state
                snap = store.snapshot()
                self.sync(store)
            ids, emb = self._contents()
        db_sum = embedding_checksum(snap.ids, snap.embeddings)
        ix_sum = embedding_checksum(ids, emb)
        return VerifyResult(
            ok=len(ids) == len(snap.ids) and db_sum == ix_sum,
            index_count=len(ids),
            db_count=len(snap.ids),
            index_checksum=ix_sum,
            db_checksum=db_sum,
            seq=snap.seq,
        )

    def describe(self) -> dict[str, Any]:
        s = self.settings
        d: dict[str, Any] = {
            "kind": self.kind,
            "faces": self.count,
            "dim": self.dim,
            "seq": self.seq,
            "loaded_from": self.source,
        }
        d["hnsw_above"] = s.hnsw_above
        if self.kind == "hnsw":
            d.update(
                M=s.hnsw_m,
                ef_construction=s.ef_construction,
                ef_search=s.ef_search,
                tombstones=len(self._tombstones),
            )
        d["rebuilding"] = self._builder is not None
        return d
