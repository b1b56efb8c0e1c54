"""API keys, scopes and rate limits for the service.

* Keys: ``ffk_<12 hex id>_<43 url-safe characters>`` (256 random bits), sent as ``Authorization: Bearer
  KEY`` or ``X-API-Key: KEY``. The database keeps only the id and a SHA-256 of the secret
  (:mod:`faceforge.serve.keys`); ``faceforge serve keys create`` prints the key once.
* Scopes: ``search`` (search, verify, face crops of matches), ``enrol`` (enrol, add photos, list and read
  identities, the gallery view's pages and face crops), ``admin`` (everything: rename, delete, embeddings,
  audit log, index check, metrics). A route may take any of several scopes (face crops: ``search`` or
  ``enrol``), or any valid key (``GET /v1/key``: what the presented key may do).
* Rate limit: at most ``requests_per_minute`` requests per key in any sliding 60 s window, counted in the
  server process (with several processes, each counts its own requests).

Status codes and messages (the tests check each one):

===========================================  ======  ================================================
case                                         status  ``error.code``
===========================================  ======  ================================================
no key                                       401     ``missing_key``
unknown, malformed or revoked key            401     ``invalid_key``
key without the scope                        403     ``forbidden``
more than the per-minute limit               429     ``rate_limited`` (with ``Retry-After``)
===========================================  ======  ================================================
"""

from __future__ import annotations

import collections
import math
import threading
import time

from faceforge.serve.keys import ApiKey
from faceforge.serve.store import Store


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


class RateLimiter:
    """Sliding-window counter per key: at most ``per_minute`` requests in the last 60 s."""

    def __init__(self, per_minute: int, clock=time.monotonic) -> None:
        self.per_minute = int(per_minute)
        self._clock = clock
        self._hits: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def check(self, key_id: str) -> float | None:
        """Count a request; None if allowed, else the seconds until the next one would be."""
        if self.per_minute <= 0:
            return None
        now = self._clock()
        with self._lock:
            hits = self._hits[key_id]
            while hits and hits[0] <= now - 60.0:
                hits.popleft()
            if len(hits) >= self.per_minute:
                return max(0.0, hits[0] + 60.0 - now)
            hits.append(now)
            return None


class Authenticator:
    def __init__(self, store: Store, limiter: RateLimiter) -> None:
        self.store = store
        self.limiter = limiter

    def authorise(
        self, authorization: str | None, x_api_key: str | None, scope: str | tuple[str, ...] | None
    ) -> ApiKey:
        """The key behind the request if it may use ``scope`` (one scope, any of several, or ``None``: any
        valid key), else :class:`AuthError` (module doc)."""
        secret = presented_key(authorization, x_api_key)
        if secret is None:
            raise AuthError(
                401,
                "missing_key",
                "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>' "
                "(create one with `faceforge serve keys create`)",
                {"WWW-Authenticate": "Bearer"},
            )
        key = self.store.check_key(secret)
        if key is None:
            raise AuthError(
                401,
                "invalid_key",
                "invalid API key (unknown, malformed or revoked)",
                {"WWW-Authenticate": "Bearer"},
            )
        wanted = (scope,) if isinstance(scope, str) else scope
        if wanted is not None and not any(key.allows(s) for s in wanted):
            need = " or ".join(f"'{s}'" for s in wanted)
            raise AuthError(
                403,
                "forbidden",
                f"API key '{key.name}' has scopes {', '.join(key.scopes)}; this request needs {need}",
            )
        wait = self.limiter.check(key.key_id)
        if wait is not None:
            raise AuthError(
                429,
                "rate_limited",
                f"API key '{key.name}' exceeded {self.limiter.per_minute} requests per minute; retry in {math.ceil(wait)} s",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )
        return key
