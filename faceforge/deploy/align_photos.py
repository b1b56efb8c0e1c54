"""Read, detect, select and align photos in chunks, in one worker process per core: the work of ``prepare``.

:func:`found_in_order` hands chunks of :data:`CHUNK` photos to worker processes
(:class:`faceforge.core.workers.ProcessPool`), each with its own detector built from a :class:`DetectorSpec`
(a detector with ``detect_many``, e.g. MTCNN, batches the chunk), and yields one :class:`Found` per photo in
the input order. The chunks are the same whatever the number of workers (one: in this process, with one
compute thread as each worker has), so the result is too. Given each photo's output path (``targets``), the
worker writes the faces itself and hands back only their paths (no pixels cross between processes: on 2
cores that took prepare from 1.6x to 1.8x its one-core speed); without them (a quality gate scores the faces
first) the faces come back. The quality gate and the report stay with the caller
(:func:`faceforge.deploy.prepare.prepare_folder`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from faceforge.core.workers import ProcessPool, one_thread, resolve_workers, worker_tool
from faceforge.data.align import LandmarksError, warp_face
from faceforge.data.image_io import UnreadableImageError, read_image_rgb, write_image_rgb
from faceforge.deploy.detect import DETECTORS, Detection, FaceDetector, ImageTooSmallError, select_faces

__all__ = [
    "CHUNK",
    "MIN_PHOTOS_PER_WORKER",
    "DetectorSpec",
    "Found",
    "face_targets",
    "found_in_order",
    "write_faces",
]

#: photos handed to a worker (and to a detector's ``detect_many``) at a time, whatever the number of workers
CHUNK = 8
#: a worker process starts (imports, builds its detector) in a second or two, the time of ~50-200 photos: each
#: worker gets at least this many
MIN_PHOTOS_PER_WORKER = 64


@dataclass(frozen=True)
class DetectorSpec:
    """A detector by registry name and keyword arguments: what each worker process builds its own from."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> FaceDetector:
        return DETECTORS.build(self.name, **self.options)


@dataclass
class Found:
    """What detection and alignment made of one photo (computed in a worker, used by the parent)."""

    status: str  # aligned | unreadable | too_small | no_face | bad_landmarks
    reason: str = ""
    faces: list[np.ndarray] = field(default_factory=list)  # (empty when the worker wrote them)
    detections: int = 0  # above min_score
    chosen: dict[str, Any] | None = None  # the kept face (select != all)
    written: list[str] = field(default_factory=list)  # the files the worker wrote, face 0 first

    @property
    def count(self) -> int:
        """Faces aligned (returned or written)."""
        return len(self.faces) or len(self.written)


def face_targets(single: Path, select: str, n: int) -> list[Path]:
    """The files of a photo's ``n`` faces: ``single`` itself, or with ``select="all"`` ``<stem>_<k>.jpg``."""
    if select != "all":
        return [single]
    return [single.with_name(f"{single.stem}_{k}.jpg") for k in range(n)]


def write_faces(targets: list[Path], faces: list[np.ndarray]) -> None:
    """Write the faces last to first: with ``select="all"`` an existing face 0 then means a complete photo."""
    for target, face in reversed(list(zip(targets, faces, strict=True))):
        write_image_rgb(target, face)


