"""Detect and align faces: ``faceforge.detect_faces(photo)`` -> typed :class:`~faceforge.api.results.Face` results.

The detectors are faceforge's own (:data:`faceforge.deploy.detect.DETECTORS`): ``yunet`` (OpenCV's YuNet,
shipped with the package, the default), ``mtcnn`` (Zhang et al. 2016; ``faceforge fetch mtcnn`` first) and
``dlib`` (``pip install 'faceforge[dlib]'``). Each returns a box, five landmarks in the ArcFace point order
and a score; the face is then warped onto the ArcFace 112x112 template (insightface's ``norm_crop``: the
least-squares similarity of Umeyama 1991; :func:`faceforge.data.align.warp_face`), the crop every faceforge
model takes. Unlike insightface's ``FaceAnalysis.get`` (BGR in, a dict-like ``Face`` out) and
``face_recognition.face_locations`` (RGB in, ``(top, right, bottom, left)`` tuples out), the input's colour
order is stated and the result is a dataclass.

>>> faces = detect_faces(photos / "insightface_t1.jpg")
>>> len(faces), faces[0].aligned.shape
(6, (112, 112, 3))
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from faceforge.api.images import ImageInput, array_to_rgb, describe_input, load_rgb
from faceforge.api.results import Face

#: which faces :meth:`Detector.detect` keeps: every face (left to right), the largest, or the most central
SELECT = ("all", "largest", "central")


class Detector:
    """A face detector with its settings, reusable across photos (thread-safe).

    Args:
        name: a registered detector: ``yunet`` (default), ``mtcnn`` or ``dlib``.
        min_score: detections below this confidence are dropped (default: the detector's own, 0.7 for YuNet
            and MTCNN).
        model_path: the detector's model file or folder (default: the packaged YuNet, the fetched MTCNN
            weights, dlib's installed models).
        **options: the detector's own options (e.g. ``max_side=1280`` or ``landmarks="dlib68"`` for YuNet,
            ``min_face=40`` for MTCNN); an unknown one is refused with the list of valid ones.
    """

    def __init__(
        self, name: str = "yunet", *, min_score: float | None = None, model_path: Any = None, **options: Any
    ) -> None:
        import inspect

        from faceforge.core.options import check_api
        from faceforge.deploy.detect import DETECTORS, build_detector

        if name not in DETECTORS:
            raise ValueError(f"unknown detector {name!r}; choose one of {DETECTORS.names()}")
        check_api(min_score=min_score)
        if min_score is not None and "score_threshold" in inspect.signature(DETECTORS.get(name)).parameters:
            options["score_threshold"] = float(min_score)
        self.name = name
        self.options = dict(options)
        # unknown options, wrong types and out-of-range values are refused there, with the valid ones listed
        self._impl = build_detector(name, model_path=model_path, **options)
        self.min_score = float(
            min_score if min_score is not None else getattr(self._impl, "default_min_score", 0)
        )

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items() if k != "score_threshold")
        return f"Detector({self.name!r}, min_score={self.min_score}{opts})"

    @property
    def impl(self) -> Any:
        """The underlying :data:`~faceforge.deploy.detect.FaceDetector` (what the face search service runs)."""
        return self._impl

    def detect(
        self,
        image: ImageInput,
        *,
        colour: str | None = None,
        select: str = "all",
        align: bool = True,
        size: int = 112,
    ) -> list[Face]:
        """The faces of one photo.

        Args:
            image: a path, encoded bytes, or a uint8 array with ``colour`` (see :mod:`faceforge.api.images`).
            colour: ``"RGB"`` or ``"BGR"``, required for arrays.
            select: ``"all"`` (every face, left to right), ``"largest"`` or ``"central"`` (one face).
            align: also cut each face's aligned crop (``Face.aligned``).
            size: side of the aligned crops (a multiple of 112 or 128; 112 for every packaged model).

        Returns:
            The faces kept (empty when none reaches ``min_score``).
        """
        from faceforge.deploy.detect import select_faces

        if select not in SELECT:
            raise ValueError(f"select={select!r}: choose one of {SELECT}")
        rgb = load_rgb(image, colour)
        dets = [d for d in self._impl(rgb) if d.score >= self.min_score]
        return [
            _to_face(rgb, d, align, size, describe_input(image))
            for d in select_faces(dets, rgb.shape, select)
        ]

    def detect_many(self, images: Sequence[ImageInput], **kwargs: Any) -> list[list[Face]]:
        """:meth:`detect` for several photos (same keyword arguments); one list of faces per photo."""
        return [self.detect(img, **kwargs) for img in images]


def _to_face(rgb: np.ndarray, det: Any, align: bool, size: int, source: str) -> Face:
    from faceforge.data.align import warp_face

    box = tuple(float(v) for v in det.box)
    crop = warp_face(rgb, det.landmarks, size) if align else None
    return Face(box, np.asarray(det.landmarks, dtype=np.float64), float(det.score), crop, None, source)  # type: ignore[arg-type]


@lru_cache(maxsize=8)
def _shared(name: str) -> Detector:
    return Detector(name)


def load_detector(name: str = "yunet", **options: Any) -> Detector:
    """A :class:`Detector` (same arguments); ``load_detector()`` is YuNet with its defaults."""
    return Detector(name, **options)


def detect_faces(
    image: ImageInput,
    *,
    colour: str | None = None,
    detector: str | Detector = "yunet",
    select: str = "all",
    size: int = 112,
) -> list[Face]:
    """Detect and align the faces of one photo (see :meth:`Detector.detect`).

    ``detector`` is a name (the detector is built once with its defaults and reused) or a :class:`Detector`
    with settings of your own.
    """
    det = detector if isinstance(detector, Detector) else _shared(detector)
    return det.detect(image, colour=colour, select=select, size=size)


def align_face(
    image: ImageInput,
    landmarks: np.ndarray | Sequence[Sequence[float]],
    *,
    colour: str | None = None,
    size: int = 112,
) -> np.ndarray:
    """Warp a face onto the ArcFace template from five landmarks of your own (left eye, right eye, nose, left and
    right mouth corners, in image coordinates); returns RGB uint8 ``[size, size, 3]``.

    >>> face = detect_faces(photos / "insightface_t1.jpg")[0]
    >>> crop = align_face(photos / "insightface_t1.jpg", face.landmarks)
    >>> bool((crop == face.aligned).all())
    True
    """
    from faceforge.data.align import warp_face

    rgb = load_rgb(image, colour) if not isinstance(image, np.ndarray) else array_to_rgb(image, colour)
    return warp_face(rgb, np.asarray(landmarks, dtype=np.float64), size)
