"""faceforge's Python API: the things people write code with, typed and documented. Every name here is also
importable from ``faceforge`` itself (``import faceforge; faceforge.compare(a, b)``), loaded on first use.

==========================  ======================================================================================
load a model                :func:`load_model` (``"sface"``, ``"dlib"``, a ``.pt`` checkpoint, an ``.onnx`` file;
                            device and precision stated) -> :class:`Model`; :func:`fetch` downloads model files
detect and align faces      :func:`detect_faces`, :class:`Detector` / :func:`load_detector`, :func:`align_face`,
                            :func:`read_image` -> :class:`Face` (box, 5 landmarks, score, aligned crop)
embed faces                 :meth:`Model.embed` (batched, L2-normalised), :meth:`Model.embed_photo`
compare two faces           :func:`compare` / :meth:`Model.compare` -> :class:`Comparison` (score, and the decision
                            at a calibrated false-match rate: :class:`DecisionRule` says which calibration)
a gallery                   :class:`Gallery`: enrol / search / delete on the face search service's database and
                            index -> :class:`Enrolment`, :class:`FaceSearch`, :class:`Match`, :class:`Identity`
evaluate                    :func:`evaluate` on ``faceforge eval``'s benchmarks -> :class:`Evaluation`
train                       :func:`train` a config with overrides -> :class:`TrainingRun`
errors                      :class:`FaceforgeError` and its kinds (:class:`NoFaceError`, :class:`UncalibratedError`,
                            :class:`ModelFileError`, :class:`ImageError`): each message names the fix
==========================  ======================================================================================

Inputs: a photo or a crop is a path, encoded bytes, or a uint8 numpy array *with its colour order stated*
(``colour="RGB"`` or ``"BGR"``): :mod:`faceforge.api.images`. A worked page of examples, run as a test on real
photos, is ``docs/api.md``.
"""

from __future__ import annotations

from pathlib import Path

from faceforge.api.compare import compare
from faceforge.api.detection import Detector, align_face, detect_faces, load_detector
from faceforge.api.errors import ModelFileError, NoFaceError, UncalibratedError
from faceforge.api.evaluation import evaluate
from faceforge.api.gallery import Gallery
from faceforge.api.images import ImageError, read_image
from faceforge.api.model import Model, load_model
from faceforge.api.results import (
    BenchmarkResult,
    Comparison,
    DecisionRule,
    Enrolment,
    Evaluation,
    Face,
    FaceSearch,
    Identity,
    Match,
    ModelInfo,
    TrainingRun,
)
from faceforge.api.training import train
from faceforge.core.errors import FaceforgeError, InputError


def fetch(name: str, dest: str | Path | None = None) -> Path:
    """Download model files (``"sface"``, ``"mtcnn"``) from their pinned source, checked by SHA-256, into the
    model folder (``$FACEFORGE_MODELS``, default ``~/.cache/faceforge/models``): ``faceforge fetch NAME``.
    Files already in place with the right checksums are kept. Returns the folder."""
    from faceforge.core.model_files import fetch_model

    return fetch_model(name, dest)


__all__ = [
    "BenchmarkResult",
    "Comparison",
    "DecisionRule",
    "Detector",
    "Enrolment",
    "Evaluation",
    "Face",
    "FaceSearch",
    "FaceforgeError",
    "Gallery",
    "Identity",
    "ImageError",
    "InputError",
    "Match",
    "Model",
    "ModelFileError",
    "ModelInfo",
    "NoFaceError",
    "TrainingRun",
    "UncalibratedError",
    "align_face",
    "compare",
    "detect_faces",
    "evaluate",
    "fetch",
    "load_detector",
    "load_model",
    "read_image",
    "train",
]
