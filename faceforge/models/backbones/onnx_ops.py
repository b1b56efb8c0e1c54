"""The operations of an imported ONNX graph, run by PyTorch (the program of :mod:`.onnx_graph`).

Every node of an imported graph is one of two things:

* **module-backed**: the node's weights live in a real ``nn.Module``, so they train, load and freeze like any
  faceforge layer: ``Conv`` -> ``nn.Conv2d`` (asymmetric pads applied by ``F.pad`` first), ``BatchNormalization``
  -> ``nn.BatchNorm1d/2d`` with its running statistics (PyTorch momentum = 1 - ONNX momentum), ``PRelu`` ->
  ``nn.PReLU`` (one slope per channel, or one in all) or :class:`SlopePReLU` (any other slope shape), ``Gemm`` /
  ``MatMul`` with a constant weight -> ``nn.Linear`` (run in fp32 with autocast off, as faceforge's own
  embedding heads);
* **a function** of its input tensors whose attributes are frozen plain values: the importer has folded the
  constant inputs ONNX gives some operators (Reshape's shape, Pad's pads, Clip's bounds, the axes of Squeeze and
  ReduceMean from opset 13/18, Dropout's ratio) into attributes, so the program needs no integer tensors.

Formulas follow the ONNX operator specification (``onnx/docs/Operators.md``, opsets 7-21); broadcasting is
numpy's, as in PyTorch. ``Reshape`` shapes may hold ``"N"``, the batch size of the graph's input, where the
source graph computed it with ``Shape``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceforge.core.precision import no_autocast

__all__ = [
    "MODULE_OPS",
    "OPS",
    "ModuleFn",
    "OpContext",
    "SlopePReLU",
    "build_module",
    "build_op",
    "module_call",
]

#: bound on the number of elements of one weight tensor (far above any face network's, far below exhausting memory)
MAX_TENSOR_ELEMENTS = 1 << 28


@dataclass
class OpContext:
    """What a node may need besides its inputs: the input batch size (``"N"`` in shapes) and train/eval mode."""

    batch: int | torch.SymInt
    training: bool


OpFn = Callable[[list[Tensor], OpContext], list[Tensor]]


class SlopePReLU(nn.Module):
    """ONNX ``PRelu`` with a slope of any broadcastable shape: ``y = x if x >= 0 else slope * x``."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full(tuple(shape), 0.25))

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x >= 0, x, x * self.weight)


# ------------------------------------------------------------------------------------------ attribute checks
def _int(value: Any, what: str, lo: int = 0, hi: int = 1 << 31) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{what} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _ints(value: Any, what: str, n: int | None = None, lo: int = -(1 << 62), hi: int = 1 << 62) -> list[int]:
    if not isinstance(value, list) or (n is not None and len(value) != n) or len(value) > 64:
        raise ValueError(
            f"{what} must be a list of {n if n is not None else 'up to 64'} integers, got {value!r}"
        )
    return [_int(v, what, lo, hi) for v in value]


def _float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _numel_ok(shape: Sequence[int], what: str) -> None:
    if math.prod(shape) > MAX_TENSOR_ELEMENTS:
        raise ValueError(f"{what} has {math.prod(shape)} elements, more than {MAX_TENSOR_ELEMENTS}")


