"""Face detectors that return boxes, scores and 5 landmarks in the ArcFace point order.

Every detector in :data:`DETECTORS` is built as ``DETECTORS.build(name, **options)`` and called on an RGB
uint8 image (H, W, 3); it returns a list of :class:`Detection`, best score first. Landmarks are in the
order :mod:`faceforge.data.align` expects: left eye, right eye, nose tip, left mouth corner, right mouth
corner, where left/right are *image* left/right (the person's right eye comes first).

``yunet`` is OpenCV's ``cv2.FaceDetectorYN`` with the YuNet ONNX model. A row of its output is
``x, y, w, h``, five landmark ``(x, y)`` pairs, then the score. The model names its points "right eye,
left eye, nose tip, right mouth corner, left mouth corner" from the person's point of view, so on an upright
face the first eye and the first mouth corner are the ones on the image's left: checked on real photos
(``photos/insightface_t1.jpg``, 6 faces; ``photos/skimage_astronaut.png``), the first eye's x is always the
smaller one. That is already the ArcFace order, so the points are used as they come.

The YuNet model (Wu, Peng, Yu, "YuNet: A Tiny Millisecond-level Face Detector", Machine Intelligence
Research 2023; the OpenCV model zoo's ``face_detection_yunet``, MIT licence, 230 KB) ships inside the
package (``faceforge/deploy/weights/``), so the default detector works in any installation, offline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from faceforge.core.errors import InputError
from faceforge.core.options import DETECTOR_OPTION_RULES
from faceforge.core.registry import Registry
from faceforge.core.rules import check_call_options

YUNET_MODEL_NAME = "face_detection_yunet_2026may.onnx"
#: the default YuNet model, package data (MIT licence, 230 KB; ``weights/LICENSE-yunet.txt`` beside it)
YUNET_PACKAGED = Path(__file__).resolve().parent / "weights" / YUNET_MODEL_NAME
YUNET_SHA256 = "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0"
#: YuNet's coarsest feature stride: smaller inputs are padded to it
YUNET_MIN_INPUT = 32

SELECT_POLICIES = ("largest", "central", "all")
#: where YuNet's five points come from: its own head, or dlib's 68-point predictor run on its box
LANDMARK_SOURCES = ("yunet", "dlib68")


@dataclass(frozen=True)
class Detection:
    """One face: ``box`` [4] = x1, y1, x2, y2; ``score`` in [0, 1]; ``landmarks`` [5, 2] in ArcFace order."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))

    @property
    def center(self) -> np.ndarray:
        return np.array([(self.box[0] + self.box[2]) / 2.0, (self.box[1] + self.box[3]) / 2.0])

    def to_dict(self) -> dict:
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(float(self.score), 4),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
        }


FaceDetector = Callable[[np.ndarray], list[Detection]]

DETECTORS: Registry[FaceDetector] = Registry("face detector")


def default_yunet_model() -> Path:
    """The YuNet file that ships inside the package (:data:`YUNET_PACKAGED`); if it is gone (a damaged install),
    ``FileNotFoundError`` naming the command that restores it."""
    if YUNET_PACKAGED.is_file():
        return YUNET_PACKAGED
    raise FileNotFoundError(
        f"the YuNet model that ships with faceforge is missing ({YUNET_PACKAGED}): reinstall faceforge "
        f"(`pip install --force-reinstall --no-deps faceforge`), or pass --detector-model PATH "
        f"(detector_model=...) pointing at a YuNet .onnx file from the OpenCV model zoo"
    )


#: detectors refuse images narrower or lower than this (nothing to search; OpenCV's resize needs 2 px)
MIN_SEARCH_SIDE = 2


class ImageTooSmallError(InputError):
    """An image too small for a detector to search (a folder job lists it and goes on)."""


def _check_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {img.dtype} {img.shape}")
    if img.shape[0] < MIN_SEARCH_SIDE or img.shape[1] < MIN_SEARCH_SIDE:
        raise ImageTooSmallError(
            f"{img.shape[1]}x{img.shape[0]} pixels is too small to search for faces "
            f"(at least {MIN_SEARCH_SIDE}x{MIN_SEARCH_SIDE})"
        )
    return img


