"""Enrol, search and verify on one gallery: a :class:`~faceforge.serve.store.Store`, a
:class:`~faceforge.serve.index.FaceIndex` and a :class:`~faceforge.serve.pipeline.FacePipeline`.

Used by the web service and by the offline ``faceforge search``. Every change goes to the database first
(one transaction) and reaches the index through the change feed, so the index never holds anything the
database does not.

Search: every face of the photo is embedded and looked up; the index returns the ``k * OVERFETCH`` nearest
faces, which are grouped by identity (an identity's score is its best face's cosine), and the top ``k``
identities are returned with ``match = score >= threshold``. The face's ``decision`` is the best identity if
it matches, else ``null``. Verification compares the largest face of one photo with the largest face of
another photo or with an identity's faces (best score).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from faceforge.serve.calibration import Calibration
from faceforge.serve.index import FaceIndex
from faceforge.serve.keys import Actor
from faceforge.serve.pipeline import FacePipeline, Photo
from faceforge.serve.store import NewFace, Store

OVERFETCH = 4


def model_id_of(desc: dict[str, Any]) -> str:
    """A model's identity for galleries: SHA-256 of its kind, weights hash, preprocessing, mode and inference
    precision (bf16 embeddings are not fp32 ones; fp32, the only precision before the choice existed, is
    left out so galleries enrolled then keep their id)."""
    keyed = {k: desc.get(k) for k in ("kind", "sha256", "preprocess", "mode", "box", "embedding_size")}
    if desc.get("precision", "fp32") != "fp32":
        keyed["precision"] = desc["precision"]
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Decision:
    threshold: float
    fmr: float | None
    fnmr: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": round(self.threshold, 6), "fmr": self.fmr, "fnmr_at_threshold": self.fnmr}


class Gallery:
    def __init__(
        self,
        store: Store,
        index: FaceIndex,
        pipeline: FacePipeline,
        model: dict[str, Any],
        calibration: Calibration,
        keep_crops: bool = True,
    ) -> None:
        self.store = store
        self.index = index
        self.pipeline = pipeline
        self.model = model
        self.model_id = model_id_of(model)
        self.calibration = calibration
        self.keep_crops = keep_crops
        store.bind_model(self.model_id, model)

    # -- decisions
    def decision(self, fmr: float | None = None) -> Decision:
        row = self.calibration.threshold_for(fmr)
        return Decision(float(row["threshold"]), row.get("fmr"), row.get("fnmr"))

    # -- enrolment
    def _faces_for_enrolment(self, photos: list[tuple[str, bytes]]) -> list[NewFace]:
        detected: list[Photo] = [self.pipeline.detect(data, name, select="largest") for name, data in photos]
        faces = [p.faces[0] for p in detected]
        self.pipeline.embed(faces)
        return [
            NewFace(
                embedding=f.embedding,  # type: ignore[arg-type]
                image_sha256=p.sha256,
                box=f.box,
                landmarks=f.landmarks,
                det_score=f.det_score,
                quality=f.quality,
                crop_jpeg=f.crop_jpeg() if self.keep_crops else None,
            )
            for p, f in zip(detected, faces, strict=True)
        ]

    def enrol(
        self, name: str, photos: list[tuple[str, bytes]], actor: Actor, create: bool = True
    ) -> dict[str, Any]:
        """Detect, align, gate and embed the largest face of every photo, then store them all in one
        transaction (nothing is stored if any photo fails). Returns the identity and the face ids."""
        faces = self._faces_for_enrolment(photos)
        identity_id, face_ids = self.store.enrol(name, faces, self.model_id, actor, create=create)
        self.index.sync(self.store)
        return {"identity": {"id": identity_id, "name": name.strip()}, "face_ids": face_ids}

    def add_faces(self, identity_id: int, photos: list[tuple[str, bytes]], actor: Actor) -> dict[str, Any]:
        faces = self._faces_for_enrolment(photos)
        face_ids = self.store.add_faces(identity_id, faces, self.model_id, actor)
        self.index.sync(self.store)
        return {"identity": {"id": identity_id}, "face_ids": face_ids}

    def delete_identity(self, identity_id: int, actor: Actor) -> list[int]:
        ids = self.store.delete_identity(identity_id, actor)
        self.index.sync(self.store)
        return ids

    def delete_face(self, face_id: int, actor: Actor) -> int:
        identity_id = self.store.delete_face(face_id, actor)
        self.index.sync(self.store)
        return identity_id

    # -- search
    def search_embeddings(
        self, emb: np.ndarray, k: int, decision: Decision, timing: dict[str, float] | None = None
    ) -> list[list[dict[str, Any]]]:
        """For each query row: the top ``k`` identities (module doc); ``timing["index"]`` gets the index's
        own search time (ms) when a dict is given."""
        self.index.sync(self.store)
        if len(emb) == 0:
            return []
        t0 = time.perf_counter()
        scores, ids = self.index.search(emb, max(1, k) * OVERFETCH)
        if timing is not None:
            timing["index"] = round((time.perf_counter() - t0) * 1000, 3)
        names = self.store.identity_names([int(i) for i in ids.ravel() if i >= 0])
        out = []
        for srow, irow in zip(scores, ids, strict=True):
            best: dict[int, dict[str, Any]] = {}
            for s, fid in zip(srow, irow, strict=True):
                if fid < 0 or int(fid) not in names:  # deleted since the index was read
                    continue
                iid, name = names[int(fid)]
                if iid not in best:
                    best[iid] = {
                        "identity_id": iid,
                        "name": name,
                        "face_id": int(fid),
                        "score": round(float(s), 6),
                        "match": bool(s >= decision.threshold),
                    }
            out.append(sorted(best.values(), key=lambda m: -m["score"])[:k])
        return out

    def search_photo(
        self, data: bytes, name: str, k: int = 5, fmr: float | None = None, crops: bool = False
    ) -> dict[str, Any]:
        """Search every face of a photo; ``crops`` adds each probe face's aligned crop (a JPEG data URL)."""
        decision = self.decision(fmr)
        t0 = time.perf_counter()
        photo = self.pipeline.detect(data, name, select="all")
        t1 = time.perf_counter()
        emb = self.pipeline.embed(photo.faces)
        t2 = time.perf_counter()
        timing: dict[str, float] = {}
        results = self.search_embeddings(emb, k, decision, timing)
        t3 = time.perf_counter()
        faces = []
        for f, matches in zip(photo.faces, results, strict=True):
            top = matches[0] if matches and matches[0]["match"] else None
            decided = top and {"identity_id": top["identity_id"], "name": top["name"], "score": top["score"]}
            entry = {**f.public(), "matches": matches, "decision": decided}
            if crops:
                entry["crop"] = "data:image/jpeg;base64," + base64.b64encode(f.crop_jpeg()).decode()
            faces.append(entry)
        return {
            "photo": {"name": name, "sha256": photo.sha256, "width": photo.width, "height": photo.height},
            "faces": faces,
            "decision_rule": decision.to_dict(),
            "model_id": self.model_id,
            # decode + detect + align, embed (incl. waiting for a batch), index sync + search + names, and the
            # faiss search alone
            "timing_ms": {
                "detect": round((t1 - t0) * 1000, 2),
                "embed": round((t2 - t1) * 1000, 2),
                "search": round((t3 - t2) * 1000, 2),
                "index": timing.get("index", 0.0),  # the faiss search alone (part of "search")
            },
        }

    # -- verification
    def _one_embedding(self, data: bytes, name: str) -> tuple[Any, np.ndarray]:
        photo = self.pipeline.detect(data, name, select="largest")
        emb = self.pipeline.embed(photo.faces[:1])
        return photo.faces[0], emb[0]

    def verify_photos(
        self, a: tuple[str, bytes], b: tuple[str, bytes], fmr: float | None = None
    ) -> dict[str, Any]:
        decision = self.decision(fmr)
        fa, ea = self._one_embedding(a[1], a[0])
        fb, eb = self._one_embedding(b[1], b[0])
        score = float(ea @ eb)
        return {
            "score": round(score, 6),
            "match": bool(score >= decision.threshold),
            "faces": [fa.public(), fb.public()],
            "decision_rule": decision.to_dict(),
            "model_id": self.model_id,
        }

    def verify_identity(
        self, photo: tuple[str, bytes], identity_id: int, fmr: float | None = None
    ) -> dict[str, Any]:
        decision = self.decision(fmr)
        gallery = self.store.identity_embeddings(identity_id)
        f, e = self._one_embedding(photo[1], photo[0])
        score = float((gallery @ e).max()) if len(gallery) else float("-inf")
        return {
            "identity_id": identity_id,
            "score": round(score, 6) if len(gallery) else None,
            "match": bool(len(gallery) and score >= decision.threshold),
            "face": f.public(),
            "decision_rule": decision.to_dict(),
            "model_id": self.model_id,
        }
