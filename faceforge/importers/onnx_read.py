"""Reading an ONNX file for import, checked before anything is trusted: the graph as plain Python values.

What is refused, each with one :class:`~faceforge.importers.base.ModelImportError` naming the file and the fix:
a file that is not ONNX or is truncated/corrupted (the protobuf does not parse, or parses to a model without a
graph), weights in external data files (only single-file models are read; nothing outside the file is opened),
operators of other domains (``com.microsoft`` and the like), a tensor whose declared shape does not match its
stored bytes or has more than :data:`MAX_TENSOR_ELEMENTS` elements (checked before numpy allocates it), and a
graph whose nodes read values nothing defines or form a cycle.

Weights listed as graph inputs (graphs converted from older frameworks; OpenCV Zoo's int8 files) are repaired
as :func:`faceforge.embedders.onnx_model.repair_graph_inputs` does for onnxruntime: an input that is also an
initialiser is a constant; an input ``W`` whose dequantised copy the graph computes (a node output
``W_reshaped`` or ``W_dequantized``) is rewired to it; an input no node reads is dropped. What remains must be
the one image input.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from faceforge.importers.base import ModelImportError

__all__ = ["MAX_TENSOR_ELEMENTS", "Node", "OnnxFile", "read_onnx", "tensor_array"]

#: largest tensor read from a file (as faceforge.models.backbones.onnx_ops.MAX_TENSOR_ELEMENTS)
MAX_TENSOR_ELEMENTS = 1 << 28
#: the ``metadata_props`` key of faceforge's own exports (faceforge.deploy.export_onnx.METADATA_KEY)
FACEFORGE_METADATA_KEY = "faceforge"
_DOMAINS = ("", "ai.onnx")


@dataclass
class Node:
    """One ONNX node: op type, the names it reads ('' for an omitted optional input) and writes, attributes."""

    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]


@dataclass
class OnnxFile:
    """A checked ONNX model: nodes in topological order, initialisers (numpy), the one input and output."""

    path: Path
    model: Any  # onnx.ModelProto, repaired (see the module doc), for onnxruntime
    opset: int
    nodes: list[Node]
    initialisers: dict[str, np.ndarray]
    input_name: str
    input_shape: list[int | None]
    output_name: str
    producer: str
    metadata: dict[str, str]
    repairs: list[str] = field(default_factory=list)

    def faceforge_metadata(self) -> dict[str, Any] | None:
        """The ``faceforge`` entry of a faceforge export (None for other files); refused if not a JSON object."""
        raw = self.metadata.get(FACEFORGE_METADATA_KEY)
        if raw is None:
            return None
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError:
            meta = None
        if not isinstance(meta, dict) or not isinstance(meta.get("preprocess"), dict):
            raise ModelImportError(
                f"{self.path}: its '{FACEFORGE_METADATA_KEY}' metadata entry is not a faceforge export's "
                "(no preprocess): export the model again with 'faceforge export-onnx'"
            )
        return meta


def _fail(path: Path, what: str, fix: str) -> ModelImportError:
    return ModelImportError(f"{path}: {what}; {fix}")


def tensor_array(tensor: Any, path: Path, what: str = "") -> np.ndarray:
    """A TensorProto as numpy, its declared size checked against its bytes before numpy allocates anything."""
    from onnx import TensorProto, helper, numpy_helper

    name = what or tensor.name or "(unnamed)"
    dims = [int(d) for d in tensor.dims]
    if any(d < 0 for d in dims) or len(dims) > 8:
        raise _fail(path, f"tensor {name} has shape {dims}", "the file is corrupted")
    numel = math.prod(dims)
    if numel > MAX_TENSOR_ELEMENTS:
        raise _fail(
            path,
            f"tensor {name} declares {numel} elements (more than {MAX_TENSOR_ELEMENTS})",
            "the file is corrupted or hostile",
        )
    if tensor.data_location == TensorProto.EXTERNAL:
        raise _fail(
            path,
            f"tensor {name} is stored in an external data file",
            "save the model as one file (onnx.save(model, path, save_as_external_data=False)) and import that",
        )
    dtype = tensor.data_type
    allowed = {
        TensorProto.FLOAT,
        TensorProto.FLOAT16,
        TensorProto.DOUBLE,
        TensorProto.BFLOAT16,
        TensorProto.INT8,
        TensorProto.UINT8,
        TensorProto.INT16,
        TensorProto.UINT16,
        TensorProto.INT32,
        TensorProto.INT64,
        TensorProto.INT4,
        TensorProto.UINT4,
        TensorProto.BOOL,
    }
    if dtype not in allowed:
        raise _fail(
            path,
            f"tensor {name} has data type {TensorProto.DataType.Name(dtype)}",
            "only numeric tensors can be imported",
        )
    if tensor.HasField("raw_data"):
        bits = (
            4
            if dtype in (TensorProto.INT4, TensorProto.UINT4)
            else 8 * np.dtype(helper.tensor_dtype_to_np_dtype(dtype)).itemsize
        )
        want = (numel * bits + 7) // 8
        if len(tensor.raw_data) != want:
            raise _fail(
                path,
                f"tensor {name} declares {dims} but holds {len(tensor.raw_data)} bytes, not {want}",
                "the file is truncated or corrupted",
            )
    else:
        stored = sum(
            len(getattr(tensor, f))
            for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")
        )
        if stored * 2 < numel or (numel == 0 and stored):
            raise _fail(
                path,
                f"tensor {name} declares {dims} but holds {stored} values",
                "the file is truncated or corrupted",
            )
    try:
        arr = numpy_helper.to_array(tensor)
    except Exception as exc:  # onnx raises several types on malformed tensors
        raise _fail(
            path, f"tensor {name} cannot be read ({type(exc).__name__}: {exc})", "the file is corrupted"
        ) from None
    if arr.dtype.kind not in "fiub":  # bfloat16 and the 4-bit types arrive as ml_dtypes
        arr = arr.astype(
            np.float32
            if dtype == TensorProto.BFLOAT16
            else np.int8
            if dtype == TensorProto.INT4
            else np.uint8
        )
    return arr


def _attribute(attr: Any, path: Path, where: str) -> Any:
    from onnx import AttributeProto, helper

    if attr.type == AttributeProto.TENSOR:
        return tensor_array(attr.t, path, f"{where} attribute {attr.name}")
    if attr.type in (
        AttributeProto.GRAPH,
        AttributeProto.GRAPHS,
        AttributeProto.SPARSE_TENSOR,
        AttributeProto.TENSORS,
    ):
        raise _fail(
            path,
            f"{where} has a {AttributeProto.AttributeType.Name(attr.type)} attribute '{attr.name}'",
            "sub-graphs and sparse tensors are not supported",
        )
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
    return value


def _load(path: Path) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    fix = "the file is truncated, corrupted or not an ONNX model: download or export it again"
    if not path.is_file():
        raise ModelImportError(f"ONNX model not found: {path}; give the path of an .onnx file")
    with path.open("rb") as fh:
        head = fh.read(8)
    for magic, kind in (
        (b"PK\x03\x04", "a zip archive (a PyTorch .pt?)"),
        (b"\x89PNG", "a PNG image"),
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"\x80", "a Python pickle"),
    ):
        if head.startswith(magic):
            raise _fail(
                path,
                f"is {kind}, not an ONNX model",
                "give an .onnx file (faceforge checkpoints need no import)",
            )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _fail(path, f"cannot be parsed as ONNX ({type(exc).__name__}: {first})", fix) from None
    if not model.ir_version or not model.HasField("graph") or not len(model.graph.node):
        raise _fail(path, "holds no ONNX graph (no IR version or no nodes)", fix)
    return model


def _repair_inputs(graph: Any, initialisers: set[str]) -> tuple[list[Any], dict[str, str], list[str]]:
    """(the inputs kept, weight inputs rewired to their twins, a summary of the changes)."""
    produced = {o for n in graph.node for o in n.output}
    read = {i for n in graph.node for i in n.input}
    keep, rewire = [], {}
    counts = {
        "initialiser(s) listed as inputs taken out": 0,
        "unread weight input(s) dropped": 0,
        "unused input(s) dropped": 0,
    }
    for inp in graph.input:
        name = inp.name
        twin = next((f"{name}{s}" for s in ("_reshaped", "_dequantized") if f"{name}{s}" in produced), None)
        if name in initialisers:
            counts["initialiser(s) listed as inputs taken out"] += 1
        elif twin is not None and name in read:
            rewire[name] = twin
        elif twin is not None:
            counts["unread weight input(s) dropped"] += 1
        elif name not in read and len(graph.input) > 1:
            counts["unused input(s) dropped"] += 1
        else:
            keep.append(inp)
    changes = [f"{n} {what}" for what, n in counts.items() if n]
    if rewire:
        changes.append(f"{len(rewire)} weight input(s) rewired to the dequantised copies the graph computes")
    return keep, rewire, changes


def _toposort(nodes: list[Node], known: set[str], path: Path) -> list[Node]:
    """Kahn's algorithm, stable in file order; refuses reads of undefined values and cycles."""
    producer: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for o in n.outputs:
            if o:
                if o in producer or o in known:
                    raise _fail(
                        path,
                        f"value '{o}' is defined twice (node '{n.name or n.op}')",
                        "the graph is corrupted",
                    )
                producer[o] = i
    waiting = [0] * len(nodes)
    users: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in n.inputs:
            if not name or name in known:
                continue
            if name not in producer:
                raise _fail(
                    path,
                    f"node '{n.name or n.op}' ({n.op}) reads '{name}', which nothing defines",
                    "the graph is corrupted",
                )
            waiting[i] += 1
            users.setdefault(producer[name], []).append(i)
    ready = deque(i for i, w in enumerate(waiting) if w == 0)
    order = []
    while ready:
        i = ready.popleft()
        order.append(nodes[i])
        for j in users.get(i, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    if len(order) != len(nodes):
        raise _fail(path, "its nodes form a cycle", "the graph is corrupted")
    return order


def _dims(value: Any) -> list[int | None]:
    return [
        int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in value.type.tensor_type.shape.dim
    ]


def read_onnx(path: str | Path) -> OnnxFile:
    """Load and check ``path`` (see the module doc); the graph's one input and output must exist."""
    from onnx import TensorProto

    p = Path(path)
    model = _load(p)
    graph = model.graph
    opset = 0
    for imp in model.opset_import:
        if imp.domain in _DOMAINS:
            opset = int(imp.version)
    initialisers = {t.name: tensor_array(t, p) for t in graph.initializer}
    keep, rewire, repairs = _repair_inputs(graph, set(initialisers))
    nodes = []
    for n in graph.node:
        where = f"node '{n.name or n.op_type}' ({n.op_type})"
        if n.domain not in _DOMAINS:
            raise _fail(
                p,
                f"unsupported op {n.domain}.{n.op_type} in {where}",
                "only standard ONNX operators can be imported",
            )
        attrs = {a.name: _attribute(a, p, where) for a in n.attribute}
        inputs = [rewire.get(i, i) for i in n.input]
        nodes.append(Node(n.op_type, n.name, inputs, list(n.output), attrs))
    if len(keep) != 1:
        shown = ", ".join(f"{i.name} {_dims(i)}" for i in keep) or "none"
        raise _fail(
            p,
            f"not a recognition graph: it has {len(keep)} inputs ({shown}), expected one image batch [N, 3, S, S]",
            "import a face-recognition network (one aligned face batch in, one embedding batch out)",
        )
    if len(graph.output) != 1:
        raise _fail(
            p,
            f"not a recognition graph: it has {len(graph.output)} outputs ({', '.join(o.name for o in graph.output[:6])}"
            f"{', ...' if len(graph.output) > 6 else ''}), expected one embedding batch [N, D]",
            "import a face-recognition network (one aligned face batch in, one embedding batch out)",
        )
    inp = keep[0]
    shape = _dims(inp)
    elem = inp.type.tensor_type.elem_type
    if (
        elem != TensorProto.FLOAT
        or len(shape) != 4
        or shape[1] not in (3, None)
        or (None not in shape[2:] and shape[2] != shape[3])
    ):
        raise _fail(
            p,
            f"not a recognition graph: its input '{inp.name}' is {TensorProto.DataType.Name(elem)} {shape}, expected a float "
            "image batch [N, 3, S, S]",
            "import a face-recognition network (one aligned face batch in, one embedding batch out)",
        )
    known = set(initialisers) | {inp.name}
    order = _toposort(nodes, known, p)
    if keep != list(graph.input) or rewire:  # the repaired graph, for onnxruntime
        for n in graph.node:
            for i, name in enumerate(n.input):
                if name in rewire:
                    n.input[i] = rewire[name]
        del graph.input[:]
        graph.input.extend(keep)
    metadata = {e.key: e.value for e in model.metadata_props}
    return OnnxFile(
        path=p,
        model=model,
        opset=opset,
        nodes=order,
        initialisers=initialisers,
        input_name=inp.name,
        input_shape=shape,
        output_name=graph.output[0].name,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        metadata=metadata,
        repairs=repairs,
    )