class _Aligner:
    """Read, detect, select and align photos; one per worker process (or the parent, with one worker)."""

    def __init__(
        self, detector: FaceDetector | DetectorSpec, select: str, size: int, min_score: float
    ) -> None:
        self.detector = detector.build() if isinstance(detector, DetectorSpec) else detector
        self.select, self.size, self.min_score = select, size, min_score

    def _detect(self, images: list[np.ndarray]) -> list[list[Detection] | ImageTooSmallError]:
        many = getattr(self.detector, "detect_many", None)
        if many is not None:
            try:
                return list(many(images))
            except ImageTooSmallError:
                pass  # one photo too small: every photo on its own, so the others still get their faces
        out: list[list[Detection] | ImageTooSmallError] = []
        for img in images:
            try:
                out.append(self.detector(img))
            except ImageTooSmallError as exc:
                out.append(exc)
        return out

    def chunk(self, items: list[tuple[str, str | None]]) -> list[Found]:
        """``(photo, output path or None)`` pairs: each photo's :class:`Found` (faces written if a path)."""
        paths = [path for path, _ in items]
        found: list[Found | None] = [None] * len(paths)
        images, where = [], []
        for i, path in enumerate(paths):
            try:
                images.append(read_image_rgb(path))
                where.append(i)
            except (UnreadableImageError, OSError) as exc:  # OSError: the file vanished since it was listed
                found[i] = Found(
                    "unreadable", exc.reason if isinstance(exc, UnreadableImageError) else str(exc)
                )
        for i, img, dets in zip(where, images, self._detect(images), strict=True):
            got = self._align(img, dets)
            target = items[i][1]
            if target is not None and got.faces:
                files = face_targets(Path(target), self.select, len(got.faces))
                write_faces(files, got.faces)
                got.faces, got.written = [], [str(f) for f in files]
            found[i] = got
        return [f for f in found if f is not None]

    def _align(self, img: np.ndarray, found: list[Detection] | ImageTooSmallError) -> Found:
        if isinstance(found, ImageTooSmallError):
            return Found("too_small", str(found))
        dets = [d for d in found if d.score >= self.min_score]
        chosen = select_faces(dets, img.shape, self.select)
        if not chosen:
            return Found("no_face")
        try:
            faces = [warp_face(img, det.landmarks, self.size) for det in chosen]
        except LandmarksError as exc:
            return Found("bad_landmarks", f"the detector's landmarks: {exc}")
        return Found("aligned", faces=faces, detections=len(dets), chosen=chosen[0].to_dict())


def _worker_chunk(items: list[tuple[str, str | None]]) -> list[Found]:
    aligner: _Aligner = worker_tool()
    return aligner.chunk(items)


def found_in_order(
    paths: list[str],
    detector: FaceDetector | DetectorSpec,
    select: str,
    size: int,
    min_score: float,
    workers: int,
    targets: list[str] | None = None,
) -> Iterator[Found]:
    """Each photo's :class:`Found`, in order: chunks of :data:`CHUNK` photos, in worker processes or here.

    ``targets`` (one output path per photo): the faces are written there (see :func:`face_targets`) and
    each :class:`Found` lists the files instead of holding the pixels. The worker processes start in this
    call (before the caller's progress bar), the photos are read as the iterator is consumed; the pool
    closes when it is exhausted or closed."""
    items = list(zip(paths, targets if targets is not None else [None] * len(paths), strict=True))
    chunks = [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]
    workers = min(resolve_workers(workers), max(1, len(paths) // MIN_PHOTOS_PER_WORKER))
    if workers <= 1:  # one core, as each worker: the same float rounding, so the same faces
        return _found_here(_Aligner(detector, select, size, min_score), chunks)
    if not isinstance(detector, DetectorSpec):
        raise ValueError(
            "prepare with several workers needs a DetectorSpec: each worker builds its own detector"
        )
    options = {"detector": detector, "select": select, "size": size, "min_score": min_score}
    return _FoundInPool(ProcessPool(workers, _Aligner, options), chunks)


def _found_here(aligner: _Aligner, chunks: list[list[tuple[str, str | None]]]) -> Iterator[Found]:
    for c in chunks:
        with one_thread():
            found = aligner.chunk(c)
        yield from found


class _FoundInPool:
    """The pool's results in order; closing it (or reaching the end) closes the pool, also before the first item
    (a generator closed before it started would never run its ``with pool:`` exit)."""

    def __init__(self, pool: ProcessPool, chunks: list[list[tuple[str, str | None]]]) -> None:
        self._pool = pool
        self._found = itertools.chain.from_iterable(pool.map(_worker_chunk, chunks))

    def __iter__(self) -> _FoundInPool:
        return self

    def __next__(self) -> Found:
        try:
            return next(self._found)
        except BaseException:  # the end, or a worker's error: the pool is done either way
            self.close()
            raise

    def close(self) -> None:
        self._pool.close()
