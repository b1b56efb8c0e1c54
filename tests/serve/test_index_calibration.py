"""The faiss index (exact and HNSW, deletion, checksum) and threshold calibration, on hand-made numbers."""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import pytest

from faceforge.serve.calibration import Calibration, all_pair_scores, thresholds_from_scores
from faceforge.serve.index import FaceIndex, IndexSettings, embedding_checksum


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class _FakeStore:
    """Just what FaceIndex reads: a snapshot and a change feed."""

    def __init__(self, ids: np.ndarray, emb: np.ndarray) -> None:
        self.rows = {int(i): e for i, e in zip(ids, emb, strict=True)}
        self.changes: list[tuple[int, int, str]] = [(k + 1, int(i), "add") for k, i in enumerate(ids)]

    def snapshot(self):
        from faceforge.serve.store import GallerySnapshot

        ids = np.asarray(sorted(self.rows), dtype=np.int64)
        emb = np.stack([self.rows[i] for i in ids]) if len(ids) else np.zeros((0, 4), np.float32)
        return GallerySnapshot(ids, emb, self.changes[-1][0] if self.changes else 0)

    def embeddings_of(self, ids):
        from faceforge.serve.store import GallerySnapshot

        ok = [i for i in ids if i in self.rows]
        return GallerySnapshot(
            np.asarray(ok, np.int64), np.stack([self.rows[i] for i in ok]) if ok else np.zeros((0, 4)), 0
        )

    def changes_since(self, seq):
        return [c for c in self.changes if c[0] > seq]

    def latest_seq(self):
        return self.changes[-1][0] if self.changes else 0

    def add(self, i, e):
        self.rows[i] = e
        self.changes.append((len(self.changes) + 1, i, "add"))

    def delete(self, i):
        del self.rows[i]
        self.changes.append((len(self.changes) + 1, i, "del"))


