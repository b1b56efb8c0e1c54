"""The service's API on real LFW photos and group photos, in process (FastAPI's TestClient).

Every refused request (auth, scope, limits, bad photos) is checked for its documented status and code and for
leaving the store unchanged (same counts, same audit log).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from faceforge.serve.app import create_app
from faceforge.serve.pipeline import Limits
from faceforge.serve.service import Service, ServiceSettings
from tests.serve.helpers import PEOPLE, PHOTOS, lfw_photo

LIMITS = Limits(
    max_body_bytes=2_000_000, max_pixels=5_000_000, max_faces=5, max_photos=3, requests_per_minute=1000
)
ENROLLED = PEOPLE[:4]
STRANGER = PEOPLE[4]


def _photo(path) -> tuple[str, bytes, str]:
    data = path.read_bytes()
    return (path.name, data, "image/png" if path.suffix == ".png" else "image/jpeg")


def pixel_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A valid PNG header claiming width x height pixels, with a tiny (truncated) image stream."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + chunk(b"IEND", b"")
    )


def blank_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (240, 240), (128, 128, 128)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def service(tmp_path_factory, default_embedder, detector, lfw):
    db = tmp_path_factory.mktemp("api") / "gallery.db"
    svc = Service(ServiceSettings(db=str(db), limits=LIMITS), embedder=default_embedder, detector=detector)
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service)) as c:
        yield c


@pytest.fixture(scope="module")
def keys(service):
    out = {}
    for scope in ("search", "enrol", "admin"):
        _, out[scope] = service.store.create_key(f"test-{scope}", [scope])
    _, out["revoked"] = service.store.create_key("test-revoked", ["admin"])
    service.store.revoke_key("test-revoked")
    return out


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture(scope="module")
def enrolled(client, keys):
    ids = {}
    for person in ENROLLED:
        files = [("photos", _photo(lfw_photo(person, n))) for n in (1, 2)]
        r = client.post("/v1/identities", data={"name": person}, files=files, headers=auth(keys["enrol"]))
        assert r.status_code == 201, r.text
        ids[person] = r.json()["identity"]["id"]
        assert len(r.json()["face_ids"]) == 2
    return ids


def _search(client, key, path, **form):
    return client.post("/v1/search", files={"photo": _photo(path)}, data=form, headers=auth(key))


def test_search_finds_the_right_lfw_identity(client, keys, enrolled):
    for person in ENROLLED:
        r = _search(client, keys["search"], lfw_photo(person, 3), k="3")
        assert r.status_code == 200, r.text
        out = r.json()
        assert len(out["faces"]) >= 1
        face = max(out["faces"], key=lambda f: f["box"][2] - f["box"][0])
        assert face["matches"][0]["name"] == person
        assert face["decision"] is not None and face["decision"]["name"] == person
        assert face["matches"][0]["score"] >= out["decision_rule"]["threshold"]
        assert len(face["matches"]) == 3 and "embedding" not in str(out)
    # someone never enrolled: no decision at the default FMR (1e-4)
    out = _search(client, keys["search"], lfw_photo(STRANGER, 1)).json()
    face = max(out["faces"], key=lambda f: f["box"][2] - f["box"][0])
    assert face["decision"] is None and not face["matches"][0]["match"]
    assert out["decision_rule"]["fmr"] == 1e-4


def test_verify_photos_and_identity(client, keys, enrolled):
    a, b = ENROLLED[0], ENROLLED[1]
    same = client.post(
        "/v1/verify",
        files={"photo": _photo(lfw_photo(a, 3)), "photo2": _photo(lfw_photo(a, 4))},
        headers=auth(keys["search"]),
    ).json()
    diff = client.post(
        "/v1/verify",
        files={"photo": _photo(lfw_photo(a, 3)), "photo2": _photo(lfw_photo(b, 3))},
        headers=auth(keys["search"]),
    ).json()
    assert (
        same["match"]
        and not diff["match"]
        and same["score"] > same["decision_rule"]["threshold"] > diff["score"]
    )
    r = client.post(
        "/v1/verify",
        files={"photo": _photo(lfw_photo(b, 4))},
        data={"identity_id": str(enrolled[b])},
        headers=auth(keys["search"]),
    )
    assert r.status_code == 200 and r.json()["match"]
    r = client.post(
        "/v1/verify",
        files={"photo": _photo(lfw_photo(b, 4))},
        data={"identity_id": str(enrolled[a])},
        headers=auth(keys["search"]),
    )
    assert not r.json()["match"]


def test_group_photo_every_face_searched(client, keys, enrolled):
    out = _search(client, keys["search"], PHOTOS / "faceapi_sample5.jpg", crops="true").json()
    assert len(out["faces"]) == 5
    assert all(f["crop"].startswith("data:image/jpeg;base64,") for f in out["faces"])
    assert all(f["decision"] is None for f in out["faces"])  # none of them is enrolled


def test_list_rename_delete_and_crops(client, keys, enrolled, service):
    person = ENROLLED[3]
    iid = enrolled[person]
    lst = client.get("/v1/identities", headers=auth(keys["enrol"])).json()["identities"]
    assert {i["name"] for i in lst} >= set(ENROLLED)
    ident = client.get(f"/v1/identities/{iid}", headers=auth(keys["enrol"])).json()
    assert ident["faces"] == 2 and "embedding" not in ident["face_list"][0]
    full = client.get(f"/v1/identities/{iid}?embeddings=true", headers=auth(keys["admin"])).json()
    assert len(full["face_list"][0]["embedding"]) == service.index.dim
    crop = client.get(f"/v1/faces/{ident['face_list'][0]['id']}/crop", headers=auth(keys["search"]))
    assert crop.status_code == 200 and crop.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(crop.content)).size == (service.embedder.input_size,) * 2

    r = client.patch(
        f"/v1/identities/{iid}", json={"name": person + " (renamed)"}, headers=auth(keys["admin"])
    )
    assert r.status_code == 200
    top = _search(client, keys["search"], lfw_photo(person, 3)).json()["faces"]
    assert max(top, key=lambda f: f["box"][2] - f["box"][0])["matches"][0]["name"] == person + " (renamed)"

    face_id = ident["face_list"][0]["id"]
    assert client.delete(f"/v1/faces/{face_id}", headers=auth(keys["admin"])).status_code == 200
    assert client.delete(f"/v1/identities/{iid}", headers=auth(keys["admin"])).status_code == 200
    out = _search(client, keys["search"], lfw_photo(person, 3)).json()
    assert all(m["identity_id"] != iid for f in out["faces"] for m in f["matches"])
    assert client.get(f"/v1/identities/{iid}", headers=auth(keys["enrol"])).status_code == 404
    audit = client.get("/v1/audit", headers=auth(keys["admin"])).json()["entries"]
    assert [e["action"] for e in audit[:3]] == ["delete_identity", "delete_face", "rename"]
    status = client.get("/v1/admin/status", headers=auth(keys["admin"])).json()
    assert status["index_check"]["ok"] and status["index_check"]["index_faces"] == status["counts"]["faces"]


def _state(service):
    return service.store.counts(), len(service.store.audit_entries(limit=1000))


REFUSALS = [
    # (name, request builder, status, code, message fragment)
    (
        "no key",
        lambda c, k: c.post("/v1/search", files={"photo": _photo(lfw_photo(PEOPLE[0], 3))}),
        401,
        "missing_key",
        "missing API key",
    ),
    (
        "wrong key",
        lambda c, k: _search(c, "ffk_0123456789ab_" + "x" * 43, lfw_photo(PEOPLE[0], 3)),
        401,
        "invalid_key",
        "invalid API key",
    ),
    (
        "revoked key",
        lambda c, k: _search(c, k["revoked"], lfw_photo(PEOPLE[0], 3)),
        401,
        "invalid_key",
        "revoked",
    ),
    (
        "search key enrols",
        lambda c, k: c.post(
            "/v1/identities",
            data={"name": "X"},
            files=[("photos", _photo(lfw_photo(STRANGER, 1)))],
            headers=auth(k["search"]),
        ),
        403,
        "forbidden",
        "needs 'enrol'",
    ),
    (
        "enrol key deletes",
        lambda c, k: c.delete("/v1/identities/1", headers=auth(k["enrol"])),
        403,
        "forbidden",
        "needs 'admin'",
    ),
    (
        "enrol key reads embeddings",
        lambda c, k: c.get("/v1/identities/1?embeddings=true", headers=auth(k["enrol"])),
        403,
        "forbidden",
        "admin",
    ),
    (
        "oversized body",
        lambda c, k: c.post(
            "/v1/identities",
            data={"name": "Big"},
            files=[("photos", ("big.jpg", b"\xff" * 2_100_000, "image/jpeg"))],
            headers=auth(k["enrol"]),
        ),
        413,
        "body_too_large",
        "larger than the limit of 2000000 bytes",
    ),
    (
        "pixel bomb",
        lambda c, k: c.post(
            "/v1/identities",
            data={"name": "Bomb"},
            files=[("photos", ("bomb.png", pixel_bomb(), "image/png"))],
            headers=auth(k["enrol"]),
        ),
        413,
        "too_many_pixels",
        "claims over 178956970 pixels, more than the limit of 5000000 pixels",
    ),
    (
        "large photo under Pillow's guard",
        lambda c, k: c.post(
            "/v1/identities",
            data={"name": "Large"},
            files=[("photos", ("large.png", pixel_bomb(3000, 3000), "image/png"))],
            headers=auth(k["enrol"]),
        ),
        413,
        "too_many_pixels",
        "3000x3000 = 9000000 pixels, more than the limit of 5000000 pixels",
    ),
    (
        "corrupt image",
        lambda c, k: c.post(
            "/v1/identities",
            data={"name": "Corrupt"},
            files=[("photos", ("c.jpg", b"GIF89 not really", "image/jpeg"))],
            headers=auth(k["enrol"]),
        ),
        422,
        "corrupt_image",
        "not a decodable image",
    ),
    (
        "no face",
        lambda c, k: c.post(
            "/v1/identities",
            data={"name": "Nobody"},
            files=[("photos", ("blank.png", blank_png(), "image/png"))],
            headers=auth(k["enrol"]),
        ),
        422,
        "no_face",
        "no face found in photo 'blank.png'",
    ),
    (
        "too many faces",
        lambda c, k: _search(c, k["search"], PHOTOS / "insightface_t1.jpg"),
        422,
        "too_many_faces",
        "has 6 faces, more than the limit of 5",
    ),
    (
        "too many photos",
        lambda c, k: c.post(
            "/v1/identities",
            data={"name": "Many"},
            files=[("photos", _photo(lfw_photo(STRANGER, 1)))] * 4,
            headers=auth(k["enrol"]),
        ),
        413,
        "too_many_photos",
        "4 photos in one request, more than the limit of 3",
    ),
    (
        "one bad photo in an enrolment",
        lambda c, k: c.post(
            "/v1/identities",
            data={"name": STRANGER},
            files=[
                ("photos", _photo(lfw_photo(STRANGER, 1))),
                ("photos", ("bad.jpg", b"\x00\x01garbage", "image/jpeg")),
            ],
            headers=auth(k["enrol"]),
        ),
        422,
        "corrupt_image",
        "photo 'bad.jpg'",
    ),
    (
        "name taken",
        lambda c, k: c.post(
            "/v1/identities",
            data={"name": PEOPLE[0]},
            files=[("photos", _photo(lfw_photo(PEOPLE[0], 5)))],
            headers=auth(k["enrol"]),
        ),
        409,
        "conflict",
        "exists",
    ),
    (
        "another model's embedding",
        lambda c, k: c.post(
            "/v1/search/embedding",
            json={"model_id": "f" * 64, "embedding": [0.1] * 128},
            headers=auth(k["admin"]),
        ),
        409,
        "model_mismatch",
        "reembed",
    ),
]


@pytest.mark.parametrize("case", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_change_nothing(client, keys, enrolled, service, case):
    _, build, status, code, fragment = case
    before = _state(service)
    r = build(client, keys)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and fragment in err["message"], err
    assert _state(service) == before


def test_rate_limit_per_key(default_embedder, detector, tmp_path):
    limits = Limits(requests_per_minute=2)
    svc = Service(
        ServiceSettings(db=str(tmp_path / "g.db"), limits=limits),
        embedder=default_embedder,
        detector=detector,
    )
    try:
        _, key = svc.store.create_key("burst", ["search"])
        _, other = svc.store.create_key("other", ["search"])
        with TestClient(create_app(svc)) as c:
            assert [c.get("/v1/info", headers=auth(key)).status_code for _ in range(2)] == [200, 200]
            r = c.get("/v1/info", headers=auth(key))
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
            assert (
                "2 requests per minute" in r.json()["error"]["message"] and int(r.headers["Retry-After"]) >= 1
            )
            assert c.get("/v1/info", headers={"X-API-Key": other}).status_code == 200  # per key
    finally:
        svc.close()


def test_embedding_search_health_metrics_cors_and_headers(client, keys, enrolled, service):
    person = ENROLLED[0]
    emb = service.store.identity_embeddings(enrolled[person])[0]
    r = client.post(
        "/v1/search/embedding",
        json={"model_id": service.gallery.model_id, "embedding": emb.tolist(), "k": 2},
        headers=auth(keys["admin"]),
    )
    assert r.json()["matches"][0]["name"] == person and r.json()["matches"][0]["score"] == pytest.approx(
        1.0, abs=1e-5
    )
    assert (
        client.post(
            "/v1/search/embedding", json={"model_id": "x", "embedding": [0]}, headers=auth(keys["search"])
        ).status_code
        == 403
    )

    health = client.get("/v1/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert client.get("/metrics").status_code == 401
    metrics = client.get("/metrics", headers=auth(keys["admin"]))
    assert metrics.status_code == 200 and "faceforge_requests_total" in metrics.text
    assert "faceforge_index_faces" in metrics.text
    pre = client.options(
        "/v1/search", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in {k.lower() for k in pre.headers}
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and "enrol-submit" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/../store.py").status_code == 404


def test_two_servers_share_a_postgresql_gallery(pg_url, default_embedder, detector, lfw):
    """Two service instances (as two server processes) on one PostgreSQL gallery see each other's writes."""
    a = Service(ServiceSettings(db=pg_url), embedder=default_embedder, detector=detector)
    b = Service(ServiceSettings(db=pg_url), embedder=default_embedder, detector=detector)
    try:
        from faceforge.serve.keys import Actor

        person = PEOPLE[1]
        photos = [(p.name, p.read_bytes()) for p in (lfw_photo(person, 1), lfw_photo(person, 2))]
        a.gallery.enrol(person, photos, Actor(name="test"))
        out = b.gallery.search_photo(lfw_photo(person, 3).read_bytes(), "probe.jpg")
        assert out["faces"][0]["decision"]["name"] == person
        b.gallery.delete_identity(b.store.identity_by_name(person), Actor(name="test"))
        out = a.gallery.search_photo(lfw_photo(person, 3).read_bytes(), "probe.jpg")
        assert out["faces"][0]["matches"] == []
        assert a.index.verify(a.store).ok and b.index.verify(b.store).ok
    finally:
        a.close()
        b.close()


def test_gallery_refuses_another_model(tmp_path, default_embedder, detector):
    from faceforge.serve.errors import ModelMismatchError
    from faceforge.serve.store import Store

    db = str(tmp_path / "g.db")
    Store(db).bind_model("0" * 64, {"kind": "some-other-model"})
    with pytest.raises(ModelMismatchError, match="faceforge serve reembed"):
        Service(ServiceSettings(db=db), embedder=default_embedder, detector=detector)
    assert np.isfinite(default_embedder.embed(np.zeros((1, 112, 112, 3), np.uint8))).all()
