"""An ONNX file as an embedder, run by onnxruntime: a faceforge export or a foreign network.

* Files written by ``faceforge export-onnx`` carry their preprocessing (input size, colour order, mean/std,
  alignment) and embedding size as the ``faceforge`` metadata entry (JSON; see
  :mod:`faceforge.deploy.export_onnx`); the embedder applies exactly that
  :class:`~faceforge.data.preprocess.Preprocess`, so it matches the checkpoint embedder.
* Foreign files (e.g. insightface's ``w600k_r50.onnx``: input ``[1|N, 3, 112, 112]``, RGB,
  ``(x - 127.5) / 127.5``) have no such entry: the preprocessing comes from the options ``mean`` and
  ``std`` (in *pixel* units 0..255, a number or one per channel, as insightface's ``input_mean`` /
  ``input_std``; default 127.5 / 127.5) and ``colour`` (``"RGB"`` default, or ``"BGR"``), and the input
  size from the model's input shape (``input_size`` option, default 112, when that is dynamic).  The
  faces are ArcFace-aligned (``arcface_112``) like every faceforge input.

The network must have one float input ``[N, 3, S, S]`` (NCHW) and return ``[N, D]`` first.  A fixed batch
dimension (``1`` in many exported files) is honoured by running that many faces per call, unless
``dynamic_batch=True`` declares it free (only for graphs known not to bake the batch size in, e.g. SFace).

Graphs converted from older frameworks sometimes list weights as graph inputs (onnxruntime then sees many
inputs). :func:`repair_graph_inputs` fixes such files when they are loaded: initialisers are taken out of
the input list, and a weight input ``W`` whose dequantised copy the graph computes itself (a node output
``W_reshaped`` or ``W_dequantized``, as in OpenCV Zoo's int8 block-quantised files) is rewired to that
output and dropped; inputs no node reads are dropped too.  Any other extra input is left, and the model is
refused with a message naming it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faceforge.core.hashing import file_sha256
from faceforge.data.align import TEMPLATE_NAME
from faceforge.data.preprocess import Preprocess
from faceforge.embedders.base import EMBEDDERS

log = logging.getLogger(__name__)

METADATA_KEY = "faceforge"  # as faceforge.deploy.export_onnx.METADATA_KEY
INSIGHTFACE_MEAN = 127.5
INSIGHTFACE_STD = 127.5
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeError(
            "the 'onnx' embedder needs onnxruntime, which is not installed: pip install onnxruntime"
        ) from exc
    return onnxruntime


def _per_channel(name: str, value: float | Sequence[float]) -> tuple[float, float, float]:
    """A number or three numbers (pixel units) -> three floats."""
    vals = [float(value)] * 3 if np.isscalar(value) else [float(v) for v in value]  # type: ignore[union-attr]
    if len(vals) != 3:
        raise ValueError(f"onnx embedder option {name} must be a number or three numbers, got {value!r}")
    if name == "std" and any(v == 0 for v in vals):
        raise ValueError(f"onnx embedder option std must be non-zero, got {value!r}")
    return vals[0], vals[1], vals[2]


def _dim(d: Any) -> int | None:
    """A static ONNX dimension as int, a symbolic/unknown one as None."""
    return int(d) if isinstance(d, (int, np.integer)) and int(d) > 0 else None


def repair_graph_inputs(model: Any, dynamic_batch: bool = False) -> list[str]:
    """Repair ``model`` (an ``onnx.ModelProto``) in place so that only real inputs remain; see the module doc.

    With ``dynamic_batch`` the first dimension of the first remaining input and of every output becomes the
    symbolic ``N``.  Returns a list of what was changed (empty when nothing was).
    """
    graph = model.graph
    initialisers = {i.name for i in graph.initializer}
    produced = {o for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    changes: list[str] = []
    keep = []
    for inp in graph.input:
        name = inp.name
        if name in initialisers:
            changes.append(f"initialiser {name} removed from the inputs")
            continue
        twin = next((f"{name}{s}" for s in ("_reshaped", "_dequantized") if f"{name}{s}" in produced), None)
        if twin is not None:
            for node in consumers.get(name, []):
                for i, x in enumerate(node.input):
                    if x == name:
                        node.input[i] = twin
            changes.append(f"input {name} rewired to {twin}")
            continue
        if name not in consumers and len(graph.input) > 1:
            changes.append(f"unused input {name} dropped")
            continue
        keep.append(inp)
    if len(keep) != len(graph.input):
        del graph.input[:]
        graph.input.extend(keep)
    if dynamic_batch and graph.input:
        if len(graph.value_info):  # intermediate shapes recorded with the old batch size
            del graph.value_info[:]
            changes.append("recorded intermediate shapes dropped")
        for value in [graph.input[0], *graph.output]:
            dims = value.type.tensor_type.shape.dim
            if dims and dims[0].dim_param != "N":
                dims[0].ClearField("dim_value")
                dims[0].dim_param = "N"
                changes.append(f"batch dimension of {value.name} made dynamic")
    return changes


def _load_repaired(path: Path, dynamic_batch: bool) -> tuple[bytes, list[str]]:
    """The model file's bytes after :func:`repair_graph_inputs`, and the list of changes."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and friends on files that are not ONNX
        raise ValueError(f"{path} could not be read as an ONNX model ({type(exc).__name__}: {exc})") from None
    changes = repair_graph_inputs(model, dynamic_batch=dynamic_batch)
    return model.SerializeToString(), changes


