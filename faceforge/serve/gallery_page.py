"""One page of the gallery for the service's gallery view: people in name order, with a few face ids each.

:class:`GalleryPageMixin` is inherited by :class:`~faceforge.serve.store.Store` (as the API key methods of
:mod:`~faceforge.serve.keys` are) and reads in one transaction of the store, so a page's total, its people
and their faces agree with each other. Works on both dialects (SQLite 3.25+ and PostgreSQL: window functions).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from faceforge.serve.sql import Cursor

__all__ = ["MAX_FACES_PER_PERSON", "MAX_PAGE_SIZE", "GalleryPage", "GalleryPageMixin", "PersonEntry"]

#: the most people on one page
MAX_PAGE_SIZE = 100
#: the most face ids listed per person on a page (``faces`` still counts them all)
MAX_FACES_PER_PERSON = 12


@dataclass
class PersonEntry:
    """A person on a gallery page: ``face_ids`` are the first faces with a stored crop, then the others."""

    id: int
    name: str
    created_at: float
    updated_at: float
    faces: int
    face_ids: list[int] = field(default_factory=list)
    crop_ids: list[int] = field(default_factory=list)  # those of ``face_ids`` with a stored crop


@dataclass
class GalleryPage:
    """People ``offset`` .. ``offset + limit`` of ``total`` (in name order, ties by id)."""

    total: int
    offset: int
    limit: int
    people: list[PersonEntry]

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "offset": self.offset,
            "limit": self.limit,
            "identities": [asdict(p) for p in self.people],
        }


class PageHost(Protocol):
    """What :class:`GalleryPageMixin` needs from the class that inherits it (the store)."""

    def _tx(self, write: bool) -> AbstractContextManager[Cursor]:
        """A transaction whose cursor takes ``?`` placeholders."""
        ...


def like_prefix(prefix: str) -> str:
    """A ``LIKE`` pattern for names starting with ``prefix`` (its ``%`` and ``_`` dropped, as the API's
    identity list does)."""
    return prefix.replace("%", "").replace("_", "") + "%"


class GalleryPageMixin:
    """Pages of people with a few of their face ids; for a class that is a :class:`PageHost`."""

    def gallery_page(
        self: PageHost,
        offset: int = 0,
        limit: int = 12,
        prefix: str | None = None,
        faces_per_person: int = 4,
    ) -> GalleryPage:
        """People ``offset`` .. ``offset + limit`` (``limit`` 1..:data:`MAX_PAGE_SIZE`) of those whose name
        starts with ``prefix``, each with up to ``faces_per_person`` (1..:data:`MAX_FACES_PER_PERSON`) face
        ids, faces with a crop first, then by id."""
        if offset < 0 or not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"offset must be >= 0 and limit 1 to {MAX_PAGE_SIZE}, got {offset} and {limit}")
        if not 1 <= faces_per_person <= MAX_FACES_PER_PERSON:
            raise ValueError(f"faces per person must be 1 to {MAX_FACES_PER_PERSON}, got {faces_per_person}")
        where, params = ("WHERE i.name LIKE ?", [like_prefix(prefix)]) if prefix else ("", [])
        with self._tx(write=False) as cur:
            total = int(cur.execute(f"SELECT COUNT(*) FROM identities i {where}", params).fetchone()[0])
            rows = cur.execute(
                "SELECT i.id, i.name, i.created_at, i.updated_at, "
                f"(SELECT COUNT(*) FROM faces f WHERE f.identity_id = i.id) FROM identities i {where} "
                "ORDER BY i.name, i.id LIMIT ? OFFSET ?",
                [*params, int(limit), int(offset)],
            ).fetchall()
            people = [PersonEntry(int(a), str(b), float(c), float(d), int(e)) for a, b, c, d, e in rows]
            if people:
                marks = ",".join("?" * len(people))
                faces = cur.execute(
                    "SELECT id, identity_id, has_crop FROM (SELECT id, identity_id, crop IS NOT NULL AS has_crop, "
                    "ROW_NUMBER() OVER (PARTITION BY identity_id ORDER BY crop IS NULL, id) AS rn "
                    f"FROM faces WHERE identity_id IN ({marks})) ranked WHERE rn <= ? ORDER BY identity_id, rn",
                    [*(p.id for p in people), int(faces_per_person)],
                ).fetchall()
                by_id = {p.id: p for p in people}
                for face_id, identity_id, has_crop in faces:
                    person = by_id[int(identity_id)]
                    person.face_ids.append(int(face_id))
                    if has_crop:
                        person.crop_ids.append(int(face_id))
        return GalleryPage(total, int(offset), int(limit), people)
