"""``faceforge import onnx FILE --out model.pt``: an ONNX recognition graph as a trainable faceforge checkpoint.

Two outcomes, tried in this order:

1. **faceforge's own architectures** (iresnet18/34/50/100/200, the SE variants, MobileFaceNet at scale 1/2/4;
   or whatever backbone a faceforge export's metadata names): insightface model-zoo files such as
   ``w600k_r50.onnx`` and ``faceforge export-onnx`` files load into faceforge's modules, tensors matched by graph
   structure, not by name (:mod:`.onnx_structure`); BatchNorms an exporter folded into the preceding Conv
   become exact identity-plus-bias layers, and the notes say how many;
2. **any other recognition graph** (one ``[N, 3, S, S]`` input, one ``[N, D]`` output; OpenCV Zoo's int8 SFace
   included, its weights dequantised) becomes the ``onnx_graph`` backbone
   (:mod:`faceforge.models.backbones.onnx_graph`), converted by :mod:`.onnx_convert`.

Either way the result is checked against onnxruntime running the original file on random faces before it is
returned (max abs difference at most ``1e-3 * max(1, max |embedding|)``, as ``faceforge export-onnx`` checks its
files; where onnxruntime cannot run the file, a structural match is checked against the converted graph and
the notes say so); a structural match that fails the check falls back to ``onnx_graph``, and a converted graph
that fails it is refused. ``meta.source.verified`` records the numbers.

**Why the converter is written here.** The maintained converters (onnx2torch 1.5.15, onnx2pytorch 0.6.0) import
torchvision when the package is imported (for their NonMaxSuppression / RoiAlign / DeformConv converters), and
PyPI's torchvision does not load beside this project's pinned CPU torch: 0.28.0 (the release for torch 2.13.0)
links ``libc10_cuda.so`` and fails with ``operator torchvision::nms does not exist``; later releases require a
newer torch. Recognition graphs need a few dozen operators: :mod:`.onnx_handlers` implements 55.

**Preprocessing** (``meta.preprocess``; faceforge's formula ``x = (pixel/255 - mean) / std``): a faceforge export
carries its own; SFace (known by its SHA-256) takes BGR pixels 0..255 (mean 0, std 1/255: its graph normalises
itself); any other file takes ``--option colour=RGB|BGR mean=M std=S`` in pixel units (a number or three;
insightface's defaults RGB, 127.5, 127.5), recorded with the file's name, SHA-256 and licence in ``meta.source``.

Options: ``colour``, ``mean``, ``std``, ``input_size`` (for graphs whose spatial size is free; default 112),
``alignment`` (default ``arcface_112``), ``backbone`` (``auto``; ``onnx_graph`` skips the structural match; a
backbone name insists on it), ``licence`` (recorded for files faceforge does not know).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faceforge.core.checkpoint import check_model_meta
from faceforge.core.hashing import file_sha256
from faceforge.core.model_files import SFACE_ARCHIVE
from faceforge.data.align import TEMPLATE_NAME
from faceforge.data.preprocess import Preprocess
from faceforge.importers.base import IMPORTERS, ImportedModel, ModelImportError
from faceforge.importers.onnx_convert import Converted, convert_graph
from faceforge.importers.onnx_read import OnnxFile, read_onnx
from faceforge.importers.onnx_structure import MatchError, map_onto
from faceforge.models.backbones import BACKBONES, build_backbone

log = logging.getLogger(__name__)

__all__ = ["KNOWN_FILES", "import_onnx"]

CONVERTER = "faceforge.importers.onnx_net (hand-written ONNX reader; see its docstring)"
#: files faceforge knows by SHA-256: name, licence and the preprocessing their graph expects
KNOWN_FILES: dict[str, dict[str, Any]] = {
    sha: {
        "network": "OpenCV Zoo SFace (face_recognition_sface_2021dec_int8bq, 128-d, int8 block-quantised)",
        "licence": "Apache-2.0",
        "preprocess": {"colour": "BGR", "mean": [0.0, 0.0, 0.0], "std": [1 / 255.0] * 3},
        "preprocess_source": "known file (SFace: BGR pixels 0..255, the graph normalises itself)",
    }
    for sha in SFACE_ARCHIVE.members.values()
}
OPTIONS = ("colour", "mean", "std", "input_size", "alignment", "backbone", "licence")
INSIGHTFACE_PIXEL_MEAN = 127.5
INSIGHTFACE_PIXEL_STD = 127.5
VERIFY_FACES = 2


def _three(path: Path, name: str, value: Any) -> list[float]:
    vals = value if isinstance(value, list | tuple) else [value] * 3
    try:
        out = [float(v) for v in vals]
    except (TypeError, ValueError):
        out = []
    if len(out) != 3 or (name == "std" and any(v == 0 for v in out)):
        raise ModelImportError(
            f"{path}: --option {name}={value!r} must be a number or three numbers (pixel units{', non-zero' if name == 'std' else ''})"
        )
    return out


def _preprocess(
    f: OnnxFile, sha: str, options: dict[str, Any], notes: list[str]
) -> tuple[dict[str, Any], str, int]:
    """(preprocess dict, where it came from, input size); every field checked (a file's metadata is not trusted)."""
    try:
        pre, source = _choose_preprocess(f, sha, options, notes)
        check_model_meta({"meta": {"preprocess": pre}, "backbone": {}}, f.path)
    except (TypeError, ValueError, KeyError) as exc:
        if isinstance(exc, ModelImportError):
            raise
        raise ModelImportError(
            f"{f.path}: its preprocessing cannot be used ({exc}); give --option colour/mean/std/input_size"
        ) from None
    size = int(pre["input_size"])
    static = f.input_shape[2] or f.input_shape[3]
    if static is not None and static != size:
        raise ModelImportError(
            f"{f.path}: the graph's input is {f.input_shape} but the preprocessing says {size} px"
        )
    if "input_size" in options and int(options["input_size"]) != size:
        raise ModelImportError(
            f"{f.path}: --option input_size={options['input_size']} but the model's input is {size} px"
        )
    return pre, source, size


def _choose_preprocess(
    f: OnnxFile, sha: str, options: dict[str, Any], notes: list[str]
) -> tuple[dict[str, Any], str]:
    static = f.input_shape[2] or f.input_shape[3]
    given = {k: options[k] for k in ("colour", "mean", "std") if k in options}
    ff = f.faceforge_metadata()
    alignment = str(options.get("alignment", TEMPLATE_NAME))
    if ff is not None or sha in KNOWN_FILES:
        if given:
            notes.append(f"options {sorted(given)} ignored: the file's own preprocessing is used")
        if ff is not None:
            pre = Preprocess.from_dict(ff["preprocess"]).to_dict()
            source = "the file's faceforge metadata"
        else:
            known = KNOWN_FILES[sha]
            pre = Preprocess(
                input_size=static or 112,
                alignment=alignment,
                **{k: tuple(v) if isinstance(v, list) else v for k, v in known["preprocess"].items()},
            ).to_dict()  # type: ignore[arg-type]
            source = known["preprocess_source"]
    else:
        colour = str(options.get("colour", "RGB")).upper()
        if colour not in ("RGB", "BGR"):
            raise ModelImportError(f"{f.path}: --option colour={options['colour']!r} must be RGB or BGR")
        mean = _three(f.path, "mean", options.get("mean", INSIGHTFACE_PIXEL_MEAN))
        std = _three(f.path, "std", options.get("std", INSIGHTFACE_PIXEL_STD))
        size = int(options.get("input_size", static or 112))
        pre = Preprocess(
            size, colour, tuple(m / 255.0 for m in mean), tuple(s / 255.0 for s in std), alignment
        ).to_dict()  # type: ignore[arg-type]
        pre["pixel_mean"], pre["pixel_std"] = mean, std
        source = (
            "options"
            if given
            else "insightface defaults (RGB, (pixel - 127.5) / 127.5); set --option colour/mean/std"
        )
    return pre, source


def _candidates(f: OnnxFile, c: Converted, choice: str) -> list[tuple[str, dict[str, Any]]]:
    if choice == "onnx_graph":
        return []
    if choice != "auto":
        if choice not in BACKBONES:
            raise ModelImportError(
                f"{f.path}: --option backbone={choice} is not a faceforge backbone ({', '.join(BACKBONES.names())})"
            )
        return [(choice, {"embedding_size": c.embedding_size})]
    out: list[tuple[str, dict[str, Any]]] = []
    ff = f.faceforge_metadata() or {}
    bb = ff.get("backbone")
    if (
        isinstance(bb, dict)
        and bb.get("name") in BACKBONES
        and bb.get("name") != "onnx_graph"
        and isinstance(bb.get("kwargs", {}), dict)
    ):
        out.append((bb["name"], dict(bb.get("kwargs", {}))))
    if c.input_size == 112:
        d = {"embedding_size": c.embedding_size}
        out += [
            (n, d)
            for n in (
                "iresnet18",
                "iresnet34",
                "iresnet50",
                "iresnet100",
                "iresnet200",
                "iresnet_se50",
                "iresnet_se100",
            )
        ]
        out += [("mobilefacenet", {**d, "scale": s}) for s in (2, 1, 4)]
    return out


def _layer_counts(kinds: list[str]) -> tuple[int, int, int]:
    return (kinds.count("conv"), kinds.count("prelu"), kinds.count("linear"))


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """Let ``torch.nn.init``'s functions leave tensors as they are while candidate skeletons are built on the meta
    device: their values are never read, and drawing them on ``meta`` runs PyTorch's Python decompositions
    (seconds for an iresnet200, and an import of torch._dynamo)."""
    saved = {
        n: getattr(torch.nn.init, n) for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")
    }
    try:
        for n in saved:
            setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


def _skeleton(name: str, kwargs: dict[str, Any]) -> torch.nn.Module | None:
    """The backbone on the meta device without drawing its weights (None if these kwargs cannot build it)."""
    try:
        with torch.device("meta"), _no_init():
            return build_backbone(name, **kwargs)
    except (TypeError, ValueError, KeyError):
        return None


@functools.lru_cache(maxsize=64)
def _architecture_counts(name: str, kwargs_json: str) -> tuple[int, int, int] | None:
    """(Conv2d, PReLU, Linear) modules of a candidate, the first filter (cached: building costs a few 0.1 s)."""
    net = _skeleton(name, json.loads(kwargs_json))
    if net is None:
        return None
    kinds = [
        "conv"
        if isinstance(m, torch.nn.Conv2d)
        else "prelu"
        if isinstance(m, torch.nn.PReLU)
        else "linear"
        if isinstance(m, torch.nn.Linear)
        else ""
        for m in net.modules()
    ]
    return _layer_counts(kinds)


def _structural(
    f: OnnxFile, c: Converted, choice: str, notes: list[str]
) -> tuple[str, dict[str, Any], dict[str, torch.Tensor], torch.nn.Module] | None:
    """The first candidate architecture the graph maps onto, with its filled state dict and built module."""
    kinds = {"conv2d": "conv", "prelu": "prelu", "slope_prelu": "prelu", "linear": "linear"}
    want = _layer_counts([kinds.get(s["type"], "") for s in c.program["modules"].values()])
    for name, kwargs in _candidates(f, c, choice):
        if _architecture_counts(name, json.dumps(kwargs, sort_keys=True)) != want:
            continue
        skeleton = _skeleton(name, kwargs)
        if skeleton is None or getattr(skeleton, "embedding_size", c.embedding_size) != c.embedding_size:
            continue
        net = skeleton.to_empty(device="cpu")  # no random initialisation: every tensor is loaded below
        with torch.no_grad():
            for t in [*net.parameters(), *net.buffers()]:
                t.zero_()  # not uninitialised memory (denormals would make the tracing pass slow)
        try:
            mapped = map_onto(c.program, c.weights, net)
        except MatchError as exc:
            log.debug("onnx import: %s is not %s: %s", f.path.name, name, exc)
            if choice != "auto":
                raise ModelImportError(
                    f"{f.path}: the graph does not map onto {name} ({exc}); use --option backbone=auto"
                ) from None
            continue
        net.load_state_dict(mapped.state)
        if mapped.folded_bn:
            notes.append(
                f"BatchNorm folded into the preceding Conv/Linear in {mapped.folded_bn} of {mapped.units} layers: those "
                "BatchNorms are exact identities plus the folded bias (their statistics are not in the file; fine-tune "
                "with frozen BatchNorm statistics or re-estimate them)"
            )
        return name, kwargs, mapped.state, net.eval()
    if choice not in ("auto", "onnx_graph"):
        raise ModelImportError(f"{f.path}: the graph does not map onto {choice}; use --option backbone=auto")
    return None


def _faces(pre: dict[str, Any], n: int) -> torch.Tensor:
    """``n`` random uint8 faces (seeded) through the import's preprocessing."""
    p = Preprocess.from_dict(pre)
    faces = np.random.default_rng(0).integers(0, 256, (n, p.input_size, p.input_size, 3), dtype=np.uint8)
    return p(torch.from_numpy(faces)).contiguous()


def _onnxruntime(f: OnnxFile, x: torch.Tensor) -> tuple[np.ndarray | None, str]:
    """The original graph's output under onnxruntime (batches of the graph's fixed batch size, if it has one), or
    None and why not."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    step = f.input_shape[0] or len(x)
    try:
        sess = ort.InferenceSession(
            f.model.SerializeToString() if f.repairs else str(f.path),
            opts,
            providers=["CPUExecutionProvider"],
        )
        out = [sess.run(None, {f.input_name: x[i : i + step].numpy()})[0] for i in range(0, len(x), step)]
    except Exception as exc:  # onnxruntime raises its own types
        return None, f"onnxruntime {ort.__version__} cannot run it ({type(exc).__name__}: {str(exc)[:200]})"
    return np.concatenate([o.reshape(len(o), -1) for o in out]), f"onnxruntime {ort.__version__}"


def _difference(net: torch.nn.Module, x: torch.Tensor, ref: np.ndarray) -> tuple[float, float]:
    """(max abs difference of ``net`` to ``ref``, max |ref|)."""
    with torch.no_grad():
        got = net.eval()(x).numpy()
    scale = float(np.abs(ref).max())
    return (float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")), scale


def _ok(diff: float, scale: float) -> bool:
    return bool(np.isfinite(diff) and diff <= 1e-3 * max(1.0, scale))


@IMPORTERS.register("onnx")
def import_onnx(source: str | Path | None = None, **options: Any) -> ImportedModel:
    """Import an ONNX recognition graph (see the module doc)."""
    if source in (None, ""):
        raise ModelImportError(
            "faceforge import onnx needs the model file: faceforge import onnx FILE.onnx --out model.pt"
        )
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ModelImportError(f"unknown option(s) {unknown} for 'import onnx'; known: {', '.join(OPTIONS)}")
    path = Path(source)
    f = read_onnx(path)
    sha = file_sha256(path)
    notes: list[str] = []
    pre, pre_source, size = _preprocess(f, sha, options, notes)
    c = convert_graph(f, size)
    notes += c.notes
    if f.repairs:
        notes.append(f"graph inputs repaired: {'; '.join(f.repairs)}")
    if c.folded.get("DequantizeLinear"):
        notes.append(
            f"{c.folded['DequantizeLinear']} quantised weight tensors dequantised to float32 at import"
        )
    choice = str(options.get("backbone", "auto"))
    found = _structural(f, c, choice, notes)
    generic = {"graph": json.dumps(c.program, separators=(",", ":"))}
    fixed = f.input_shape[0]
    x = _faces(pre, fixed * -(-VERIFY_FACES // fixed) if fixed else VERIFY_FACES)
    ref, runtime = _onnxruntime(f, x)
    generic_net = None
    if ref is None:  # check a structural match against the converted graph instead; note that it was not run
        notes.append(f"not compared with the original runtime: {runtime}")
        generic_net = build_backbone("onnx_graph", **generic)
        generic_net.load_state_dict(c.weights)
        with torch.no_grad():
            ref, runtime = generic_net.eval()(x).numpy(), "the converted graph (onnx_graph)"
    if found is not None:
        name, kwargs, weights, net = found
        diff, scale = _difference(net, x, ref)
        if not _ok(diff, scale):
            notes.append(
                f"the match onto {name} differs from {runtime} by {diff:.3g}: imported as onnx_graph instead"
            )
            found = None
    if found is None:
        name, kwargs, weights = "onnx_graph", generic, c.weights
        if generic_net is None:
            generic_net = build_backbone(name, **kwargs)
            generic_net.load_state_dict(weights)
        diff, scale = _difference(generic_net, x, ref)
        if not _ok(diff, scale):
            raise ModelImportError(
                f"{path}: the converted network does not reproduce {runtime} (max abs diff {diff:.3g} at max "
                f"|embedding| {scale:.3g}); this is a converter bug: please report it with the file"
            )
    known = KNOWN_FILES.get(sha, {})
    ff = f.faceforge_metadata()
    source_meta: dict[str, Any] = {
        "path": str(path),
        "file": path.name,
        "sha256": sha,
        "format": "onnx",
        "opset": f.opset,
        "producer": f.producer,
        "licence": known.get("licence") or str(options.get("licence", "unknown (see the model's source)")),
        "network": known.get("network")
        or (
            f"faceforge export of {ff['backbone']['name']}"
            if ff and isinstance(ff.get("backbone"), dict)
            else path.stem
        ),
        "converter": f"{CONVERTER}: {'structural match onto ' + name if name != 'onnx_graph' else 'onnx_graph program'}",
        "preprocess_source": pre_source,
        "onnx_ops": dict(sorted(c.ops.items())),
        "verified": {
            "against": runtime,
            "random_faces": len(x),
            "max_abs_diff": diff,
            "max_abs_embedding": scale,
        },
    }
    preprocess = {k: v for k, v in pre.items() if k not in ("pixel_mean", "pixel_std")}
    if "pixel_mean" in pre:
        source_meta["pixel_mean"], source_meta["pixel_std"] = pre["pixel_mean"], pre["pixel_std"]
    return ImportedModel(
        backbone={"name": name, "kwargs": kwargs},
        weights={k: v.contiguous() for k, v in weights.items()},
        embedding_size=c.embedding_size,
        preprocess=preprocess,
        source=source_meta,
        notes=notes,
    )