@EMBEDDERS.register("onnx")
class OnnxEmbedder:
    """``embed(uint8 RGB aligned [N, S, S, 3]) -> float32 [N, D]`` with onnxruntime.

    Args:
        source: path of the ``.onnx`` file.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``; CUDA uses onnxruntime's CUDAExecutionProvider when the
            installed onnxruntime has it (with the CPU provider as fallback), else the CPU.
        batch_size: faces per onnxruntime call (a model with a fixed batch dimension uses that instead).
        mean, std: for files without faceforge metadata, ``x = (pixel - mean) / std`` in pixel units
            (default 127.5 and 127.5, insightface's).
        colour: for files without faceforge metadata, channel order the network expects (``RGB``, the
            default, or ``BGR``).
        input_size: for files without faceforge metadata whose input height/width is dynamic (default 112).
        dynamic_batch: treat a fixed batch dimension as free (see :func:`repair_graph_inputs`); only for
            graphs known to allow it.

        Files with faceforge metadata use the preprocessing stored in them; these four options are then
        ignored (with a warning when given).
        **ignored: other embedder options (``precision``, ...) that do not apply here.
    """

    #: why no gradient-based attack can run on this embedder, and what to attack instead
    gradient_hint = (
        "an ONNX file runs in onnxruntime, which gives no input gradients; attack the faceforge checkpoint it was "
        "exported from, or import the network as one ('faceforge import KIND FILE --out model.pt')"
    )

    def __init__(
        self,
        source: str | Path,
        device: str = "auto",
        batch_size: int = 128,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        colour: str | None = None,
        input_size: int | None = None,
        dynamic_batch: bool = False,
        **ignored: Any,
    ) -> None:
        if source in (None, ""):
            raise ValueError("the onnx embedder needs a file: '--model path/to/model.onnx' or 'onnx:PATH'")
        if ignored:
            log.debug("onnx embedder: ignoring options %s", sorted(ignored))
        ort = _require_onnxruntime()
        self.path = Path(source)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        self.batch_size = max(1, int(batch_size))
        self.providers = self._providers(ort, device)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.graph_repairs: list[str] = []
        model: str | bytes = str(self.path)
        if dynamic_batch:
            model, self.graph_repairs = _load_repaired(self.path, dynamic_batch=True)
        try:
            self.session = ort.InferenceSession(model, opts, providers=self.providers)
            if len(self.session.get_inputs()) > 1 and not self.graph_repairs:
                model, self.graph_repairs = _load_repaired(self.path, dynamic_batch=False)
                if self.graph_repairs:
                    self.session = ort.InferenceSession(model, opts, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...) on bad files
            first = (str(exc).strip().splitlines() or [""])[0]
            raise ValueError(
                f"{self.path} could not be loaded as an ONNX model ({type(exc).__name__}: {first})"
            ) from None
        if self.graph_repairs:
            log.debug("onnx embedder: %s repaired: %s", self.path.name, "; ".join(self.graph_repairs))

        self.metadata = self._read_metadata()
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ValueError(
                f"{self.path}: expected one input [N, 3, S, S], the model has {len(inputs)}: "
                + ", ".join(f"{i.name} {i.shape}" for i in inputs)
            )
        inp, out = inputs[0], outputs[0]
        self.input_name, self.output_name = inp.name, out.name
        self.input_shape = list(inp.shape)
        if inp.type not in _DTYPES:
            raise ValueError(
                f"{self.path}: input '{inp.name}' is {inp.type}, expected a float tensor [N, 3, S, S]"
            )
        self._dtype = _DTYPES[inp.type]
        shape = self.input_shape
        if len(shape) != 4 or _dim(shape[1]) not in (3, None):
            raise ValueError(
                f"{self.path}: input '{inp.name}' has shape {shape}, expected [N, 3, S, S] (NCHW, 3 colour channels)"
            )
        h, w = _dim(shape[2]), _dim(shape[3])
        if h is not None and w is not None and h != w:
            raise ValueError(
                f"{self.path}: input '{inp.name}' is {h}x{w}; only square [N, 3, S, S] inputs are supported"
            )
        static_size = h or w
        self.fixed_batch = _dim(shape[0])

        given = {
            k: v
            for k, v in (("mean", mean), ("std", std), ("colour", colour), ("input_size", input_size))
            if v is not None
        }
        if self.metadata is not None:
            if given:
                log.warning(
                    "onnx embedder: %s carries faceforge preprocessing; ignoring options %s",
                    self.path.name,
                    sorted(given),
                )
            self.preprocess = Preprocess.from_dict(self.metadata["preprocess"])
            if static_size is not None and static_size != self.preprocess.input_size:
                raise ValueError(
                    f"{self.path}: the faceforge metadata says input size {self.preprocess.input_size}, "
                    f"the graph's input is {shape}"
                )
            self.preprocess_source = "faceforge metadata"
        else:
            size = static_size or int(input_size or 112)
            if input_size is not None and static_size is not None and int(input_size) != static_size:
                raise ValueError(f"{self.path}: input_size={input_size} but the model's input is {shape}")
            m = _per_channel("mean", INSIGHTFACE_MEAN if mean is None else mean)
            s = _per_channel("std", INSIGHTFACE_STD if std is None else std)
            self.preprocess = Preprocess(
                input_size=size,
                colour=str(colour or "RGB").upper(),
                mean=tuple(v / 255.0 for v in m),  # type: ignore[arg-type]
                std=tuple(v / 255.0 for v in s),  # type: ignore[arg-type]
                alignment=TEMPLATE_NAME,
            )
            self.pixel_mean, self.pixel_std = list(m), list(s)
            self.preprocess_source = "options (no faceforge metadata)"
        self.input_size = self.preprocess.input_size

        # [N, D] (or [N, D, 1, 1] and the like, flattened): D from the static dims after the batch axis
        rest = [_dim(v) for v in (out.shape or [])[1:]]
        d = int(np.prod(rest)) if rest and all(v is not None for v in rest) else None
        if d is None and self.metadata is not None:
            d = int(self.metadata["embedding_size"])
        if d is None:  # fully dynamic output: ask the network once
            d = int(
                self._run(
                    np.zeros((self.fixed_batch or 1, 3, self.input_size, self.input_size), self._dtype)
                ).shape[1]
            )
        self.embedding_size = int(d)
        self._sha256: str | None = None

    @staticmethod
    def _providers(ort: Any, device: str) -> list[str]:
        available = ort.get_available_providers()
        want_cuda = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if str(device).startswith("cuda") and "CUDAExecutionProvider" not in available:
            log.warning(
                "onnx embedder: device=%s but onnxruntime has no CUDA provider; running on the CPU", device
            )
        if want_cuda and "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _read_metadata(self) -> dict[str, Any] | None:
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            return None
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{self.path}: the '{METADATA_KEY}' metadata entry is not valid JSON ({exc})"
            ) from None
        if not isinstance(meta, dict) or "preprocess" not in meta:
            raise ValueError(f"{self.path}: the '{METADATA_KEY}' metadata entry has no 'preprocess'")
        return meta

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: x.astype(self._dtype, copy=False)})[0]
        return np.asarray(out).reshape(len(x), -1).astype(np.float32, copy=False)

    def embed(self, faces: np.ndarray) -> np.ndarray:
        faces = np.asarray(faces)
        s = self.input_size
        if faces.ndim != 4 or faces.shape[1:] != (s, s, 3) or faces.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 RGB aligned faces [N, {s}, {s}, 3] for {self.path.name}, "
                f"got {faces.dtype} {list(faces.shape)}"
            )
        n = len(faces)
        out = np.zeros((n, self.embedding_size), dtype=np.float32)
        step = self.fixed_batch or self.batch_size
        for i in range(0, n, step):
            chunk = faces[i : i + step]
            x = self.preprocess(torch.from_numpy(np.ascontiguousarray(chunk))).contiguous().numpy()
            k = len(chunk)
            if self.fixed_batch and k < self.fixed_batch:  # pad the last call of a fixed-batch model
                x = np.concatenate([x, np.zeros((self.fixed_batch - k, *x.shape[1:]), x.dtype)])
            emb = self._run(x)[:k]
            if emb.shape[1] != self.embedding_size:
                raise ValueError(
                    f"{self.path}: output '{self.output_name}' has {emb.shape[1]} values per face, "
                    f"expected {self.embedding_size}"
                )
            out[i : i + k] = emb
        return out

    def describe(self) -> dict[str, Any]:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        pre = self.preprocess.to_dict()
        if self.metadata is None:
            pre["pixel_mean"], pre["pixel_std"] = self.pixel_mean, self.pixel_std
        desc: dict[str, Any] = {
            "kind": "onnx",
            "path": str(self.path),
            "sha256": self._sha256,
            "embedding_size": self.embedding_size,
            "input_name": self.input_name,
            "input_shape": [d if isinstance(d, int) else str(d) for d in self.input_shape],
            "output_name": self.output_name,
            "preprocess": pre,
            "preprocess_source": self.preprocess_source,
        }
        if self.graph_repairs:
            desc["graph_repairs"] = len(self.graph_repairs)
        if self.metadata is not None and isinstance(self.metadata.get("predicts"), str):
            desc["predicts"] = self.metadata["predicts"]
        if self.metadata is not None:
            desc["export"] = {
                k: self.metadata.get(k)
                for k in ("backbone", "checkpoint", "exporter", "opset", "faceforge_version", "torch_version")
                if k in self.metadata
            }
        return desc
