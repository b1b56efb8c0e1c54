"""How large a node's output can be, from its input shapes and attributes, before the import runs it.

The converter runs every node once on small zero batches (shape inference, :mod:`.onnx_convert`). Weights are
bounded by the file's size, but an activation is not: a hostile graph can ask a 1x1 Conv for 65,536 output
channels at 4096x4096, or pad by thousands of pixels, or broadcast two modest tensors into a huge one. So the
ops that can grow their input are bounded first, with the output-size formulas of the ONNX specification::

    Conv / pools:  out = floor((in + pad_begin + pad_end - dilation * (kernel - 1) - 1) / stride) + 1  (ceil_mode: ceil)
    Pad:           out = in + pad_begin + pad_end
    Linear:        prod(in[:-1]) * out_features;  MatMul: broadcast(batch dims) * M * P
    Concat:        the sum along the axis;  element-wise ops: numpy broadcasting of the inputs' shapes

Every other supported op gives at most as many elements as its largest input (Gather with an index list: its
length times the other axes). The caller refuses a node whose bound exceeds :data:`MAX_ACTIVATION_ELEMENTS`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["MAX_ACTIVATION_ELEMENTS", "output_bound"]

#: the largest activation the import's shape-inference run may create (1 GiB of float32)
MAX_ACTIVATION_ELEMENTS = 1 << 28

_BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "PRelu"}


def _spatial(size: int, k: int, stride: int, pad: int, dilation: int = 1, ceil: bool = False) -> int:
    span = size + pad - dilation * (k - 1) - 1
    return max((math.ceil(span / stride) if ceil else span // stride) + 1, 0)


def output_bound(
    op: str, shapes: Sequence[Sequence[int]], attrs: dict[str, Any], module: dict[str, Any] | None
) -> int:
    """An upper bound on the number of elements of the node's (largest) output."""
    biggest = max((math.prod(s) for s in shapes), default=0)
    x = list(shapes[0]) if shapes else []
    if op == "Conv" and module and len(x) == 4:
        pad = attrs.get("pad", [0, 0, 0, 0])  # [left, right, top, bottom]
        k, s, p, d = module["kernel_size"], module["stride"], module["padding"], module["dilation"]
        h = _spatial(x[2], k[0], s[0], 2 * p[0] + pad[2] + pad[3], d[0])
        w = _spatial(x[3], k[1], s[1], 2 * p[1] + pad[0] + pad[1], d[1])
        return x[0] * module["out_channels"] * h * w
    if op in ("MaxPool", "AveragePool") and len(x) == 4:
        k, s, pad = attrs["kernel"], attrs.get("stride", [1, 1]), attrs.get("pad", [0, 0, 0, 0])
        d, ceil = attrs.get("dilation", [1, 1]), bool(attrs.get("ceil_mode", False))
        h = _spatial(x[2], k[0], s[0], pad[2] + pad[3], d[0], ceil)
        w = _spatial(x[3], k[1], s[1], pad[0] + pad[1], d[1], ceil)
        return x[0] * x[1] * h * w
    if op == "Pad":
        pads = attrs["pads"]  # (begin, end) pairs, last axis first
        grown = list(x)
        for i in range(len(pads) // 2):
            if i < len(grown):
                grown[-1 - i] += pads[2 * i] + pads[2 * i + 1]
        return math.prod(grown)
    if op == "Linear" and module:
        return math.prod(x[:-1]) * module["out_features"]
    if op == "MatMul" and len(shapes) == 2 and min(len(shapes[0]), len(shapes[1])) >= 2:
        a, b = shapes
        batch = torch.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
        return math.prod(batch) * a[-2] * b[-1]
    if op == "Concat":
        return sum(math.prod(s) for s in shapes)
    if op in _BROADCAST:
        return math.prod(torch.broadcast_shapes(*(tuple(s) for s in shapes)))
    if op == "Gather" and isinstance(attrs.get("indices"), list) and x:
        axis = attrs.get("axis", 0) % len(x)
        return math.prod(x) // max(x[axis], 1) * len(attrs["indices"])
    return biggest
