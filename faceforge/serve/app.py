"""The FastAPI application: JSON API under ``/v1``, Prometheus metrics, the web page at ``/``.

Every error is ``{"error": {"code": ..., "message": ...}}`` with the status below (and the auth statuses of
:mod:`faceforge.serve.security`); a refused request changes nothing in the store.

==============================================  ======  ==============================
case                                            status  ``error.code``
==============================================  ======  ==============================
request body over ``max_body_bytes``            413     ``body_too_large``
photo over ``max_pixels`` (header, not decoded) 413     ``too_many_pixels``
more than ``max_photos`` files                  413     ``too_many_photos``
not a decodable image                           422     ``corrupt_image``
no face                                         422     ``no_face``
more than ``max_faces`` faces                   422     ``too_many_faces``
face fails the quality gate                     422     ``low_quality``
missing or malformed field                      422     ``bad_request``
unknown identity / face                         404     ``not_found``
name taken                                      409     ``conflict``
embedding of another model                      409     ``model_mismatch``
==============================================  ======  ==============================

Routes (scope in brackets): ``POST /v1/identities`` [enrol] (form: ``name``, ``photos`` 1..N),
``POST /v1/identities/{id}/faces`` [enrol], ``GET /v1/identities`` [enrol], ``GET /v1/identities/{id}``
[enrol; ``?embeddings=true`` admin], ``PATCH /v1/identities/{id}`` [admin] (JSON ``{"name": ...}``),
``DELETE /v1/identities/{id}`` [admin], ``DELETE /v1/faces/{id}`` [admin], ``GET /v1/faces/{id}/crop``
[search or enrol], ``POST /v1/search`` [search] (form: ``photo``, ``k``, ``fmr``, ``crops``), ``POST /v1/verify``
[search] (form: ``photo`` and ``photo2`` or ``identity_id``, ``fmr``), ``POST /v1/search/embedding``
[admin] (JSON ``{"model_id", "embedding", "k"}``), ``GET /v1/audit`` [admin], ``GET /v1/admin/status``
[admin] (index vs database check), ``GET /v1/health`` [none], ``GET /metrics`` [admin unless
``metrics_public``], ``GET /`` the page; the gallery view's ``GET /v1/gallery`` [enrol], ``GET /v1/key``
[any key] and ``GET /v1/fmrs`` [none] are in :mod:`faceforge.serve.routes_gallery`.

CORS is off unless origins are given (``--cors-origin``). Responses carry ``Cache-Control: no-store``,
``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer`` and, for the
page, a Content-Security-Policy that allows only this origin's scripts.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from faceforge.serve.errors import ConflictError, ModelMismatchError, NotFoundError, StoreError
from faceforge.serve.pipeline import PhotoError, l2_normalise
from faceforge.serve.routes_gallery import authorised
from faceforge.serve.routes_gallery import router as gallery_router
from faceforge.serve.security import Authenticator, AuthError, RateLimiter
from faceforge.serve.service import Service

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


class _TooLarge(Exception):
    pass


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` (by Content-Length up front, else while streaming)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body larger than the limit of {self.max_bytes} bytes"
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await _error(413, "body_too_large", message)(scope, receive, send)
                    return
        seen = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return msg

        async def tracking_send(msg: dict) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _error(413, "body_too_large", message)(scope, receive, send)


class Metrics:
    """Prometheus metrics in a registry of the app's own (several apps can live in one process)."""

    def __init__(self, service: Service) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "faceforge_requests", "HTTP requests", ["route", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "faceforge_request_seconds",
            "request latency",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.batch = Histogram(
            "faceforge_embed_batch_faces",
            "faces per embedder call",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "faceforge_embed_batch_seconds", "time per embedder call", registry=self.registry
        )
        faces = Gauge("faceforge_index_faces", "faces in the search index", registry=self.registry)
        faces.set_function(lambda: service.index.count)
        seq = Gauge(
            "faceforge_index_seq", "last database change applied to the index", registry=self.registry
        )
        seq.set_function(lambda: service.index.seq)
        service.batch_observers.append(self._observe_batch)

    def _observe_batch(self, n: int, seconds: float) -> None:
        self.batch.observe(n)
        self.batch_seconds.observe(seconds)


def _route_label(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


async def _photos(form: Any, field: str, limit: int) -> list[tuple[str, bytes]]:
    files = [v for v in form.getlist(field) if isinstance(v, UploadFile)]
    if len(files) > limit:
        raise PhotoError(
            f"{len(files)} photos in one request, more than the limit of {limit}",
            status=413,
            code="too_many_photos",
        )
    return [(f.filename or f"{field}{i}", await f.read()) for i, f in enumerate(files)]


def _int_field(form: Any, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = form.get(name)
    if raw in (None, ""):
        return default
    try:
        v = int(str(raw))
    except ValueError:
        raise ValueError(f"field '{name}' must be an integer, got {str(raw)[:40]!r}") from None
    if not lo <= v <= hi:
        raise ValueError(f"field '{name}' must be between {lo} and {hi}, got {v}")
    return v


def _fmr_field(form: Any) -> float | None:
    raw = form.get("fmr")
    if raw in (None, ""):
        return None
    try:
        v = float(str(raw))
    except ValueError:
        raise ValueError(f"field 'fmr' must be a number such as 1e-4, got {str(raw)[:40]!r}") from None
    if not 0 < v < 1:
        raise ValueError(f"field 'fmr' must be between 0 and 1, got {v}")
    return v


def create_app(service: Service) -> FastAPI:
    """The application for a running :class:`~faceforge.serve.service.Service`."""
    settings = service.settings
    auth = Authenticator(service.store, RateLimiter(settings.limits.requests_per_minute))
    metrics = Metrics(service)
    app = FastAPI(title="faceforge face search", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.state.metrics = metrics
    app.state.auth = auth
    _add_middleware(app, service, metrics)
    _add_error_handlers(app)
    _add_identity_routes(app, service)
    _add_search_routes(app, service)
    _add_admin_routes(app, service, metrics)
    _add_page_routes(app)
    app.include_router(gallery_router)
    app.state.describe = lambda: json.dumps(service.describe(), default=str)
    return app


def _form_reader(max_photos: int) -> Any:
    """``await form(request)``: the request's multipart or urlencoded form, at most ``max_photos`` files."""

    async def form(request: Request) -> Any:
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            raise ValueError("send the photos as multipart/form-data")
        return await request.form(max_files=max_photos + 1, max_fields=32)

    return form


def _add_middleware(app: FastAPI, service: Service, metrics: Metrics) -> None:
    """CORS (when origins are set), metrics and security headers on every response, the body size limit."""
    settings = service.settings
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )

    @app.middleware("http")
    async def observe(request: Request, call_next: Any) -> Response:
        t0 = time.perf_counter()
        response = await call_next(request)
        route = _route_label(request)
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - t0)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    app.add_middleware(BodyLimit, max_bytes=settings.limits.max_body_bytes)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": {"code", "message"}}`` with the status of the module doc's table."""

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(PhotoError)
    async def _photo_error(_: Request, exc: PhotoError) -> JSONResponse:
        return _error(exc.status, exc.code, str(exc))

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return _error(404, "not_found", str(exc))

    @app.exception_handler(ConflictError)
    async def _conflict(_: Request, exc: ConflictError) -> JSONResponse:
        return _error(409, "conflict", str(exc))

    @app.exception_handler(ModelMismatchError)
    async def _mismatch(_: Request, exc: ModelMismatchError) -> JSONResponse:
        return _error(409, "model_mismatch", str(exc))

    @app.exception_handler(StoreError)
    async def _store_error(_: Request, exc: StoreError) -> JSONResponse:
        return _error(500, "store_error", str(exc))

    @app.exception_handler(ValueError)
    async def _value_error(_: Request, exc: ValueError) -> JSONResponse:
        return _error(422, "bad_request", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", []))
        return _error(422, "bad_request", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        return _error(exc.status_code, codes.get(exc.status_code, "bad_request"), message)


def _add_identity_routes(app: FastAPI, service: Service) -> None:
    """Enrol, add faces, list, read, rename and delete people; delete faces; face crops."""
    limits, gallery, need = service.settings.limits, service.gallery, authorised
    form = _form_reader(limits.max_photos)

    @app.post("/v1/identities", status_code=201)
    async def enrol(request: Request) -> dict[str, Any]:
        actor = await need(request, "enrol")
        f = await form(request)
        name = str(f.get("name") or "")
        photos = await _photos(f, "photos", limits.max_photos)
        if not photos:
            raise ValueError("an enrolment needs one or more files in the field 'photos'")
        return await run_in_threadpool(gallery.enrol, name, photos, actor, True)

    @app.post("/v1/identities/{identity_id}/faces", status_code=201)
    async def add_faces(identity_id: int, request: Request) -> dict[str, Any]:
        actor = await need(request, "enrol")
        f = await form(request)
        photos = await _photos(f, "photos", limits.max_photos)
        if not photos:
            raise ValueError("send one or more files in the field 'photos'")
        return await run_in_threadpool(gallery.add_faces, identity_id, photos, actor)

    @app.get("/v1/identities")
    async def list_identities(
        request: Request, offset: int = 0, limit: int = 100, prefix: str | None = None
    ) -> dict[str, Any]:
        await need(request, "enrol")
        rows = await run_in_threadpool(
            service.store.list_identities, max(0, offset), min(max(1, limit), 1000), prefix
        )
        return {"identities": [r.to_dict() for r in rows], "offset": offset}

    @app.get("/v1/identities/{identity_id}")
    async def get_identity(identity_id: int, request: Request, embeddings: bool = False) -> dict[str, Any]:
        await need(request, "admin" if embeddings else "enrol")
        row = await run_in_threadpool(service.store.get_identity, identity_id, embeddings)
        return row.to_dict() | {"face_list": row.face_rows}

    @app.patch("/v1/identities/{identity_id}")
    async def rename_identity(identity_id: int, request: Request) -> dict[str, Any]:
        actor = await need(request, "admin")
        try:
            body = await request.json()
        except ValueError:
            raise ValueError('send JSON {"name": "..."}') from None
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ValueError('send JSON {"name": "..."}')
        await run_in_threadpool(service.store.rename_identity, identity_id, body["name"], actor)
        return {"identity": {"id": identity_id, "name": body["name"].strip()}}

    @app.delete("/v1/identities/{identity_id}")
    async def delete_identity(identity_id: int, request: Request) -> dict[str, Any]:
        actor = await need(request, "admin")
        ids = await run_in_threadpool(gallery.delete_identity, identity_id, actor)
        return {"deleted_identity": identity_id, "deleted_faces": ids}

    @app.delete("/v1/faces/{face_id}")
    async def delete_face(face_id: int, request: Request) -> dict[str, Any]:
        actor = await need(request, "admin")
        identity_id = await run_in_threadpool(gallery.delete_face, face_id, actor)
        return {"deleted_face": face_id, "identity_id": identity_id}

    @app.get("/v1/faces/{face_id}/crop")
    async def face_crop(face_id: int, request: Request) -> Response:
        await need(request, ("search", "enrol"))
        data = await run_in_threadpool(service.store.face_crop, face_id)
        if data is None:
            raise NotFoundError(f"face {face_id} has no stored crop (the server keeps none)")
        return Response(data, media_type="image/jpeg")


def _add_search_routes(app: FastAPI, service: Service) -> None:
    """Search by photo, verify (two photos, or a photo against a person), search by embedding."""
    limits, gallery, need = service.settings.limits, service.gallery, authorised
    form = _form_reader(limits.max_photos)

    @app.post("/v1/search")
    async def search(request: Request) -> dict[str, Any]:
        await need(request, "search")
        f = await form(request)
        photos = await _photos(f, "photo", 1)
        if len(photos) != 1:
            raise ValueError("send one file in the field 'photo'")
        k = _int_field(f, "k", 5, 1, 100)
        fmr = _fmr_field(f)
        crops = str(f.get("crops", "")).lower() in ("1", "true", "yes")
        name, data = photos[0]

        return await run_in_threadpool(gallery.search_photo, data, name, k or 5, fmr, crops)

    @app.post("/v1/verify")
    async def verify(request: Request) -> dict[str, Any]:
        await need(request, "search")
        f = await form(request)
        fmr = _fmr_field(f)
        first = await _photos(f, "photo", 1)
        second = await _photos(f, "photo2", 1)
        identity_id = _int_field(f, "identity_id", None, 1, 2**62)
        if len(first) != 1 or (len(second) == 1) == (identity_id is not None):
            raise ValueError("send 'photo' and either 'photo2' or 'identity_id'")
        if identity_id is not None:
            return await run_in_threadpool(gallery.verify_identity, first[0], identity_id, fmr)
        return await run_in_threadpool(gallery.verify_photos, first[0], second[0], fmr)

    @app.post("/v1/search/embedding")
    async def search_embedding(request: Request) -> dict[str, Any]:
        await need(request, "admin")
        body = await request.json()
        if not isinstance(body, dict) or "embedding" not in body or "model_id" not in body:
            raise ValueError('send JSON {"model_id": "...", "embedding": [...], "k": 5}')
        service.store.check_model(str(body["model_id"]))
        emb = np.asarray(body["embedding"], dtype=np.float32).reshape(1, -1)
        if emb.shape[1] != service.index.dim:
            raise ValueError(f"embedding has {emb.shape[1]} values, the gallery's have {service.index.dim}")
        k = int(body.get("k", 5))
        fmr = body.get("fmr")
        decision = gallery.decision(None if fmr is None else float(fmr))
        matches = await run_in_threadpool(
            gallery.search_embeddings, l2_normalise(emb), max(1, min(k, 100)), decision
        )
        return {"matches": matches[0], "decision_rule": decision.to_dict()}


def _add_admin_routes(app: FastAPI, service: Service, metrics: Metrics) -> None:
    """The audit log, the index-versus-database check, health, service info and Prometheus metrics."""
    settings, gallery, need = service.settings, service.gallery, authorised

    @app.get("/v1/audit")
    async def audit(request: Request, limit: int = 100, after_id: int = 0) -> dict[str, Any]:
        await need(request, "admin")
        return {
            "entries": await run_in_threadpool(
                service.store.audit_entries, min(max(1, limit), 1000), after_id
            )
        }

    @app.get("/v1/admin/status")
    async def status(request: Request) -> dict[str, Any]:
        await need(request, "admin")
        check = await run_in_threadpool(service.index.verify, service.store)
        counts = await run_in_threadpool(service.store.counts)
        return {"index_check": check.to_dict(), "counts": counts, "service": service.describe()}

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        try:
            db_seq = await run_in_threadpool(service.store.latest_seq)
        except Exception:
            return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)  # type: ignore[return-value]
        return {"status": "ok", "database": "ok", "index_behind_by": max(0, db_seq - service.index.seq)}

    @app.get("/v1/info")
    async def info(request: Request) -> dict[str, Any]:
        await need(request, "search")
        d = service.describe()
        return {
            "model_id": d["model_id"],
            "model_kind": d["model"].get("kind"),
            "fmrs": d["calibration"]["fmrs"],
            "default_fmr": gallery.decision().fmr,
            "limits": d["limits"],
            "index": {k: d["index"][k] for k in ("kind", "loaded_from")},
        }

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        if not settings.metrics_public:
            await need(request, "admin")
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _add_page_routes(app: FastAPI) -> None:
    """The web page and its static files."""
    static = resources.files("faceforge.serve") / "static"

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(
            (static / "index.html").read_text(), headers={"Content-Security-Policy": PAGE_CSP}
        )

    @app.get("/static/{name}")
    async def static_file(name: str) -> Response:
        types = {"app.js": "text/javascript", "gallery.js": "text/javascript", "style.css": "text/css"}
        if name not in types:
            return _error(404, "not_found", "no such file")
        return Response((static / name).read_text(), media_type=types[name])
