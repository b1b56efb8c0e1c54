"""The faiss index (exact and HNSW, deletion, checksum) and threshold calibration, on hand-made numbers."""

from __future__ import annotations

import hashlib
import json
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


def test_searches_run_on_the_configured_openmp_threads_in_every_thread():
    import threading

    import faiss

    rng = np.random.default_rng(8)
    store = _FakeStore(np.arange(1, 21, dtype=np.int64), _unit(rng, 20, 8))
    index = FaceIndex(8, IndexSettings(threads=1))
    index.rebuild(store)
    seen = []

    def request() -> None:  # a server's request thread: OpenMP's default until the first search
        index.search(_unit(rng, 1, 8), 1)
        seen.append(faiss.omp_get_max_threads())

    t = threading.Thread(target=request)
    t.start()
    t.join()
    assert seen == [1]


def test_exact_index_turns_into_hnsw_past_the_threshold_and_compacts():
    rng = np.random.default_rng(1)
    store = _FakeStore(np.arange(1, 51, dtype=np.int64), _unit(rng, 50, 8))
    index = FaceIndex(8, IndexSettings(hnsw_above=60, compact_fraction=0.1))
    index.rebuild(store)
    assert index.kind == "flat"
    for i in range(51, 71):
        store.add(i, _unit(rng, 1, 8)[0])
    index.sync(store)
    assert index.wait_for_build(30)
    assert index.kind == "hnsw" and index.count == 70 and index.verify(store).ok
    for i in range(1, 6):  # 5 tombstones: below 10 % of 70
        store.delete(i)
    index.sync(store)
    assert index.describe()["tombstones"] == 5 and index.count == 65
    for i in range(6, 10):  # 9 > 7: rebuilt without them
        store.delete(i)
    index.sync(store)
    assert index.wait_for_build(30)
    assert index.describe().get("tombstones", 0) == 0 and index.count == 61 and index.verify(store).ok


@pytest.mark.parametrize("readd", [False, True])
def test_background_build_keeps_serving_and_replays_the_changes_made_meanwhile(readd):
    import threading

    rng = np.random.default_rng(7)
    store = _FakeStore(np.arange(1, 101, dtype=np.int64), _unit(rng, 100, 8))
    index = FaceIndex(8, IndexSettings(hnsw_above=50, compact_fraction=0.1, hnsw_m=8, ef_search=200))
    assert index.rebuild(store).ok and index.kind == "hnsw"
    gate, started = threading.Event(), threading.Event()
    fill = index._fill

    def slow_fill(ix, ids, emb):  # the background build waits until the test has made its changes
        if threading.current_thread().name == "faceforge-index-build":
            started.set()
            assert gate.wait(30)
        return fill(ix, ids, emb)

    index._fill = slow_fill
    for i in range(1, 12):  # 11 > 10 % of 100: a background compaction starts
        store.delete(i)
    index.sync(store)
    assert started.wait(30) and index.describe()["rebuilding"]
    # meanwhile: searches answer (deleted faces never), enrolments and deletions land
    q = store.rows[50][None]
    assert index.search(q, 1)[1][0, 0] == 50
    new = _unit(rng, 1, 8)[0]
    store.add(101, new)
    store.delete(50)
    if readd:  # a re-embedding of face 60 during the build: the build gives way to a full one
        store.delete(60)
        store.add(60, _unit(rng, 1, 8)[0])
    index.sync(store)
    assert index.search(new[None], 1)[1][0, 0] == 101 and 50 not in index.search(q, 5)[1][0]
    gate.set()
    assert index.wait_for_build(30) and not index.describe()["rebuilding"]
    index._fill = fill
    # face 50, deleted during the build, is a tombstone of the new graph (none after the full build a
    # re-embedding forces)
    assert index.describe()["tombstones"] == (0 if readd else 1)
    assert index.count == 89 and index.verify(store).ok
    assert index.search(new[None], 1)[1][0, 0] == 101 and 50 not in index.search(q, 5)[1][0]


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


