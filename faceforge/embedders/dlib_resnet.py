"""dlib's 128-d ResNet face descriptor as an embedder (a real pretrained reference model and teacher).

Needs the optional extra: ``pip install dlib-bin face-recognition-models`` (``pip install faceforge[dlib]``).
This module imports without them; building the embedder raises a clear error when they are missing.

Input and alignment.  faceforge hands every embedder ArcFace-aligned 112x112 RGB faces, while dlib's
network was trained on 150x150 "chips" cut by ``dlib.get_face_chip`` from dlib's own 5-point landmarks
(eye corners and the bottom of the nose) with 25 % padding, a closer crop than ArcFace's.  Two ways
to bridge that, both available here (``mode``):

* ``"landmarks"`` (default): pad the aligned face with a replicated border (``border`` x size on each
  side, default 0.25) so the part of dlib's crop outside the aligned face (below the chin) is not
  black, run dlib's 5-point shape predictor with the face box dlib's own detector finds on the
  aligned face (``box``; the predictor was trained on such boxes), and let
  ``compute_face_descriptor(img, shape)`` cut the chip itself, exactly as dlib does on raw photos.
* ``"resize"``: resize the 112x112 crop to 150x150 and feed it as a chip directly.  Cheaper, but
  the face appears smaller and placed differently than in dlib's training chips.
* ``"template"``: warp the aligned face onto dlib's chip with one fixed similarity transform
  (:data:`faceforge.models.backbones.dlib_resnet.ARCFACE112_TO_CHIP150`, border pixels repeated): exactly the
  chips the imported network (``faceforge import dlib``, ``input=arcface112``) cuts inside itself, so the two
  can be compared on identical input. No landmarks, no detector.
* ``"photo"``: the input is the unaligned photo (e.g. LFW's 250x250 images, with
  ``input_size=250``) and dlib does everything itself, as ``face_recognition.face_encodings``
  does: frontal detector with ``upsample`` pyramid up-samplings (default 1), the detection nearest
  the image centre (LFW centres the named person), 5-point predictor, 150 px chip with 0.25
  padding.  When the detector finds nothing, a centred box of :data:`PHOTO_FALLBACK_BOX` is used and
  counted in ``detector_misses``.  This is dlib's own pipeline, for comparing with numbers obtained
  by running dlib directly.

Measured on the first 50 matched + first 50 mismatched LFW DevTest pairs (169 faces, MTCNN
landmarks, ArcFace alignment, no flip, pairs shuffled with seed 0 before 10 folds):

=====================  =================  ======  =====  ========================
mode                   10-fold accuracy   AUC     EER    mean cos genuine/impostor
=====================  =================  ======  =====  ========================
landmarks, border .25  99.0 +- 3.0 %      1.000   0 %    0.957 / 0.841
landmarks, border 0    99.0 +- 3.0 %      1.000   0 %    0.956 / 0.841
resize                 83.0 +- 18.5 %     0.926   18 %   0.955 / 0.913
=====================  =================  ======  =====  ========================

On all 1,000 pairs of pairsDevTest (no flip, insightface 10-fold): 98.3 % with ``box="detect"``,
96.5 % with ``box="crop"`` (the whole aligned crop as the predictor's box), and 98.1 % for faces aligned
at 224 px instead of 112; ``mode="photo"`` (dlib's own detector, predictor and chip on the raw
160 px LFW crops, ``input_size=160``) gives 98.8 %; a plain script that calls dlib directly gets 98.6 %
with its own threshold rule and 98.8 % with insightface's grid (``tests/eval/test_dlib_parity.py``).

dlib's chip is a closer crop than ArcFace's 112 crop, so the plain resize shows the network a
smaller face than it was trained on.  Without a border the chip's lower edge (chin) falls outside
the aligned crop and is black; the replicated border fills it, at equal accuracy on this subset.

All cores: dlib's network computes on one core, so the embedder runs chunks of ``batch_size`` faces in one
worker process per core (``workers``, default all cores; :class:`faceforge.core.workers.ProcessPool`) when a
call holds more than one chunk. Every chunk is the same ``batch_size`` faces whatever the number of workers,
so the embeddings equal those of one process (``workers=1``, tested).

The model files come from the ``face_recognition_models`` package, located without importing it (its ``__init__`` needs ``pkg_resources``, which recent setuptools removed).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from faceforge.core.hashing import file_sha256
from faceforge.core.workers import ProcessPool, resolve_workers, worker_tool
from faceforge.embedders.base import EMBEDDERS
from faceforge.models.backbones.dlib_resnet import ARCFACE112_TO_CHIP150

INSTALL_HINT = "pip install dlib-bin face-recognition-models   (or: pip install 'faceforge[dlib]')"
MODES = ("landmarks", "resize", "template", "photo")
BOXES = ("detect", "fixed", "crop")
#: where dlib's frontal detector puts the face box on an ArcFace-aligned crop, as fractions of its
#: size (x0, y0, x1, y1): measured on LFW DevTest faces, about (8, 28)-(98, 115) at 112 px
ALIGNED_FACE_BOX = (8 / 112, 28 / 112, 98 / 112, 115 / 112)
#: ``mode="photo"`` fallback when the detector finds no face: a centred box, as fractions of the
#: photo (x0, y0, x1, y1): the median of dlib's detections on the 160 px LFW crops of pairsDevTest
PHOTO_FALLBACK_BOX = (0.125, 0.2, 0.79, 0.875)
CHIP_SIZE = 150
CHIP_PADDING = 0.25


def _require_dlib() -> Any:
    try:
        import dlib
    except ImportError as exc:
        raise RuntimeError(f"the 'dlib' embedder needs dlib, which is not installed: {INSTALL_HINT}") from exc
    return dlib


def models_folder() -> Path:
    """The ``models`` folder of the installed face_recognition_models package (found without importing it)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"dlib's models need the face_recognition_models package, which is not installed: {INSTALL_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def model_files() -> dict[str, Path]:
    """Paths of dlib's recognition network and 5-point shape predictor inside face_recognition_models."""
    models = models_folder()
    files = {
        "recognition": models / "dlib_face_recognition_resnet_model_v1.dat",
        "shape_predictor_5": models / "shape_predictor_5_face_landmarks.dat",
    }
    for f in files.values():
        if not f.is_file():
            raise RuntimeError(f"dlib model file missing: {f}; reinstall with: {INSTALL_HINT}")
    return files


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@EMBEDDERS.register("dlib")
class DlibResNetEmbedder:
    """``embed(uint8 RGB aligned [N, 112, 112, 3]) -> float32 [N, 128]`` with dlib's ResNet.

    Args:
        source: ignored (``--model dlib`` passes ``None``); accepted so the registry can build it.
        mode: ``"landmarks"`` or ``"resize"`` (module docstring).
        box: face box for the 5-point predictor in ``landmarks`` mode: ``"detect"`` (dlib's detector on
            the aligned face, typical box as fallback), ``"fixed"`` or ``"crop"`` (see :meth:`_box`).
        border: replicated border added around the face in ``landmarks`` mode, as a fraction of its size.
        input_size: side of the (aligned, or in ``photo`` mode raw) square images accepted (default 112).
        upsample: ``photo`` mode: how many times dlib's detector up-samples the photo (default 1, as
            ``face_recognition``).
        batch_size: faces per dlib call (and per chunk a worker process embeds).
        workers: processes that embed chunks in parallel (0: one per core; 1: this process only).
        device, precision: accepted for CLI compatibility; dlib runs on the CPU in fp32.
    """

    embedding_size = 128
    #: why no gradient-based attack can run on this embedder, and what to attack instead
    gradient_hint = (
        "dlib runs in its C++ runtime, which gives no input gradients; import it as a faceforge checkpoint "
        "('faceforge import dlib --out dlib.pt') and attack --model dlib.pt"
    )

    def __init__(
        self,
        source: str | None = None,
        mode: str = "landmarks",
        border: float = 0.25,
        input_size: int = 112,
        batch_size: int = 32,
        device: str = "auto",
        precision: str = "fp32",
        box: str = "detect",
        upsample: int = 1,
        workers: int = 0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"dlib embedder mode must be one of {MODES}, got {mode!r}")
        if box not in BOXES:
            raise ValueError(f"dlib embedder box must be one of {BOXES}, got {box!r}")
        self.box = box
        if source not in (None, "", "default"):
            raise ValueError(f"the dlib embedder takes no model path (got {source!r}); use '--model dlib'")
        self._dlib = _require_dlib()
        self.files = model_files()
        self.mode = mode
        self.border = float(border)
        self.input_size = int(input_size)
        self.batch_size = int(batch_size)
        self.net = self._dlib.face_recognition_model_v1(str(self.files["recognition"]))
        self.predictor = self._dlib.shape_predictor(str(self.files["shape_predictor_5"]))
        self.upsample = int(upsample)
        needs_detector = mode == "photo" or (mode == "landmarks" and box == "detect")
        self._detector = self._dlib.get_frontal_face_detector() if needs_detector else None
        #: ``photo`` mode: photos on which the detector found no face (the fallback box was used)
        self.detector_misses = 0
        self._sha: dict[str, str] | None = None
        self.workers = resolve_workers(workers)
        self._pool: ProcessPool | None = None
        self._options = {"mode": mode, "border": self.border, "input_size": self.input_size}
        self._options |= {"batch_size": self.batch_size, "box": box, "upsample": self.upsample, "workers": 1}

    def _box(self, img: np.ndarray, pad: int, w: int, h: int) -> Any:
        """The face box handed to the 5-point predictor, in the bordered image.

        The predictor was trained on boxes from dlib's frontal detector, which on an ArcFace-aligned
        crop sits lower and tighter than the crop itself.  ``box="detect"`` runs that detector on the
        bordered face and keeps the detection nearest the centre, falling back to the typical box;
        ``box="fixed"`` always uses the typical box (:data:`ALIGNED_FACE_BOX`, measured on LFW).
        ``box="crop"`` (the behaviour before this option) hands over the whole crop: measured on
        pairsDevTest without flip, 96.5 % against 98.2 % with the detector box.
        """
        if self.box == "crop":
            return self._dlib.rectangle(pad, pad, pad + w - 1, pad + h - 1)
        if self.box == "detect":
            dets = list(self._detector(img, 0))
            if dets:
                cx, cy = pad + w / 2, pad + h / 2
                d = min(dets, key=lambda r: (r.center().x - cx) ** 2 + (r.center().y - cy) ** 2)
                return d
        x0, y0, x1, y1 = ALIGNED_FACE_BOX
        return self._dlib.rectangle(
            pad + round(x0 * w), pad + round(y0 * h), pad + round(x1 * w), pad + round(y1 * h)
        )

    def _bordered(self, face: np.ndarray) -> tuple[np.ndarray, int]:
        h, w = face.shape[:2]
        pad = round(self.border * max(h, w))
        img = cv2.copyMakeBorder(face, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else face
        return np.ascontiguousarray(img), pad

    def _photo_box(self, img: np.ndarray) -> Any:
        """``photo`` mode: dlib's detection nearest the photo centre, else the centred fallback box."""
        h, w = img.shape[:2]
        dets = list(self._detector(img, self.upsample))
        if dets:
            return min(dets, key=lambda r: (r.center().x - w / 2) ** 2 + (r.center().y - h / 2) ** 2)
        self.detector_misses += 1
        x0, y0, x1, y1 = PHOTO_FALLBACK_BOX
        return self._dlib.rectangle(round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h))

    def _prepare(self, face: np.ndarray) -> tuple[np.ndarray, Any]:
        if self.mode == "photo":
            img = np.ascontiguousarray(face)
            return img, self.predictor(img, self._photo_box(img))
        if self.mode == "resize":
            chip = cv2.resize(face, (CHIP_SIZE, CHIP_SIZE), interpolation=cv2.INTER_CUBIC)
            return np.ascontiguousarray(chip), None
        if self.mode == "template":
            chip = cv2.warpAffine(
                face,
                np.asarray(ARCFACE112_TO_CHIP150, np.float64),
                (CHIP_SIZE, CHIP_SIZE),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REPLICATE,
            )
            return np.ascontiguousarray(chip), None
        h, w = face.shape[:2]
        img, pad = self._bordered(face)
        return img, self.predictor(img, self._box(img, pad, w, h))

    def landmarks(self, faces: np.ndarray) -> np.ndarray:
        """dlib's 5 points ``[N, 5, 2]`` found on the (bordered) faces, in the faces' own coordinates."""
        out = np.zeros((len(faces), 5, 2), dtype=np.float32)
        for i, face in enumerate(faces):
            h, w = face.shape[:2]
            img, pad = self._bordered(face)
            shape = self.predictor(img, self._box(img, pad, w, h))
            out[i] = [(shape.part(j).x - pad, shape.part(j).y - pad) for j in range(5)]
        return out

    def _embed_chunk(self, chunk: np.ndarray) -> np.ndarray:
        """dlib's descriptors of one chunk of at most ``batch_size`` faces, in this process."""
        prepared = [self._prepare(f) for f in chunk]
        if self.mode in ("resize", "template"):
            desc = self.net.compute_face_descriptor([img for img, _ in prepared])
        else:
            dets = []
            for _, shape in prepared:
                d = self._dlib.full_object_detections()
                d.append(shape)
                dets.append(d)
            desc = [
                v[0]
                for v in self.net.compute_face_descriptor([img for img, _ in prepared], dets, 0, CHIP_PADDING)
            ]
        return np.asarray([np.asarray(v) for v in desc], dtype=np.float32).reshape(-1, self.embedding_size)

    def _embed_chunks(self, chunks: list[np.ndarray]) -> list[np.ndarray]:
        """Every chunk's descriptors, in order: in the worker processes when there is more than one chunk."""
        if self.workers <= 1 or len(chunks) <= 1:
            return [self._embed_chunk(c) for c in chunks]
        if self._pool is None:
            self._pool = ProcessPool(self.workers, DlibResNetEmbedder, self._options)
        out = []
        for emb, misses in self._pool.map(_worker_embed_chunk, chunks):
            out.append(emb)
            self.detector_misses += misses
        return out

    def _split(self, faces: np.ndarray) -> list[np.ndarray]:
        faces = np.asarray(faces)
        if faces.ndim != 4 or faces.shape[-1] != 3 or faces.dtype != np.uint8:
            raise ValueError(f"expected uint8 RGB faces [N, H, W, 3], got {faces.dtype} {faces.shape}")
        return [faces[i : i + self.batch_size] for i in range(0, len(faces), self.batch_size)]

    def embed(self, faces: np.ndarray) -> np.ndarray:
        chunks = self._split(faces)
        if not chunks:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        return np.concatenate(self._embed_chunks(chunks))

    def embed_flip_sum(self, faces: np.ndarray) -> np.ndarray:
        """``embed(x) + embed(mirror(x))``, both halves' chunks handed to the workers at once."""
        chunks = self._split(faces)
        if not chunks:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        mirrored = [np.ascontiguousarray(c[:, :, ::-1]) for c in chunks]
        done = self._embed_chunks(chunks + mirrored)
        return np.concatenate(done[: len(chunks)]) + np.concatenate(done[len(chunks) :])

    def close(self) -> None:
        """Stop the worker processes (started on the first call with more than one chunk)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.close()

    def describe(self) -> dict[str, Any]:
        if self._sha is None:
            self._sha = {k: file_sha256(p) for k, p in self.files.items()}
        return {
            "kind": "dlib",
            "network": "dlib_face_recognition_resnet_model_v1 (ResNet-29, 128-d)",
            "sha256": self._sha["recognition"],
            "shape_predictor_sha256": self._sha["shape_predictor_5"]
            if self.mode in ("landmarks", "photo")
            else None,
            "packages": {
                "dlib": getattr(self._dlib, "__version__", None),
                "dlib-bin": _version("dlib-bin"),
                "face-recognition-models": _version("face-recognition-models"),
            },
            "embedding_size": self.embedding_size,
            "mode": self.mode,
            "box": self.box if self.mode == "landmarks" else None,
            "border": self.border if self.mode == "landmarks" else None,
            "upsample": self.upsample if self.mode == "photo" else None,
            "preprocess": {
                "alignment": "none (dlib detector on the photo)" if self.mode == "photo" else "arcface_112",
                "colour": "RGB",
                "input_size": self.input_size,
                "dlib_chip": {
                    "landmarks": f"5-point shape predictor on the aligned face (+{self.border:g} replicated "
                    f"border), dlib chip {CHIP_SIZE}px, padding {CHIP_PADDING}",
                    "resize": f"aligned face resized to {CHIP_SIZE}x{CHIP_SIZE} (bicubic) and used as the chip",
                    "template": f"aligned face warped to a {CHIP_SIZE}px chip by the fixed ArcFace-112 -> dlib chip "
                    f"transform {ARCFACE112_TO_CHIP150} (bilinear, border replicated)",
                    "photo": f"frontal detector (upsample {self.upsample}, detection nearest the centre), "
                    f"5-point shape predictor, dlib chip {CHIP_SIZE}px, padding {CHIP_PADDING}",
                }[self.mode],
            },
            "path": str(self.files["recognition"]),
        }


def _worker_embed_chunk(chunk: np.ndarray) -> tuple[np.ndarray, int]:
    """In a worker process: the chunk's descriptors and how many photos fell back to the default box."""
    emb: DlibResNetEmbedder = worker_tool()
    before = emb.detector_misses
    return emb._embed_chunk(chunk), emb.detector_misses - before
