"""Constant folding at import: the nodes of an ONNX graph whose inputs are all constants, evaluated with numpy.

Quantised weights become float here, so the trainable network holds float weights only:
``DequantizeLinear`` (ONNX opsets 10-21)::

    y = (x - zero_point) * scale            computed as float32((int32(x) - int32(zero_point))) * scale

per tensor (scalar ``scale``), per axis (1-D ``scale`` along ``axis``, opset 13) or **blocked** (opset 21:
``scale`` has ``x``'s rank and ``ceil(x.shape[axis] / block_size)`` entries along ``axis``; element ``i`` along
``axis`` uses entry ``i // block_size``), as onnxruntime computes it (one float32 rounding).

Shape computations (``Shape`` -> ``Gather`` -> ``Concat`` -> ``Reshape``, as torch.onnx writes ``x.view(x.size(0),
-1)``) are folded too: the batch size is the symbol ``"N"`` in an object array, which the index ops carry along
and any arithmetic on it refuses (only shape lists that keep the batch size as it is are supported).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["BATCH", "FOLDABLE", "FoldError", "dequantize_linear", "fold", "is_symbolic"]

BATCH = "N"
_INT64_MAX = np.iinfo(np.int64).max


class FoldError(ValueError):
    """A constant node that cannot be folded; the importer turns it into a one-line refusal."""


def is_symbolic(a: np.ndarray) -> bool:
    return a.dtype == object


def dequantize_linear(
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None = None,
    axis: int = 1,
    block_size: int = 0,
) -> np.ndarray:
    """ONNX DequantizeLinear of integer ``x`` (see the module doc); returns ``scale``'s float dtype."""
    x = np.asarray(x)
    scale = np.asarray(scale)
    if scale.dtype.kind != "f":
        raise FoldError(f"DequantizeLinear scale must be float, got {scale.dtype}")
    zp = np.zeros((), np.int32) if zero_point is None else np.asarray(zero_point).astype(np.int32)
    if zp.shape not in ((), scale.shape) and zp.size != 1:
        raise FoldError(f"DequantizeLinear zero_point shape {zp.shape} does not match scale {scale.shape}")
    if scale.size == 1 and block_size == 0:  # per tensor
        s, z = scale.reshape(()), zp.reshape(())
    else:
        if x.ndim == 0:
            raise FoldError("DequantizeLinear: a per-axis scale needs a tensor, got a scalar")
        ax = axis % x.ndim
        if block_size:
            if scale.ndim != x.ndim or any(
                scale.shape[d] != (math.ceil(x.shape[d] / block_size) if d == ax else x.shape[d])
                for d in range(x.ndim)
            ):
                raise FoldError(
                    f"DequantizeLinear: blocked scale {list(scale.shape)} does not fit x {list(x.shape)} "
                    f"with block_size {block_size} on axis {ax}"
                )
            s = np.repeat(scale, block_size, axis=ax).take(np.arange(x.shape[ax]), axis=ax)
            z = (
                zp
                if zp.ndim == 0
                else np.repeat(zp, block_size, axis=ax).take(np.arange(x.shape[ax]), axis=ax)
            )
        else:
            if scale.ndim != 1 or scale.shape[0] != x.shape[ax]:
                raise FoldError(
                    f"DequantizeLinear: per-axis scale {list(scale.shape)} does not fit x {list(x.shape)} on axis {ax}"
                )
            view = [1] * x.ndim
            view[ax] = -1
            s = scale.reshape(view)
            z = zp.reshape(view) if zp.ndim else zp
    return ((x.astype(np.int32) - z).astype(scale.dtype) * s).astype(scale.dtype)


def _ints(a: np.ndarray, what: str) -> list[int]:
    if is_symbolic(a):
        raise FoldError(f"{what} depends on the batch size")
    return [int(v) for v in np.asarray(a).reshape(-1)]


def _no_batch(*arrays: np.ndarray) -> None:
    if any(is_symbolic(a) for a in arrays):
        raise FoldError(
            "arithmetic on the batch size (a shape computation beyond Shape/Gather/Concat/Reshape)"
        )


