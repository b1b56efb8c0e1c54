"""The gallery view's data: pages of people from the store (SQLite and PostgreSQL), and the routes behind the
page (``/v1/gallery``, ``/v1/key``, ``/v1/fmrs``, crops for enrol keys) with their scopes and refusals, on
real LFW photos in process."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from faceforge.serve.app import create_app
from faceforge.serve.keys import Actor
from faceforge.serve.service import Service, ServiceSettings
from faceforge.serve.store import NewFace, Store
from tests.serve.helpers import PEOPLE, lfw_photo

ACTOR = Actor("0123456789ab", "tester")


def _face(rng: np.random.Generator, crop: bool = True) -> NewFace:
    e = rng.standard_normal(8).astype(np.float32)
    e /= np.linalg.norm(e)
    box, marks = [1, 2, 30, 40], [[10, 10], [20, 10], [15, 15], [11, 20], [19, 20]]
    return NewFace(e, "ab" * 32, box, marks, 0.9, 0.9, b"\xff\xd8jpeg" if crop else None)


def test_pages_of_people_in_name_order_with_crops_first(store_url):
    store = Store(store_url)
    try:
        store.bind_model("m" * 64, {"kind": "test"})
        rng = np.random.default_rng(0)
        names = ["delta", "alpha", "echo", "charlie", "bravo"]
        ids = {}
        for n in names:
            ids[n], _ = store.enrol(n, [_face(rng)], "m" * 64, ACTOR)
        # charlie: 2 faces without a crop, then 6 with one
        store.add_faces(ids["charlie"], [_face(rng, crop=False) for _ in range(2)], "m" * 64, ACTOR)
        store.add_faces(ids["charlie"], [_face(rng) for _ in range(6)], "m" * 64, ACTOR)

        pages = [store.gallery_page(offset, 2) for offset in (0, 2, 4, 6)]
        assert [p.total for p in pages] == [5] * 4
        assert [[q.name for q in p.people] for p in pages] == [
            ["alpha", "bravo"],
            ["charlie", "delta"],
            ["echo"],
            [],
        ]
        charlie = pages[1].people[0]
        assert charlie.faces == 9 and len(charlie.face_ids) == 4 and charlie.face_ids == charlie.crop_ids
        assert charlie.face_ids == sorted(charlie.face_ids)  # the first faces with a crop
        assert pages[0].to_dict()["identities"][0]["face_ids"] == [pages[0].people[0].face_ids[0]]
        assert [q.name for q in store.gallery_page(0, 10, prefix="ch").people] == ["charlie"]
        assert store.gallery_page(0, 10, prefix="%").total == 5  # LIKE wildcards are dropped, not obeyed
        assert len(store.gallery_page(0, 1, faces_per_person=12).people[0].face_ids) == 1
        for bad in ({"offset": -1}, {"limit": 0}, {"limit": 101}, {"faces_per_person": 13}):
            with pytest.raises(ValueError):
                store.gallery_page(**bad)
    finally:
        store.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory, default_embedder, detector, lfw):
    """A service with three LFW people (one photo each) and a key of each scope."""
    db = tmp_path_factory.mktemp("gallery") / "gallery.db"
    svc = Service(ServiceSettings(db=str(db)), embedder=default_embedder, detector=detector)
    keys = {scope: svc.store.create_key(f"k-{scope}", [scope])[1] for scope in ("search", "enrol", "admin")}
    with TestClient(create_app(svc)) as client:
        for person in PEOPLE[:3]:
            photo = lfw_photo(person, 1)
            r = client.post(
                "/v1/identities",
                data={"name": person},
                files=[("photos", (photo.name, photo.read_bytes(), "image/jpeg"))],
                headers={"X-API-Key": keys["enrol"]},
            )
            assert r.status_code == 201, r.text
        yield client, keys
    svc.close()


def _get(client, path, key=None):
    return client.get(path, headers={"X-API-Key": key} if key else {})


def test_gallery_route_pages_with_the_enrol_scope(served):
    client, keys = served
    first = _get(client, "/v1/gallery?limit=2", keys["enrol"]).json()
    second = _get(client, "/v1/gallery?limit=2&offset=2", keys["admin"]).json()
    assert first["total"] == second["total"] == 3 and (first["offset"], second["offset"]) == (0, 2)
    names = [p["name"] for p in first["identities"] + second["identities"]]
    assert names == sorted(PEOPLE[:3])
    for p in first["identities"] + second["identities"]:
        assert p["faces"] == 1 and p["crop_ids"] == p["face_ids"] and len(p["face_ids"]) == 1
        crop = _get(client, f"/v1/faces/{p['face_ids'][0]}/crop", keys["enrol"])  # enrol keys see crops now
        assert crop.status_code == 200 and crop.content[:3] == b"\xff\xd8\xff"

    for key, status, code in (
        (None, 401, "missing_key"),
        (keys["search"], 403, "forbidden"),
        ("ffk_x", 401, "invalid_key"),
    ):
        r = _get(client, "/v1/gallery", key)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code)
    assert "needs 'enrol'" in _get(client, "/v1/gallery", keys["search"]).json()["error"]["message"]
    for query in (
        "limit=0",
        "limit=101",
        "offset=-1",
        f"offset={2**41}",
        "faces=13",
        "prefix=" + "a" * 201,
        "limit=x",
    ):
        r = _get(client, "/v1/gallery?" + query, keys["enrol"])
        assert (r.status_code, r.json()["error"]["code"]) == (422, "bad_request"), query


def test_key_and_fmr_routes(served):
    client, keys = served
    for scope, key in keys.items():
        info = _get(client, "/v1/key", key).json()
        assert info["name"] == f"k-{scope}" and info["scopes"] == [scope] and info["model_kind"]
        assert info["may"] == {s: s == scope or scope == "admin" for s in ("search", "enrol", "admin")}
    assert _get(client, "/v1/key").status_code == 401
    fmrs = _get(client, "/v1/fmrs").json()  # no key: the page fills its list on load
    assert fmrs["fmrs"] and fmrs["default_fmr"] in fmrs["fmrs"]
    crop = _get(client, "/v1/faces/1/crop")
    assert crop.status_code == 401