def test_probe_like_queries_have_the_asked_cosine_with_their_source():
    from faceforge.serve.recall import probe_like_queries

    rng = np.random.default_rng(3)
    gallery = _unit(rng, 50, 128)
    for c in (0.6, 0.9):
        q = probe_like_queries(gallery, 2000, c, np.random.default_rng(4))
        assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
        # the source of each query is its most similar gallery row, at cosine ~c
        best = (q @ gallery.T).max(axis=1)
        assert abs(float(np.mean(best)) - c) < 0.02
    with pytest.raises(ValueError, match="target cosine"):
        probe_like_queries(gallery, 5, 1.5, rng)


def test_recall_sweep_against_exact_search():
    from faceforge.serve.recall import probe_like_queries, recall_sweep

    rng = np.random.default_rng(5)
    emb = _unit(rng, 3000, 32)
    ids = np.arange(10, 3010, dtype=np.int64)
    store = _FakeStore(ids, emb)
    hard = probe_like_queries(emb, 300, 0.5, rng)
    exact = FaceIndex(32, IndexSettings(hnsw_above=0))
    exact.rebuild(store)
    res = recall_sweep(exact, {"hard": hard}, [1, 64], match_threshold=0.45)
    assert [r["ef_search"] for r in res["rows"]] == [None]  # exact search: one row, recall 1 by definition
    assert res["rows"][0]["recall_at_1 hard"] == 1.0 and res["faces"] == 3000
    # by hand: the matches are the queries whose exact best cosine reaches the threshold
    assert res["matches"]["hard"] == int(((hard @ emb.T).max(axis=1) >= 0.45).sum())
    graph = FaceIndex(32, IndexSettings(hnsw_above=100, hnsw_m=8, ef_construction=16))
    graph.rebuild(store)
    store.delete(10)  # a tombstone: the exact side must leave it out too
    graph.sync(store)
    res = recall_sweep(graph, {"hard": hard, "same": emb[1:40]}, [1, 2048])
    low, high = res["rows"]
    assert low["ef_search"] == 1 and high["ef_search"] == 2048
    assert low["recall_at_1 hard"] < high["recall_at_1 hard"] == 1.0  # a beam wider than most of the gallery
    assert high["recall_at_1 same"] == 1.0 and res["faces"] == 2999
    assert low["speedup_vs_exact"] > 0 and res["timing"]["threads"] == 1


def test_serve_recall_command(tmp_path):
    from faceforge.cli.main import main
    from faceforge.serve.keys import Actor
    from faceforge.serve.store import Store

    db = str(tmp_path / "g.db")
    store = Store(db)
    store.bind_model("m" * 64, {"kind": "test"})
    rng = np.random.default_rng(6)
    store.bulk_load([f"p{i}" for i in range(400)], _unit(rng, 400, 16), "m" * 64, Actor(name="test"))
    store.close()
    out = tmp_path / "recall.json"
    probes = tmp_path / "probes.npy"
    np.save(probes, _unit(rng, 20, 16) * 3.0)  # not normalised: the command normalises
    args = ["serve", "--hnsw-above", "1", "--hnsw-m", "8", "--ef-construction", "40", "recall", "--db", db]
    assert (
        main([*args, "--queries", "100", "--ef-values", "16,512", "--probes", str(probes), "--out", str(out)])
        == 0
    )
    res = json.loads(out.read_text())
    assert res["index"]["kind"] == "hnsw" and res["faces"] == 400
    assert res["queries"] == {"probes": 20, "made": 100}
    assert res["rows"][-1]["ef_search"] == 512 and res["rows"][-1]["recall_at_1 made"] == 1.0
    assert not (tmp_path / "g.db.index.npz").exists()  # trying settings never overwrites the server's graph
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 5), np.float32))
    assert main([*args, "--probes", str(bad)]) == 2
