"""The gallery store: the same tests on SQLite (WAL) and PostgreSQL."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from faceforge.serve.errors import ConflictError, ModelMismatchError, NotFoundError, StoreError
from faceforge.serve.index import FaceIndex, embedding_checksum
from faceforge.serve.keys import Actor
from faceforge.serve.sql import MIGRATIONS, SCHEMA_VERSION
from faceforge.serve.store import NewFace, Store

MODEL = "a" * 64
ACTOR = Actor("0123456789ab", "tester")


def _face(rng: np.random.Generator, dim: int = 8) -> NewFace:
    e = rng.standard_normal(dim).astype(np.float32)
    e /= np.linalg.norm(e)
    return NewFace(
        e,
        "ab" * 32,
        [1, 2, 30, 40],
        [[10, 10], [20, 10], [15, 15], [11, 20], [19, 20]],
        0.9,
        0.9,
        b"\xff\xd8jpeg",
    )


@pytest.fixture
def store(store_url):
    s = Store(store_url)
    s.bind_model(MODEL, {"kind": "test"})
    yield s
    s.close()


def test_schema_is_migrated_to_the_latest_version(store):
    assert store.schema_version() == SCHEMA_VERSION == MIGRATIONS[-1].version
    assert store.migrate() == []  # idempotent


def test_old_schema_migrates_and_newer_is_refused(store_url):
    s = Store(store_url, migrate=False)
    assert s.migrate(target=1) == [1]
    assert s.schema_version() == 1
    assert s.migrate() == [2]  # the api_keys table arrives
    s.create_key("k", ["search"])
    with s._tx(write=True) as cur:
        cur.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, 'future', 0)")
    with pytest.raises(StoreError, match="schema version 99, newer"):
        s.migrate()
    s.close()


def test_model_binding_refuses_another_model(store):
    store.bind_model(MODEL, {"kind": "test"})  # same model: fine
    with pytest.raises(ModelMismatchError, match="reembed"):
        store.bind_model("b" * 64, {"kind": "other"})
    with pytest.raises(ModelMismatchError):
        store.check_model("b" * 64)
    store.check_model(MODEL)
    rng = np.random.default_rng(0)
    with pytest.raises(ModelMismatchError):
        store.enrol("x", [_face(rng)], "b" * 64, ACTOR)
    assert store.counts()["faces"] == 0


def test_enrol_add_rename_delete_with_audit_and_changes(store):
    rng = np.random.default_rng(1)
    faces = [_face(rng), _face(rng)]
    iid, fids = store.enrol("Ada Lovelace", faces, MODEL, ACTOR)
    assert len(fids) == 2 and fids[0] < fids[1]
    with pytest.raises(ConflictError):
        store.enrol("Ada Lovelace", [_face(rng)], MODEL, ACTOR)
    more = store.add_faces(iid, [_face(rng)], MODEL, ACTOR)
    ident = store.get_identity(iid)
    assert ident.name == "Ada Lovelace" and ident.faces == 3
    assert ident.face_rows[0]["box"] == [1, 2, 30, 40] and ident.face_rows[0]["has_crop"]
    assert "embedding" not in ident.face_rows[0]
    emb = store.get_identity(iid, with_embeddings=True).face_rows[0]["embedding"]
    assert np.allclose(emb, faces[0].embedding, atol=1e-6)
    assert store.face_crop(fids[0]) == b"\xff\xd8jpeg"

    other, _ = store.enrol("Grace Hopper", [_face(rng)], MODEL, ACTOR)
    with pytest.raises(ConflictError):
        store.rename_identity(iid, "Grace Hopper", ACTOR)
    store.rename_identity(iid, "Ada King", ACTOR)
    assert store.identity_by_name("Ada King") == iid
    assert [r.name for r in store.list_identities()] == ["Ada King", "Grace Hopper"]
    assert [r.name for r in store.list_identities(prefix="Gra")] == ["Grace Hopper"]

    assert store.delete_face(more[0], ACTOR) == iid
    with pytest.raises(NotFoundError):
        store.delete_face(more[0], ACTOR)
    deleted = store.delete_identity(iid, ACTOR)
    assert sorted(deleted) == fids
    with pytest.raises(NotFoundError):
        store.get_identity(iid)
    assert store.counts()["faces"] == 1 and store.counts()["identities"] == 1

    actions = [e["action"] for e in reversed(store.audit_entries())]
    assert actions == ["enrol", "add_faces", "enrol", "rename", "delete_face", "delete_identity"]
    assert store.audit_entries()[0]["face_ids"] == sorted(deleted)
    changes = store.changes_since(0)
    assert [c[0] for c in changes] == sorted(c[0] for c in changes)
    assert [(f, op) for _, f, op in changes][-3:] == [(more[0], "del"), (fids[0], "del"), (fids[1], "del")]
    # ids are never reused after a deletion (they are faiss ids)
    _, new = store.enrol("New", [_face(rng)], MODEL, ACTOR)
    assert new[0] > more[0]
    assert other


def test_index_follows_the_change_feed_and_matches_the_database(store_url):
    rng = np.random.default_rng(2)
    a, b = Store(store_url), Store(store_url)  # two server processes sharing one gallery
    a.bind_model(MODEL, {"kind": "test"})
    index_a, index_b = FaceIndex(8), FaceIndex(8)
    index_a.rebuild(a)
    index_b.rebuild(b)
    iid, fids = a.enrol("P", [_face(rng) for _ in range(3)], MODEL, ACTOR)
    b.enrol("Q", [_face(rng)], MODEL, ACTOR)
    a.delete_face(fids[1], ACTOR)
    for index, store in ((index_a, a), (index_b, b)):
        index.sync(store)
        check = index.verify(store)
        assert check.ok and check.index_count == 3 == check.db_count
    snap = a.snapshot()
    assert check.db_checksum == embedding_checksum(snap.ids, snap.embeddings)
    q = a.get_identity(iid, with_embeddings=True).face_rows[0]
    scores, ids = index_b.search(np.asarray([q["embedding"]], np.float32), 1)
    assert ids[0, 0] == fids[0] and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    a.close()
    b.close()


def test_concurrent_enrolments_commit_in_change_order(store):
    """Four writers enrol 24 people while a reader follows the change log as the index does
    (``changes_since(last seen)``): the reader sees every change once, in seq order, and the log's order is
    the order of the commits (face ids grow with seq; each writer's enrolments appear in the order it made
    them). A change that committed after a later seq was visible would be skipped by the reader."""
    rng = np.random.default_rng(3)
    faces = [[_face(rng)] for _ in range(24)]
    errors: list[BaseException] = []
    polled: list[tuple[int, int, str]] = []
    done = threading.Event()

    def worker(i: int) -> None:
        try:
            for j in range(i, 24, 4):
                store.enrol(f"person {j}", faces[j], MODEL, ACTOR)
        except Exception as exc:  # pragma: no cover - the assertion below shows it
            errors.append(exc)

    def poll() -> None:
        try:
            while True:
                finished = done.is_set()
                got = store.changes_since(polled[-1][0] if polled else 0)
                polled.extend(got)
                if finished:
                    return
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    reader = threading.Thread(target=poll)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join()
    assert not errors
    changes = store.changes_since(0)
    assert len(changes) == 24 and len({f for _, f, _ in changes}) == 24
    assert polled == changes  # the follower missed nothing and saw nothing twice
    seqs = [s for s, _, _ in changes]
    assert seqs == sorted(seqs) and len(set(seqs)) == 24 and {op for _, _, op in changes} == {"add"}
    face_ids = [f for _, f, _ in changes]
    assert face_ids == sorted(face_ids)  # writes are serialised: a later commit has a later id and seq
    names = store.identity_names(face_ids)
    order = [int(names[f][1].split()[1]) for f in face_ids]
    for i in range(4):  # each writer's own enrolments, in the order it made them
        assert [j for j in order if j % 4 == i] == list(range(i, 24, 4)), order
    index = FaceIndex(8)
    assert index.rebuild(store).ok and index.count == 24


def test_api_keys_are_hashed_scoped_and_revocable(store):
    key, secret = store.create_key("reader", ["search"])
    assert secret.startswith(f"ffk_{key.key_id}_") and len(secret) > 50
    with store._tx(write=False) as cur:
        stored = cur.execute("SELECT secret_sha256 FROM api_keys").fetchone()[0]
    assert secret.split("_", 2)[2] not in stored and len(stored) == 64
    got = store.check_key(secret)
    assert got is not None and got.allows("search") and not got.allows("enrol")
    assert store.check_key(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert store.check_key("garbage") is None
    admin, _ = store.create_key("root", ["admin"])
    assert admin.allows("enrol") and admin.allows("search")
    with pytest.raises(ValueError, match="scopes"):
        store.create_key("x", ["everything"])
    store.revoke_key("reader")
    assert store.check_key(secret) is None
    assert [k.revoked_at is not None for k in store.list_keys()] == [True, False]
    assert [e["action"] for e in store.audit_entries()][:2] == ["key_revoke", "key_create"]


def test_bulk_load_and_snapshot(store):
    rng = np.random.default_rng(4)
    emb = rng.standard_normal((50, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    store.enrol("first", [_face(rng)], MODEL, ACTOR)
    assert store.bulk_load([f"b{i}" for i in range(50)], emb, MODEL, ACTOR, chunk=20) == 50
    _, ids = store.enrol("after", [_face(rng)], MODEL, ACTOR)  # sequences moved past the bulk ids
    snap = store.snapshot()
    assert len(snap.ids) == 52 and ids[0] == snap.ids.max()
    assert np.array_equal(snap.embeddings[1:51], emb)
    assert snap.seq == store.latest_seq()


def test_bad_database_file_is_refused(tmp_path):
    bad = tmp_path / "not.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a SQLite database"):
        Store(str(bad))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Store(str(tmp_path / "missing" / "g.db"))
