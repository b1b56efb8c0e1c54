"""The typed results of the Python API: frozen dataclasses with documented fields, not dicts of lists.

Coordinates are pixels of the photo as given (after its EXIF orientation), ``x`` to the right and ``y`` down.
Every embedding is float32 and L2-normalised, so the cosine similarity of two faces is their dot product.
Each class has ``to_dict()`` (plain JSON types) for logging and web answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def _rounded(values: Any, digits: int = 2) -> list:
    return np.round(np.asarray(values, dtype=np.float64), digits).tolist()


@dataclass(frozen=True, eq=False)
class Face:
    """One face found in a photo.

    Attributes:
        box: ``(x1, y1, x2, y2)``, the detector's box.
        landmarks: float ``[5, 2]``: left eye, right eye, nose tip, left and right mouth corners, left/right
            as seen in the image (the ArcFace point order, which the alignment uses).
        score: the detector's confidence in ``[0, 1]``.
        aligned: the face warped onto the ArcFace template, RGB uint8 ``[S, S, 3]`` (``S`` = 112 unless asked),
            or None when alignment was not asked for.
        embedding: float32 ``[D]``, L2-normalised, once a model has embedded the face (else None).
        source: the photo it came from (a path, or a description of the array or bytes).
    """

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float
    aligned: np.ndarray | None = None
    embedding: np.ndarray | None = None
    source: str = ""

    def __repr__(self) -> str:
        crop = "x".join(map(str, self.aligned.shape[:2])) if self.aligned is not None else None
        emb = f"{self.embedding.shape[0]}-d" if self.embedding is not None else None
        box = ", ".join(f"{v:.1f}" for v in self.box)
        return f"Face(box=({box}), score={self.score:.3f}, aligned={crop}, embedding={emb}, source={self.source!r})"

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    def to_dict(self) -> dict[str, Any]:
        """Box, landmarks, score and source as plain numbers (the pixels and the embedding are left out)."""
        return {
            "box": _rounded(self.box),
            "landmarks": _rounded(self.landmarks),
            "score": round(float(self.score), 4),
            "source": self.source,
        }


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is: enough to reproduce its numbers.

    Attributes:
        kind: the embedder kind (``sface``, ``dlib``, ``checkpoint``, ``onnx``).
        embedding_size: ``D``.
        input_size: the side of the aligned faces it takes (pixels).
        network_colour: the channel order the *network* is fed (faceforge converts; inputs to the API are
            RGB or say their order).
        sha256: SHA-256 of the model file(s), or None.
        device: where it runs (``cpu``, ``cuda``, ...).
        precision: how it runs (``fp32``, ``bf16``, ...).
        description: the embedder's full ``describe()`` record (as written into result files).
    """

    kind: str
    embedding_size: int
    input_size: int
    network_colour: str
    sha256: str | None
    device: str
    precision: str
    description: dict[str, Any] = field(repr=False, default_factory=dict)


@dataclass(frozen=True)
class DecisionRule:
    """How a similarity becomes a yes/no: ``match = score >= threshold``.

    Attributes:
        threshold: the cosine similarity at or above which two faces are called the same person.
        fmr: the false-match rate the threshold was calibrated for (None for a threshold given by hand).
        fnmr: the false non-match rate measured at the threshold on the calibration set (None if unknown).
        calibration: where the threshold comes from (the calibration's own description: data, pairs, model).
        calibrated_with: the model the calibration belongs to (``model_kind``, ``model_sha256``) and the face
            pipeline it was measured with (detector, face selection, alignment, flip); a decision is only as
            good as the match between this and the model and pipeline in use.
    """

    threshold: float
    fmr: float | None
    fnmr: float | None
    calibration: str
    calibrated_with: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": round(self.threshold, 6),
            "fmr": self.fmr,
            "fnmr": self.fnmr,
            "calibration": self.calibration,
            "calibrated_with": self.calibrated_with,
        }


