"""The gallery database's reads: counts, snapshots of the embeddings for the index, the change feed, people and
their faces, face crops and the audit log.

:class:`GalleryReadsMixin` is inherited by :class:`~faceforge.serve.store.Store` (as the API key methods of
:mod:`~faceforge.serve.keys` and the gallery pages of :mod:`~faceforge.serve.gallery_page` are); each method reads
in one transaction of the store. Works on both dialects (SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from faceforge.serve.errors import NotFoundError
from faceforge.serve.gallery_page import PageHost as StoreHost
from faceforge.serve.sql import blob_bytes
from faceforge.serve.store_records import GallerySnapshot, IdentityRow, to_snapshot

__all__ = ["GalleryReadsMixin"]


class GalleryReadsMixin:
    """The store's read methods; for a class that is a :class:`~faceforge.serve.gallery_page.PageHost` (has
    ``_tx``)."""

    def counts(self: StoreHost) -> dict[str, int]:
        with self._tx(write=False) as cur:
            n_id = int(cur.execute("SELECT COUNT(*) FROM identities").fetchone()[0])
            n_face = int(cur.execute("SELECT COUNT(*) FROM faces").fetchone()[0])
            seq = int(cur.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])
        return {"identities": n_id, "faces": n_face, "seq": seq}

    def snapshot(self: StoreHost) -> GallerySnapshot:
        """Every face id and embedding, with the change ``seq`` they reflect (one read transaction)."""
        with self._tx(write=False) as cur:
            seq = int(cur.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])
            rows = cur.execute("SELECT id, embedding FROM faces ORDER BY id").fetchall()
        return to_snapshot(rows, seq)

    def embeddings_of(self: StoreHost, face_ids: Sequence[int]) -> GallerySnapshot:
        """The ids and embeddings of those of ``face_ids`` that still exist (seq is 0: not a full state)."""
        rows: list[Any] = []
        ids = [int(i) for i in face_ids]
        with self._tx(write=False) as cur:
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                marks = ",".join("?" * len(part))
                rows += cur.execute(
                    f"SELECT id, embedding FROM faces WHERE id IN ({marks}) ORDER BY id", part
                ).fetchall()
        return to_snapshot(rows, 0)

    def changes_since(self: StoreHost, seq: int, limit: int = 100000) -> list[tuple[int, int, str]]:
        """``(seq, face_id, op)`` of the changes after ``seq``, in order."""
        with self._tx(write=False) as cur:
            rows = cur.execute(
                "SELECT seq, face_id, op FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
                (int(seq), int(limit)),
            ).fetchall()
        return [(int(s), int(f), str(o)) for s, f, o in rows]

    def latest_seq(self: StoreHost) -> int:
        with self._tx(write=False) as cur:
            return int(cur.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])

    def identity_names(self: StoreHost, face_ids: Sequence[int]) -> dict[int, tuple[int, str]]:
        """face id -> (identity id, name) for the faces that exist."""
        out: dict[int, tuple[int, str]] = {}
        ids = sorted({int(i) for i in face_ids})
        if not ids:
            return out
        with self._tx(write=False) as cur:
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                marks = ",".join("?" * len(part))
                for fid, iid, name in cur.execute(
                    f"SELECT f.id, i.id, i.name FROM faces f JOIN identities i ON i.id = f.identity_id "
                    f"WHERE f.id IN ({marks})",
                    part,
                ).fetchall():
                    out[int(fid)] = (int(iid), str(name))
        return out

    def list_identities(
        self: StoreHost, offset: int = 0, limit: int = 100, prefix: str | None = None
    ) -> list[IdentityRow]:
        where, params = "", []
        if prefix:
            where, params = "WHERE i.name LIKE ?", [prefix.replace("%", "").replace("_", "") + "%"]
        with self._tx(write=False) as cur:
            rows = cur.execute(
                f"SELECT i.id, i.name, i.created_at, i.updated_at, "
                f"(SELECT COUNT(*) FROM faces f WHERE f.identity_id = i.id) FROM identities i {where} "
                f"ORDER BY i.name LIMIT ? OFFSET ?",
                [*params, int(limit), int(offset)],
            ).fetchall()
        return [IdentityRow(int(a), str(b), float(c), float(d), int(e)) for a, b, c, d, e in rows]

    def get_identity(self: StoreHost, identity_id: int, with_embeddings: bool = False) -> IdentityRow:
        with self._tx(write=False) as cur:
            row = cur.execute(
                "SELECT id, name, created_at, updated_at FROM identities WHERE id = ?", (identity_id,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no identity with id {identity_id}")
            faces = cur.execute(
                "SELECT id, image_sha256, box, landmarks, det_score, quality, model_id, created_at, "
                "crop IS NOT NULL, embedding FROM faces WHERE identity_id = ? ORDER BY id",
                (identity_id,),
            ).fetchall()
        face_rows = []
        for f in faces:
            d = {
                "id": int(f[0]),
                "image_sha256": f[1],
                "box": json.loads(f[2]),
                "landmarks": json.loads(f[3]),
                "det_score": float(f[4]),
                "quality": float(f[5]),
                "model_id": f[6],
                "created_at": float(f[7]),
                "has_crop": bool(f[8]),
            }
            if with_embeddings:
                d["embedding"] = np.frombuffer(blob_bytes(f[9]), dtype=np.float32).round(6).tolist()
            face_rows.append(d)
        return IdentityRow(int(row[0]), str(row[1]), float(row[2]), float(row[3]), len(face_rows), face_rows)

    def identity_by_name(self: StoreHost, name: str) -> int | None:
        with self._tx(write=False) as cur:
            row = cur.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else None

    def identity_embeddings(self: StoreHost, identity_id: int) -> np.ndarray:
        with self._tx(write=False) as cur:
            if cur.execute("SELECT 1 FROM identities WHERE id = ?", (identity_id,)).fetchone() is None:
                raise NotFoundError(f"no identity with id {identity_id}")
            rows = cur.execute("SELECT embedding FROM faces WHERE identity_id = ?", (identity_id,)).fetchall()
        return to_snapshot([(0, r[0]) for r in rows], 0).embeddings

    def face_crop(self: StoreHost, face_id: int) -> bytes | None:
        with self._tx(write=False) as cur:
            row = cur.execute("SELECT crop FROM faces WHERE id = ?", (face_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no face with id {face_id}")
        return blob_bytes(row[0]) if row[0] is not None else None

    def audit_entries(self: StoreHost, limit: int = 100, after_id: int = 0) -> list[dict[str, Any]]:
        with self._tx(write=False) as cur:
            rows = cur.execute(
                "SELECT id, at, actor, action, identity_id, face_ids, detail FROM audit WHERE id > ? "
                "ORDER BY id DESC LIMIT ?",
                (int(after_id), int(limit)),
            ).fetchall()
        return [
            {
                "id": int(r[0]),
                "at": float(r[1]),
                "actor": r[2],
                "action": r[3],
                "identity_id": None if r[4] is None else int(r[4]),
                "face_ids": json.loads(r[5]),
                "detail": json.loads(r[6]),
            }
            for r in rows
        ]
