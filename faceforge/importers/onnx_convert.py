"""An ONNX recognition graph -> the program and weights of the ``onnx_graph`` backbone (written by hand: see
:mod:`faceforge.importers.onnx_net` for why no maintained converter is used).

The graph is interpreted once at import, node by node in topological order:

* a node whose inputs are all constants is **folded** with numpy (:mod:`.onnx_fold`): DequantizeLinear of int8
  weights (blocked, per-axis or per-tensor), Reshape/Transpose/Cast of weights, shape arithmetic;
* any other node becomes one **program node** (:mod:`faceforge.models.backbones.onnx_ops`): its weights go into
  a module (Conv, BatchNormalization, PRelu, Gemm/MatMul with a constant weight), its constant integer inputs
  into plain attributes, its other float constants into fixed buffers. Each program node is run at once, by
  the same code that runs it later, on a zero batch of 2 faces and one of 3: that is the shape inference used
  for ``auto_pad``, PRelu's channel axis and ``Shape`` (the dimensions that differ between the two runs are the
  batch size, ``"N"`` in a folded shape), and it checks that the graph keeps the batch axis from input to
  output (``[N, 3, S, S] -> [N, D]``: a recognition graph). Real tensors, not PyTorch's ``meta`` device (its
  shape functions are Python decompositions that import torch._dynamo, seconds slower than five small
  forward passes), so each node's output size is bounded before it runs (:mod:`.onnx_bounds`); values no
  later node reads are freed as the walk goes.

Afterwards nodes the output does not need are dropped, and a constant ``Add`` right after a bias-less Linear or
Conv becomes its (trainable) bias. Every refusal is one :class:`~faceforge.importers.base.ModelImportError`
naming the file, the node and the op.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from faceforge.importers.base import ModelImportError
from faceforge.importers.onnx_bounds import MAX_ACTIVATION_ELEMENTS, output_bound
from faceforge.importers.onnx_fold import BATCH, FoldError, fold, is_symbolic
from faceforge.importers.onnx_handlers import HANDLERS, Unsupported
from faceforge.importers.onnx_read import MAX_TENSOR_ELEMENTS, Node, OnnxFile
from faceforge.models.backbones.onnx_graph import GRAPH_FORMAT, GRAPH_VERSION
from faceforge.models.backbones.onnx_ops import OpContext, build_module, build_op, module_call

__all__ = ["Act", "Converted", "convert_graph"]

#: the two batch sizes of the shape-inference runs
BATCHES = (2, 3)
INPUT = "x"


@dataclass
class Act:
    """A computed value: its program name and its tensors for the two batch sizes."""

    name: str
    val: tuple[Tensor, Tensor]

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape at batch 2."""
        return tuple(self.val[0].shape)

    def batch_axes(self) -> list[int]:
        a, b = self.val[0].shape, self.val[1].shape
        if len(a) != len(b):
            return list(range(len(a)))
        return [i for i, (p, q) in enumerate(zip(a, b, strict=True)) if p != q]


@dataclass
class Converted:
    """The ``onnx_graph`` program (plain values), its state dict, and what the conversion did."""

    program: dict[str, Any]
    weights: dict[str, Tensor]
    embedding_size: int
    input_size: int
    notes: list[str] = field(default_factory=list)
    folded: Counter = field(default_factory=Counter)
    ops: Counter = field(default_factory=Counter)


