"""A reader of dlib's serialisation format (the ``.dat`` files its DNN tools write), in plain Python.

The format is documented in dlib's ``dlib/serialize.h`` (https://github.com/davisking/dlib, Boost licence);
tensors and layers serialise themselves in ``dlib/cuda/tensor.h``, ``dlib/dnn/core.h``, ``layers.h``,
``input.h`` and ``loss.h``. What this module reads:

* **integers** (every C++ integral type): a control byte whose high bit is the sign and whose low four bits
  count the bytes that follow, then the magnitude in little-endian order (``0`` is ``01 00``, ``-5`` is
  ``81 05``, ``300`` is ``02 2c 01``);
* **floats and doubles**: two integers, a 64-bit signed mantissa then a 16-bit exponent, value
  ``mantissa * 2**exponent`` (exponents 32000/32001/32002 mean +inf/-inf/NaN);
* **bools**: the ASCII byte ``'1'`` or ``'0'``; **strings**: the length as an integer, then the bytes;
* **tensors** (``resizable_tensor``): version 2, four dimensions (num_samples, k, nr, nc), then the values
  as 4-byte little-endian IEEE floats; **alias tensors**: version 1 and four dimensions, no data.

A network is a chain of layers written from the outermost (the loss) inward: ``add_loss_layer`` (version 1,
loss details, subnetwork), ``add_layer`` (version 2: subnetwork first, then the layer's details, three
flags and three tensors; the layer next to the input writes version 2 or 3: the input layer, the details,
the flags, tensors and, in version 3, a sample expansion factor), ``add_tag_layer`` and ``add_skip_layer``
(version 1, subnetwork). Only the *details* carry a type name (``con_4``, ``affine_``, ...); wrappers do
not say what they wrap. So a file is read against the network definition it was written from: a list of
:class:`LayerSpec`, outermost first, whose kinds and fixed settings (filters, kernel, stride) are checked
against what the file says. Nothing in the file is executed, and every size read from it is checked
against the bytes left before anything is allocated: a truncated or corrupted file gives one
:class:`DatError` naming the file, the offset and what was expected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from faceforge.core.errors import InputError

#: float_details exponents with a special meaning
_INF, _NINF, _NAN = 32000, 32001, 32002
#: longest string a layer header may hold (type names are ~20 bytes)
MAX_STRING = 1 << 16


class DatError(InputError):
    """A dlib ``.dat`` file that cannot be read as the expected network; names the file, offset and fix."""


@dataclass(frozen=True)
class LayerSpec:
    """One layer of a dlib network definition: ``kind`` and the settings fixed by its C++ type.

    Kinds: ``loss_metric``, ``fc`` (``outputs``, ``bias``), ``con`` (``filters``, ``kernel``, ``stride``),
    ``affine``, ``relu``, ``max_pool`` / ``avg_pool`` (``kernel``, ``stride``; ``kernel=0`` is
    ``avg_pool_everything``), ``add_prev`` (``tag``), ``tag`` (``tag``), ``skip`` (``tag``), and the input
    layers ``input_rgb_image_sized`` / ``input_rgb_image``.
    """

    kind: str
    filters: int = 0
    kernel: tuple[int, int] = (0, 0)
    stride: tuple[int, int] = (1, 1)
    outputs: int = 0
    bias: bool = True
    tag: int = 0


@dataclass
class Layer:
    """A layer as read from the file: its spec, the version string of its details and their values."""

    spec: LayerSpec
    version: str = ""
    values: dict[str, Any] = field(default_factory=dict)


class DatReader:
    """Reads dlib's primitive types from bytes, with bounds checked against the data left."""

    def __init__(self, data: bytes, name: str = "<bytes>") -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.name = name

    # -------------------------------------------------------------------------------------------- errors
    def error(self, what: str) -> DatError:
        return DatError(
            f"{self.name}: not a readable dlib network file at byte {self.pos} of {len(self.data)}: {what}. "
            "The file is truncated or corrupted, or was written for another network; reinstall it "
            "(pip install --force-reinstall face-recognition-models) or give the right file"
        )

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> memoryview:
        if n < 0 or n > self.left():
            raise self.error(f"{n} bytes needed, {self.left()} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    # ------------------------------------------------------------------------------------------ primitives
    def integer(self, bits: int = 64, signed: bool = True) -> int:
        """An integral value: control byte (bit 7 sign, bits 0-3 byte count), then little-endian magnitude."""
        control = self.take(1)[0]
        size = control & 0x0F
        if size == 0 or size > bits // 8 or (control & 0x70):
            raise self.error(f"bad integer control byte 0x{control:02x}")
        negative = bool(control & 0x80)
        if negative and not signed:
            raise self.error("negative value for an unsigned integer")
        value = int.from_bytes(self.take(size), "little")
        return -value if negative else value

    def real(self) -> float:
        """A float or double: mantissa (int64) then exponent (int16), value = mantissa * 2**exponent."""
        if self.left() and self.data[self.pos] & 0x70:
            raise self.error("a floating-point value in dlib's old ASCII format (not supported)")
        mantissa = self.integer(64)
        exponent = self.integer(16)
        if exponent >= _INF:
            return {_INF: float("inf"), _NINF: float("-inf")}.get(exponent, float("nan"))
        return float(np.ldexp(float(mantissa), exponent))

    def flag(self) -> bool:
        ch = self.take(1)[0]
        if ch not in (ord("0"), ord("1")):
            raise self.error(f"bool expected ('0' or '1'), got byte 0x{ch:02x}")
        return ch == ord("1")

    def string(self) -> str:
        n = self.integer(64, signed=False)
        if n > MAX_STRING:
            raise self.error(f"a {n}-byte string where a layer header was expected")
        raw = bytes(self.take(n))
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.error(f"non-text bytes where a layer header was expected: {raw[:20]!r}") from None

    def version(self, expected: Sequence[int], what: str) -> int:
        v = self.integer(32)
        if v not in expected:
            raise self.error(f"{what} version {v}, expected {' or '.join(map(str, expected))}")
        return v

    def dims(self) -> tuple[int, int, int, int]:
        shape = tuple(self.integer(64) for _ in range(4))
        if any(d < 0 for d in shape):
            raise self.error(f"negative tensor dimension {shape}")
        return shape  # type: ignore[return-value]

    def tensor(self) -> np.ndarray:
        """A ``resizable_tensor``: version 2, (num_samples, k, nr, nc), float32 little-endian values."""
        self.version((2,), "tensor")
        shape = self.dims()
        count = int(np.prod(shape, dtype=np.float64))
        if count * 4 > self.left():  # checked before allocating: a corrupted size cannot exhaust memory
            raise self.error(f"a tensor of shape {shape} needs {count * 4} bytes, {self.left()} left")
        raw = self.take(count * 4)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        self.version((1,), "alias_tensor")
        return self.dims()


# ------------------------------------------------------------------------------------------- layer details
def _con(r: DatReader, spec: LayerSpec, version: str) -> dict[str, Any]:
    if version not in ("con_4", "con_5", "con_6"):
        raise r.error(f"convolution header {version!r} (known: con_4, con_5, con_6)")
    v: dict[str, Any] = {
        "params": r.tensor(),
        "num_filters": r.integer(),
        "nr": r.integer(),
        "nc": r.integer(),
    }
    v["stride"] = (r.integer(32), r.integer(32))
    v["padding"] = (r.integer(32), r.integer(32))
    v["filters"], v["biases"] = r.alias_tensor(), r.alias_tensor()
    v["multipliers"] = [r.real() for _ in range(4)]
    v["use_bias"] = r.flag() if version in ("con_5", "con_6") else True
    v["use_relu"] = r.flag() if version == "con_6" else False
    fixed = (v["num_filters"], (v["nr"], v["nc"]), v["stride"])
    if fixed != (spec.filters, spec.kernel, spec.stride):
        raise r.error(
            f"a convolution with {v['num_filters']} filters {v['nr']}x{v['nc']} stride {v['stride']}, the "
            f"network definition has {spec.filters} filters {spec.kernel[0]}x{spec.kernel[1]} stride {spec.stride}"
        )
    return v


def _affine(r: DatReader, spec: LayerSpec, version: str) -> dict[str, Any]:
    if version in ("bn_con2", "bn_fc2"):  # a batch-norm layer stored where dlib converts it to affine on load
        v = {"params": r.tensor(), "gamma": r.alias_tensor(), "beta": r.alias_tensor()}
        for key in ("means", "invstds", "running_means", "running_variances"):
            v[key] = r.tensor()
        v["num_updates"] = r.integer(64, signed=False)
        v["running_stats_window_size"] = r.integer(64, signed=False)
        v["multipliers"] = [r.real() for _ in range(4)]
        v["eps"] = r.real()
        v["batchnorm"] = True
        return v
    if version not in ("affine_", "affine_2"):
        raise r.error(f"affine header {version!r} (known: affine_, affine_2, bn_con2, bn_fc2)")
    v = {"params": r.tensor(), "gamma": r.alias_tensor(), "beta": r.alias_tensor(), "mode": r.integer(32)}
    v["disabled"] = r.flag() if version == "affine_2" else False
    return v


def _fc(r: DatReader, spec: LayerSpec, version: str) -> dict[str, Any]:
    if version not in ("fc_2", "fc_3"):
        raise r.error(f"fully-connected header {version!r} (known: fc_2, fc_3)")
    v: dict[str, Any] = {"num_outputs": r.integer(), "num_inputs": r.integer(), "params": r.tensor()}
    v["weights"], v["biases"] = r.alias_tensor(), r.alias_tensor()
    v["bias_mode"] = r.integer(32)
    v["multipliers"] = [r.real() for _ in range(4)]
    v["use_bias"] = r.flag() if version == "fc_3" else True
    if v["num_outputs"] != spec.outputs:
        raise r.error(
            f"a fully-connected layer with {v['num_outputs']} outputs, the definition has {spec.outputs}"
        )
    return v


def _pool(r: DatReader, spec: LayerSpec, version: str) -> dict[str, Any]:
    want = f"{spec.kind}_2"
    if version != want:
        raise r.error(f"pooling header {version!r}, expected {want!r}")
    v = {
        "nr": r.integer(),
        "nc": r.integer(),
        "stride": (r.integer(32), r.integer(32)),
        "padding": (r.integer(32), r.integer(32)),
    }
    if ((v["nr"], v["nc"]), v["stride"]) != (spec.kernel, spec.stride):
        raise r.error(
            f"a {spec.kind} of {v['nr']}x{v['nc']} stride {v['stride']}, the definition has "
            f"{spec.kernel[0]}x{spec.kernel[1]} stride {spec.stride}"
        )
    return v


def _relu(r: DatReader, spec: LayerSpec, version: str) -> dict[str, Any]:
    if version not in ("relu_", "relu_2"):
        raise r.error(f"relu header {version!r} (known: relu_, relu_2)")
    return {"disabled": r.flag() if version == "relu_2" else False}


def _add_prev(r: DatReader, spec: LayerSpec, version: str) -> dict[str, Any]:
    if version != "add_prev_":
        raise r.error(f"add_prev header {version!r}, expected 'add_prev_'")
    return {}


def _loss_metric(r: DatReader, spec: LayerSpec, version: str) -> dict[str, Any]:
    if version == "loss_metric_":
        return {"margin": 0.1, "distance_threshold": 0.75}
    if version != "loss_metric_2":
        raise r.error(f"loss header {version!r} (known: loss_metric_, loss_metric_2)")
    return {"margin": r.real(), "distance_threshold": r.real()}


def _input_rgb(r: DatReader, spec: LayerSpec, version: str) -> dict[str, Any]:
    if version not in ("input_rgb_image", "input_rgb_image_sized"):
        raise r.error(f"input header {version!r} (known: input_rgb_image, input_rgb_image_sized)")
    v: dict[str, Any] = {"mean_rgb": (r.real(), r.real(), r.real())}
    if version == "input_rgb_image_sized":
        v["size"] = (r.integer(64, signed=False), r.integer(64, signed=False))
    return v


DETAILS: dict[str, Callable[[DatReader, LayerSpec, str], dict[str, Any]]] = {
    "con": _con,
    "affine": _affine,
    "fc": _fc,
    "max_pool": _pool,
    "avg_pool": _pool,
    "relu": _relu,
    "add_prev": _add_prev,
    "loss_metric": _loss_metric,
    "input_rgb_image": _input_rgb,
    "input_rgb_image_sized": _input_rgb,
}
WRAPPERS = ("tag", "skip")
INPUTS = ("input_rgb_image", "input_rgb_image_sized")


def _details(r: DatReader, spec: LayerSpec) -> Layer:
    version = r.string()
    return Layer(spec, version, DETAILS[spec.kind](r, spec, version))


def _layer_state(r: DatReader, version: int, next_to_input: bool) -> None:
    """The flags and tensors ``add_layer`` writes after a layer's details (training state, not needed)."""
    for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, get_output_..._disabled
        r.flag()
    for _ in range(3):  # x_grad, cached_output, params_grad (grad_final next to the input)
        r.tensor()
    if next_to_input and version >= 3:
        r.integer(64)  # _sample_expansion_factor


def read_network(data: bytes, specs: Sequence[LayerSpec], name: str = "<bytes>") -> list[Layer]:
    """Read a network written by dlib from ``data`` against its definition ``specs`` (outermost first).

    Returns the layers that compute (not tags and skips, which are checked but carry nothing), **input first**
    (the order a forward pass runs them). The whole file must be consumed.
    """
    if not specs or specs[-1].kind not in INPUTS:
        raise ValueError("a network definition ends with its input layer")
    for s in specs:
        if s.kind not in DETAILS and s.kind not in WRAPPERS:
            raise ValueError(f"unknown dlib layer kind {s.kind!r} in the network definition")
    r = DatReader(data, name)
    body = list(specs)
    loss: Layer | None = None
    if body[0].kind == "loss_metric":
        r.version((1,), "add_loss_layer")
        loss = _details(r, body[0])
        body = body[1:]
    # wrapper versions, outermost to innermost, until the layer next to the input
    computing = [s for s in body if s.kind not in WRAPPERS and s.kind not in INPUTS]
    versions: list[int] = []
    for s in body[:-1]:
        if s.kind in WRAPPERS:
            r.version((1,), f"add_{s.kind}_layer")
        elif s is computing[-1]:
            versions.append(r.version((2, 3), "add_layer (next to the input)"))
        else:
            versions.append(r.version((2,), "add_layer"))
    layers = [_details(r, body[-1])]  # the input layer
    for i, spec in enumerate(reversed(computing)):
        version = versions[len(computing) - 1 - i]
        layers.append(_details(r, spec))
        _layer_state(r, version, next_to_input=i == 0)
    if loss is not None:
        layers.append(loss)
    if r.left():
        raise r.error(f"{r.left()} bytes left after the last layer (another network?)")
    return layers


def read_network_file(path: str | Path, specs: Sequence[LayerSpec]) -> list[Layer]:
    p = Path(path)
    if not p.is_file():
        raise DatError(f"dlib model file not found: {p}")
    return read_network(p.read_bytes(), specs, name=str(p))