@dataclass(frozen=True)
class Comparison:
    """The answer of :func:`faceforge.compare`: one score and the decision at the rule's false-match rate.

    Attributes:
        score: cosine similarity of the two faces, in ``[-1, 1]``.
        match: ``score >= rule.threshold``.
        rule: the decision rule used (threshold, its FMR and where it was calibrated).
        faces: the two faces compared (None for a side given as an embedding).
    """

    score: float
    match: bool
    rule: DecisionRule
    faces: tuple[Face | None, Face | None]

    def __bool__(self) -> bool:
        return self.match

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": round(self.score, 6),
            "match": self.match,
            "rule": self.rule.to_dict(),
            "faces": [f.to_dict() if f is not None else None for f in self.faces],
        }


@dataclass(frozen=True)
class Match:
    """One gallery identity for a searched face (its best-scoring enrolled face).

    Attributes:
        identity: the enrolled name.
        identity_id: the identity's id in the gallery database.
        face_id: the id of the enrolled face that scored best.
        score: cosine similarity with that face.
        match: ``score >= rule.threshold``.
    """

    identity: str
    identity_id: int
    face_id: int
    score: float
    match: bool


@dataclass(frozen=True)
class FaceSearch:
    """One face of a searched photo and the gallery's nearest identities.

    Attributes:
        face: the probe face.
        matches: up to ``k`` identities, best first (whether or not they reach the threshold).
        rule: the decision rule used.
    """

    face: Face
    matches: tuple[Match, ...]
    rule: DecisionRule

    @property
    def identity(self) -> str | None:
        """The best identity if it reaches the threshold, else None (an unknown person)."""
        return self.matches[0].identity if self.matches and self.matches[0].match else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "face": self.face.to_dict(),
            "identity": self.identity,
            "matches": [m.__dict__ for m in self.matches],
            "rule": self.rule.to_dict(),
        }


@dataclass(frozen=True)
class Enrolment:
    """What :meth:`faceforge.Gallery.enrol` stored.

    Attributes:
        identity: the name.
        identity_id: its id in the gallery database.
        face_ids: the ids of the faces just stored (one per photo: its largest face).
        created: whether the identity is new (False: the faces were added to an existing one).
    """

    identity: str
    identity_id: int
    face_ids: tuple[int, ...]
    created: bool


@dataclass(frozen=True)
class Identity:
    """An enrolled person: id, name, number of faces, and when it was made and last changed (epoch seconds)."""

    identity_id: int
    name: str
    faces: int
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class BenchmarkResult:
    """One benchmark of an evaluation.

    Attributes:
        name: the benchmark's name in the run (``lfw_pairs``, ``ident``, ...).
        kind: its kind (the ``kind`` of its ``kind:ARG...`` spec).
        summary: the headline numbers (accuracy, AUC, TAR@FAR, ... as fractions; None where undefined).
        record: the full record ``faceforge eval`` writes (protocol output, settings, dataset checksums, plots).
    """

    name: str
    kind: str
    summary: dict[str, float | None]
    record: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Evaluation:
    """What :func:`faceforge.evaluate` returns.

    Attributes:
        benchmarks: the results by benchmark name, in the order asked.
        record: the whole run record (the ``result.json`` of ``faceforge eval``).
        path: the ``result.json`` written, if an output folder was given.
    """

    benchmarks: dict[str, BenchmarkResult]
    record: dict[str, Any] = field(repr=False)
    path: Path | None = None

    def __getitem__(self, name: str) -> BenchmarkResult:
        return self.benchmarks[name]

    @property
    def summary(self) -> dict[str, float | None]:
        """The first benchmark's headline numbers."""
        return next(iter(self.benchmarks.values())).summary


@dataclass(frozen=True)
class TrainingRun:
    """What :func:`faceforge.train` returns.

    Attributes:
        run_dir: the run folder (config, checkpoints, logs, ``report.json``).
        model_path: the trained model (``checkpoints/model.pt`` when the run completed, else the last full
            checkpoint ``checkpoints/last.pt``, which ``run.resume=auto`` continues).
        completed: whether every epoch ran (False when stopped by ``run.max_steps``).
        evaluation: ``{benchmark: summary}`` of the final evaluation (empty without ``eval`` benchmarks).
        report: the trainer's full report (also ``report.json``).
    """

    run_dir: Path
    model_path: Path
    completed: bool
    evaluation: dict[str, dict[str, Any]]
    report: dict[str, Any] = field(repr=False)
