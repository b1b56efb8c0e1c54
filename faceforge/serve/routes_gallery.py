"""The routes behind the page's gallery view, as a router that :func:`faceforge.serve.app.create_app` includes.

==========================  ===============  ==============================================================
route                       scope            answer
==========================  ===============  ==============================================================
``GET /v1/gallery``         enrol            one page of people in name order: ``total``, ``offset``,
                                             ``limit`` and ``identities`` (``id``, ``name``, ``faces``,
                                             ``face_ids``, ``crop_ids``, timestamps); query ``offset``
                                             (>= 0), ``limit`` (1..100, default 12), ``prefix`` (name
                                             start), ``faces`` (face ids per person, 1..12, default 4)
``GET /v1/key``             any valid key    the presented key's ``name``, ``scopes`` and what it ``may``
                                             do (``search`` / ``enrol`` / ``admin``), and the model kind
``GET /v1/fmrs``            none             the calibrated false-match rates and the default one, so the
                                             page fills its list before a key is given
==========================  ===============  ==============================================================

Renaming and deleting stay the admin routes of the API (``PATCH`` / ``DELETE /v1/identities/{id}``), crops
``GET /v1/faces/{id}/crop`` (search or enrol). Keys are checked by the app's
:class:`~faceforge.serve.security.Authenticator` (``app.state.auth``): the same statuses, codes and rate
limit as every other route; errors are the app's ``{"error": {...}}`` answers.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from faceforge.serve.gallery_page import MAX_FACES_PER_PERSON, MAX_PAGE_SIZE
from faceforge.serve.keys import SCOPES, Actor

__all__ = ["MAX_OFFSET", "MAX_PREFIX", "authorised", "router"]

router = APIRouter()

#: the largest page offset accepted (far beyond any gallery; keeps SQL integers in range)
MAX_OFFSET = 2**40
#: the longest name prefix accepted (names are at most 200 characters)
MAX_PREFIX = 200


async def authorised(request: Request, scope: str | tuple[str, ...] | None) -> Actor:
    """The request's key if it may use ``scope`` (one, any of several, or ``None``: any valid key), as the
    actor for the audit log; else the app answers 401 / 403 / 429 (:mod:`faceforge.serve.security`)."""
    key = await run_in_threadpool(
        request.app.state.auth.authorise,
        request.headers.get("authorization"),
        request.headers.get("x-api-key"),
        scope,
    )
    request.state.key = key
    return Actor(key.key_id, key.name)


@router.get("/v1/gallery")
async def gallery_page(
    request: Request, offset: int = 0, limit: int = 12, prefix: str | None = None, faces: int = 4
) -> dict[str, Any]:
    """One page of the enrolled people with a few face ids each (module doc)."""
    await authorised(request, "enrol")
    if not 0 <= offset <= MAX_OFFSET:
        raise ValueError(f"offset must be between 0 and {MAX_OFFSET}, got {offset}")
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
    if not 1 <= faces <= MAX_FACES_PER_PERSON:
        raise ValueError(f"faces must be between 1 and {MAX_FACES_PER_PERSON}, got {faces}")
    if prefix is not None and len(prefix) > MAX_PREFIX:
        raise ValueError(f"prefix must be at most {MAX_PREFIX} characters")
    store = request.app.state.service.store
    page = await run_in_threadpool(store.gallery_page, offset, limit, prefix, faces)
    return page.to_dict()


@router.get("/v1/key")
async def key_info(request: Request) -> dict[str, Any]:
    """What the presented key is and may do (any valid key)."""
    await authorised(request, None)
    key = request.state.key
    return {
        "name": key.name,
        "scopes": list(key.scopes),
        "may": {s: key.allows(s) for s in SCOPES},
        "model_kind": request.app.state.service.model.get("kind"),
    }


@router.get("/v1/fmrs")
async def fmrs(request: Request) -> dict[str, Any]:
    """The calibrated false-match rates a search may ask for (no key: they describe no person)."""
    service = request.app.state.service
    return {"fmrs": service.calibration.fmrs(), "default_fmr": service.gallery.decision().fmr}
