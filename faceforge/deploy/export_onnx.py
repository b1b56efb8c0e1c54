"""Export the backbone of a faceforge checkpoint to ONNX, with its preprocessing, checked by onnxruntime.

The ONNX graph takes ``input``: float32 ``[N, 3, S, S]`` (NCHW) *already preprocessed* and returns
``embedding``: float32 ``[N, D]``, not normalised; the batch axis is dynamic unless a fixed batch is asked
for.  Everything needed to turn aligned uint8 faces into ``input`` travels in the file as the ONNX
``metadata_props`` entry ``faceforge`` (a JSON string)::

    {"format": "faceforge-onnx", "version": 1, "embedding_size": D,
     "preprocess": {"input_size": S, "colour": "RGB", "mean": [...], "std": [...],
                    "alignment": "arcface_112", "formula": "x = (pixel/255 - mean) / std, ..."},
     "input": {...}, "output": {...}, "backbone": {...}, "checkpoint": {...}, versions, exporter, opset,
     "predicts": what the output is (copied from the checkpoint's metadata when it says)}

:class:`faceforge.embedders.onnx_model.OnnxEmbedder` reads it back and applies exactly the same
:class:`~faceforge.data.preprocess.Preprocess` as the checkpoint embedder.

The file is written to a temporary file beside the target, checked (``onnx.checker`` and a comparison of
onnxruntime against PyTorch on a random batch), and only then renamed over the target: a failed export
or verification never leaves a file at ``out``.

Exporters: ``dynamo`` (default; ``torch.onnx.export(..., dynamo=True)``, the torch.export-based exporter,
needs ``onnxscript``) or ``torchscript`` (the legacy tracing exporter, ``dynamo=False``; faster, deprecated
by PyTorch).  Both give the same numbers on faceforge backbones.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faceforge.core.finite import ModelOutputError
from faceforge.core.hashing import file_sha256
from faceforge.core.options import check_api
from faceforge.core.rules import OptionError
from faceforge.core.version import __version__
from faceforge.data.preprocess import Preprocess

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_OPSET",
    "EXPORTERS",
    "INPUT_NAME",
    "METADATA_FORMAT",
    "METADATA_KEY",
    "OUTPUT_NAME",
    "ExportReport",
    "export_onnx",
    "verify_onnx",
]

METADATA_KEY = "faceforge"
METADATA_FORMAT = "faceforge-onnx"
METADATA_VERSION = 1
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
DEFAULT_OPSET = 18
EXPORTERS = ("dynamo", "torchscript")
#: the opsets each exporter writes (torch 2.13: the dynamo exporter from 18, the TorchScript one up to 20)
OPSETS = {"dynamo": (18, 23), "torchscript": (7, 20)}
#: batch size of the example input traced for a dynamic batch axis (not 0 or 1, which torch.export specialises)
_EXAMPLE_BATCH = 2
#: batches compared against PyTorch after export (two sizes, so a dynamic axis is exercised)
_VERIFY_BATCHES = (3, 1)


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how well onnxruntime reproduces PyTorch on it."""

    path: Path
    sha256: str
    exporter: str
    opset: int
    batch: str | int
    embedding_size: int
    input_size: int
    max_abs_diff: float
    max_abs_embedding: float
    tolerance: float
    verified_faces: int
    metadata: dict[str, Any] = field(default_factory=dict)


def _parse_batch(batch: str | int) -> str | int:
    if isinstance(batch, str) and batch.strip().lower() == "dynamic":
        return "dynamic"
    try:
        n = int(batch)
    except (TypeError, ValueError):
        raise ValueError(f"batch must be 'dynamic' or a positive integer, got {batch!r}") from None
    if n < 1:
        raise ValueError(f"batch must be 'dynamic' or a positive integer, got {batch!r}")
    return n


def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise RuntimeError(
            f"ONNX export needs the onnx and onnxruntime packages ({exc}): pip install onnx onnxruntime onnxscript"
        ) from exc
    return onnx, onnxruntime


