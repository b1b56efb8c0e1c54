"""dlib's face detectors with landmarks from dlib's 68-point shape predictor, in the ArcFace 5-point order.

Needs ``pip install dlib-bin face-recognition-models`` (``faceforge[dlib]``, installed by ``make setup``).

* ``model="hog"`` (default): ``dlib.get_frontal_face_detector()``, HOG features + a linear SVM over an image
  pyramid (Dalal and Triggs 2005; dlib's trained frontal model). Fast on a CPU; finds near-frontal faces
  of at least about 80x80 pixels, smaller ones with ``upsample`` > 0.
* ``model="cnn"``: dlib's max-margin CNN detector (``mmod_human_face_detector.dat`` from
  face-recognition-models). Finds more poses, about 20x slower on a CPU.

The detectors return an SVM margin (0 at dlib's own decision boundary); ``score = 1 / (1 + exp(-margin))``
maps it into [0, 1] so it can share ``--min-score`` with the other detectors, and 0.5 is dlib's default
threshold. dlib's boxes are tight around the eyebrows-to-chin area; the 68 points (iBUG 300-W markup)
give the ArcFace five: the means of points 36-41 and 42-47 (the image-left and image-right eye), point 30
(nose tip), and points 48 and 54 (mouth corners).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from faceforge.deploy.detection import DETECTORS, Detection, _check_rgb, finite_detections

MODELS = ("hog", "cnn")
DEFAULT_MIN_SCORE = 0.5  # margin 0: dlib's own threshold


def _points5(shape) -> np.ndarray:
    p = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float64)
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


@DETECTORS.register("dlib")
class DlibDetector:
    """dlib face detection + 68-point landmarks; see the module doc for ``model``, ``upsample`` and scores."""

    name = "dlib"
    default_min_score = DEFAULT_MIN_SCORE

    def __init__(
        self,
        model_path: str | Path | None = None,
        model: str = "hog",
        score_threshold: float = DEFAULT_MIN_SCORE,
        upsample: int = 1,
    ) -> None:
        from faceforge.embedders.dlib_resnet import _require_dlib, models_folder

        if model not in MODELS:
            raise ValueError(f"dlib detector model must be one of {MODELS}, got {model!r}")
        if not 0.0 < score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in (0, 1), got {score_threshold}")
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {upsample}")
        dlib = _require_dlib()
        folder = Path(model_path) if model_path else models_folder()
        predictor = folder / "shape_predictor_68_face_landmarks.dat"
        if not predictor.is_file():
            raise FileNotFoundError(f"dlib 68-point shape predictor not found: {predictor}")
        self.model, self.upsample = model, int(upsample)
        self.margin = float(np.log(score_threshold / (1.0 - score_threshold)))
        self.model_path = folder
        if model == "cnn":
            self._cnn = dlib.cnn_face_detection_model_v1(str(folder / "mmod_human_face_detector.dat"))
        else:
            self._hog = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(predictor))
        self._lock = threading.Lock()

    def _detect(self, img: np.ndarray) -> list[tuple[object, float]]:
        if self.model == "cnn":
            found = self._cnn(img, self.upsample)
            return [(d.rect, float(d.confidence)) for d in found if d.confidence >= self.margin]
        rects, margins, _ = self._hog.run(img, self.upsample, self.margin)
        return list(zip(rects, (float(m) for m in margins), strict=True))

    def __call__(self, image: np.ndarray) -> list[Detection]:
        img = np.ascontiguousarray(_check_rgb(image))
        with self._lock:
            found = self._detect(img)
            dets = []
            for rect, margin in found:
                pts = _points5(self._predictor(img, rect))
                box = np.array(
                    [rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], dtype=np.float64
                )
                dets.append(Detection(box=box, score=float(1.0 / (1.0 + np.exp(-margin))), landmarks=pts))
        dets = finite_detections(dets, image.shape)
        dets.sort(key=lambda d: -d.score)
        return dets


#: dlib's HOG rectangle relative to a YuNet box of width w and height h: centre shifted by (DX w, DY h),
#: size (SW w, SH h). Medians over 593 LFW photos (160x160) in which both detectors found the central face.
YUNET_TO_DLIB_RECT = {"dx": -0.010, "dy": 0.052, "sw": 1.057, "sh": 0.801}


class Dlib68Landmarks:
    """Five ArcFace points from dlib's 68-point shape predictor, started from another detector's box.

    A shape predictor (Kazemi and Sullivan 2014, dlib's iBUG 300-W model) regresses the 68 points from a
    box; it was trained on dlib's HOG boxes, so a box of another detector is first mapped onto the HOG
    box it corresponds to (``rect``, e.g. :data:`YUNET_TO_DLIB_RECT`). On 600 LFW photos the resulting
    points lie a mean 1.6 px (median 1.1 px; 112 px frame, the constant offset between the point
    definitions removed) from the MTCNN landmarks that ship with LFW, against 4.6 px for YuNet's own
    points and 1.3 px for dlib's own detector plus the predictor.
    """

    def __init__(self, rect: dict[str, float], model_path: str | Path | None = None) -> None:
        from faceforge.embedders.dlib_resnet import _require_dlib, models_folder

        self._dlib = _require_dlib()
        folder = Path(model_path) if model_path else models_folder()
        predictor = folder / "shape_predictor_68_face_landmarks.dat"
        if not predictor.is_file():
            raise FileNotFoundError(f"dlib 68-point shape predictor not found: {predictor}")
        self.rect = dict(rect)
        self._predictor = self._dlib.shape_predictor(str(predictor))
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """``image``: RGB uint8; ``box``: x0, y0, x1, y1 of the other detector -> (5, 2) points."""
        x0, y0, x1, y1 = (float(v) for v in box)
        w, h = x1 - x0, y1 - y0
        cx, cy = (x0 + x1) / 2 + self.rect["dx"] * w, (y0 + y1) / 2 + self.rect["dy"] * h
        hw, hh = self.rect["sw"] * w / 2, self.rect["sh"] * h / 2
        rect = self._dlib.rectangle(round(cx - hw), round(cy - hh), round(cx + hw) - 1, round(cy + hh) - 1)
        with self._lock:
            return _points5(self._predictor(np.ascontiguousarray(image), rect))
