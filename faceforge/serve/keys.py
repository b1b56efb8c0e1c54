"""API keys in the gallery database, and the :class:`Actor` an audit entry names.

A key is ``ffk_<12 hex id>_<43 url-safe characters>`` (256 random bits). The ``api_keys`` table (schema in
:mod:`~faceforge.serve.sql`) keeps only the id, a name, the scopes and a SHA-256 of the secret, so the full
key is shown once, when it is made. Scopes are :data:`SCOPES`; ``admin`` allows everything. How the
service checks a request's key and its scope is in :mod:`~faceforge.serve.security`.

The key methods are :class:`ApiKeyMixin`, which :class:`~faceforge.serve.store.Store` inherits: they run
in the store's transactions and write to its audit log (:class:`KeyHost` names what they use).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from faceforge.serve.errors import NotFoundError
from faceforge.serve.sql import Cursor

SCOPES = ("search", "enrol", "admin")
KEY_PREFIX = "ffk"


@dataclass
class Actor:
    """Who did something, for the audit log: an API key (id and name) or a command-line user."""

    key_id: str | None = None
    name: str = "cli"

    def label(self) -> str:
        return f"key:{self.key_id}:{self.name}" if self.key_id else self.name


@dataclass
class ApiKey:
    """A key's record (never its secret): id, name, scopes, when it was made and revoked."""

    key_id: str
    name: str
    scopes: tuple[str, ...]
    created_at: float
    revoked_at: float | None = None

    def allows(self, scope: str) -> bool:
        return self.revoked_at is None and (scope in self.scopes or "admin" in self.scopes)


class KeyHost(Protocol):
    """What :class:`ApiKeyMixin` needs from the class that inherits it (the store)."""

    def _tx(self, write: bool) -> AbstractContextManager[Cursor]:
        """A transaction (a write one takes the write lock) whose cursor commits on exit."""
        ...

    def _audit(
        self,
        cur: Cursor,
        actor: Actor,
        action: str,
        identity_id: int | None,
        face_ids: Sequence[int],
        detail: dict[str, Any],
    ) -> None:
        """Write an audit entry in the transaction of ``cur``."""
        ...


class ApiKeyMixin:
    """Create, list, revoke and check API keys; for a class that is a :class:`KeyHost`."""

    def create_key(
        self: KeyHost, name: str, scopes: Sequence[str], actor: Actor | None = None
    ) -> tuple[ApiKey, str]:
        """A new key: returns its record and the full secret string (shown once; only its hash is kept)."""
        scopes = tuple(sorted(set(scopes)))
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            raise ValueError(
                f"scopes must be one or more of {', '.join(SCOPES)}; got {', '.join(scopes) or 'none'}"
            )
        if not name.strip():
            raise ValueError("a key needs a name (who or what uses it)")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = time.time()
        with self._tx(write=True) as cur:
            cur.execute(
                "INSERT INTO api_keys (key_id, name, secret_sha256, scopes, created_at, revoked_at) "
                "VALUES (?, ?, ?, ?, ?, NULL)",
                (key_id, name.strip(), _secret_hash(secret), ",".join(scopes), now),
            )
            self._audit(
                cur,
                actor or Actor(),
                "key_create",
                None,
                [],
                {"key_id": key_id, "name": name, "scopes": scopes},
            )
        return ApiKey(key_id, name.strip(), scopes, now), f"{KEY_PREFIX}_{key_id}_{secret}"

    def list_keys(self: KeyHost) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        with self._tx(write=False) as cur:
            rows = cur.execute(
                "SELECT key_id, name, scopes, created_at, revoked_at FROM api_keys ORDER BY created_at"
            ).fetchall()
        return [
            ApiKey(r[0], r[1], tuple(r[2].split(",")), float(r[3]), None if r[4] is None else float(r[4]))
            for r in rows
        ]

    def revoke_key(self: KeyHost, key_id_or_name: str, actor: Actor | None = None) -> ApiKey:
        """Revoke a key by id or (unique) name; takes effect on every server at its next request."""
        with self._tx(write=True) as cur:
            rows = cur.execute(
                "SELECT key_id, name, scopes, created_at FROM api_keys WHERE (key_id = ? OR name = ?) "
                "AND revoked_at IS NULL",
                (key_id_or_name, key_id_or_name),
            ).fetchall()
            if not rows:
                raise NotFoundError(f"no active API key with id or name {key_id_or_name!r}")
            if len(rows) > 1:
                raise ValueError(
                    f"{len(rows)} active keys are named {key_id_or_name!r}; revoke one by its id: "
                    + ", ".join(r[0] for r in rows)
                )
            now = time.time()
            cur.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ?", (now, rows[0][0]))
            self._audit(
                cur, actor or Actor(), "key_revoke", None, [], {"key_id": rows[0][0], "name": rows[0][1]}
            )
        r = rows[0]
        return ApiKey(r[0], r[1], tuple(r[2].split(",")), float(r[3]), now)

    def check_key(self: KeyHost, presented: str) -> ApiKey | None:
        """The active key whose secret is ``presented``, or None (unknown, malformed or revoked)."""
        parts = presented.strip().split("_", 2)
        if len(parts) != 3 or parts[0] != KEY_PREFIX or not re.fullmatch(r"[0-9a-f]{12}", parts[1]):
            return None
        with self._tx(write=False) as cur:
            row = cur.execute(
                "SELECT key_id, name, secret_sha256, scopes, created_at, revoked_at FROM api_keys WHERE key_id = ?",
                (parts[1],),
            ).fetchone()
        if row is None or row[5] is not None:
            return None
        if not hmac.compare_digest(row[2], _secret_hash(parts[2])):
            return None
        return ApiKey(row[0], row[1], tuple(row[3].split(",")), float(row[4]))


def _secret_hash(secret: str) -> str:
    """SHA-256 of the key's random part. The secrets are 256 random bits, so a fast hash is enough: a slow
    password hash (bcrypt, scrypt) protects guessable passwords, and nobody can guess 2^256."""
    return hashlib.sha256(secret.encode()).hexdigest()