def test_checksum_is_order_independent_and_matches_a_hand_computation():
    ids = np.array([7, 3], dtype=np.int64)
    emb = np.array([[0.5, -1.0], [2.0, 0.25]], dtype=np.float32)
    want = hashlib.sha256(
        np.array([3, 7], "<i8").tobytes() + np.array([[2.0, 0.25], [0.5, -1.0]], "<f4").tobytes()
    ).hexdigest()
    assert embedding_checksum(ids, emb) == want
    assert embedding_checksum(ids[::-1], emb[::-1]) == want
    emb2 = emb.copy()
    emb2[0, 0] = np.nextafter(np.float32(0.5), np.float32(1))
    assert embedding_checksum(ids, emb2) != want


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_search_delete_and_verify(kind):
    rng = np.random.default_rng(0)
    emb = _unit(rng, 300, 16)
    ids = np.arange(1000, 1300, dtype=np.int64)
    store = _FakeStore(ids, emb)
    index = FaceIndex(16, IndexSettings(hnsw_above=0 if kind == "flat" else 100, ef_search=64))
    assert index.rebuild(store).ok
    assert index.kind == kind
    q = _unit(rng, 20, 16)
    scores, got = index.search(q, 3)
    brute = q @ emb.T
    want = ids[np.argsort(-brute, axis=1)[:, :3]]
    assert (got[:, 0] == want[:, 0]).mean() >= (1.0 if kind == "flat" else 0.95)
    if kind == "flat":
        assert np.array_equal(got, want)
        assert np.allclose(scores, np.sort(brute, axis=1)[:, ::-1][:, :3], atol=1e-5)
    # delete the best hit of query 0: it must never come back, and the index still equals the "database"
    store.delete(int(got[0, 0]))
    index.sync(store)
    _, again = index.search(q[:1], 5)
    assert int(got[0, 0]) not in again[0]
    check = index.verify(store)
    assert check.ok and check.index_count == 299
    # a face re-added (as a re-embedding does: del + add) replaces the old vector
    new = _unit(rng, 1, 16)[0]
    store.delete(1001)
    store.add(1001, new)
    index.sync(store)
    s, i = index.search(new[None], 1)
    assert i[0, 0] == 1001 and s[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert index.verify(store).ok


def test_exact_index_turns_into_hnsw_past_the_threshold_and_compacts():
    rng = np.random.default_rng(1)
    store = _FakeStore(np.arange(1, 51, dtype=np.int64), _unit(rng, 50, 8))
    index = FaceIndex(8, IndexSettings(hnsw_above=60, compact_fraction=0.1))
    index.rebuild(store)
    assert index.kind == "flat"
    for i in range(51, 71):
        store.add(i, _unit(rng, 1, 8)[0])
    index.sync(store)
    assert index.kind == "hnsw" and index.count == 70 and index.verify(store).ok
    for i in range(1, 6):  # 5 tombstones: below 10 % of 70
        store.delete(i)
    index.sync(store)
    assert index.describe()["tombstones"] == 5 and index.count == 65
    for i in range(6, 10):  # 9 > 7: rebuilt without them
        store.delete(i)
    index.sync(store)
    assert index.describe().get("tombstones", 0) == 0 and index.count == 61 and index.verify(store).ok


def test_graph_file_is_loaded_checked_and_falls_back_to_a_build(tmp_path):
    rng = np.random.default_rng(2)
    ids = np.arange(1, 201, dtype=np.int64)
    store = _FakeStore(ids, _unit(rng, 200, 8))
    path = tmp_path / "g.index.npz"
    settings = IndexSettings(hnsw_above=100, hnsw_m=8, ef_construction=40, ef_search=32, graph_file=str(path))
    first = FaceIndex(8, settings)
    assert first.rebuild(store).ok and first.source == "database" and path.is_file()
    assert first.save_graph() is None  # nothing changed since the build wrote it
    # the database moves on (3 enrolments, 2 deletions, a re-embedding) while no server runs
    for i in (201, 202, 203):
        store.add(i, _unit(rng, 1, 8)[0])
    store.delete(5)
    store.delete(6)
    store.delete(7)
    store.add(7, _unit(rng, 1, 8)[0])
    second = FaceIndex(8, settings)
    check = second.rebuild(store)
    assert second.source == "graph file" and check.ok and check.index_count == 201
    assert second.describe()["loaded_from"] == "graph file"
    q = _unit(rng, 10, 8)
    first.sync(store)
    assert np.array_equal(second.search(q, 5)[1], first.search(q, 5)[1])
    assert second.save_graph() == path  # later changes: saved again, and a third start needs no replay
    third = FaceIndex(8, settings)
    assert third.rebuild(store).ok and third.source == "graph file" and third.save_graph() is None
    # other settings, a file of another gallery, a damaged file: each is built from the database instead
    other = FaceIndex(8, IndexSettings(hnsw_above=100, hnsw_m=12, graph_file=str(path)))
    assert other.rebuild(store).ok and other.source == "database"
    elsewhere = _FakeStore(ids, _unit(rng, 200, 8))
    other_gallery = FaceIndex(8, settings)
    assert other_gallery.rebuild(elsewhere).ok and other_gallery.source == "database"
    assert other_gallery.search(elsewhere.snapshot().embeddings[:1], 1)[1][0, 0] == 1
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    damaged = FaceIndex(8, settings)
    assert damaged.rebuild(store).ok and damaged.source == "database"
    assert not list(tmp_path.glob(".*.tmp"))
    # what a save killed mid-write leaves is removed at the next start once it is old
    stale, fresh = tmp_path / ".g.index.npz.x1.tmp", tmp_path / ".g.index.npz.x2.tmp"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    assert FaceIndex(8, settings).rebuild(store).ok
    assert not stale.exists() and fresh.exists()


def test_thresholds_by_hand():
    # 10 impostor scores; FMR 0.1 allows 1 impostor at or above the threshold: the second-highest (0.8)
    # must be below it, so the threshold is the next float above 0.8
    imp = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    gen = np.array([0.95, 0.85, 0.75, 0.81])
    rows = thresholds_from_scores(gen, imp, targets=(0.1, 0.2, 0.01))
    assert [r["fmr"] for r in rows] == [0.1, 0.2]  # 0.01 < 1/10: not resolvable
    t = rows[0]["threshold"]
    assert 0.8 < t < 0.8 + 1e-6
    assert rows[0]["fmr_measured"] == 0.1 and rows[0]["fnmr"] == 0.25  # 0.75 falls below; 0.81 passes
    assert 0.7 < rows[1]["threshold"] < 0.7 + 1e-6 and rows[1]["fmr_measured"] == 0.2


def test_threshold_for_picks_the_stricter_row():
    cal = Calibration(
        "x",
        "t",
        "hand",
        [
            {"fmr": 1e-2, "threshold": 0.3, "fmr_measured": 0.01, "fnmr": 0.0},
            {"fmr": 1e-3, "threshold": 0.4, "fmr_measured": 0.001, "fnmr": 0.01},
            {"fmr": 1e-4, "threshold": 0.5, "fmr_measured": 0.0001, "fnmr": 0.02},
        ],
    )
    assert cal.threshold_for()["threshold"] == 0.5  # DEFAULT_FMR 1e-4
    assert cal.threshold_for(1e-3)["threshold"] == 0.4
    assert cal.threshold_for(5e-3)["threshold"] == 0.4  # between rows: the stricter one
    with pytest.raises(ValueError, match="below the lowest"):
        cal.threshold_for(1e-6)


def test_all_pair_scores_by_hand():
    e = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    gen, imp = all_pair_scores(e, np.array(["a", "a", "b"]), chunk=2)
    assert sorted(gen.tolist()) == [1.0] and sorted(imp.tolist()) == [0.0, 0.0]


def test_graph_file_defaults_beside_a_sqlite_gallery_and_never_for_a_url():
    from argparse import Namespace

    from faceforge.cli.serve import _graph_file

    assert _graph_file(Namespace(index_file=None, db="/srv/g.db")) == "/srv/g.db.index.npz"
    assert _graph_file(Namespace(index_file=None, db="postgresql://u@h/db")) is None
    assert _graph_file(Namespace(index_file="none", db="/srv/g.db")) is None
    assert _graph_file(Namespace(index_file="/fast/g.npz", db="postgresql://u@h/db")) == "/fast/g.npz"
