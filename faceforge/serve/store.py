"""The gallery database: one schema for SQLite (WAL) and PostgreSQL, versioned migrations, one transaction
per enrolment, an audit log and a change feed. :class:`Store` holds the identities and their faces, writes
the audit log and the change feed, and reads snapshots of the embeddings for the index; its API key
methods come from :class:`~faceforge.serve.keys.ApiKeyMixin` and its pages of people for the service's
gallery view from :class:`~faceforge.serve.gallery_page.GalleryPageMixin`. This module holds the connection and
the writes; the reads are :class:`~faceforge.serve.store_reads.GalleryReadsMixin`, the records it takes and gives
(:class:`NewFace`, :class:`GallerySnapshot`, :class:`IdentityRow`) are in :mod:`~faceforge.serve.store_records`.

``Store(url)``: ``url`` is a file path or ``sqlite:///PATH`` (the embedded default; WAL journal,
``synchronous=FULL``, so a commit survives a killed process and a power cut) or ``postgresql://...``
(psycopg 3; for several server processes sharing one gallery).

The tables and the schema's versioned migrations (``schema_migrations`` records which ran) are
described in :mod:`~faceforge.serve.sql`, with the DDL, the two dialects and the connection pool.

Timestamps are seconds since the epoch (UTC), as floating point.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from faceforge.serve.errors import ConflictError, ModelMismatchError, NotFoundError, StoreError
from faceforge.serve.gallery_page import GalleryPageMixin
from faceforge.serve.keys import Actor, ApiKeyMixin
from faceforge.serve.sql import (
    POSTGRESQL,
    SCHEMA_VERSION,
    SQLITE,
    Cursor,
    Pool,
    apply_migrations,
    blob_bytes,
    connect_pg,
    connect_sqlite,
    describe_url,
    schema_version_of,
    sqlite_path,
)
from faceforge.serve.store_reads import GalleryReadsMixin
from faceforge.serve.store_records import (  # noqa: F401  (re-exported: this was their home)
    GallerySnapshot,
    IdentityRow,
    NewFace,
    to_snapshot,
    validate_name,
)


class Store(ApiKeyMixin, GalleryPageMixin, GalleryReadsMixin):
    """The gallery database; see the module doc. Thread-safe (a pool of ``pool_size`` connections).

    The API key methods (``create_key``, ``list_keys``, ``revoke_key``, ``check_key``) come from
    :class:`~faceforge.serve.keys.ApiKeyMixin`, ``gallery_page`` from
    :class:`~faceforge.serve.gallery_page.GalleryPageMixin`, the reads (``counts``, ``snapshot``,
    ``get_identity``, ``audit_entries``, ...) from :class:`~faceforge.serve.store_reads.GalleryReadsMixin`.
    """

    def __init__(self, url: str | Path, pool_size: int = 8, migrate: bool = True) -> None:
        self.url = str(url)
        if self.url.startswith(("postgresql://", "postgres://")):
            self.dialect = POSTGRESQL
            self._pool = Pool(partial(connect_pg, self.url), pool_size)
        else:
            self.dialect = SQLITE
            self.path = sqlite_path(self.url)
            if not self.path.parent.is_dir():
                raise FileNotFoundError(
                    f"folder {self.path.parent} for the gallery database {self.path} does not exist"
                )
            self._pool = Pool(partial(connect_sqlite, self.path), pool_size)
        if migrate:
            self.migrate()

    # -- connections
    @contextmanager
    def _tx(self, write: bool) -> Iterator[Cursor]:
        with self._pool.connection() as conn:
            cur = Cursor(conn.cursor(), self.dialect)
            for stmt in self.dialect.begin_write if write else (self.dialect.begin_read,):
                cur.execute(stmt)
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def close(self) -> None:
        self._pool.close()

    # -- migrations
    def schema_version(self) -> int:
        with self._tx(write=False) as cur:
            return schema_version_of(cur, self.dialect)

    def migrate(self, target: int = SCHEMA_VERSION) -> list[int]:
        """Apply the migrations above the database's version up to ``target``; returns the versions applied.

        The migrations of one call run in one write transaction with their ``schema_migrations`` rows, so a
        failure leaves the database at the version it had. A database newer than this code is refused.
        """
        with self._tx(write=True) as cur:
            return apply_migrations(cur, self.dialect, target, self.url)

    # -- meta and the gallery's model
    def get_meta(self, key: str) -> str | None:
        with self._tx(write=False) as cur:
            row = cur.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, cur: Cursor, key: str, value: str) -> None:
        cur.execute("DELETE FROM meta WHERE key = ?", (key,))
        cur.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))

    def gallery_model(self) -> dict[str, Any] | None:
        """``{"model_id": ..., "model": {...}}`` of the gallery, or None for a gallery never bound."""
        with self._tx(write=False) as cur:
            rows = dict(
                cur.execute("SELECT key, value FROM meta WHERE key IN ('model_id', 'model')").fetchall()
            )
        if "model_id" not in rows:
            return None
        return {"model_id": rows["model_id"], "model": json.loads(rows.get("model", "{}"))}

    def bind_model(self, model_id: str, model: dict[str, Any]) -> None:
        """Record ``model_id`` as the gallery's model, or check that it already is.

        Raises :class:`ModelMismatchError` naming both models and the fix when the gallery was built by
        another model.
        """
        with self._tx(write=True) as cur:
            row = cur.execute("SELECT value FROM meta WHERE key = 'model_id'").fetchone()
            if row is None:
                self._set_meta(cur, "model_id", model_id)
                self._set_meta(cur, "model", json.dumps(model, sort_keys=True))
                return
            if row[0] != model_id:
                other = cur.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()
                name = json.loads(other[0]).get("kind", "?") if other else "?"
                raise ModelMismatchError(
                    f"the gallery {describe_url(self.url)} holds embeddings of model {row[0][:16]} ({name}), "
                    f"not of {model_id[:16]} ({model.get('kind', '?')}); use that model, or move the gallery "
                    f"with `faceforge serve reembed --db URL --model NEW`"
                )

    def check_model(self, model_id: str) -> None:
        """Raise :class:`ModelMismatchError` if the gallery is bound to another model."""
        bound = self.gallery_model()
        if bound is not None and bound["model_id"] != model_id:
            raise ModelMismatchError(
                f"probe embeddings come from model {model_id[:16]}, the gallery {describe_url(self.url)} "
                f"from {bound['model_id'][:16]} ({bound['model'].get('kind', '?')}); embed the probes with the "
                f"gallery's model or re-embed the gallery (`faceforge serve reembed`)"
            )

    # -- writes
    def _audit(
        self,
        cur: Cursor,
        actor: Actor,
        action: str,
        identity_id: int | None,
        face_ids: Sequence[int],
        detail: dict[str, Any],
    ) -> None:
        cur.execute(
            "INSERT INTO audit (at, actor, action, identity_id, face_ids, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                actor.label(),
                action,
                identity_id,
                json.dumps([int(i) for i in face_ids]),
                json.dumps(detail, sort_keys=True),
            ),
        )

    def _insert_faces(
        self, cur: Cursor, identity_id: int, faces: Sequence[NewFace], model_id: str
    ) -> list[int]:
        ids = []
        now = time.time()
        for f in faces:
            emb = np.ascontiguousarray(f.embedding, dtype=np.float32).ravel()
            row = cur.execute(
                "INSERT INTO faces (identity_id, image_sha256, box, landmarks, det_score, quality, model_id, "
                "embedding, crop, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    identity_id,
                    f.image_sha256,
                    json.dumps([round(float(v), 2) for v in f.box]),
                    json.dumps([[round(float(x), 2), round(float(y), 2)] for x, y in f.landmarks]),
                    float(f.det_score),
                    float(f.quality),
                    model_id,
                    emb.tobytes(),
                    f.crop_jpeg,
                    now,
                ),
            ).fetchone()
            ids.append(int(row[0]))
        cur.executemany("INSERT INTO changes (face_id, op, at) VALUES (?, 'add', ?)", [(i, now) for i in ids])
        return ids

    def _require_model(self, cur: Cursor, model_id: str) -> None:
        row = cur.execute("SELECT value FROM meta WHERE key = 'model_id'").fetchone()
        if row is None:
            raise StoreError("the gallery has no model yet: bind_model() first")
        if row[0] != model_id:
            raise ModelMismatchError(f"the gallery holds model {row[0][:16]}, not {model_id[:16]}")

    def enrol(
        self, name: str, faces: Sequence[NewFace], model_id: str, actor: Actor, create: bool = True
    ) -> tuple[int, list[int]]:
        """Store ``faces`` under identity ``name`` in one transaction (with the audit entry and changes).

        ``create=True`` makes a new identity (:class:`ConflictError` if the name exists); ``False`` adds to
        an existing one (:class:`NotFoundError` if it does not exist). Returns (identity id, face ids).
        """
        name = validate_name(name)
        if not faces:
            raise StoreError("an enrolment needs at least one face")
        with self._tx(write=True) as cur:
            self._require_model(cur, model_id)
            row = cur.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
            now = time.time()
            if create:
                if row is not None:
                    raise ConflictError(
                        f"identity {name!r} exists (id {row[0]}); add photos to it instead of creating it"
                    )
                identity_id = int(
                    cur.execute(
                        "INSERT INTO identities (name, created_at, updated_at) VALUES (?, ?, ?) RETURNING id",
                        (name, now, now),
                    ).fetchone()[0]
                )
            else:
                if row is None:
                    raise NotFoundError(f"no identity named {name!r}")
                identity_id = int(row[0])
                cur.execute("UPDATE identities SET updated_at = ? WHERE id = ?", (now, identity_id))
            face_ids = self._insert_faces(cur, identity_id, faces, model_id)
            self._audit(
                cur,
                actor,
                "enrol" if create else "add_faces",
                identity_id,
                face_ids,
                {"name": name, "image_sha256": [f.image_sha256 for f in faces]},
            )
        return identity_id, face_ids

    def add_faces(self, identity_id: int, faces: Sequence[NewFace], model_id: str, actor: Actor) -> list[int]:
        """Add faces to identity ``identity_id`` in one transaction; returns their ids."""
        if not faces:
            raise StoreError("adding faces needs at least one face")
        with self._tx(write=True) as cur:
            self._require_model(cur, model_id)
            row = cur.execute("SELECT name FROM identities WHERE id = ?", (identity_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no identity with id {identity_id}")
            cur.execute("UPDATE identities SET updated_at = ? WHERE id = ?", (time.time(), identity_id))
            face_ids = self._insert_faces(cur, identity_id, faces, model_id)
            self._audit(
                cur,
                actor,
                "add_faces",
                identity_id,
                face_ids,
                {"name": row[0], "image_sha256": [f.image_sha256 for f in faces]},
            )
        return face_ids

    def rename_identity(self, identity_id: int, name: str, actor: Actor) -> None:
        name = validate_name(name)
        with self._tx(write=True) as cur:
            row = cur.execute("SELECT name FROM identities WHERE id = ?", (identity_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no identity with id {identity_id}")
            taken = cur.execute(
                "SELECT id FROM identities WHERE name = ? AND id <> ?", (name, identity_id)
            ).fetchone()
            if taken is not None:
                raise ConflictError(f"identity name {name!r} is taken by id {taken[0]}")
            cur.execute(
                "UPDATE identities SET name = ?, updated_at = ? WHERE id = ?",
                (name, time.time(), identity_id),
            )
            self._audit(cur, actor, "rename", identity_id, [], {"from": row[0], "to": name})

    def delete_identity(self, identity_id: int, actor: Actor) -> list[int]:
        """Delete an identity and all its faces; returns the deleted face ids."""
        with self._tx(write=True) as cur:
            row = cur.execute("SELECT name FROM identities WHERE id = ?", (identity_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no identity with id {identity_id}")
            ids = [
                int(r[0])
                for r in cur.execute("SELECT id FROM faces WHERE identity_id = ?", (identity_id,)).fetchall()
            ]
            cur.execute("DELETE FROM faces WHERE identity_id = ?", (identity_id,))
            cur.execute("DELETE FROM identities WHERE id = ?", (identity_id,))
            now = time.time()
            cur.executemany(
                "INSERT INTO changes (face_id, op, at) VALUES (?, 'del', ?)", [(i, now) for i in ids]
            )
            self._audit(cur, actor, "delete_identity", identity_id, ids, {"name": row[0]})
        return ids

    def delete_face(self, face_id: int, actor: Actor) -> int:
        """Delete one face; returns its identity id (the identity stays, possibly with no face)."""
        with self._tx(write=True) as cur:
            row = cur.execute("SELECT identity_id FROM faces WHERE id = ?", (face_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no face with id {face_id}")
            cur.execute("DELETE FROM faces WHERE id = ?", (face_id,))
            cur.execute("INSERT INTO changes (face_id, op, at) VALUES (?, 'del', ?)", (face_id, time.time()))
            self._audit(cur, actor, "delete_face", int(row[0]), [face_id], {})
        return int(row[0])

    def bulk_load(
        self, names: Sequence[str], embeddings: np.ndarray, model_id: str, actor: Actor, chunk: int = 20000
    ) -> int:
        """Fill a gallery fast: one identity with one face per row (no box, landmarks or crop).

        For imports and load tests (``benchmarks/serve_load.py`` fills 1M faces this way); each chunk is one
        transaction with its audit entry and changes. Returns the number of faces added.
        """
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if len(names) != len(emb):
            raise ValueError(f"{len(names)} names for {len(emb)} embeddings")
        for start in range(0, len(emb), chunk):
            with self._tx(write=True) as cur:
                self._require_model(cur, model_id)
                now = time.time()
                first = int(cur.execute("SELECT COALESCE(MAX(id), 0) FROM identities").fetchone()[0]) + 1
                part = list(names[start : start + chunk])
                ident_ids = list(range(first, first + len(part)))
                cur.executemany(
                    "INSERT INTO identities (id, name, created_at, updated_at) VALUES (?, ?, ?, ?)",
                    [(i, validate_name(n), now, now) for i, n in zip(ident_ids, part, strict=True)],
                )
                f0 = int(cur.execute("SELECT COALESCE(MAX(id), 0) FROM faces").fetchone()[0]) + 1
                if self.dialect is SQLITE:  # AUTOINCREMENT remembers deleted ids in sqlite_sequence
                    seq = cur.execute("SELECT seq FROM sqlite_sequence WHERE name = 'faces'").fetchone()
                    f0 = max(f0, int(seq[0]) + 1 if seq else 1)
                face_ids = list(range(f0, f0 + len(part)))
                cur.executemany(
                    "INSERT INTO faces (id, identity_id, image_sha256, box, landmarks, det_score, quality, "
                    "model_id, embedding, crop, created_at) VALUES (?, ?, '', '[]', '[]', 0, 0, ?, ?, NULL, ?)",
                    [
                        (fid, iid, model_id, emb[start + k].tobytes(), now)
                        for k, (fid, iid) in enumerate(zip(face_ids, ident_ids, strict=True))
                    ],
                )
                cur.executemany(
                    "INSERT INTO changes (face_id, op, at) VALUES (?, 'add', ?)", [(i, now) for i in face_ids]
                )
                self._audit(cur, actor, "bulk_load", None, [], {"faces": len(part), "first_face": f0})
                if self.dialect is POSTGRESQL:  # explicit ids do not move the identity sequences
                    for table in ("identities", "faces"):
                        cur.execute(
                            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                            f"(SELECT MAX(id) FROM {table}))"
                        )
        return len(emb)

    def reembed(
        self,
        embed_crops: Callable[[list[np.ndarray]], np.ndarray],
        model_id: str,
        model: dict[str, Any],
        actor: Actor,
        decode: Callable[[bytes], np.ndarray],
    ) -> int:
        """Move the gallery to another model: every face's stored crop through ``embed_crops``, all in one
        transaction (a face without a stored crop stops it with a message). Returns the faces re-embedded."""
        with self._tx(write=True) as cur:
            rows = cur.execute("SELECT id, crop FROM faces ORDER BY id").fetchall()
            missing = [int(r[0]) for r in rows if r[1] is None]
            if missing:
                raise StoreError(
                    f"{len(missing)} faces (e.g. id {missing[0]}) have no stored crop, so they cannot be "
                    f"re-embedded; enrol them again from their photos"
                )
            now = time.time()
            for start in range(0, len(rows), 256):
                part = rows[start : start + 256]
                emb = np.asarray(embed_crops([decode(blob_bytes(r[1])) for r in part]), dtype=np.float32)
                for (fid, _), e in zip(part, emb, strict=True):
                    cur.execute(
                        "UPDATE faces SET embedding = ?, model_id = ? WHERE id = ?",
                        (np.ascontiguousarray(e).tobytes(), model_id, int(fid)),
                    )
            ids = [int(r[0]) for r in rows]
            # an index follows a re-embedding by dropping and re-adding every face
            cur.executemany(
                "INSERT INTO changes (face_id, op, at) VALUES (?, 'del', ?)", [(i, now) for i in ids]
            )
            cur.executemany(
                "INSERT INTO changes (face_id, op, at) VALUES (?, 'add', ?)", [(i, now) for i in ids]
            )
            old = cur.execute("SELECT value FROM meta WHERE key = 'model_id'").fetchone()
            self._set_meta(cur, "model_id", model_id)
            self._set_meta(cur, "model", json.dumps(model, sort_keys=True))
            self._audit(
                cur,
                actor,
                "reembed",
                None,
                [],
                {"faces": len(ids), "from": old[0] if old else None, "to": model_id},
            )
        return len(rows)