# ------------------------------------------------------------------------------------------ module-backed ops
def build_module(spec: dict[str, Any]) -> nn.Module:
    """The ``nn.Module`` a module entry of the program describes (shapes checked, nothing else allocated)."""
    kind = spec.get("type")
    if kind == "conv2d":
        cin, cout = (
            _int(spec["in_channels"], "conv in_channels", 1),
            _int(spec["out_channels"], "conv out", 1),
        )
        groups = _int(spec.get("groups", 1), "conv groups", 1)
        kernel = _ints(spec["kernel_size"], "conv kernel_size", 2, 1, 4096)
        if cin % groups or cout % groups:
            raise ValueError(f"conv channels {cin}->{cout} are not divisible by groups={groups}")
        _numel_ok([cout, cin // groups, *kernel], "a conv weight")
        return nn.Conv2d(
            cin,
            cout,
            tuple(kernel),
            stride=tuple(_ints(spec.get("stride", [1, 1]), "conv stride", 2, 1, 4096)),
            padding=tuple(_ints(spec.get("padding", [0, 0]), "conv padding", 2, 0, 4096)),
            dilation=tuple(_ints(spec.get("dilation", [1, 1]), "conv dilation", 2, 1, 4096)),
            groups=groups,
            bias=bool(spec.get("bias", True)),
        )
    if kind == "batchnorm":
        c = _int(spec["num_features"], "batchnorm num_features", 1, MAX_TENSOR_ELEMENTS)
        eps, momentum = _float(spec.get("eps", 1e-5), "eps"), _float(spec.get("momentum", 0.1), "momentum")
        cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}.get(spec.get("dims"))
        if cls is None:
            raise ValueError(f"batchnorm dims must be 1 or 2, got {spec.get('dims')!r}")
        return cls(c, eps=eps, momentum=momentum)
    if kind == "prelu":
        return nn.PReLU(_int(spec["num_parameters"], "prelu num_parameters", 1, MAX_TENSOR_ELEMENTS))
    if kind == "slope_prelu":
        shape = _ints(spec["shape"], "prelu slope shape", None, 1, MAX_TENSOR_ELEMENTS)
        _numel_ok(shape, "a prelu slope")
        return SlopePReLU(shape)
    if kind == "linear":
        fin = _int(spec["in_features"], "linear in_features", 1, MAX_TENSOR_ELEMENTS)
        fout = _int(spec["out_features"], "linear out_features", 1, MAX_TENSOR_ELEMENTS)
        _numel_ok([fin, fout], "a linear weight")
        return nn.Linear(fin, fout, bias=bool(spec.get("bias", True)))
    raise ValueError(f"unknown module type {kind!r}")


#: module types per module-backed ONNX op
MODULE_OPS: dict[str, tuple[str, ...]] = {
    "Conv": ("conv2d",),
    "BatchNormalization": ("batchnorm",),
    "PRelu": ("prelu", "slope_prelu"),
    "Linear": ("linear",),
}


ModuleFn = Callable[[nn.Module, list[Tensor], OpContext], list[Tensor]]


def module_call(op: str, attrs: dict[str, Any]) -> ModuleFn:
    """The function that runs a module-backed node, given its module (looked up by the caller at each call, so
    that a copied network runs its own modules)."""
    if op == "Conv":
        pad = _ints(attrs["pad"], "Conv pad", 4, 0, 4096) if "pad" in attrs else None

        def conv(module: nn.Module, xs: list[Tensor], ctx: OpContext) -> list[Tensor]:
            return [module(F.pad(xs[0], pad) if pad else xs[0])]

        return conv
    if op == "Linear":

        def linear(module: nn.Module, xs: list[Tensor], ctx: OpContext) -> list[Tensor]:
            with no_autocast(xs[0].device):
                return [module(xs[0].float())]

        return linear
    return lambda module, xs, ctx: [module(xs[0])]


# ------------------------------------------------------------------------------------------ plain ops
def _unary(fn: Callable[[Tensor], Tensor]) -> Callable[[dict[str, Any]], OpFn]:
    return lambda attrs: lambda xs, ctx: [fn(xs[0])]


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[dict[str, Any]], OpFn]:
    return lambda attrs: lambda xs, ctx: [fn(xs[0], xs[1])]


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[dict[str, Any]], OpFn]:
    def run(xs: list[Tensor], ctx: OpContext) -> list[Tensor]:
        y = xs[0]
        for x in xs[1:]:
            y = fn(y, x)
        return [y]

    return lambda attrs: run


def _leaky_relu(attrs: dict[str, Any]) -> OpFn:
    alpha = _float(attrs.get("alpha", 0.01), "LeakyRelu alpha")
    return lambda xs, ctx: [F.leaky_relu(xs[0], alpha)]


def _elu(attrs: dict[str, Any]) -> OpFn:
    alpha = _float(attrs.get("alpha", 1.0), "Elu alpha")
    return lambda xs, ctx: [F.elu(xs[0], alpha)]


def _hard_sigmoid(attrs: dict[str, Any]) -> OpFn:
    a, b = _float(attrs.get("alpha", 0.2), "HardSigmoid alpha"), _float(attrs.get("beta", 0.5), "beta")
    return lambda xs, ctx: [torch.clamp(a * xs[0] + b, 0.0, 1.0)]


def _clip(attrs: dict[str, Any]) -> OpFn:
    lo = None if attrs.get("min") is None else _float(attrs["min"], "Clip min")
    hi = None if attrs.get("max") is None else _float(attrs["max"], "Clip max")
    return lambda xs, ctx: [torch.clamp(xs[0], lo, hi)]


def _softmax(attrs: dict[str, Any]) -> OpFn:
    axis = _int(attrs.get("axis", -1), "Softmax axis", -64, 64)
    return lambda xs, ctx: [torch.softmax(xs[0], axis)]


def _dropout(attrs: dict[str, Any]) -> OpFn:
    p = _float(attrs.get("ratio", 0.5), "Dropout ratio")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"Dropout ratio must be in [0, 1), got {p}")
    return lambda xs, ctx: [F.dropout(xs[0], p, ctx.training)]


def _cast(attrs: dict[str, Any]) -> OpFn:
    if attrs.get("to") != "float32":
        raise ValueError(f"Cast of an activation is only supported to float32, got {attrs.get('to')!r}")
    return lambda xs, ctx: [xs[0].float()]


