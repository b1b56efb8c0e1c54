"""Photo bytes -> faces -> embeddings, with the limits a public service needs.

* :func:`decode_photo`: only image bytes, never paths. The header is read first (Pillow, lazily) and a photo
  with more than ``max_pixels`` pixels is refused before any pixel is decoded (decompression bombs: a few
  KB of PNG can claim 100,000 x 100,000 pixels). EXIF orientation is applied, then RGB uint8.
* :class:`FacePipeline`: faceforge's detector (``faceforge.deploy.detect``, YuNet by default), faces below
  ``min_det_score`` ignored, at most ``max_faces`` per photo (more is refused, not truncated), the optional
  quality gate (``min_face_px``: shorter side of the face box; ``min_quality``: the detector's score), the
  ArcFace alignment (:func:`faceforge.data.align.warp_face`) at the embedder's input size, and the
  embedder through a :class:`~faceforge.serve.batcher.Batcher`. Embeddings are L2-normalised.

A face's ``quality`` is the detector's confidence for it (YuNet's score): a simple, documented stand-in
that the gate and the store record; it is not a learned face-quality measure.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from faceforge.data.align import LandmarksError, warp_face
from faceforge.deploy.detect import Detection, ImageTooSmallError, select_faces


class PhotoError(ValueError):
    """A photo the service refuses; ``status`` is the HTTP status, the message names the photo and the cause."""

    def __init__(self, message: str, status: int = 422, code: str = "bad_photo") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Limits:
    """Request limits (see the README's "limits and security" table)."""

    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_faces: int = 20
    max_photos: int = 10
    requests_per_minute: int = 120


def decode_photo(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """Encoded image bytes -> RGB uint8 [H, W, 3]; :class:`PhotoError` for corrupt or too-large images."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise PhotoError(f"photo {name!r} is empty", code="corrupt_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise PhotoError(
                    f"photo {name!r} is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels} pixels",
                    status=413,
                    code="too_many_pixels",
                )
            img = ImageOps.exif_transpose(img)
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except PhotoError:
        raise
    except Image.DecompressionBombError:
        # Pillow's own guard fires in open() for more than 2 x MAX_IMAGE_PIXELS, before the size is known here
        raise PhotoError(
            f"photo {name!r} claims over {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels, more than the limit of "
            f"{max_pixels} pixels",
            status=413,
            code="too_many_pixels",
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PhotoError(
            f"photo {name!r} is not a decodable image ({reason})", code="corrupt_image"
        ) from None
    return np.ascontiguousarray(rgb)


@dataclass
class Face:
    """One detected, aligned (and later embedded) face of a photo."""

    box: list[float]
    landmarks: list[list[float]]
    det_score: float
    aligned: np.ndarray  # uint8 RGB [S, S, 3]
    embedding: np.ndarray | None = None

    @property
    def quality(self) -> float:
        return self.det_score

    def crop_jpeg(self, quality: int = 90) -> bytes:
        ok, enc = cv2.imencode(
            ".jpg", cv2.cvtColor(self.aligned, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
        )
        if not ok:  # pragma: no cover - a uint8 RGB array always encodes
            raise RuntimeError("could not encode the aligned face")
        return enc.tobytes()

    def public(self) -> dict[str, Any]:
        return {
            "box": [round(v, 1) for v in self.box],
            "landmarks": [[round(x, 1), round(y, 1)] for x, y in self.landmarks],
            "det_score": round(self.det_score, 4),
            "quality": round(self.quality, 4),
        }


@dataclass
class Photo:
    name: str
    sha256: str
    width: int
    height: int
    faces: list[Face] = field(default_factory=list)
    faces_seen: int = 0


@dataclass
class PipelineSettings:
    min_det_score: float = 0.7
    min_face_px: float = 0.0
    min_quality: float = 0.0


class FacePipeline:
    """Detect, gate, align and embed; thread-safe (the detector locks itself, the batcher queues)."""

    def __init__(
        self, detector: Any, batcher: Any, input_size: int, limits: Limits, settings: PipelineSettings
    ) -> None:
        self.detector = detector
        self.batcher = batcher
        self.input_size = int(input_size)
        self.limits = limits
        self.settings = settings

    def _gate(self, det: Detection) -> str | None:
        x0, y0, x1, y1 = (float(v) for v in det.box)
        side = min(x1 - x0, y1 - y0)
        if side < self.settings.min_face_px:
            return f"face {side:.0f} px, below the minimum of {self.settings.min_face_px:.0f} px"
        if det.score < self.settings.min_quality:
            return f"face quality {det.score:.2f}, below the minimum of {self.settings.min_quality:.2f}"
        return None

    def detect(self, data: bytes, name: str, select: str = "all") -> Photo:
        """Decode and detect; ``select``: ``all`` faces (search) or the ``largest`` (enrolment, verify).

        Raises :class:`PhotoError` for a corrupt or too-large photo, no face, too many faces, or (with one
        face selected) a face that fails the quality gate.
        """
        rgb = decode_photo(data, name, self.limits.max_pixels)
        photo = Photo(name, hashlib.sha256(data).hexdigest(), rgb.shape[1], rgb.shape[0])
        try:
            found = self.detector(rgb)
        except ImageTooSmallError as exc:  # a 1x1 photo is this photo's problem, not the service's
            raise PhotoError(f"photo {name!r}: {exc}", code="too_small") from None
        dets = [d for d in found if d.score >= self.settings.min_det_score]
        photo.faces_seen = len(dets)
        if not dets:
            raise PhotoError(f"no face found in photo {name!r}", code="no_face")
        if len(dets) > self.limits.max_faces:
            raise PhotoError(
                f"photo {name!r} has {len(dets)} faces, more than the limit of {self.limits.max_faces}",
                code="too_many_faces",
            )
        chosen = select_faces(dets, rgb.shape, select)
        gated = [(d, self._gate(d)) for d in chosen]
        kept = [d for d, why in gated if why is None]
        if not kept:
            raise PhotoError(f"photo {name!r}: {gated[0][1]}", code="low_quality")
        for d in kept:
            try:
                aligned = warp_face(rgb, d.landmarks, self.input_size)
            except LandmarksError as exc:
                raise PhotoError(
                    f"photo {name!r}: the detector's landmarks cannot align it ({exc})"
                ) from None
            photo.faces.append(
                Face(
                    box=[float(v) for v in d.box],
                    landmarks=[[float(x), float(y)] for x, y in d.landmarks],
                    det_score=float(d.score),
                    aligned=aligned,
                )
            )
        return photo

    def embed(self, faces: list[Face]) -> np.ndarray:
        """Embed faces (through the shared batcher), L2-normalised; also stored on each face."""
        if not faces:
            return np.zeros((0, 0), dtype=np.float32)
        emb = self.batcher.embed(np.stack([f.aligned for f in faces]))
        emb = l2_normalise(emb)
        for f, e in zip(faces, emb, strict=True):
            f.embedding = e
        return emb


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)
