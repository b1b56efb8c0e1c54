"""Assemble a running gallery from settings: model (default SFace, else dlib), detector, calibration, store,
index and the embedding pool. Used by ``faceforge serve``, the offline ``faceforge search`` and the tests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faceforge.serve.batcher import Batcher
from faceforge.serve.calibration import Calibration, packaged_calibration
from faceforge.serve.gallery import Gallery
from faceforge.serve.index import FaceIndex, IndexSettings, VerifyResult
from faceforge.serve.pipeline import FacePipeline, Limits, PipelineSettings
from faceforge.serve.store import Store

log = logging.getLogger(__name__)

#: ``--model default``: the first of these that loads (SFace needs `faceforge fetch sface`, dlib needs
#: faceforge[dlib])
DEFAULT_MODELS = ("sface", "dlib")


@dataclass
class ServiceSettings:
    db: str
    model: str = "default"
    model_options: dict[str, Any] = field(default_factory=dict)
    detector: str = "yunet"
    detector_options: dict[str, Any] = field(default_factory=dict)
    calibration: str | None = None
    threshold: float | None = None
    limits: Limits = field(default_factory=Limits)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    index: IndexSettings = field(default_factory=IndexSettings)
    workers: int = 1
    max_batch: int = 32
    max_wait_ms: float = 2.0
    keep_crops: bool = True
    cors_origins: list[str] = field(default_factory=list)
    metrics_public: bool = False
    pool_size: int = 8


def load_model(spec: str, options: dict[str, Any] | None = None) -> Any:
    """An embedder for ``spec``; ``default`` tries :data:`DEFAULT_MODELS` in order and says what it chose."""
    from faceforge.core.finite import probe_finite
    from faceforge.embedders import embedder_from_spec

    options = dict(options or {})
    if spec != "default":
        embedder = embedder_from_spec(spec, **options)
        probe_finite(embedder)  # a NaN model is refused at start, not per request
        return embedder
    reasons = []
    for name in DEFAULT_MODELS:
        try:
            emb = embedder_from_spec(name, **options)
        except (FileNotFoundError, RuntimeError, ImportError, ValueError) as exc:
            reasons.append(f"{name}: {exc}")
            log.warning("default model %s is not available (%s)", name, exc)
            continue
        log.info("model: %s (the default)", name)
        return emb
    raise RuntimeError(
        "no default model is available (" + "; ".join(reasons) + "): run `faceforge fetch sface` or "
        "pip install 'faceforge[dlib]', or pass --model"
    )


def follow_gallery_precision(embedder: Any, bound: dict[str, Any] | None) -> Any:
    """The embedder in the precision the gallery's embeddings were made in, when the gallery holds this very
    model (same weights) in another precision: its model id includes the precision, so a service that chose
    otherwise would refuse its own gallery. Embedders without a precision choice are returned as they are."""
    twin = getattr(embedder, "with_precision", None)
    if bound is None or twin is None:
        return embedder
    model = bound.get("model") or {}
    want = model.get("precision") or "fp32"
    if model.get("sha256") != embedder.sha256() or want == embedder.policy.precision:
        return embedder
    log.info("the gallery holds this model's %s embeddings: serving in %s", want, want)
    return twin(want)


def resolve_calibration(model: dict[str, Any], path: str | None, threshold: float | None) -> Calibration:
    """``--threshold`` if given, else ``--calibration FILE`` (must name this model's file), else the packaged
    calibration of the model, else an error that says how to make one."""
    if threshold is not None:
        if path is not None:
            raise ValueError("give --threshold or --calibration, not both")
        return Calibration.fixed(threshold, model)
    if path is not None:
        cal = Calibration.load(path)
        if cal.model_sha256 and model.get("sha256") and cal.model_sha256 != model["sha256"]:
            raise ValueError(
                f"{path} calibrates the model file {cal.model_sha256[:16]}, not this model "
                f"({str(model.get('sha256'))[:16]}); run `faceforge serve calibrate` for it"
            )
        return cal
    cal = packaged_calibration(model)
    if cal is not None:
        return cal
    raise ValueError(
        f"no calibration for this model ({model.get('kind')}, {str(model.get('sha256'))[:16]}): make one with "
        "`faceforge serve calibrate --model ... --images LFW_DIR --out cal.json` and pass --calibration cal.json, "
        "or give a fixed --threshold"
    )


class Service:
    """Everything a running gallery needs; :meth:`close` stops the worker pool and the database pool."""

    def __init__(
        self, settings: ServiceSettings, embedder: Any | None = None, detector: Any | None = None
    ) -> None:
        from faceforge.deploy.detect import build_detector

        self.settings = settings
        self.embedder = (
            embedder if embedder is not None else load_model(settings.model, settings.model_options)
        )
        self.store = Store(settings.db, pool_size=settings.pool_size)
        try:
            self.embedder = follow_gallery_precision(self.embedder, self.store.gallery_model())
            self.model = self.embedder.describe()
            if note := (self.model.get("precision_choice") or {}).get("note"):
                log.info("model precision: %s", note)
            self.calibration = resolve_calibration(self.model, settings.calibration, settings.threshold)
            self.detector = (
                detector
                if detector is not None
                else build_detector(settings.detector, **settings.detector_options)
            )
        except BaseException:
            self.store.close()
            raise
        self.batch_sizes: list[int] = []
        self.batcher = Batcher(
            self.embedder,
            workers=settings.workers,
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
            on_batch=self._on_batch,
        )
        try:
            self.pipeline = FacePipeline(
                self.detector, self.batcher, self.embedder.input_size, settings.limits, settings.pipeline
            )
            self.index = FaceIndex(self.embedder.embedding_size, settings.index)
            self.gallery = Gallery(
                self.store,
                self.index,
                self.pipeline,
                self.model,
                self.calibration,
                keep_crops=settings.keep_crops,
            )
            self.startup_check: VerifyResult = self.index.rebuild(self.store)
            if not self.startup_check.ok:
                raise RuntimeError(
                    f"the index built from {settings.db} does not match it: {self.startup_check.to_dict()}"
                )
        except BaseException:
            self.close()
            raise
        self.batch_observers: list[Any] = []

    def _on_batch(self, n: int, seconds: float) -> None:
        for obs in getattr(self, "batch_observers", []):
            obs(n, seconds)

    def describe(self) -> dict[str, Any]:
        return {
            "model": {k: v for k, v in self.model.items() if k not in ("path",)},
            "model_id": self.gallery.model_id,
            "calibration": {
                "source": self.calibration.source,
                "fmrs": self.calibration.fmrs(),
                "model_sha256": self.calibration.model_sha256,
            },
            "detector": self.settings.detector,
            "index": self.index.describe(),
            "limits": self.settings.limits.__dict__,
        }

    def close(self) -> None:
        if getattr(self, "index", None) is not None:
            try:
                self.index.save_graph()  # start-up then loads it instead of building (index module doc)
            except OSError as exc:
                log.warning("could not save the index graph: %s", exc)
        if getattr(self, "batcher", None) is not None:
            self.batcher.close()
        if getattr(self, "store", None) is not None:
            self.store.close()


def default_db_path() -> Path:
    return Path.cwd() / "faceforge_gallery.db"