def _flatten(attrs: dict[str, Any]) -> OpFn:
    axis = _int(attrs.get("axis", 1), "Flatten axis", -64, 64)

    def run(xs: list[Tensor], ctx: OpContext) -> list[Tensor]:
        x = xs[0]
        a = axis % x.dim() if axis < 0 else axis
        return [x.reshape(math.prod(x.shape[:a]), -1)]

    return run


def _reshape(attrs: dict[str, Any]) -> OpFn:
    shape = attrs.get("shape")
    if not isinstance(shape, list) or len(shape) > 64:
        raise ValueError(f"Reshape shape must be a list, got {shape!r}")
    for v in shape:
        if v != "N":
            _int(v, "Reshape shape entry", -1, MAX_TENSOR_ELEMENTS)
    allowzero = bool(attrs.get("allowzero", False))

    def run(xs: list[Tensor], ctx: OpContext) -> list[Tensor]:
        x = xs[0]
        target = [
            ctx.batch if v == "N" else (x.shape[i] if v == 0 and not allowzero else v)
            for i, v in enumerate(shape)
        ]
        return [x.reshape(target)]

    return run


def _transpose(attrs: dict[str, Any]) -> OpFn:
    perm = _ints(attrs["perm"], "Transpose perm", None, 0, 63)
    return lambda xs, ctx: [xs[0].permute(perm)]


def _squeeze(attrs: dict[str, Any]) -> OpFn:
    axes = _ints(attrs.get("axes", []), "Squeeze axes", None, -64, 63)

    def run(xs: list[Tensor], ctx: OpContext) -> list[Tensor]:
        x = xs[0]
        return [x.squeeze(tuple(axes)) if axes else x.squeeze()]

    return run


def _unsqueeze(attrs: dict[str, Any]) -> OpFn:
    axes = _ints(attrs["axes"], "Unsqueeze axes", None, -64, 63)

    def run(xs: list[Tensor], ctx: OpContext) -> list[Tensor]:
        x = xs[0]
        rank = x.dim() + len(axes)
        for a in sorted(a % rank for a in axes):
            x = x.unsqueeze(a)
        return [x]

    return run


def _concat(attrs: dict[str, Any]) -> OpFn:
    axis = _int(attrs["axis"], "Concat axis", -64, 63)
    return lambda xs, ctx: [torch.cat(xs, axis)]


def _split(attrs: dict[str, Any]) -> OpFn:
    axis = _int(attrs.get("axis", 0), "Split axis", -64, 63)
    sizes = _ints(attrs["split"], "Split sizes", None, 0, MAX_TENSOR_ELEMENTS)
    return lambda xs, ctx: list(torch.split(xs[0], sizes, axis))


def _slice(attrs: dict[str, Any]) -> OpFn:
    starts, ends = _ints(attrs["starts"], "Slice starts"), _ints(attrs["ends"], "Slice ends")
    axes = _ints(attrs["axes"], "Slice axes", len(starts), -64, 63)
    steps = _ints(attrs.get("steps", [1] * len(starts)), "Slice steps", len(starts), 1, 1 << 31)
    if len(ends) != len(starts):
        raise ValueError("Slice starts and ends differ in length")

    def run(xs: list[Tensor], ctx: OpContext) -> list[Tensor]:
        x = xs[0]
        index: list[slice] = [slice(None)] * x.dim()
        for a, s, e, st in zip(axes, starts, ends, steps, strict=True):
            index[a] = slice(s, e, st)
        return [x[tuple(index)]]

    return run


def _gather(attrs: dict[str, Any]) -> OpFn:
    axis = _int(attrs.get("axis", 0), "Gather axis", -64, 63)
    index = attrs["indices"]
    if isinstance(index, list):
        idx = _ints(index, "Gather indices", None, -MAX_TENSOR_ELEMENTS, MAX_TENSOR_ELEMENTS)

        def run(xs: list[Tensor], ctx: OpContext) -> list[Tensor]:
            x = xs[0]
            t = torch.tensor([i % x.shape[axis] for i in idx], device=x.device)
            return [x.index_select(axis, t)]

        return run
    i = _int(index, "Gather index", -MAX_TENSOR_ELEMENTS, MAX_TENSOR_ELEMENTS)
    return lambda xs, ctx: [xs[0].select(axis, i)]


def _pool_args(attrs: dict[str, Any], op: str) -> tuple[list[int], list[int], list[int], bool]:
    kernel = _ints(attrs["kernel"], f"{op} kernel", 2, 1, 4096)
    stride = _ints(attrs.get("stride", [1, 1]), f"{op} stride", 2, 1, 4096)
    pad = _ints(attrs.get("pad", [0, 0, 0, 0]), f"{op} pad", 4, 0, 4096)
    return kernel, stride, pad, bool(attrs.get("ceil_mode", False))


