"""An in-process face gallery: enrol people, search photos, delete; the face search service's own database and
index, without the web server (``pip install 'faceforge[serve]'``).

:class:`Gallery` opens a :class:`faceforge.serve.service.Service` on the database (a SQLite file, or
``postgresql://...``) with the model and detector you give: the same store (identities, faces, audit log, change
feed: :mod:`faceforge.serve.store`), the same faiss index (:mod:`faceforge.serve.index`) and the same
enrol / search code (:mod:`faceforge.serve.gallery`) as ``faceforge serve`` and ``faceforge search``. So a
gallery built here can be served with ``faceforge serve --db FILE`` (with the same model) and the other way
round, and the model a gallery was enrolled with is checked when it is opened again.

Enrolment keeps the largest face of each photo; search embeds every face of the photo and returns, for each, the
``k`` nearest identities with the decision at the target false-match rate (the model's calibration, as in
:func:`faceforge.compare`). Unlike face_recognition's lists of known encodings scanned with ``compare_faces``,
or deepface's ``find`` over a folder of pickled representations, changes are transactions and the index is
checked against the database.

>>> with Gallery(tmp / "gallery.db", model=sface) as gallery:
...     gallery.enrol("Al_Gore", [people / "Al_Gore" / "Al_Gore_0001.jpg"]).face_ids
...     [hit.identity for hit in gallery.search(people / "Al_Gore" / "Al_Gore_0002.jpg")]
(1,)
['Al_Gore']
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from faceforge.api.detection import Detector
from faceforge.api.errors import NoFaceError
from faceforge.api.images import ImageError, ImageInput, describe_input, encode_png, load_rgb
from faceforge.api.model import Model, load_model
from faceforge.api.results import DecisionRule, Enrolment, Face, FaceSearch, Identity, Match
from faceforge.core.options import check_api


class Gallery:
    """A gallery database opened in this process (see the module docstring).

    Args:
        db: a SQLite file (created if missing) or a ``postgresql://`` URL.
        model: a loaded :class:`Model` or a model name (loaded on the CPU in fp32). A gallery holds the
            embeddings of one model; opening it with another is refused (re-embed with ``faceforge serve
            reembed``).
        detector: overrides the model's detector.
        fmr: the default target false-match rate of :meth:`search` decisions (default 1e-4).
        keep_crops: store each enrolled face's aligned crop (JPEG) in the database, as the service does.

    The decision rule is the model's (its calibration, or the threshold it was loaded with): a model without
    either is refused with :class:`~faceforge.api.errors.UncalibratedError`.
    """

    def __init__(
        self,
        db: str | Path,
        *,
        model: Model | str = "sface",
        detector: Detector | None = None,
        fmr: float | None = None,
        keep_crops: bool = True,
    ) -> None:
        from faceforge.serve.service import Service, ServiceSettings

        check_api(fmr=fmr)
        self.model = model if isinstance(model, Model) else load_model(model)
        self.detector = detector or self.model.detector
        self.fmr = fmr
        self.db = str(db)
        settings = ServiceSettings(
            db=str(db),
            model=self.model.spec,
            detector=self.detector.name,
            detector_options=dict(self.detector.options),
            max_wait_ms=0.0,
            keep_crops=keep_crops,
        )
        settings.pipeline.min_det_score = self.detector.min_score
        # the service is built with a fixed threshold (so it looks nothing up itself), then given the model's
        # calibration: a calibration object or file of the caller's decides exactly as the packaged ones do
        settings.threshold = self.model.rule(fmr).threshold
        self._service = Service(settings, embedder=self.model.embedder, detector=self.detector.impl)
        self._service.calibration = self._service.gallery.calibration = self.model.calibration
        self._actor = _actor()

    # -- context management
    def close(self) -> None:
        """Stop the embedding workers and close the database (the index graph is saved for a fast reopen)."""
        if getattr(self, "_service", None) is not None:
            self._service.close()
            self._service = None  # type: ignore[assignment]

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        size = f"identities={len(self)}" if self._service is not None else "closed"
        return f"Gallery({self.db!r}, model={self.model.spec!r}, {size})"

    @property
    def service(self) -> Any:
        """The underlying :class:`faceforge.serve.service.Service` (store, index, pipeline, gallery)."""
        if self._service is None:
            raise ValueError("the gallery is closed")
        return self._service

    # -- enrolment and deletion
    def enrol(
        self, name: str, photos: ImageInput | Sequence[ImageInput], *, colour: str | None = None
    ) -> Enrolment:
        """Store the largest face of each photo under ``name``, in one transaction (nothing is stored if a photo
        has no usable face). A new name creates the identity; an enrolled one gets the faces added."""
        items = [_photo_bytes(p, colour) for p in _as_list(photos)]
        if not items:
            raise ValueError("enrol needs at least one photo")
        svc = self.service
        existing = svc.store.identity_by_name(name.strip())
        try:
            if existing is None:
                out = svc.gallery.enrol(name, items, self._actor, create=True)
            else:
                out = svc.gallery.add_faces(existing, items, self._actor)
        except ValueError as exc:
            raise _photo_error(exc) from None
        return Enrolment(name.strip(), int(out["identity"]["id"]), tuple(out["face_ids"]), existing is None)

    def delete(self, identity: str | int) -> int:
        """Delete an identity (by name or id) and all its faces; returns how many faces were removed."""
        return len(self.service.gallery.delete_identity(self._identity_id(identity), self._actor))

    def delete_face(self, face_id: int) -> None:
        """Delete one enrolled face (its identity stays, possibly with no face)."""
        self.service.gallery.delete_face(int(face_id), self._actor)

    def rename(self, identity: str | int, new_name: str) -> None:
        """Give an identity another name."""
        self.service.store.rename_identity(self._identity_id(identity), new_name, self._actor)

    def _identity_id(self, identity: str | int) -> int:
        if isinstance(identity, int):
            return identity
        found = self.service.store.identity_by_name(str(identity).strip())
        if found is None:
            from faceforge.serve.errors import NotFoundError

            raise NotFoundError(f"no identity named {identity!r} in this gallery (see Gallery.identities())")
        return found

    # -- reading
    def identities(self, *, prefix: str | None = None, offset: int = 0, limit: int = 1000) -> list[Identity]:
        """The enrolled people, by name (``prefix`` filters; ``offset``/``limit`` page)."""
        rows = self.service.store.list_identities(offset=offset, limit=limit, prefix=prefix)
        return [Identity(r.id, r.name, r.faces, r.created_at, r.updated_at) for r in rows]

    def __len__(self) -> int:
        return int(self.service.store.counts().get("identities", 0))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.service.store.identity_by_name(name.strip()) is not None

    def rule(self, fmr: float | None = None) -> DecisionRule:
        """The decision rule of :meth:`search` at ``fmr`` (default: the gallery's)."""
        return self.model.rule(self.fmr if fmr is None else fmr)

    # -- search
    def search(
        self, photo: ImageInput, *, k: int = 5, fmr: float | None = None, colour: str | None = None
    ) -> list[FaceSearch]:
        """Search every face of ``photo``: one :class:`FaceSearch` per face (left to right), each with up to ``k``
        identities, best first, and the decision at ``fmr``. A photo without a face gives an empty list."""
        from dataclasses import replace

        check_api(k=k, fmr=fmr)
        faces = self.detector.detect(photo, colour=colour, select="all", size=self.model.info.input_size)
        if not faces:
            return []
        emb = self.model.embed(faces)
        return self.search_faces(
            [replace(f, embedding=e) for f, e in zip(faces, emb, strict=True)], k=k, fmr=fmr
        )

    def search_faces(
        self, faces: Sequence[Face] | np.ndarray, *, k: int = 5, fmr: float | None = None
    ) -> list[FaceSearch]:
        """Search faces already embedded by this gallery's model (:class:`Face` results with embeddings, or an
        ``[N, D]`` array of embeddings)."""
        from faceforge.serve.gallery import Decision

        check_api(k=k, fmr=fmr)
        rule = self.rule(fmr)
        if isinstance(faces, np.ndarray):
            emb = np.atleast_2d(np.asarray(faces, np.float32))
            probes: list[Face | None] = [None] * len(emb)
        else:
            if any(f.embedding is None for f in faces):
                raise ValueError("search_faces needs embedded faces: use Model.embed_photo or Gallery.search")
            emb = (
                np.stack([np.asarray(f.embedding, np.float32) for f in faces]) if faces else np.zeros((0, 1))
            )
            probes = list(faces)
        if emb.shape[0] and emb.shape[1] != self.model.info.embedding_size:
            raise ValueError(
                f"embeddings of size {emb.shape[1]}; this gallery's model gives {self.model.info.embedding_size}"
            )
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        found = self.service.gallery.search_embeddings(
            emb, max(1, int(k)), Decision(rule.threshold, rule.fmr, rule.fnmr)
        )
        out = []
        for face, matches in zip(probes, found, strict=True):
            typed = tuple(
                Match(
                    m["name"], int(m["identity_id"]), int(m["face_id"]), float(m["score"]), bool(m["match"])
                )
                for m in matches
            )
            out.append(FaceSearch(face if face is not None else _no_face(), typed, rule))
        return out


def _actor() -> Any:
    from faceforge.serve.keys import Actor

    return Actor(name="python-api")


def _as_list(photos: Any) -> list[Any]:
    if isinstance(photos, str | Path | bytes | bytearray) or (
        isinstance(photos, np.ndarray) and photos.ndim in (2, 3)
    ):
        return [photos]
    return list(photos)


def _photo_bytes(photo: ImageInput, colour: str | None) -> tuple[str, bytes]:
    """(name, encoded bytes) as the service's pipeline takes them; an array is stored as lossless PNG."""
    if isinstance(photo, np.ndarray):
        return describe_input(photo), encode_png(load_rgb(photo, colour))
    if isinstance(photo, str | Path):
        path = Path(photo)
        if not path.is_file():
            raise FileNotFoundError(f"no image file at {path}")
        return str(path), path.read_bytes()
    if isinstance(photo, bytes | bytearray):
        return describe_input(photo), bytes(photo)
    raise ImageError(f"cannot enrol a {type(photo).__name__}: give paths, encoded bytes or uint8 arrays")


def _photo_error(exc: ValueError) -> Exception:
    """The pipeline's refusal of a photo as the API's error type (no face -> :class:`NoFaceError`)."""
    if getattr(exc, "code", None) == "no_face":
        return NoFaceError(f"{exc}: nothing was stored; use photos where the face is visible")
    if hasattr(exc, "code"):
        return ImageError(f"{exc}; nothing was stored")
    return exc


def _no_face() -> Face:
    """The placeholder probe of a search by embedding (no photo, no box)."""
    return Face((0.0, 0.0, 0.0, 0.0), np.zeros((5, 2)), 0.0, None, None, "<embedding>")