@contextlib.contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    """Quieten the exporters' loggers: onnxscript's optimiser logs every rewrite at INFO, and torch.onnx warns
    that torchvision is not installed (its operators are not needed here)."""
    floors = {
        "onnxscript": logging.WARNING,
        "onnx_ir": logging.WARNING,
        "torch.onnx": logging.WARNING,
        "torch.onnx._internal.exporter._registration": logging.ERROR,
    }
    saved = {name: logging.getLogger(name).level for name in floors}
    for name, floor in floors.items():
        lg = logging.getLogger(name)
        lg.setLevel(max(lg.getEffectiveLevel(), floor))
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _export_proto(
    model: torch.nn.Module, example: torch.Tensor, dynamic: bool, opset: int, exporter: str
) -> Any:
    """Run the chosen torch.onnx exporter and return the ``onnx.ModelProto`` (weights inside, no external data)."""
    import onnx

    with warnings.catch_warnings(), _quiet_exporter_logs():
        # the legacy exporter announces its deprecation, and tracing warns about the backbones' input-shape
        # check (a Python bool on a tensor shape): both expected; the numbers are checked after export
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if exporter == "dynamo":
            try:
                import onnxscript  # noqa: F401
            except ImportError as exc:
                raise RuntimeError(
                    "the dynamo ONNX exporter needs onnxscript: pip install onnxscript "
                    "(or use --exporter torchscript)"
                ) from exc
            program = torch.onnx.export(
                model,
                (example,),
                None,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},) if dynamic else None,
                optimize=True,
                verbose=False,
            )
            return program.model_proto
        buf = io.BytesIO()
        torch.onnx.export(
            model,
            (example,),
            buf,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=False,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic else None,
            do_constant_folding=True,
        )
        return onnx.load_from_string(buf.getvalue())