def finite_detections(dets: Sequence[Detection], image_shape: Sequence[int] | None = None) -> list[Detection]:
    """The detections that can be faces: finite box, score and landmarks, a box of positive size, every
    landmark within the box grown by its own width and height on each side, and (given ``image_shape``) a box
    centre inside the image.

    YuNet returns rows of NaN/inf, or huge values with an empty box and score 1, on images smaller than
    its coarsest stride (e.g. 5x1000 or 2x2 pixels), and on thin ones (20x400, padded to 32x400) boxes with
    score 0.98 whose "eyes" lie several box widths away; they are no faces.
    """
    out = []
    for d in dets:
        if not (np.isfinite(d.score) and np.all(np.isfinite(d.box)) and np.all(np.isfinite(d.landmarks))):
            continue
        if d.box[2] <= d.box[0] or d.box[3] <= d.box[1]:
            continue
        bw, bh = d.box[2] - d.box[0], d.box[3] - d.box[1]
        lx, ly = d.landmarks[:, 0], d.landmarks[:, 1]
        if (
            np.any(lx < d.box[0] - bw)
            or np.any(lx > d.box[2] + bw)
            or np.any(ly < d.box[1] - bh)
            or np.any(ly > d.box[3] + bh)
        ):
            continue
        if image_shape is not None:
            cx, cy = d.center
            if not (0 <= cx <= image_shape[1] and 0 <= cy <= image_shape[0]):
                continue
        out.append(d)
    return out


