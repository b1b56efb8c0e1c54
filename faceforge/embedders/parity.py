"""bf16 inference where it keeps the numbers: the parity record of a model and the choice of precision.

A network embeds in reduced precision (bf16 autocast + channels_last; fp16 on a GPU without bf16) only
where that is fast (CUDA, or a CPU whose oneDNN reports native bf16: AVX-512 BF16 / AMX) *and* keeps its
numbers. What "keeps its numbers" means is measured once per model and device kind and kept as a
**parity record** (``<cache>/parity/<sha256>-<device>-<precision>.json``, :func:`parity_dir`):

* **cosine part**: the cosine between the reduced-precision and the fp32 embedding of the same face,
  ``cos_i = <r_i, f_i> / (||r_i|| ||f_i||)``, its minimum and mean over a fixed set of real faces.  The
  faces are the first :data:`PARITY_FACES` faces the first command embeds with the model (``faceforge
  embed``, ``eval``, ``serve calibrate``, a distillation teacher, ...): the package ships no face pixels, so
  the set is whatever real faces the user's first run brings, identified in the record by the sha1 of their
  pixels. It costs one fp32 and one reduced forward pass of those faces (no flip).
* **accuracy part**: filled in the first time a pairs evaluation (``faceforge eval`` with an ``lfw:PAIRS:IMAGES``
  benchmark, e.g. pairsDevTest) runs the model in reduced precision: the benchmark's faces are embedded in fp32
  too (once per model, through the embedding cache) and both 10-fold accuracies are recorded with their
  difference (:mod:`faceforge.eval.parity_accuracy`).

The bar (:data:`COSINE_BAR`, :data:`ACCURACY_BAR_POINTS`): minimum cosine ``>= 0.999`` and accuracy within
0.1 point of fp32. ``--precision auto`` (the default) uses the reduced precision only for a model whose record
passes, falls back to fp32 below the bar and says why; ``bf16`` forces it (the record is still made and a
failing one is reported); ``fp32`` never uses it. The precision and the record go into every result file
(the embedder's ``describe()``) and the service's model id.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faceforge.core.atomic import atomic_writer
from faceforge.core.precision import hardware_name, inference_candidate
from faceforge.embedders.cache_dir import default_cache_dir

__all__ = [
    "ACCURACY_BAR_POINTS",
    "COSINE_BAR",
    "PARITY_FACES",
    "PRECISION_CHOICES",
    "ParityRecord",
    "PrecisionPolicy",
    "cosine_stats",
    "parity_dir",
]

#: how many faces the cosine part uses (the first faces the first run embeds)
PARITY_FACES = 32
#: the smallest minimum cosine to fp32 that passes
COSINE_BAR = 0.999
#: the largest change in pairs accuracy (in points, i.e. percent) that passes
ACCURACY_BAR_POINTS = 0.1
PRECISION_CHOICES = ("auto", "fp32", "bf16")


def parity_dir() -> Path:
    """``<embedding cache>/parity`` (``$FACEFORGE_CACHE`` or ``~/.cache/faceforge/embeddings``)."""
    return default_cache_dir() / "parity"


def cosine_stats(reduced: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(min, mean) over rows of ``cos(r_i, f_i) = <r_i, f_i> / (max(||r_i||, eps) max(||f_i||, eps))``."""
    r = np.asarray(reduced, dtype=np.float64)
    f = np.asarray(reference, dtype=np.float64)
    eps = 1e-12
    cos = (r * f).sum(1) / (
        np.maximum(np.linalg.norm(r, axis=1), eps) * np.maximum(np.linalg.norm(f, axis=1), eps)
    )
    return float(cos.min()), float(cos.mean())


@dataclass
class ParityRecord:
    """One model's reduced-precision parity on one device kind (see the module doc)."""

    model_sha256: str
    device: str  # "cpu" or "cuda"
    precision: str  # the reduced precision tested: "bf16" (or "fp16" on an old GPU)
    hardware: str
    torch_version: str
    faces: int
    faces_sha1: str
    faces_source: str
    cosine_min: float
    cosine_mean: float
    accuracy: dict[str, Any] | None = None  # benchmark, pairs_sha256, fp32, reduced, delta_points
    created: str = ""
    bar: dict[str, float] = field(
        default_factory=lambda: {"cosine_min": COSINE_BAR, "accuracy_delta_points": ACCURACY_BAR_POINTS}
    )

    @property
    def key(self) -> str:
        return record_key(self.model_sha256, self.device, self.precision)

    def failures(self) -> list[str]:
        """Why the record is below the bar (empty: it passes, as far as it has been measured)."""
        out = []
        if not self.cosine_min >= self.bar["cosine_min"]:
            out.append(
                f"min cosine to fp32 {self.cosine_min:.5f} < {self.bar['cosine_min']} on {self.faces} faces"
            )
        acc = self.accuracy or {}
        delta = acc.get("delta_points")
        # (rounded: one pair in 1,000 is 0.1 point, which float arithmetic makes 0.1000000000000009)
        if delta is not None and not round(abs(delta), 9) <= self.bar["accuracy_delta_points"]:
            out.append(
                f"{acc.get('benchmark')} accuracy changes by {delta:+.3f} points "
                f"(more than {self.bar['accuracy_delta_points']})"
            )
        return out

    @property
    def passed(self) -> bool:
        return not self.failures()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        d["failures"] = self.failures()
        d["accuracy_measured"] = self.accuracy is not None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ParityRecord:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


