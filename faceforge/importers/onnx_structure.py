"""Graphs of faceforge's own architectures onto faceforge's modules, tensors matched by graph structure.

Names are not used: exporters rename (torch.onnx's constant folding writes ``onnx::Conv_693``), deduplicate
and fold tensors. Both sides are reduced to the same form instead:

* the **ONNX side** is the converted program (:mod:`.onnx_convert`); the **module side** is the candidate
  backbone run once on a zero face under a ``TorchFunctionMode`` that records every call. A call that reads a
  module's parameter is that module's op (conv, bn, prelu, linear); any other call is plain dataflow (adds,
  flatten, pooling, activations);
* **units**: every Conv or Linear, with the BatchNorm that directly follows it when nothing else reads its
  output (the BN an exporter may have folded into the conv's weight and bias), every other BatchNorm, every
  PReLU;
* each unit gets a structural key: ``h(u) = hash(kind and shapes of u, sorted h of the units it reads through
  plain ops, whether it reads the image)``, computed in topological order, then ``g(u) = hash(h(u), sorted g
  of the units reading u, whether the output reads u)`` in reverse order. The multisets of ``g`` must be
  equal on both sides; units with equal ``g`` are paired in topological order (their positions are
  interchangeable). The importer then checks the result numerically against onnxruntime.

Weights are copied with shapes checked. A conv whose BN was folded into it (a bias on a conv whose module has
Conv(no bias) + BN) sets that BN to an **exact identity plus the bias**: weight 1, running mean 0, bias = the
conv bias, running variance ``v`` with ``float32(v + eps) == 1`` so that ``1/sqrt(v + eps)`` is exactly 1; a
conv bias in front of an unfolded BN moves into its running mean (``mean - b``); a BN epsilon other than the
module's is absorbed into the variance (``var + eps_onnx - eps_module``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

__all__ = ["Mapped", "OpGraph", "map_onto", "program_graph", "trace_graph"]

_IN = -1


@dataclass
class POp:
    """One op of the dataflow: kind (conv, bn, prelu, linear, plain, other), data inputs, output, module name."""

    kind: str
    inputs: list[Hashable]
    output: Hashable
    ref: str = ""
    key: tuple = ()


@dataclass
class OpGraph:
    ops: list[POp]
    input: Hashable
    output: Hashable


@dataclass
class Unit:
    main: POp
    bn: POp | None = None
    preds: set[int] = field(default_factory=set)
    succs: list[int] = field(default_factory=list)
    feeds_output: bool = False


@dataclass
class Mapped:
    """The filled state dict and what was done (for the import notes)."""

    state: dict[str, Tensor]
    folded_bn: int
    units: int


class MatchError(ValueError):
    """The graph is not this architecture (the message says where they differ)."""


# ------------------------------------------------------------------------------------------ the two sides
def _conv_key(conv: dict[str, Any], extra_pad: tuple = ()) -> tuple:
    """A conv's key from the program's module spec (or the same fields of an ``nn.Conv2d``)."""
    fields = ("out_channels", "in_channels", "groups")
    out, cin, groups = (int(conv[f]) for f in fields)
    shapes = (tuple(int(v) for v in conv[f]) for f in ("kernel_size", "stride", "padding", "dilation"))
    return ("conv", out, cin // groups, groups, *shapes, tuple(extra_pad))


def program_graph(program: dict[str, Any]) -> OpGraph:
    """The converted ONNX program as an :class:`OpGraph` (constants are not dataflow)."""
    consts, mods = program["constants"], program["modules"]
    kinds = {"Conv": "conv", "BatchNormalization": "bn", "PRelu": "prelu", "Linear": "linear"}
    ops = []
    for n in program["nodes"]:
        data = [i for i in n["inputs"] if i not in consts]
        kind = kinds.get(n["op"], "plain")
        spec = mods.get(n.get("module", ""), {})
        if kind == "conv":
            key = _conv_key(spec, tuple(n["attrs"].get("pad", ())))
        elif kind == "bn":
            key = ("bn", spec["num_features"])
        elif kind == "prelu":
            key = (
                ("prelu", spec.get("num_parameters", -1))
                if spec["type"] == "prelu"
                else ("slope", *spec["shape"])
            )
        elif kind == "linear":
            key = ("linear", spec["out_features"], spec["in_features"])
        else:
            key = ()
        for o in n["outputs"]:
            ops.append(POp(kind, data, o, n.get("module", ""), key))
    return OpGraph(ops, program["input"], program["output"])


class _Recorder(TorchFunctionMode):
    def __init__(self, owners: dict[int, tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.owners = owners
        self.ops: list[POp] = []
        self.keep: list[Tensor] = []  # ids stay unique while the tensors live

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, Tensor)]
        if not outs:
            return out
        self.keep += tensors + outs
        owners = {self.owners[id(t)] for t in tensors if id(t) in self.owners}
        data = [id(t) for t in tensors if id(t) not in self.owners]
        if owners:
            (name, mod), *rest = owners
            kind = _module_kind(mod) if not rest and data else "other"
            self.ops.append(POp(kind, data[:1], id(outs[0]), name, _module_key(mod)))
        else:
            for o in outs:
                if id(o) not in data:  # an op returning its own input (eval dropout, .float()) is no dataflow
                    self.ops.append(POp("plain", data, id(o)))
        return out


def _module_kind(mod: nn.Module) -> str:
    for cls, kind in (
        (nn.Conv2d, "conv"),
        (nn.modules.batchnorm._BatchNorm, "bn"),
        (nn.PReLU, "prelu"),
        (nn.Linear, "linear"),
    ):
        if isinstance(mod, cls):
            return kind
    return "other"


def _module_key(mod: nn.Module) -> tuple:
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            return ("conv-unsupported",)
        fields = ("out_channels", "in_channels", "groups", "kernel_size", "stride", "padding", "dilation")
        return _conv_key({f: getattr(mod, f) for f in fields})
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        return ("bn", mod.num_features)
    if isinstance(mod, nn.PReLU):
        return ("prelu", mod.num_parameters)
    if isinstance(mod, nn.Linear):
        return ("linear", mod.out_features, mod.in_features)
    return (type(mod).__name__,)


def trace_graph(net: nn.Module, input_size: int) -> OpGraph:
    """Run ``net`` (eval mode; its weights' values do not matter) once on a zero face and record its dataflow."""
    owners: dict[int, tuple[str, nn.Module]] = {}
    for name, mod in net.named_modules():
        for t in [*mod.parameters(recurse=False), *mod.buffers(recurse=False)]:
            owners[id(t)] = (name, mod)
    device = next((t.device for t in net.parameters()), torch.device("cpu"))
    x = torch.zeros(1, 3, input_size, input_size, device=device)
    rec = _Recorder(owners)
    with torch.no_grad(), rec:
        y = net(x)
    return OpGraph(rec.ops, id(x), id(y))


# ------------------------------------------------------------------------------------------ units and keys
def _units(g: OpGraph) -> list[Unit]:
    producer = {op.output: i for i, op in enumerate(g.ops)}
    readers = Counter(v for op in g.ops for v in op.inputs)
    readers[g.output] += 1
    units: list[Unit] = []
    unit_of: dict[int, int] = {}
    src: dict[Hashable, frozenset[int]] = {g.input: frozenset([_IN])}
    for i, op in enumerate(g.ops):
        if op.kind == "other":
            raise MatchError(f"module {op.ref} is not a Conv, BatchNorm, PReLU or Linear")
        if op.kind == "plain":
            src[op.output] = frozenset().union(*(src.get(v, frozenset()) for v in op.inputs))
            continue
        j = producer.get(op.inputs[0]) if op.inputs else None
        if (
            op.kind == "bn"
            and j is not None
            and g.ops[j].kind in ("conv", "linear")
            and readers[op.inputs[0]] == 1
        ):
            unit_of[i] = unit_of[j]
            units[unit_of[j]].bn = op
        else:
            unit_of[i] = len(units)
            units.append(Unit(op, preds=set(src.get(op.inputs[0], frozenset())) if op.inputs else set()))
        src[op.output] = frozenset([unit_of[i]])
    for k, u in enumerate(units):
        for p in u.preds:
            if p != _IN:
                units[p].succs.append(k)
    for p in src.get(g.output, frozenset()):
        if p != _IN:
            units[p].feeds_output = True
    return units


def _keys(units: list[Unit]) -> list[int]:
    h: list[int] = []
    for u in units:
        h.append(hash((u.main.key, tuple(sorted(h[p] if p != _IN else _IN for p in u.preds)))))
    g = [0] * len(units)
    for k in range(len(units) - 1, -1, -1):
        g[k] = hash((h[k], tuple(sorted(g[s] for s in units[k].succs)), units[k].feeds_output))
    return g


def _pair(onnx_units: list[Unit], mod_units: list[Unit]) -> list[tuple[Unit, Unit]]:
    if len(onnx_units) != len(mod_units):
        raise MatchError(f"the graph has {len(onnx_units)} weight layers, the architecture {len(mod_units)}")
    groups: dict[int, list[list[Unit]]] = {}
    for side, units in enumerate((onnx_units, mod_units)):
        for key, u in zip(_keys(units), units, strict=True):
            groups.setdefault(key, [[], []])[side].append(u)
    pairs = []
    for a, b in groups.values():
        if len(a) != len(b):
            shown = (a or b)[0].main
            raise MatchError(f"the layers differ in structure (first at a {shown.kind} {shown.key})")
        pairs += list(zip(a, b, strict=True))
    return pairs


# ------------------------------------------------------------------------------------------ weights
def identity_variance(eps: float) -> float:
    """A float32 variance ``v`` with ``float32(v) + float32(eps) == 1`` exactly (see the module doc)."""
    e, one = np.float32(eps), np.float32(1.0)
    v = np.float32(one - e)
    for _ in range(16):
        s = np.float32(v + e)
        if s == one:
            return float(v)
        v = np.nextafter(v, np.float32(2.0) if s < one else np.float32(0.0), dtype=np.float32)
    raise ValueError(f"no float32 variance makes BatchNorm with eps={eps} an exact identity")


def _transfer(
    pairs: list[tuple[Unit, Unit]], weights: dict[str, Tensor], program: dict[str, Any], net: nn.Module
) -> Mapped:
    want = net.state_dict()  # names, shapes and dtypes only
    state: dict[str, Tensor] = {}
    folded = 0

    def put(key: str, value: Tensor) -> None:
        if key not in want or tuple(want[key].shape) != tuple(value.shape):
            raise MatchError(
                f"{key}: {list(value.shape)} does not fit {list(want[key].shape) if key in want else 'nothing'}"
            )
        state[key] = value.detach().to(want[key].dtype).contiguous()

    def src(ref: str, name: str) -> Tensor | None:
        return weights.get(f"layers.{ref}.{name}")

    def prefix(ref: str) -> str:
        return f"{ref}." if ref else ""

    def put_bn(ref: str, mod: nn.Module, onnx_ref: str | None, shift: Tensor | None) -> None:
        p = prefix(ref)
        eps = float(mod.eps)
        if onnx_ref is None:  # identity plus the shift
            c = mod.num_features
            put(p + "weight", torch.ones(c))
            put(p + "bias", shift if shift is not None else torch.zeros(c))
            put(p + "running_mean", torch.zeros(c))
            put(p + "running_var", torch.full((c,), identity_variance(eps)))
            return
        eps_onnx = float(program["modules"][onnx_ref]["eps"])
        var = src(onnx_ref, "running_var")
        mean = src(onnx_ref, "running_mean")
        put(p + "weight", src(onnx_ref, "weight"))
        put(p + "bias", src(onnx_ref, "bias"))
        put(p + "running_mean", mean if shift is None else (mean.double() - shift.double()).float())
        put(
            p + "running_var",
            var if eps_onnx == eps else (var.double() + eps_onnx - eps).clamp_min(0).float(),
        )

    for pu, mu in pairs:
        mref, oref = mu.main.ref, pu.main.ref
        mmod = net.get_submodule(mref)
        if mu.main.kind == "prelu":
            put(prefix(mref) + "weight", src(oref, "weight").reshape(mmod.weight.shape))
            continue
        if mu.main.kind == "bn":
            put_bn(mref, mmod, oref, None)
            continue
        put(prefix(mref) + "weight", src(oref, "weight"))
        bias = src(oref, "bias")
        if getattr(mmod, "bias", None) is not None:
            put(prefix(mref) + "bias", bias if bias is not None else torch.zeros(mmod.bias.shape))
            bias = None
        if mu.bn is not None:
            onnx_bn = pu.bn.ref if pu.bn is not None else None
            folded += onnx_bn is None
            put_bn(mu.bn.ref, net.get_submodule(mu.bn.ref), onnx_bn, bias)
        elif pu.bn is not None:
            raise MatchError(f"the graph has a BatchNorm after {oref} where {mref} has none")
        elif bias is not None and bool(bias.abs().max() > 0):
            raise MatchError(f"the graph's {oref} has a bias that {mref} cannot hold")
    for key, t in want.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=t.dtype)
    left = [k for k in want if k not in state]
    if left:
        raise MatchError(f"no weights in the graph for {left[:3]}")
    return Mapped(state, folded, len(pairs))


def map_onto(program: dict[str, Any], weights: dict[str, Tensor], net: nn.Module) -> Mapped:
    """Match the converted program onto ``net`` (a candidate architecture; its weights are not read) and fill
    a state dict for it; :class:`MatchError` if the structures differ."""
    pairs = _pair(_units(program_graph(program)), _units(trace_graph(net.eval(), program["input_size"])))
    for pu, mu in pairs:
        if mu.main.kind != pu.main.kind:
            raise MatchError(f"a {pu.main.kind} pairs with a {mu.main.kind}")
    return _transfer(pairs, weights, program, net)