def _max_pool(attrs: dict[str, Any]) -> OpFn:
    kernel, stride, pad, ceil = _pool_args(attrs, "MaxPool")
    dilation = _ints(attrs.get("dilation", [1, 1]), "MaxPool dilation", 2, 1, 4096)

    def run(xs: list[Tensor], ctx: OpContext) -> list[Tensor]:
        x = F.pad(xs[0], pad, value=-math.inf) if any(pad) else xs[0]
        return [F.max_pool2d(x, kernel, stride, 0, dilation, ceil_mode=ceil)]

    return run


def _avg_pool(attrs: dict[str, Any]) -> OpFn:
    kernel, stride, pad, ceil = _pool_args(attrs, "AveragePool")
    include = bool(attrs.get("count_include_pad", False))
    symmetric = pad[0] == pad[1] and pad[2] == pad[3] and pad[0] * 2 <= kernel[1] and pad[2] * 2 <= kernel[0]
    if any(pad) and not symmetric:
        raise ValueError(f"AveragePool with asymmetric pads {pad} is not supported")

    def run(xs: list[Tensor], ctx: OpContext) -> list[Tensor]:
        return [F.avg_pool2d(xs[0], kernel, stride, (pad[2], pad[0]), ceil, include)]

    return run


def _pad(attrs: dict[str, Any]) -> OpFn:
    pads = _ints(attrs["pads"], "Pad pads", None, 0, 4096)
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(
        attrs.get("mode", "constant")
    )
    if mode is None:
        raise ValueError(f"Pad mode {attrs.get('mode')!r} is not supported")
    value = _float(attrs.get("value", 0.0), "Pad value")
    if mode == "constant":
        return lambda xs, ctx: [F.pad(xs[0], pads, "constant", value)]
    return lambda xs, ctx: [F.pad(xs[0], pads, mode)]


_REDUCERS: dict[str, Callable[..., Tensor]] = {
    "ReduceMean": lambda x, d, k: x.mean(d, keepdim=k),
    "ReduceSum": lambda x, d, k: x.sum(d, keepdim=k),
    "ReduceMax": lambda x, d, k: x.amax(d, keepdim=k),
    "ReduceMin": lambda x, d, k: x.amin(d, keepdim=k),
    "ReduceL2": lambda x, d, k: x.square().sum(d, keepdim=k).sqrt(),
    "ReduceL1": lambda x, d, k: x.abs().sum(d, keepdim=k),
}


def _reduce(op: str) -> Callable[[dict[str, Any]], OpFn]:
    def build(attrs: dict[str, Any]) -> OpFn:
        axes = _ints(attrs["axes"], f"{op} axes", None, -64, 63)
        keep = bool(attrs.get("keepdims", True))
        fn = _REDUCERS[op]
        return lambda xs, ctx: [fn(xs[0], tuple(axes) if axes else tuple(range(xs[0].dim())), keep)]

    return build


def _global_pool(kind: str) -> Callable[[dict[str, Any]], OpFn]:
    def run(xs: list[Tensor], ctx: OpContext) -> list[Tensor]:
        dims = tuple(range(2, xs[0].dim()))
        return [xs[0].mean(dims, keepdim=True) if kind == "avg" else xs[0].amax(dims, keepdim=True)]

    return lambda attrs: run


def _matmul(attrs: dict[str, Any]) -> OpFn:
    return lambda xs, ctx: [torch.matmul(xs[0], xs[1])]


OPS: dict[str, Callable[[dict[str, Any]], OpFn]] = {
    "Identity": _unary(lambda x: x),
    "Dropout": _dropout,
    "Cast": _cast,
    "Relu": _unary(torch.relu),
    "LeakyRelu": _leaky_relu,
    "Elu": _elu,
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _unary(F.hardswish),
    "Softplus": _unary(F.softplus),
    "Softmax": _softmax,
    "Clip": _clip,
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Sqrt": _unary(torch.sqrt),
    "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs),
    "Reciprocal": _unary(torch.reciprocal),
    "Erf": _unary(torch.erf),
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(torch.div),
    "Pow": _binary(torch.pow),
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add),
    "MatMul": _matmul,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Gather": _gather,
    "GlobalAveragePool": _global_pool("avg"),
    "GlobalMaxPool": _global_pool("max"),
    "AveragePool": _avg_pool,
    "MaxPool": _max_pool,
    "Pad": _pad,
    **{op: _reduce(op) for op in _REDUCERS},
}


def build_op(op: str, attrs: dict[str, Any]) -> OpFn:
    """The function of a plain node, its attributes checked; ValueError for an unknown op or a bad attribute."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}")
    return OPS[op](attrs)
