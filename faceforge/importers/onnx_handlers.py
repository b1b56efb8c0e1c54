"""One function per supported ONNX op: an ONNX node (some inputs computed from the image) -> program node(s).

Each handler reads the node's attributes and constant inputs as the ONNX operator specification defines them
(``onnx/docs/Operators.md``, opsets 7-21; defaults included), moves weights into modules, constant integers
into plain attributes and other float constants into buffers, and emits the program node through
:meth:`faceforge.importers.onnx_convert.Converter.emit`. What a recognition graph does not need (sub-graphs,
quantised activations, 1-D/3-D convolutions, resizing, data-dependent shapes) raises :class:`Unsupported`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from faceforge.importers.onnx_fold import BATCH, is_symbolic

if TYPE_CHECKING:
    from faceforge.importers.onnx_convert import Act, Converter
    from faceforge.importers.onnx_read import Node

__all__ = ["HANDLERS", "Unsupported"]

_BIG = 1 << 62  # slice bounds beyond any dimension (INT64_MAX in files) are clamped to this


class Unsupported(ValueError):
    """A feature of a node the converter does not handle (the message says which)."""


Handler = Callable[["Converter", "Node", list[Any]], list[Any]]
HANDLERS: dict[str, Handler] = {}


def handles(*ops: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for op in ops:
            HANDLERS[op] = fn
        return fn

    return deco


def _operand(c: Converter, node: Node, v: Any, source: str) -> Act | str:
    """A computed input as is, a float (or integer, made float) constant as a buffer."""
    if v is None:
        raise Unsupported("an omitted input is not supported here")
    if isinstance(v, np.ndarray):
        if is_symbolic(v) or v.dtype.kind not in "fiub":
            raise Unsupported("a shape value used as data is not supported")
        return c.constant(v.astype(np.float32), source)
    return v


def _spatial(c: Converter, node: Node, x: Act, kernel: list[int]) -> tuple[list[int], list[int], list[int]]:
    """strides, dilations and explicit pads [top, left, bottom, right] (auto_pad resolved with x's shape)."""
    if len(x.shape) != 4 or len(kernel) != 2:
        raise Unsupported(f"only 2-D {node.op} is supported (input rank {len(x.shape)}, kernel {kernel})")
    a = node.attrs
    strides = list(a.get("strides", [1, 1]))
    dilations = list(a.get("dilations", [1, 1]))
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for i in range(2):
            size = x.shape[2 + i]
            total = max(
                (math.ceil(size / strides[i]) - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size, 0
            )
            small, large = total // 2, total - total // 2
            pads[i], pads[i + 2] = (small, large) if auto == "SAME_UPPER" else (large, small)
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    else:
        pads = list(a.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4 or min(pads) < 0:
        raise Unsupported(f"pads {pads} are not supported")
    return strides, dilations, pads


@handles("Conv")
def conv(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    x = c.act(node, ins[0])
    w = c.const(node, ins[1], "weight")
    b = c.const(node, ins[2], "bias") if len(ins) > 2 and ins[2] is not None else None
    if w.ndim != 4:
        raise Unsupported(f"only 2-D convolutions are supported (weight {list(w.shape)})")
    group = int(node.attrs.get("group", 1))
    strides, dilations, pads = _spatial(c, node, x, list(node.attrs.get("kernel_shape", w.shape[2:])))
    if w.shape[1] * group != x.shape[1]:
        raise Unsupported(
            f"weight {list(w.shape)} with group {group} does not fit {x.shape[1]} input channels"
        )
    symmetric = pads[0] == pads[2] and pads[1] == pads[3]
    spec = {
        "type": "conv2d",
        "in_channels": int(x.shape[1]),
        "out_channels": int(w.shape[0]),
        "kernel_size": [int(w.shape[2]), int(w.shape[3])],
        "stride": strides,
        "padding": [pads[0], pads[1]] if symmetric else [0, 0],
        "dilation": dilations,
        "groups": group,
        "bias": b is not None,
    }
    name = c.module("conv", spec, {"weight": w, "bias": b})
    return c.emit(node, "Conv", [x], {} if symmetric else {"pad": [pads[1], pads[3], pads[0], pads[2]]}, name)


@handles("BatchNormalization")
def batchnorm(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    x = c.act(node, ins[0])
    if node.attrs.get("training_mode", 0) or any(node.outputs[1:]):
        raise Unsupported("training-mode BatchNormalization (running statistics as outputs) is not supported")
    scale, bias, mean, var = (
        c.const(node, v, w) for v, w in zip(ins[1:5], ("scale", "B", "mean", "var"), strict=True)
    )
    ch = x.shape[1] if len(x.shape) > 1 else 0
    if len(x.shape) not in (2, 3, 4) or any(t.shape != (ch,) for t in (scale, bias, mean, var)):
        raise Unsupported(
            f"BatchNormalization of a {list(x.shape)} input with {list(scale.shape)} parameters"
        )
    spec = {
        "type": "batchnorm",
        "dims": 2 if len(x.shape) == 4 else 1,
        "num_features": int(ch),
        "eps": float(node.attrs.get("epsilon", 1e-5)),
        "momentum": 1.0 - float(node.attrs.get("momentum", 0.9)),
    }
    params = {
        "weight": scale,
        "bias": bias,
        "running_mean": mean,
        "running_var": var,
        "num_batches_tracked": torch.tensor(0),
    }
    return c.emit(node, "BatchNormalization", [x], {}, c.module("bn", spec, params))


@handles("PRelu")
def prelu(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    x = c.act(node, ins[0])
    slope = c.const(node, ins[1], "slope")
    rank = len(x.shape)
    aligned = (1,) * (rank - slope.ndim) + slope.shape if slope.ndim <= rank else None
    if slope.size == 1:
        spec, weight = {"type": "prelu", "num_parameters": 1}, slope.reshape(1)
    elif aligned is not None and rank >= 2 and aligned[1] == x.shape[1] and math.prod(aligned) == x.shape[1]:
        spec, weight = {"type": "prelu", "num_parameters": int(x.shape[1])}, slope.reshape(-1)
    else:
        spec, weight = {"type": "slope_prelu", "shape": [int(d) for d in slope.shape]}, slope
    return c.emit(node, "PRelu", [x], {}, c.module("prelu", spec, {"weight": weight}))


@handles("Gemm")
def gemm(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    x = c.act(node, ins[0])
    b = c.const(node, ins[1], "B (weight)")
    a = node.attrs
    if a.get("transA", 0) or len(x.shape) != 2 or b.ndim != 2:
        raise Unsupported("only Gemm(A [N, in], constant B) with transA=0 is supported")
    w = b if a.get("transB", 0) else b.T
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    if alpha != 1.0:
        w = w * np.float32(alpha)
    out, fin = w.shape
    if fin != x.shape[1]:
        raise Unsupported(f"weight {list(b.shape)} does not fit an input of width {x.shape[1]}")
    bias = None
    if len(ins) > 2 and ins[2] is not None:
        cc = c.const(node, ins[2], "C (bias)") * np.float32(beta)
        if cc.size == 1:
            bias = np.full(out, cc.reshape(()), np.float32)
        elif cc.shape in ((out,), (1, out)):
            bias = cc.reshape(out)
        else:
            raise Unsupported(f"a Gemm bias of shape {list(cc.shape)} is not supported")
    spec = {"type": "linear", "in_features": int(fin), "out_features": int(out), "bias": bias is not None}
    name = c.module("fc", spec, {"weight": np.ascontiguousarray(w), "bias": bias})
    return c.emit(node, "Linear", [x], {}, name)


@handles("MatMul")
def matmul(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    x, w = ins[0], ins[1]
    if isinstance(w, np.ndarray) and not is_symbolic(w) and w.ndim == 2 and len(c.act(node, x).shape) >= 2:
        w = c.const(node, w, "weight")
        spec = {
            "type": "linear",
            "in_features": int(w.shape[0]),
            "out_features": int(w.shape[1]),
            "bias": False,
        }
        return c.emit(node, "Linear", [x], {}, c.module("fc", spec, {"weight": np.ascontiguousarray(w.T)}))
    return c.emit(node, "MatMul", [_operand(c, node, v, n) for v, n in zip(ins, node.inputs, strict=True)])


@handles("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum")
def elementwise(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    return c.emit(node, node.op, [_operand(c, node, v, n) for v, n in zip(ins, node.inputs, strict=True)])


_UNARY = (
    "Relu",
    "Sigmoid",
    "Tanh",
    "HardSwish",
    "Softplus",
    "Exp",
    "Log",
    "Sqrt",
    "Neg",
    "Abs",
    "Reciprocal",
    "Erf",
)


@handles(*_UNARY, "GlobalAveragePool", "GlobalMaxPool")
def unary(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    return c.emit(node, node.op, [c.act(node, ins[0])])


@handles("LeakyRelu", "Elu", "HardSigmoid")
def activation(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    attrs = {k: float(v) for k, v in node.attrs.items() if k in ("alpha", "beta")}
    return c.emit(node, node.op, [c.act(node, ins[0])], attrs)


@handles("Identity")
def identity(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    return [ins[0]]


@handles("Clip")
def clip(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    lo, hi = node.attrs.get("min"), node.attrs.get("max")
    if len(ins) > 1 and ins[1] is not None:
        lo = float(c.const(node, ins[1], "min").reshape(()))
    if len(ins) > 2 and ins[2] is not None:
        hi = float(c.const(node, ins[2], "max").reshape(()))
    return c.emit(node, "Clip", [c.act(node, ins[0])], {"min": lo, "max": hi})


@handles("Softmax")
def softmax(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    x = c.act(node, ins[0])
    axis = int(node.attrs.get("axis", -1 if c.opset >= 13 else 1)) % len(x.shape)
    if c.opset < 13 and axis != len(x.shape) - 1:
        raise Unsupported("Softmax before opset 13 over more than the last axis is not supported")
    return c.emit(node, "Softmax", [x], {"axis": axis})


@handles("Dropout")
def dropout(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    if any(node.outputs[1:]):
        raise Unsupported("Dropout's mask output is not supported")
    ratio = float(node.attrs.get("ratio", 0.5))
    if len(ins) > 1 and ins[1] is not None:
        ratio = float(c.const(node, ins[1], "ratio").reshape(()))
    return c.emit(node, "Dropout", [c.act(node, ins[0])], {"ratio": ratio})


@handles("Cast")
def cast(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    if int(node.attrs.get("to", 0)) != 1:  # TensorProto.FLOAT
        raise Unsupported(f"Cast of an image-derived value to type {node.attrs.get('to')} is not supported")
    return c.emit(node, "Cast", [c.act(node, ins[0])], {"to": "float32"})


@handles("Flatten")
def flatten(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    return c.emit(node, "Flatten", [c.act(node, ins[0])], {"axis": int(node.attrs.get("axis", 1))})


@handles("Reshape")
def reshape(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    x = c.act(node, ins[0])
    if not isinstance(ins[1], np.ndarray):
        raise Unsupported("a Reshape whose shape is computed from image values is not supported")
    shape = [v if v == BATCH else int(v) for v in ins[1].reshape(-1).tolist()]
    if shape and shape[0] == 1 and 0 in x.batch_axes() and c.f.input_shape[0] == 1:
        shape[0] = BATCH  # a graph exported for batch 1 that bakes it into a Reshape
        c.notes.append(
            f"Reshape '{node.name}': the batch size 1 written into the graph reads as the input's batch"
        )
    return c.emit(node, "Reshape", [x], {"shape": shape, "allowzero": int(node.attrs.get("allowzero", 0))})


@handles("Transpose")
def transpose(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    x = c.act(node, ins[0])
    perm = [int(p) for p in node.attrs.get("perm", range(len(x.shape) - 1, -1, -1))]
    return c.emit(node, "Transpose", [x], {"perm": perm})


def _axes(c: Converter, node: Node, ins: list[Any], index: int) -> list[int] | None:
    if len(ins) > index and ins[index] is not None:
        return c.ints(node, ins[index], "axes")
    axes = node.attrs.get("axes")
    return None if axes is None else [int(a) for a in axes]


@handles("Squeeze", "Unsqueeze")
def squeeze(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    axes = _axes(c, node, ins, 1)
    if node.op == "Unsqueeze" and not axes:
        raise Unsupported("Unsqueeze needs axes")
    return c.emit(node, node.op, [c.act(node, ins[0])], {"axes": axes or []})


@handles("Concat")
def concat(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    return c.emit(
        node,
        "Concat",
        [_operand(c, node, v, n) for v, n in zip(ins, node.inputs, strict=True)],
        {"axis": int(node.attrs["axis"])},
    )


@handles("Split")
def split(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    x = c.act(node, ins[0])
    axis = int(node.attrs.get("axis", 0)) % len(x.shape)
    if axis in x.batch_axes():
        raise Unsupported("splitting the batch axis is not supported")
    sizes = c.ints(node, ins[1], "split") if len(ins) > 1 and ins[1] is not None else node.attrs.get("split")
    n = len(node.outputs)
    if sizes is None:
        step = math.ceil(x.shape[axis] / n)
        sizes = [min(step, x.shape[axis] - i * step) for i in range(n)]
    return c.emit(node, "Split", [x], {"axis": axis, "split": [int(s) for s in sizes]}, n_out=n)


@handles("Slice")
def slice_(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    x = c.act(node, ins[0])
    if c.opset >= 10:
        starts, ends = c.ints(node, ins[1], "starts"), c.ints(node, ins[2], "ends")
        axes = (
            c.ints(node, ins[3], "axes") if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        )
        steps = c.ints(node, ins[4], "steps") if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    else:
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        axes, steps = list(node.attrs.get("axes", range(len(starts)))), [1] * len(starts)
    if any(s < 1 for s in steps):
        raise Unsupported(f"Slice steps {steps} (only positive steps are supported)")
    clamp = lambda v: max(-_BIG, min(_BIG, int(v)))  # noqa: E731
    attrs = {
        "starts": [clamp(v) for v in starts],
        "ends": [clamp(v) for v in ends],
        "axes": [a % len(x.shape) for a in axes],
        "steps": steps,
    }
    return c.emit(node, "Slice", [x], attrs)


@handles("Gather")
def gather(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    x = c.act(node, ins[0])
    idx = ins[1]
    if not isinstance(idx, np.ndarray) or idx.dtype.kind not in "iu" or idx.ndim > 1:
        raise Unsupported("only Gather with constant scalar or 1-D indices is supported")
    index: int | list[int] = int(idx) if idx.ndim == 0 else [int(i) for i in idx]
    return c.emit(node, "Gather", [x], {"axis": int(node.attrs.get("axis", 0)), "indices": index})


@handles("AveragePool", "MaxPool")
def pool(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    x = c.act(node, ins[0])
    if any(node.outputs[1:]):
        raise Unsupported("MaxPool's indices output is not supported")
    kernel = [int(k) for k in node.attrs["kernel_shape"]]
    strides, dilations, pads = _spatial(c, node, x, kernel)
    attrs: dict[str, Any] = {
        "kernel": kernel,
        "stride": strides,
        "pad": [pads[1], pads[3], pads[0], pads[2]],
        "ceil_mode": bool(node.attrs.get("ceil_mode", 0)),
    }
    if node.op == "MaxPool":
        attrs["dilation"] = dilations
    else:
        attrs["count_include_pad"] = bool(node.attrs.get("count_include_pad", 0))
    return c.emit(node, node.op, [x], attrs)


@handles("Pad")
def pad(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    x = c.act(node, ins[0])
    rank = len(x.shape)
    pads = (
        c.ints(node, ins[1], "pads")
        if len(ins) > 1 and ins[1] is not None
        else list(node.attrs.get("pads", []))
    )
    value = node.attrs.get("value", 0.0)
    if len(ins) > 2 and ins[2] is not None:
        value = float(c.const(node, ins[2], "constant_value").reshape(()))
    axes = c.ints(node, ins[3], "axes") if len(ins) > 3 and ins[3] is not None else list(range(rank))
    if len(pads) != 2 * len(axes) or min(pads, default=0) < 0:
        raise Unsupported(f"pads {pads} (negative or not two per axis) are not supported")
    full = [0] * (2 * rank)
    for i, a in enumerate(axes):
        full[a % rank], full[rank + a % rank] = pads[i], pads[len(axes) + i]
    torch_pads: list[int] = []
    for a in range(rank - 1, -1, -1):  # F.pad: last axis first, (begin, end) pairs
        torch_pads += [full[a], full[rank + a]]
    while torch_pads[-2:] == [
        0,
        0,
    ]:  # unpadded leading axes (F.pad's reflect/edge modes pad trailing axes only)
        torch_pads = torch_pads[:-2]
    return c.emit(
        node,
        "Pad",
        [x],
        {"pads": torch_pads, "mode": node.attrs.get("mode", "constant"), "value": float(value)},
    )


@handles("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceL1")
def reduce(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    x = c.act(node, ins[0])
    axes = _axes(c, node, ins, 1)
    if not axes and node.attrs.get("noop_with_empty_axes", 0):
        return [x]
    return c.emit(node, node.op, [x], {"axes": axes or [], "keepdims": bool(node.attrs.get("keepdims", 1))})


@handles("DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear")
def quantised_activations(c: Converter, node: Node, ins: list[Any]) -> list[Any]:
    raise Unsupported(
        f"unsupported op {node.op} on image-derived values (quantised activations); import the float model "
        "(weights-only quantisation is fine: it is dequantised at import)"
    )
