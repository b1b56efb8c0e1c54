"""Load a face recognition model and embed faces: ``faceforge.load_model("sface")``.

A :class:`Model` wraps one of faceforge's embedders (:mod:`faceforge.embedders`: the contract every evaluation,
teacher and the service use) with what code needs around it: input checks that name the fix, the stated colour
order of arrays, batching, L2-normalised float32 output, the detector for whole photos, and the calibration
that turns a similarity into a decision at a known false-match rate (:mod:`faceforge.serve.calibration`).

Models by name (``load_model(NAME)``):

* ``"sface"``: OpenCV Zoo's SFace (Zhong et al., IEEE TIP 2021), 128-d, the service's default;
  ``faceforge fetch sface`` (or :func:`faceforge.fetch`) downloads it once, checked by SHA-256.
* ``"dlib"``: dlib's ResNet (King, "Dlib-ml", JMLR 2009), 128-d, the model of ``face_recognition``;
  ``pip install 'faceforge[dlib]'``.
* a faceforge checkpoint (``.pt``, from ``faceforge train``), an ONNX file (``.onnx``), or ``kind:PATH``.

>>> model = load_model("sface")
>>> model.info.embedding_size, model.info.network_colour
(128, 'BGR')
>>> faces = model.embed_photo(photos / "insightface_t1.jpg")
>>> len(faces), faces[0].embedding.shape
(6, (128,))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from faceforge.api.detection import Detector
from faceforge.api.errors import ModelFileError, NoFaceError, UncalibratedError
from faceforge.api.images import ImageInput, as_batch, describe_input
from faceforge.api.results import Comparison, DecisionRule, Face, ModelInfo
from faceforge.core.finite import check_finite
from faceforge.core.options import check_api

#: precisions a caller may ask for; "auto" lets the embedder choose (bf16 only where the CPU or GPU has it)
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
#: what the packaged calibrations were measured with (``faceforge serve calibrate``)
CALIBRATION_KEYS = ("detector", "face", "alignment", "flip", "min_det_score")


def _load_embedder(spec: str, device: str, precision: str, batch_size: int, options: dict[str, Any]) -> Any:
    from faceforge.embedders import embedder_from_spec

    try:
        return embedder_from_spec(spec, device=device, precision=precision, batch_size=batch_size, **options)
    except FileNotFoundError as exc:
        from faceforge.core.model_files import MODEL_ARCHIVES

        kind = spec.partition(":")[0]
        if kind in MODEL_ARCHIVES:
            raise ModelFileError(f"{exc}; in Python: faceforge.fetch({kind!r})") from None
        raise


class Model:
    """A loaded face recognition model (see the module docstring); build it with :func:`load_model`.

    Attributes:
        embedder: the underlying :class:`~faceforge.embedders.Embedder` (``embed(uint8 RGB aligned) -> [N, D]``).
        info: what the model is (:class:`~faceforge.api.results.ModelInfo`).
        detector: the detector used for whole photos.
        calibration: the :class:`~faceforge.serve.calibration.Calibration` for decisions, or None
            (uncalibrated: :meth:`rule` and :meth:`compare` then need ``threshold=``).
    """

    def __init__(
        self, embedder: Any, *, detector: Detector, calibration: Any, spec: str, device: str, precision: str
    ) -> None:
        self.embedder = embedder
        self.detector = detector
        self.calibration = calibration
        self.spec = spec
        desc = embedder.describe()
        pre = desc.get("preprocess") or {}
        self.info = ModelInfo(
            kind=str(desc.get("kind", spec)),
            embedding_size=int(embedder.embedding_size),
            input_size=int(embedder.input_size),
            network_colour=str(pre.get("colour", "RGB")),
            sha256=desc.get("sha256") if isinstance(desc.get("sha256"), str) else None,
            device=device,
            precision=str(desc.get("precision", precision)),
            description=desc,
        )

    def __repr__(self) -> str:
        i = self.info
        cal = "calibrated" if self.calibration is not None else "uncalibrated"
        return f"Model({self.spec!r}, {i.kind}, {i.embedding_size}-d, {i.device} {i.precision}, {cal})"

    # -- embeddings
    def embed(
        self,
        faces: Sequence[Face] | np.ndarray | Sequence[ImageInput],
        *,
        colour: str | None = None,
        flip: bool = False,
        batch_size: int = 256,
    ) -> np.ndarray:
        """L2-normalised float32 embeddings ``[N, D]`` of aligned faces.

        Args:
            faces: :class:`Face` results (their ``aligned`` crops), aligned crops as uint8 arrays
                ``[N, S, S, 3]`` / ``[S, S, 3]`` / a list of them (with ``colour``), or image files of aligned
                crops (as ``faceforge prepare`` and ``faceforge align`` write them).
            colour: ``"RGB"`` or ``"BGR"`` for arrays (a :class:`Face` crop is RGB).
            flip: add the embedding of each mirrored face before normalising (``faceforge eval``'s default,
                +0.1 to 0.5 points of LFW accuracy); the packaged calibrations are without it.
            batch_size: faces handed to the network at once (memory bound; the embedder batches inside too).
        """
        check_api(batch_size=batch_size)
        crops = self._crops(faces, colour)
        out = np.zeros((len(crops), self.info.embedding_size), np.float32)
        for i in range(0, len(crops), max(1, int(batch_size))):
            chunk = crops[i : i + batch_size]
            emb = check_finite(self.embedder.embed(chunk), self.embedder)
            if flip:
                emb = emb + check_finite(
                    self.embedder.embed(np.ascontiguousarray(chunk[:, :, ::-1])), self.embedder
                )
            out[i : i + len(chunk)] = emb
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def _crops(self, faces: Any, colour: str | None) -> np.ndarray:
        size = self.info.input_size
        if isinstance(faces, Face):
            faces = [faces]
        if isinstance(faces, Sequence) and faces and all(isinstance(f, Face) for f in faces):
            missing = [i for i, f in enumerate(faces) if f.aligned is None]
            if missing:
                raise ValueError(f"face {missing[0]} has no aligned crop: detect it with align=True")
            return as_batch([f.aligned for f in faces], "RGB", size)  # type: ignore[misc]
        return as_batch(faces, colour, size)

    def embed_photo(
        self, image: ImageInput, *, colour: str | None = None, select: str = "all", flip: bool = False
    ) -> list[Face]:
        """Detect, align and embed the faces of one photo: :class:`Face` results with ``embedding`` set.

        Faces are aligned at the model's input size; ``select`` as :meth:`Detector.detect`.
        """
        from dataclasses import replace

        faces = self.detector.detect(image, colour=colour, select=select, size=self.info.input_size)
        if not faces:
            return []
        emb = self.embed(faces, flip=flip)
        return [replace(f, embedding=e) for f, e in zip(faces, emb, strict=True)]

    # -- decisions
    def rule(self, fmr: float | None = None, *, threshold: float | None = None) -> DecisionRule:
        """The decision rule at target false-match rate ``fmr`` (default 1e-4, or the calibration's only row).

        A target between the calibrated ones uses the next stricter row. ``threshold`` fixes the threshold by
        hand instead (its FMR is then unknown). An uncalibrated model without ``threshold`` raises
        :class:`~faceforge.api.errors.UncalibratedError`, which says how to calibrate it.
        """
        from faceforge.serve.calibration import Calibration

        check_api(fmr=fmr, threshold=threshold)
        if threshold is not None:
            cal = Calibration.fixed(float(threshold), self.info.description)
            source = "a threshold given by the caller (threshold=...); its false-match rate is unknown"
        elif self.calibration is None:
            raise UncalibratedError(
                f"model {self.spec!r} ({self.info.kind}, sha256 {str(self.info.sha256)[:16]}) has no calibration, so "
                "no threshold is known for any false-match rate: pass threshold=T, or calibrate it on identity-"
                "labelled photos (`faceforge serve calibrate --model ... --images DIR --out cal.json`) and load it "
                "with load_model(..., calibration='cal.json')"
            )
        else:
            cal, source = self.calibration, self.calibration.source
        try:
            row = cal.threshold_for(fmr)
        except ValueError as exc:
            raise ValueError(f"{exc}; calibrated targets: {cal.fmrs()}") from None
        settings = {"model_kind": cal.model_kind, "model_sha256": cal.model_sha256}
        settings |= {k: v for k, v in (cal.settings or {}).items() if k in CALIBRATION_KEYS}
        return DecisionRule(float(row["threshold"]), row.get("fmr"), row.get("fnmr"), source, settings)

    def compare(
        self,
        a: ImageInput | Face | np.ndarray,
        b: ImageInput | Face | np.ndarray,
        *,
        fmr: float | None = None,
        threshold: float | None = None,
        colour: str | None = None,
    ) -> Comparison:
        """Compare two faces: see :func:`faceforge.compare`."""
        rule = self.rule(fmr, threshold=threshold)  # first: an uncalibrated model is refused before any work
        ea, fa = _embedding_of(self, a, colour, "a")
        eb, fb = _embedding_of(self, b, colour, "b")
        score = float(np.dot(ea, eb))
        return Comparison(score, bool(score >= rule.threshold), rule, (fa, fb))


def _calibration(desc: dict[str, Any], calibration: Any, threshold: float | None) -> Any:
    """The model's calibration: a :class:`Calibration`, a calibration file, a fixed threshold, or the packaged
    calibration of this model file (None when there is none: decisions then need a threshold)."""
    from faceforge.serve.calibration import Calibration, packaged_calibration
    from faceforge.serve.service import resolve_calibration

    if isinstance(calibration, Calibration):
        if threshold is not None:
            raise ValueError("give calibration= or threshold=, not both")
        return calibration
    if calibration is None and threshold is None:
        return packaged_calibration(desc)
    return resolve_calibration(desc, None if calibration is None else str(calibration), threshold)


def load_model(
    model: str | Path = "sface",
    *,
    device: str = "cpu",
    precision: str = "fp32",
    batch_size: int = 32,
    detector: str | Detector = "yunet",
    calibration: Any = None,
    threshold: float | None = None,
    options: Mapping[str, Any] | None = None,
) -> Model:
    """Load a model (see the module docstring for the names and files it takes).

    Args:
        model: ``"sface"``, ``"dlib"``, a ``.pt`` checkpoint, an ``.onnx`` file, or ``kind:PATH``.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available); stated, never guessed.
        precision: ``"fp32"`` (default), ``"bf16"``, ``"fp16"`` (CUDA) or ``"auto"`` for checkpoints; models
            that run in fp32 only refuse anything else.
        batch_size: faces embedded at a time (a checkpoint on a CPU passes at most ``forward_batch``, 32 by
            default, through the network at once: ``options={"forward_batch": N}``).
        detector: the detector for whole photos (a name or a :class:`Detector`).
        calibration: a calibration JSON (``faceforge serve calibrate``) or
            :class:`~faceforge.serve.calibration.Calibration` for decisions; default: the packaged one of this
            model file if there is one (SFace, dlib).
        threshold: a fixed decision threshold instead of a calibration (its FMR is unknown).
        options: the embedder's own options (e.g. ``{"mode": "resize"}`` for dlib, ``{"mean": 127.5}`` for a
            foreign ONNX file).
    """
    check_api(precision=precision, device=device, batch_size=batch_size, threshold=threshold)
    spec = str(model)
    embedder = _load_embedder(spec, device, precision, int(batch_size), dict(options or {}))
    desc = embedder.describe()
    ran = str(desc.get("precision", "fp32"))
    if precision not in ("fp32", "auto") and ran != precision:
        raise ValueError(
            f"model {spec!r} ({desc.get('kind')}) runs in {ran}, not {precision}, on {device}: this model (or "
            "device) has no such precision; pass precision='fp32'"
        )
    det = detector if isinstance(detector, Detector) else Detector(detector)
    cal = _calibration(desc, calibration, threshold)
    return Model(embedder, detector=det, calibration=cal, spec=spec, device=device, precision=precision)


def _embedding_of(model: Model, side: Any, colour: str | None, which: str) -> tuple[np.ndarray, Face | None]:
    from dataclasses import replace

    d = model.info.embedding_size
    if isinstance(side, Face):
        if side.embedding is not None:
            emb = np.asarray(side.embedding, np.float32)
            if emb.shape != (d,):
                raise ValueError(f"face {which} carries a {emb.shape} embedding; this model's are ({d},)")
            return emb / max(float(np.linalg.norm(emb)), 1e-12), side
        emb = model.embed([side])[0]
        return emb, replace(side, embedding=emb)
    if isinstance(side, np.ndarray) and side.ndim == 1:
        if side.shape != (d,):
            raise ValueError(f"embedding {which} has {side.shape[0]} values; this model's have {d}")
        emb = np.asarray(side, np.float32)
        return emb / max(float(np.linalg.norm(emb)), 1e-12), None
    faces = model.embed_photo(side, colour=colour, select="largest")
    if not faces:
        raise NoFaceError(
            f"no face found in photo {which} ({describe_input(side)}) by the {model.detector.name} detector at "
            f"min_score {model.detector.min_score}: use a photo with a visible face, or lower min_score "
            f"(load_model(..., detector=faceforge.Detector('{model.detector.name}', min_score=0.5)))"
        )
    return faces[0].embedding, faces[0]  # type: ignore[return-value]
