"""faceforge: face recognition research and deployment toolkit.

The Python API (:mod:`faceforge.api`) is available from here: ``faceforge.load_model``, ``faceforge.detect_faces``,
``faceforge.compare``, ``faceforge.Gallery``, ``faceforge.evaluate``, ``faceforge.train`` and their result types.
They are imported on first use (PEP 562), so ``import faceforge`` stays cheap: no torch, no OpenCV.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faceforge.core.version import __version__

#: the public names, all defined in :mod:`faceforge.api`
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
    "__version__",
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

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from faceforge.api import (
        BenchmarkResult,
        Comparison,
        DecisionRule,
        Detector,
        Enrolment,
        Evaluation,
        Face,
        FaceforgeError,
        FaceSearch,
        Gallery,
        Identity,
        ImageError,
        InputError,
        Match,
        Model,
        ModelFileError,
        ModelInfo,
        NoFaceError,
        TrainingRun,
        UncalibratedError,
        align_face,
        compare,
        detect_faces,
        evaluate,
        fetch,
        load_detector,
        load_model,
        read_image,
        train,
    )


def __getattr__(name: str) -> Any:
    if name in __all__ and name != "__version__":
        import faceforge.api

        value = getattr(faceforge.api, name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'faceforge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