def _arith(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[..., list[np.ndarray]]:
    def run(attrs: dict[str, Any], a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
        _no_batch(a, b)
        out = fn(a, b)
        return [out.astype(np.result_type(a, b)) if a.dtype.kind in "iu" and b.dtype.kind in "iu" else out]

    return run


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[..., list[np.ndarray]]:
    def run(attrs: dict[str, Any], a: np.ndarray) -> list[np.ndarray]:
        _no_batch(a)
        return [fn(a).astype(a.dtype)]

    return run


def _reshape(attrs: dict[str, Any], x: np.ndarray, shape: np.ndarray) -> list[np.ndarray]:
    target = _ints(shape, "a Reshape shape of a constant")
    if not attrs.get("allowzero", 0):
        target = [x.shape[i] if v == 0 else v for i, v in enumerate(target)]
    return [x.reshape(target)]


def _dequantize(
    attrs: dict[str, Any], x: np.ndarray, scale: np.ndarray, zp: np.ndarray | None = None
) -> list[np.ndarray]:
    return [dequantize_linear(x, scale, zp, int(attrs.get("axis", 1)), int(attrs.get("block_size", 0)))]


def _squeeze(attrs: dict[str, Any], x: np.ndarray, axes: np.ndarray | None = None) -> list[np.ndarray]:
    ax = attrs.get("axes") if axes is None else _ints(axes, "Squeeze axes")
    return [np.squeeze(x, axis=tuple(ax)) if ax else np.squeeze(x)]


def _unsqueeze(attrs: dict[str, Any], x: np.ndarray, axes: np.ndarray | None = None) -> list[np.ndarray]:
    ax = attrs.get("axes") if axes is None else _ints(axes, "Unsqueeze axes")
    rank = x.ndim + len(ax)
    for a in sorted(int(a) % rank for a in ax):
        x = np.expand_dims(x, a)
    return [x]


def _slice(attrs: dict[str, Any], x: np.ndarray, *args: np.ndarray | None) -> list[np.ndarray]:
    if args:
        starts, ends = _ints(args[0], "Slice starts"), _ints(args[1], "Slice ends")
        axes = (
            _ints(args[2], "Slice axes")
            if len(args) > 2 and args[2] is not None
            else list(range(len(starts)))
        )
        steps = _ints(args[3], "Slice steps") if len(args) > 3 and args[3] is not None else [1] * len(starts)
    else:
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
        axes, steps = list(attrs.get("axes", range(len(starts)))), [1] * len(starts)
    index = [slice(None)] * x.ndim
    for a, s, e, st in zip(axes, starts, ends, steps, strict=True):
        index[a] = slice(s, None if e >= _INT64_MAX else e, st)
    return [x[tuple(index)]]


def _concat(attrs: dict[str, Any], *xs: np.ndarray) -> list[np.ndarray]:
    sym = any(is_symbolic(x) for x in xs)
    return [np.concatenate([x.astype(object) if sym else x for x in xs], axis=int(attrs["axis"]))]


def _gather(attrs: dict[str, Any], x: np.ndarray, idx: np.ndarray) -> list[np.ndarray]:
    return [np.take(x, idx.astype(np.int64), axis=int(attrs.get("axis", 0)))]


def _cast(attrs: dict[str, Any], x: np.ndarray) -> list[np.ndarray]:
    from onnx import helper

    if is_symbolic(x):
        return [x]
    return [x.astype(helper.tensor_dtype_to_np_dtype(int(attrs["to"])))]


def _transpose(attrs: dict[str, Any], x: np.ndarray) -> list[np.ndarray]:
    perm = attrs.get("perm")
    return [np.transpose(x, perm).copy()]


def _shape(attrs: dict[str, Any], x: np.ndarray) -> list[np.ndarray]:
    dims = np.array(x.shape, np.int64)
    return [dims[attrs.get("start", 0) : attrs.get("end", len(dims))]]


def _flatten(attrs: dict[str, Any], x: np.ndarray) -> list[np.ndarray]:
    axis = int(attrs.get("axis", 1)) % max(x.ndim, 1)
    return [x.reshape(math.prod(x.shape[:axis]), -1)]


FOLDABLE: dict[str, Callable[..., list[np.ndarray]]] = {
    "Identity": lambda attrs, x: [x],
    "Dropout": lambda attrs, x, *rest: [x],
    "Cast": _cast,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": _concat,
    "Gather": _gather,
    "Slice": _slice,
    "Shape": _shape,
    "DequantizeLinear": _dequantize,
    "Add": _arith(np.add),
    "Sub": _arith(np.subtract),
    "Mul": _arith(np.multiply),
    "Div": _arith(lambda a, b: a // b if a.dtype.kind in "iu" and b.dtype.kind in "iu" else a / b),
    "Pow": _arith(np.power),
    "Neg": _unary(np.negative),
    "Sqrt": _unary(np.sqrt),
    "Reciprocal": _unary(np.reciprocal),
}


def fold(op: str, attrs: dict[str, Any], inputs: list[np.ndarray | None]) -> list[np.ndarray]:
    """Evaluate a node whose inputs are constants; FoldError if the op cannot be folded here."""
    if op not in FOLDABLE:
        raise FoldError(f"{op} on constants is not supported")
    while inputs and inputs[-1] is None:  # trailing omitted optional inputs
        inputs = inputs[:-1]
    try:
        outs = FOLDABLE[op](attrs, *inputs)
        # numpy hands back scalars for 0-d results (and a bare "N" from an object array): arrays again
        return [
            o if isinstance(o, np.ndarray) else np.array(o, dtype=object if o == BATCH else None)
            for o in outs
        ]
    except FoldError:
        raise
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise FoldError(f"{op} on constants failed ({type(exc).__name__}: {exc})") from None