def resize_for_search(image: np.ndarray, max_side: int, min_side: int = 0) -> tuple[np.ndarray, float, float]:
    """The copy of ``image`` a detector searches: downscaled (area) so the long side is at most ``max_side``,
    or upscaled (bicubic) so the short side reaches ``min_side`` (0: never), and the factors ``(sx, sy)``
    that map its pixel coordinates back onto the original (the copy spans the original exactly)."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if min_side and min(h, w) < min_side:
        scale = min(min_side / min(h, w), max_side / max(h, w))
    if scale != 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
        image = cv2.resize(image, size, interpolation=interp)
    return image, w / image.shape[1], h / image.shape[0]


@DETECTORS.register("yunet")
class YuNetDetector:
    """``cv2.FaceDetectorYN`` on RGB images; images whose long side exceeds ``max_side`` are searched on a
    downscaled copy, images whose short side is below ``min_side`` on an upscaled (bicubic) copy, and the
    results are scaled back to the original pixel coordinates.

    Upscaling steadies the landmarks on small photos: on the 160x160 LFW crops, YuNet's points scatter
    around the reference MTCNN landmarks by a median 4.2 px (after removing the mean offset between the two
    point definitions) at the original size and 2.9 px when searched at 320 px (200 images). It did not
    raise accuracy in the one training run each we made (benchmarks/prepare_vs_landmarks.py: 80.4 % at the
    original size, 78.6 % at 320 px, within the noise of 1,000 pairs), so the default is 0 (off).

    ``landmarks="dlib68"`` replaces YuNet's five points by those of dlib's 68-point shape predictor run on
    the YuNet box (:class:`faceforge.deploy.dlib_detector.Dlib68Landmarks`; needs ``faceforge[dlib]``):
    on LFW their scatter around the MTCNN reference drops from 4.6 px to 1.6 px (mean, 112 px frame), and
    the demo recipe trained on faces prepared this way scores 83.4 % on pairsDevTest against 84.2 % with the
    shipped landmarks (means of five training seeds; the seed alone moves one run by about 2 points).
    """

    name = "yunet"
    default_min_score = 0.7

    def __init__(
        self,
        model_path: str | Path | None = None,
        score_threshold: float = 0.7,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        max_side: int = 1280,
        min_side: int = 0,
        landmarks: str = "yunet",
    ) -> None:
        if landmarks not in LANDMARK_SOURCES:
            raise ValueError(f"landmarks must be one of {LANDMARK_SOURCES}, got {landmarks!r}")
        path = Path(model_path) if model_path else default_yunet_model()
        if not path.is_file():
            raise FileNotFoundError(f"YuNet model not found: {path} (pass --detector-model PATH)")
        if not hasattr(cv2, "FaceDetectorYN"):
            raise RuntimeError(
                f"this OpenCV build ({cv2.__version__}) has no cv2.FaceDetectorYN; install "
                "opencv-python-headless>=4.8"
            )
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        if max_side < 32:
            raise ValueError(f"max_side must be at least 32 pixels, got {max_side}")
        self.model_path = path
        self.score_threshold = float(score_threshold)
        if min_side < 0 or (min_side and min_side > max_side):
            raise ValueError(f"min_side must be 0 (off) or at most max_side={max_side}, got {min_side}")
        self.max_side = int(max_side)
        self.min_side = int(min_side)
        try:
            self._net = cv2.FaceDetectorYN.create(
                str(path), "", (320, 320), float(score_threshold), float(nms_threshold), int(top_k)
            )
        except cv2.error as exc:
            raise ValueError(f"{path}: OpenCV could not load it as a YuNet model ({exc})") from None
        self._lock = threading.Lock()  # setInputSize + detect must not interleave between threads
        self.landmarks = landmarks
        self._refine = None
        if landmarks == "dlib68":
            from faceforge.deploy.dlib_detector import YUNET_TO_DLIB_RECT, Dlib68Landmarks

            self._refine = Dlib68Landmarks(YUNET_TO_DLIB_RECT)

    def __call__(self, image: np.ndarray) -> list[Detection]:
        img, sx, sy = resize_for_search(_check_rgb(image), self.max_side, self.min_side)
        bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        if bgr.shape[0] < YUNET_MIN_INPUT or bgr.shape[1] < YUNET_MIN_INPUT:
            # below its coarsest stride YuNet returns garbage: pad with black (no face can be there)
            bottom, right = (max(0, YUNET_MIN_INPUT - n) for n in bgr.shape[:2])
            bgr = cv2.copyMakeBorder(bgr, 0, bottom, 0, right, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        dh, dw = bgr.shape[:2]
        with self._lock:
            self._net.setInputSize((dw, dh))
            _, faces = self._net.detect(bgr)
        if faces is None:
            return []
        dets = []
        for row in np.asarray(faces, dtype=np.float64):
            if not np.all(np.isfinite(row[:15])):
                continue  # YuNet's NaN/inf rows on very thin images
            x, y, bw, bh = row[:4]
            box = np.array([x * sx, y * sy, (x + bw) * sx, (y + bh) * sy])
            lmk = row[4:14].reshape(5, 2) * np.array([sx, sy])
            if self._refine is not None:
                lmk = self._refine(image, box)
            dets.append(Detection(box=box, score=float(row[14]), landmarks=lmk))
        dets = finite_detections(dets, image.shape)
        dets.sort(key=lambda d: -d.score)
        return dets


def build_detector(name: str = "yunet", model_path: str | Path | None = None, **options) -> FaceDetector:
    """Build a registered detector by name; ``model_path`` None means the detector's default model.

    ``options`` (``--detector-option`` values) must be parameters of the detector's constructor, of their
    annotated types (:func:`~faceforge.core.rules.check_call_options`)."""
    check_call_options(
        f"detector option of {name}", options, DETECTORS.get(name), ("model_path",), DETECTOR_OPTION_RULES
    )
    return DETECTORS.build(name, model_path=model_path, **options)


def select_faces(
    dets: Sequence[Detection], image_shape: Sequence[int], policy: str = "largest"
) -> list[Detection]:
    """Choose the faces to keep from one image's detections.

    ``largest``: the face with the biggest box; ``central``: the face whose box centre is nearest the
    image centre (ties: the bigger box); ``all``: every face, ordered left to right (then top to bottom),
    so ``<stem>_<k>`` names follow reading order. Returns an empty list when there is no detection.
    """
    if policy not in SELECT_POLICIES:
        raise ValueError(
            f"unknown face selection policy {policy!r}; choose one of {', '.join(SELECT_POLICIES)}"
        )
    dets = list(dets)
    if not dets:
        return []
    if policy == "all":
        return sorted(dets, key=lambda d: (float(d.box[0]), float(d.box[1])))
    if policy == "largest":
        return [max(dets, key=lambda d: (d.area, d.score))]
    h, w = image_shape[0], image_shape[1]
    mid = np.array([w / 2.0, h / 2.0])
    return [min(dets, key=lambda d: (float(np.linalg.norm(d.center - mid)), -d.area))]


# the other built-in detectors register themselves on import; they need DETECTORS defined above
from faceforge.deploy import dlib_detector, mtcnn  # noqa: E402,F401