def verify_onnx(
    path: str | Path,
    model: torch.nn.Module,
    preprocess: Preprocess,
    batches: tuple[int, ...] = _VERIFY_BATCHES,
    seed: int = 0,
) -> tuple[float, float, int]:
    """Run random uint8 faces through ``preprocess`` and both ``model`` and the ONNX file (onnxruntime, CPU).

    Returns ``(max abs difference, max |embedding| from PyTorch, number of faces)``.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    s = preprocess.input_size
    diff, scale, n = 0.0, 0.0, 0
    for b in batches:
        faces = rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8)
        x = preprocess(torch.from_numpy(faces)).contiguous()
        with torch.inference_mode():
            ref = model(x).float().numpy()
        out = sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if out.shape != ref.shape:
            raise RuntimeError(f"ONNX output has shape {list(out.shape)}, PyTorch {list(ref.shape)}")
        if not (
            np.isfinite(ref).all() and np.isfinite(out).all()
        ):  # NaN - NaN would compare as "no difference"
            which = "PyTorch" if not np.isfinite(ref).all() else "onnxruntime"
            raise ModelOutputError(f"{path}: {which} gives NaN or infinite embeddings on random faces")
        diff = max(diff, float(np.abs(out.astype(np.float32) - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
        n += b
    return diff, scale, n


def _atomic_write_bytes(data: bytes, target: Path) -> Path:
    """Write ``data`` to a fsynced temporary file beside ``target`` and return the temporary path."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; the model is an ordinary artefact
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    opset: int = DEFAULT_OPSET,
    batch: str | int = "dynamic",
    exporter: str = "dynamo",
    tolerance: float = 1e-3,
    seed: int = 0,
) -> ExportReport:
    """Export the backbone of ``checkpoint`` (``model.pt`` / ``last.pt``) to ``out`` and verify it.

    ``tolerance`` bounds the max abs difference between onnxruntime and PyTorch embeddings on random faces,
    scaled by the embeddings' magnitude when that exceeds 1 (untrained networks can output values in the
    thousands, where fp32 rounding alone exceeds any fixed absolute bound): the export fails with a
    RuntimeError, and leaves no file, when ``max_abs_diff > tolerance * max(1, max |embedding|)``.
    """
    from faceforge.core.checkpoint import check_model_meta, load_checkpoint
    from faceforge.embedders.checkpoint import backbone_from_checkpoint

    onnx, ort = _require_onnx()
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    check_api(opset=opset, tolerance=tolerance, batch=batch)
    low, high = OPSETS[exporter]
    if not low <= opset <= high:
        raise OptionError(f"opset={opset} must be in [{low}, {high}] with the {exporter} exporter")
    batch = _parse_batch(batch)
    dynamic = batch == "dynamic"
    ckpt_path, target = Path(checkpoint), Path(out)
    if target.suffix.lower() != ".onnx":
        raise ValueError(f"the output file should end in .onnx, got {target}")

    ckpt = load_checkpoint(ckpt_path)
    check_model_meta(ckpt, ckpt_path, require=True)
    meta = ckpt["meta"]
    preprocess = Preprocess.from_dict(meta["preprocess"])
    model = backbone_from_checkpoint(ckpt, ckpt_path).float().eval()
    embedding_size = int(meta["embedding_size"])
    s = preprocess.input_size
    example = torch.zeros(_EXAMPLE_BATCH if dynamic else int(batch), 3, s, s)
    with torch.inference_mode():  # a model with NaN weights is refused before the (slow) export
        probe = model(preprocess(torch.full((1, s, s, 3), 128, dtype=torch.uint8))).float()
    if not torch.isfinite(probe).all():
        raise ModelOutputError(
            f"{ckpt_path}: the model gives NaN or infinite embeddings (its weights are broken); nothing exported"
        )

    log.info(
        "exporting %s (%s) with the %s exporter, opset %d",
        ckpt_path,
        meta["backbone"]["name"],
        exporter,
        opset,
    )
    proto = _export_proto(model, example, dynamic, opset, exporter)
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    metadata: dict[str, Any] = {
        "format": METADATA_FORMAT,
        "version": METADATA_VERSION,
        "embedding_size": embedding_size,
        "preprocess": preprocess.to_dict(),
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch" if dynamic else int(batch), 3, s, s],
            "dtype": "float32",
            "layout": "NCHW, already preprocessed (see preprocess)",
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch" if dynamic else int(batch), embedding_size],
            "normalised": False,
        },
        "backbone": meta["backbone"],
        "checkpoint": {"name": ckpt_path.name, "sha256": file_sha256(ckpt_path)},
        **({"predicts": meta["predicts"]} if isinstance(meta.get("predicts"), str) else {}),
        "faceforge_version": __version__,
        "torch_version": str(torch.__version__),
        "exporter": exporter,
        "opset": int(opset_used),
    }
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, sort_keys=True)
    onnx.checker.check_model(proto)

    tmp = _atomic_write_bytes(proto.SerializeToString(), target)
    try:
        diff, scale, n = verify_onnx(
            tmp, model, preprocess, _VERIFY_BATCHES if dynamic else (int(batch),), seed
        )
        bound = tolerance * max(1.0, scale)
        if not np.isfinite(diff) or diff > bound:
            raise RuntimeError(
                f"ONNX export of {ckpt_path} does not reproduce PyTorch: max abs diff {diff:.3g} on {n} random "
                f"faces exceeds {bound:.3g} (tolerance {tolerance:g} x max(1, max |embedding| {scale:.3g})); "
                "no file written"
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.debug("onnxruntime %s: max abs diff %.3g on %d faces", ort.__version__, diff, n)
    return ExportReport(
        path=target,
        sha256=file_sha256(target),
        exporter=exporter,
        opset=int(opset_used),
        batch=batch,
        embedding_size=embedding_size,
        input_size=s,
        max_abs_diff=diff,
        max_abs_embedding=scale,
        tolerance=bound,
        verified_faces=n,
        metadata=metadata,
    )
