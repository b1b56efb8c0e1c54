"""A writer of dlib's serialisation format for the tests: builds small networks byte by byte, following
dlib's ``serialize.h`` (integers, floats as mantissa and exponent, bools, strings) and the layers'
``serialize`` functions (``dlib/dnn/core.h``, ``layers.h``, ``input.h``, ``loss.h``)."""

from __future__ import annotations

import struct

import numpy as np


def integer(value: int) -> bytes:
    """Control byte (bit 7: sign; bits 0-3: byte count), then the magnitude little-endian (0 is ``01 00``)."""
    mag = abs(int(value))
    body = mag.to_bytes(max(1, (mag.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if value < 0 else 0)]) + body


def real(value: float) -> bytes:
    """dlib's float_details: mantissa (int64) then exponent (int16), value = mantissa * 2**exponent."""
    if np.isnan(value):
        return integer(0) + integer(32002)
    if np.isinf(value):
        return integer(0) + integer(32000 if value > 0 else 32001)
    m, e = np.frexp(np.float64(value))
    mantissa, exponent = int(m * (1 << 53)), int(e) - 53
    while mantissa and not mantissa & 0xFF:
        mantissa >>= 8
        exponent += 8
    return integer(mantissa) + integer(exponent if mantissa else 0)


def flag(value: bool) -> bytes:
    return b"1" if value else b"0"


def string(text: str) -> bytes:
    return integer(len(text)) + text.encode("ascii")


def tensor(arr: np.ndarray | None = None, shape: tuple[int, ...] | None = None) -> bytes:
    a = np.zeros(shape or (0, 0, 0, 0), np.float32) if arr is None else np.asarray(arr, np.float32)
    dims = list(a.shape) + [1] * (4 - a.ndim)
    if a.size == 0:
        dims = list(shape or (0, 0, 0, 0))
    return integer(2) + b"".join(integer(d) for d in dims) + struct.pack(f"<{a.size}f", *a.ravel())


def alias(*dims: int) -> bytes:
    return integer(1) + b"".join(integer(d) for d in dims)


# ------------------------------------------------------------------------------------------------ details
def con(
    weight: np.ndarray, bias: np.ndarray, stride: int = 1, padding: int = 1, version: str = "con_4"
) -> bytes:
    f, c, kh, kw = weight.shape
    params = np.concatenate([weight.ravel(), bias.ravel()])
    out = string(version) + tensor(params.reshape(-1, 1, 1, 1)) + integer(f) + integer(kh) + integer(kw)
    out += integer(stride) + integer(stride) + integer(padding) + integer(padding)
    out += alias(f, c, kh, kw) + alias(1, f, 1, 1) + real(1) + real(1) + real(1) + real(0)
    if version in ("con_5", "con_6"):
        out += flag(True)
    if version == "con_6":
        out += flag(False)
    return out


def affine(gamma: np.ndarray, beta: np.ndarray) -> bytes:
    k = len(gamma)
    params = np.concatenate([gamma, beta]).reshape(-1, 1, 1, 1)
    return string("affine_") + tensor(params) + alias(1, k, 1, 1) + alias(1, k, 1, 1) + integer(0)


def bn_con(gamma, beta, mean, var, eps: float = 1e-5) -> bytes:
    k = len(gamma)
    out = string("bn_con2") + tensor(np.concatenate([gamma, beta]).reshape(-1, 1, 1, 1))
    out += alias(1, k, 1, 1) + alias(1, k, 1, 1)
    out += tensor(np.zeros((1, k, 1, 1))) + tensor(np.zeros((1, k, 1, 1)))  # means, invstds (batch)
    out += tensor(np.asarray(mean).reshape(1, k, 1, 1)) + tensor(np.asarray(var).reshape(1, k, 1, 1))
    out += integer(100) + integer(1000) + real(1) + real(1) + real(1) + real(0) + real(eps)
    return out


def fc(weight_in_out: np.ndarray) -> bytes:
    n_in, n_out = weight_in_out.shape
    out = string("fc_2") + integer(n_out) + integer(n_in) + tensor(weight_in_out.reshape(n_in, n_out, 1, 1))
    return (
        out
        + alias(n_in, n_out, 1, 1)
        + alias(0, 0, 0, 0)
        + integer(1)
        + real(1)
        + real(1)
        + real(1)
        + real(0)
    )


def pool(kind: str, kernel: int, stride: int, padding: int = 0) -> bytes:
    return (
        string(f"{kind}_2")
        + integer(kernel)
        + integer(kernel)
        + integer(stride)
        + integer(stride)
        + integer(padding)
        + integer(padding)
    )


def relu() -> bytes:
    return string("relu_")


def add_prev() -> bytes:
    return string("add_prev_")


def loss_metric(margin: float = 0.04, threshold: float = 0.6) -> bytes:
    return string("loss_metric_2") + real(margin) + real(threshold)


def input_rgb(size: int = 150, mean=(122.782, 117.001, 104.298)) -> bytes:
    return string("input_rgb_image_sized") + b"".join(real(m) for m in mean) + integer(size) + integer(size)


def layer_state(next_to_input: bool = False) -> bytes:
    """What add_layer writes after a layer's details: three flags and three (empty) tensors."""
    out = flag(True) + flag(False) + flag(False) + tensor() + tensor() + tensor()
    return out + (integer(1) if next_to_input else b"")


def network(details_input_first: list[tuple[str, bytes]], loss: bytes | None = None) -> bytes:
    """A chain written as dlib writes it. ``details_input_first``: (wrapper, details bytes) pairs from the input
    layer up; wrapper ``"input"`` for the first, ``"layer"`` for computing layers, ``"tag"``/``"skip"`` (details
    ``b""``) for tags and skips."""
    head = b"" if loss is None else integer(1) + loss
    wrappers = details_input_first[1:]
    first_layer = next(i for i, (k, _) in enumerate(wrappers) if k == "layer")
    for i in reversed(range(len(wrappers))):  # wrapper versions, outermost first
        kind = wrappers[i][0]
        head += (integer(3 if i == first_layer else 2)) if kind == "layer" else integer(1)
    body = details_input_first[0][1]
    first = True
    for kind, det in wrappers:
        if kind == "layer":
            body += det + layer_state(next_to_input=first)
            first = False
    return head + body