class Converter:
    """The interpreter (see the module doc); :mod:`.onnx_handlers` holds one function per ONNX op."""

    def __init__(self, f: OnnxFile, input_size: int) -> None:
        self.f = f
        self.opset = f.opset
        self.values: dict[str, np.ndarray | Act | None] = dict(f.initialisers)
        self.nodes: list[dict[str, Any]] = []
        self.modules: dict[str, dict[str, Any]] = {}
        self.run_modules: dict[str, torch.nn.Module] = {}
        self.constants: dict[str, list[int]] = {}
        self.const_by_source: dict[str, str] = {}
        self.weights: dict[str, Tensor] = {}
        self.counts: Counter = Counter()
        self.notes: list[str] = []
        self.folded: Counter = Counter()
        self.n_values = 0
        s = input_size
        self.values[f.input_name] = Act(INPUT, tuple(torch.zeros(b, 3, s, s) for b in BATCHES))  # type: ignore[arg-type]

    # ----------------------------------------------------------------------------------------- helpers
    def fail(self, node: Node, what: str, fix: str = "") -> ModelImportError:
        fix = (
            fix
            or "convert or simplify the graph to the operators faceforge supports (see 'faceforge import onnx')"
        )
        return ModelImportError(f"{self.f.path}: node '{node.name or node.op}' ({node.op}): {what}; {fix}")

    def act(self, node: Node, v: Any, what: str = "input") -> Act:
        if not isinstance(v, Act):
            raise self.fail(node, f"its {what} is expected to be computed from the image, not constant")
        return v

    def const(self, node: Node, v: Any, what: str, float_only: bool = True) -> np.ndarray:
        if not isinstance(v, np.ndarray) or is_symbolic(v):
            raise self.fail(node, f"its {what} must be a constant (a weight), not computed from the image")
        if float_only and v.dtype.kind != "f":
            raise self.fail(
                node,
                f"its {what} is {v.dtype}, expected float weights (quantised weights need their DequantizeLinear)",
            )
        return v.astype(np.float32) if v.dtype.kind == "f" else v

    def ints(self, node: Node, v: Any, what: str) -> list[int]:
        if not isinstance(v, np.ndarray) or v.dtype.kind not in "iu" or is_symbolic(v):
            raise self.fail(node, f"its {what} must be constant integers")
        return [int(x) for x in v.reshape(-1)]

    def constant(self, v: np.ndarray, source: str) -> str:
        """A float constant as a fixed buffer of the program (one per source value)."""
        if source and source in self.const_by_source:
            return self.const_by_source[source]
        name = f"c{len(self.constants)}"
        arr = np.ascontiguousarray(v, dtype=np.float32)
        self.constants[name] = [int(d) for d in arr.shape]
        self.weights[f"constants.{name}"] = torch.from_numpy(arr.copy())
        if source:
            self.const_by_source[source] = name
        return name

    def module(self, kind: str, spec: dict[str, Any], params: dict[str, np.ndarray | Tensor | None]) -> str:
        name = f"{kind}{self.counts[kind]}"
        self.counts[kind] += 1
        self.modules[name] = spec
        mod = build_module(spec).eval()
        want = dict(mod.state_dict())
        given = {}
        for key, value in params.items():
            if value is None:
                continue
            t = value if isinstance(value, Tensor) else torch.from_numpy(np.ascontiguousarray(value))
            if key not in want or tuple(want[key].shape) != tuple(t.shape):
                raise ValueError(f"weight {key} {list(t.shape)} does not fit module {spec}")
            given[key] = self.weights[f"layers.{name}.{key}"] = t
        missing = [k for k in want if k not in given]
        if missing:
            raise ValueError(f"module {name} lacks {missing}")
        mod.load_state_dict(given)
        self.run_modules[name] = mod
        return name

    def emit(
        self,
        node: Node,
        op: str,
        inputs: list[Act | str],
        attrs: dict[str, Any] | None = None,
        module: str | None = None,
        n_out: int = 1,
    ) -> list[Act]:
        """Append a program node and run it on the two zero batches; returns its outputs."""
        attrs = attrs or {}
        try:
            if module:
                mod, call = self.run_modules[module], module_call(op, attrs)
                fn = lambda xs, ctx: call(mod, xs, ctx)  # noqa: E731
            else:
                fn = build_op(op, attrs)
        except (KeyError, TypeError, ValueError) as exc:
            raise self.fail(node, f"attributes not supported ({exc})") from None
        shapes = [list(a.val[-1].shape) if isinstance(a, Act) else self.constants[a] for a in inputs]
        try:
            bound = output_bound(op, shapes, attrs, self.modules.get(module or ""))
        except (RuntimeError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise self.fail(
                node, f"its inputs' shapes do not fit ({exc})", "the graph is corrupted"
            ) from None
        if bound > MAX_ACTIVATION_ELEMENTS:
            raise self.fail(
                node,
                f"its output would hold {bound} values for {BATCHES[-1]} faces (more than {MAX_ACTIVATION_ELEMENTS})",
                "the file is corrupted or hostile",
            )
        outs: list[list[Tensor]] = []
        for k, b in enumerate(BATCHES):
            args = [a.val[k] if isinstance(a, Act) else self.weights[f"constants.{a}"] for a in inputs]
            try:
                with torch.no_grad():
                    outs.append(fn(args, OpContext(batch=b, training=False)))
            except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                first = (str(exc).strip().splitlines() or [""])[0]
                raise self.fail(
                    node,
                    f"the shapes do not fit at batch {b} ({first})",
                    "the graph fixes its batch size or is corrupted",
                ) from None
        acts = [Act(f"v{self.n_values + j}", (outs[0][j], outs[1][j])) for j in range(n_out)]
        self.n_values += n_out
        entry: dict[str, Any] = {
            "op": op,
            "inputs": [a.name if isinstance(a, Act) else a for a in inputs],
            "outputs": [a.name for a in acts],
            "attrs": attrs,
        }
        if module:
            entry["module"] = module
        self.nodes.append(entry)
        return acts

    # ----------------------------------------------------------------------------------------- the walk
    def run_node(self, node: Node) -> None:
        ins = [self.values[i] if i else None for i in node.inputs]
        for i, name in enumerate(node.inputs):
            if name and name not in self.values:
                raise self.fail(node, f"input {i} '{name}' is not defined")
        self.counts[f"op:{node.op}"] += 1
        if node.op == "Constant":
            outs: list[Any] = [self._constant_value(node)]
        elif node.op == "Shape" and isinstance(ins[0], Act):
            outs = [self._shape(node, ins[0])]
        elif all(not isinstance(v, Act) for v in ins):
            try:
                outs = fold(node.op, node.attrs, ins)  # type: ignore[arg-type]
            except FoldError as exc:
                raise self.fail(node, f"cannot fold it ({exc})") from None
            self.folded[node.op] += 1
            for o in outs:
                if o.size > MAX_TENSOR_ELEMENTS:
                    raise self.fail(
                        node, f"it folds to {o.size} elements", "the file is corrupted or hostile"
                    )
        else:
            handler = HANDLERS.get(node.op)
            if handler is None:
                raise self.fail(node, f"unsupported op {node.op}")
            try:
                outs = handler(self, node, ins)
            except ModelImportError:
                raise
            except (Unsupported, ValueError, KeyError, TypeError) as exc:  # a handler's or a module's refusal
                raise self.fail(node, str(exc)) from None
        for name, value in zip(node.outputs, outs, strict=False):
            if name:
                self.values[name] = value

    def _constant_value(self, node: Node) -> np.ndarray:
        a = node.attrs
        for key, dtype in (
            ("value", None),
            ("value_float", np.float32),
            ("value_floats", np.float32),
            ("value_int", np.int64),
            ("value_ints", np.int64),
        ):
            if key in a:
                return np.asarray(a[key]) if dtype is None else np.asarray(a[key], dtype=dtype)
        raise self.fail(node, f"a Constant with {sorted(a)} is not supported")

    def _shape(self, node: Node, x: Act) -> np.ndarray:
        dims: list[Any] = []
        batch = x.batch_axes()
        for i, d in enumerate(x.shape):
            if i in batch:
                if (x.val[0].shape[i], x.val[1].shape[i]) != BATCHES:
                    raise self.fail(
                        node, f"dimension {i} of its input grows with the batch size in a way not supported"
                    )
                dims.append(BATCH)
            else:
                dims.append(int(d))
        start, end = node.attrs.get("start", 0), node.attrs.get("end", len(dims))
        return np.array(dims, dtype=object)[start:end]


def _dead_code(nodes: list[dict[str, Any]], output: str) -> list[dict[str, Any]]:
    needed, keep = {output}, []
    for n in reversed(nodes):
        if any(o in needed for o in n["outputs"]):
            keep.append(n)
            needed.update(n["inputs"])
    return keep[::-1]


def _fuse_bias(conv: Converter, nodes: list[dict[str, Any]], output: str) -> int:
    """A constant Add right after a bias-less Linear (bias [D] or [1, D]) or Conv ([C, 1, 1] or [1, C, 1, 1])
    whose output only the Add reads becomes the module's bias. Returns how many were fused."""
    readers = Counter(i for n in nodes for i in n["inputs"])
    by_out = {n["outputs"][0]: n for n in nodes}
    fused = 0
    for add in list(nodes):
        if add["op"] != "Add" or len(add["inputs"]) != 2:
            continue
        a, b = add["inputs"]
        src, const = (a, b) if b in conv.constants else (b, a)
        prod = by_out.get(src)
        if prod is None or const not in conv.constants or readers[src] != 1 or src == output:
            continue
        spec = conv.modules.get(prod.get("module", ""), {})
        if spec.get("type") not in ("linear", "conv2d") or spec.get("bias"):
            continue
        width = spec["out_features"] if spec["type"] == "linear" else spec["out_channels"]
        shape = conv.constants[const]
        ok = (
            shape in ([width], [1, width])
            if spec["type"] == "linear"
            else shape in ([width, 1, 1], [1, width, 1, 1])
        )
        if not ok:
            continue
        spec["bias"] = True
        conv.weights[f"layers.{prod['module']}.bias"] = (
            conv.weights[f"constants.{const}"].reshape(width).clone()
        )
        prod["outputs"] = add["outputs"]
        nodes.remove(add)
        fused += 1
    return fused


def convert_graph(f: OnnxFile, input_size: int) -> Converted:
    """Interpret ``f`` (see the module doc) for input ``[N, 3, input_size, input_size]``."""
    conv = Converter(f, input_size)
    last_read = {name: i for i, node in enumerate(f.nodes) for name in node.inputs}
    for i, node in enumerate(f.nodes):
        conv.run_node(node)
        for name in node.inputs:
            if last_read.get(name) == i and name != f.output_name:
                conv.values.pop(name, None)
    out = conv.values.get(f.output_name)
    fix = "import a face-recognition network (one aligned face batch in, one embedding batch out)"
    if not isinstance(out, Act):
        raise ModelImportError(
            f"{f.path}: not a recognition graph: its output '{f.output_name}' does not depend on the input; {fix}"
        )
    sa, sb = tuple(out.val[0].shape), tuple(out.val[1].shape)
    d = math.prod(sa[1:]) if sa else 0
    if (
        len(sa) < 2
        or sa[0] != BATCHES[0]
        or sb[0] != BATCHES[1]
        or sa[1:] != sb[1:]
        or math.prod(sa[2:]) != 1
    ):
        raise ModelImportError(
            f"{f.path}: not a recognition graph: a batch of {BATCHES[0]} faces gives an output of shape "
            f"{list(sa)}, not [{BATCHES[0]}, D]; {fix}"
        )
    nodes = _dead_code(conv.nodes, out.name)
    fused = _fuse_bias(conv, nodes, out.name)
    used_mods = {n["module"] for n in nodes if "module" in n}
    used_consts = {i for n in nodes for i in n["inputs"] if i in conv.constants}
    weights = {
        k: v
        for k, v in conv.weights.items()
        if (k.startswith("layers.") and k.split(".")[1] in used_mods)
        or (k.startswith("constants.") and k.split(".")[1] in used_consts)
    }
    program = {
        "format": GRAPH_FORMAT,
        "version": GRAPH_VERSION,
        "input": INPUT,
        "input_size": int(input_size),
        "output": out.name,
        "embedding_size": int(d),
        "modules": {k: v for k, v in conv.modules.items() if k in used_mods},
        "constants": {k: v for k, v in conv.constants.items() if k in used_consts},
        "nodes": nodes,
    }
    notes = list(conv.notes)
    if fused:
        notes.append(f"{fused} constant Add(s) after a Linear/Conv became the layer's trainable bias")
    ops = Counter({k[3:]: v for k, v in conv.counts.items() if k.startswith("op:")})
    return Converted(program, weights, int(d), int(input_size), notes, conv.folded, ops)