def record_key(sha256: str, device: str, precision: str) -> str:
    return f"{sha256[:32]}-{device}-{precision}"


def load_record(key: str, folder: Path | None = None) -> ParityRecord | None:
    """The stored record, or None (missing, unreadable or damaged files are ignored and remade)."""
    path = (folder or parity_dir()) / f"{key}.json"
    try:
        return ParityRecord.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def save_record(record: ParityRecord, folder: Path | None = None) -> Path:
    path = (folder or parity_dir()) / f"{record.key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as fh:
        fh.write(json.dumps(asdict(record), indent=2).encode())
    return path


Embed = Callable[[np.ndarray, str], np.ndarray]  # (uint8 faces, precision) -> float32 embeddings


class PrecisionPolicy:
    """The precision one embedder runs in: the request, the device, the record, the choice and why.

    ``requested`` is ``auto``, ``fp32`` or ``bf16`` (``fp16`` is accepted on CUDA). ``precision`` is the
    choice, or None while ``auto`` waits for faces to measure a record (:meth:`settle`); :meth:`ensure`
    settles it without faces (fp32 this time) for callers that need the precision before any face.
    ``embedding_output=False`` (a quality regressor's one number per face) keeps ``auto`` at fp32.
    """

    def __init__(
        self,
        requested: str,
        device: torch.device,
        model_sha256: Callable[[], str],
        embedding_output: bool = True,
    ) -> None:
        if requested not in (*PRECISION_CHOICES, "fp16"):
            raise ValueError(f"precision must be one of {PRECISION_CHOICES}, got {requested!r}")
        if requested == "fp16" and device.type != "cuda":
            raise ValueError("fp16 inference is for CUDA; on a CPU use --precision bf16 or fp32")
        self.requested = requested
        self.device = device
        self._sha = model_sha256
        self.record: ParityRecord | None = None
        self.note = ""
        self.candidate: str | None = None
        self.precision: str | None = None
        if requested == "fp32":
            self.precision, self.note = "fp32", "fp32 as requested"
            return
        if requested in ("bf16", "fp16"):
            self.candidate = self.precision = requested
            self.note = f"{requested} as requested"
            if device.type == "cpu" and inference_candidate(device) is None:
                self.note += " (this CPU has no native bf16: it is emulated and slower than fp32)"
            self.record = load_record(self.key)
            if self.record is not None:
                self._choose()
            return
        if not embedding_output:
            self.precision = "fp32"
            self.note = "auto: fp32, a model with one output per face has no cosine parity to measure"
            return
        self.candidate = inference_candidate(device)
        if self.candidate is None:
            self.precision = "fp32"
            self.note = "auto: fp32, this CPU has no native bf16 (emulated bf16 is slower than fp32)"
            return
        self.record = load_record(self.key)
        if self.record is not None:
            self._choose()

    @property
    def key(self) -> str:
        return record_key(self._sha(), self.device.type, str(self.candidate))

    @property
    def pending(self) -> bool:
        """``auto`` still waiting for faces to measure a record before it chooses."""
        return self.precision is None

    @property
    def needs_record(self) -> bool:
        """A reduced precision is in play (auto on a capable device, or forced) and has no record yet."""
        return self.candidate is not None and self.record is None

    def _choose(self) -> None:
        assert self.record is not None
        bad = self.record.failures()
        if self.requested != "auto":
            if bad:
                self.note = (
                    f"{self.requested} as requested, although its parity is below the bar: {'; '.join(bad)}"
                )
            return
        if bad:
            self.precision = "fp32"
            self.note = f"auto: fp32, {self.candidate} parity below the bar ({'; '.join(bad)})"
        else:
            self.precision = self.candidate
            part = "" if self.record.accuracy is not None else " (accuracy part not measured yet)"
            self.note = f"auto: {self.candidate}, parity min cosine {self.record.cosine_min:.5f}{part}"

    def settle(self, faces: np.ndarray, embed: Embed, source: str = "") -> None:
        """Measure the cosine part on ``faces[:PARITY_FACES]`` if no record exists, then choose."""
        if not self.needs_record or len(faces) == 0:
            return
        sample = np.ascontiguousarray(faces[:PARITY_FACES])
        reference = embed(sample, "fp32")
        reduced = embed(sample, self.candidate)
        cmin, cmean = cosine_stats(reduced, reference)
        self.record = ParityRecord(
            model_sha256=self._sha(),
            device=self.device.type,
            precision=self.candidate,
            hardware=hardware_name(self.device),
            torch_version=str(torch.__version__),
            faces=len(sample),
            faces_sha1=hashlib.sha1(sample.tobytes()).hexdigest(),
            faces_source=source or "the first faces the first run embedded",
            cosine_min=cmin,
            cosine_mean=cmean,
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        save_record(self.record)
        self._choose()

    def ensure(self) -> str:
        """The precision, settling a pending ``auto`` to fp32 for this run when no faces came first."""
        if self.precision is None:
            self.precision = "fp32"
            self.note = (
                f"auto: fp32 this time, no {self.candidate} parity record for this model yet (the first "
                "'faceforge embed', 'eval' or 'serve calibrate' with --precision auto makes one)"
            )
        return self.precision

    def update(self, record: ParityRecord) -> None:
        """Store a record with more measured (the accuracy part) and choose again."""
        self.record = record
        save_record(record)
        if self.requested == "auto":
            self.precision = None
        self._choose()

    def describe(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "note": self.note,
            "record": self.record.to_dict() if self.record is not None else None,
        }
