"""``onnx_graph``: an imported ONNX recognition graph as a trainable faceforge backbone.

``faceforge import onnx FILE`` maps graphs of faceforge's own architectures onto those modules; every other
recognition graph (OpenCV Zoo's SFace, say) becomes this backbone. Its keyword arguments are plain values, as
checkpoint metadata must be (:func:`faceforge.core.checkpoint.check_model_meta`):

* ``graph``: the program, a JSON string::

      {"format": "faceforge-onnx-graph", "version": 1,
       "input": "x", "input_size": S, "output": "v57", "embedding_size": D,
       "modules":   {"conv_0": {"type": "conv2d", "in_channels": 3, ...}, ...},
       "constants": {"c_0": [1], ...},
       "nodes": [{"op": "Conv", "inputs": ["x"], "outputs": ["v1"], "module": "conv_0", "attrs": {}},
                 {"op": "Reshape", "inputs": ["v1"], "outputs": ["v2"], "attrs": {"shape": ["N", -1]}}, ...]}

  ``nodes`` are in topological order; an input names the graph input, an earlier node's output or a constant;
* ``embedding_size``, ``input_size``: checked against the program (a config may state them);
* ``dropout``: ``None`` keeps the graph's own Dropout ratios (used in training only); a number replaces them.

The weights are real parameters and buffers: ``layers.<module>.*`` (``nn.Conv2d``, ``nn.BatchNorm1d/2d`` with
running statistics, ``nn.PReLU``, ``nn.Linear``: see :mod:`.onnx_ops`), so fine-tuning, frozen BatchNorm,
``run.init``, bf16 autocast and ``faceforge export-onnx`` treat them like any backbone's; float constants of the
graph (e.g. SFace's ``(x - 127.5) * 0.0078125``) are fixed buffers ``constants.<name>``. The program is checked
when the backbone is built (every reference defined before use, attributes and sizes in range), so a damaged or
hostile checkpoint gives one ValueError, not an allocation it asked for.

Input ``[N, 3, S, S]`` preprocessed as the checkpoint's ``meta.preprocess`` says (the importer records it);
output the un-normalised ``[N, D]`` embedding in fp32.
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch
from torch import Tensor, nn

from .onnx_ops import (
    MAX_TENSOR_ELEMENTS,
    MODULE_OPS,
    ModuleFn,
    OpContext,
    OpFn,
    SlopePReLU,
    build_module,
    build_op,
    module_call,
)

__all__ = ["GRAPH_FORMAT", "GRAPH_VERSION", "OnnxGraphNet", "onnx_graph"]

GRAPH_FORMAT = "faceforge-onnx-graph"
GRAPH_VERSION = 1
#: bounds on the program itself (a hostile checkpoint's metadata cannot ask for more)
MAX_GRAPH_CHARS = 64 << 20
MAX_NODES = 50_000
MAX_TOTAL_ELEMENTS = 1 << 30
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"onnx_graph: {what} name {name!r} is not an identifier of up to 64 characters")
    return name


class OnnxGraphNet(nn.Module):
    """Runs an imported graph's program (see the module doc): ``[N, 3, S, S] -> [N, D]`` fp32.

    Args:
        graph: the program as a JSON string.
        embedding_size, input_size: if given, must equal the program's (ValueError otherwise).
        dropout: ``None`` keeps the graph's Dropout ratios; a probability in [0, 1) replaces them.
    """

    def __init__(
        self,
        graph: str,
        embedding_size: int | None = None,
        input_size: int | None = None,
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(graph, str) or len(graph) > MAX_GRAPH_CHARS:
            raise ValueError(
                f"onnx_graph: graph must be a JSON string of at most {MAX_GRAPH_CHARS} characters"
            )
        try:
            prog = json.loads(graph)
        except json.JSONDecodeError as exc:
            raise ValueError(f"onnx_graph: graph is not valid JSON ({exc})") from None
        if not isinstance(prog, dict) or prog.get("format") != GRAPH_FORMAT:
            raise ValueError(f"onnx_graph: graph is not a '{GRAPH_FORMAT}' program")
        if prog.get("version") != GRAPH_VERSION:
            raise ValueError(
                f"onnx_graph: program version {prog.get('version')!r}, this faceforge reads {GRAPH_VERSION}"
            )
        self.embedding_size = _size(prog.get("embedding_size"), "embedding_size", 1, 65536)
        self.input_size = _size(prog.get("input_size"), "input_size", 8, 4096)
        for given, have, what in (
            (embedding_size, self.embedding_size, "embedding_size"),
            (input_size, self.input_size, "input_size"),
        ):
            if given is not None and given != have:
                raise ValueError(f"onnx_graph: {what}={given} but the imported graph's is {have}")
        self.input_name = _check_name(prog.get("input"), "input")
        self.output_name = _check_name(prog.get("output"), "output")

        modules, constants, nodes = prog.get("modules"), prog.get("constants"), prog.get("nodes")
        if not isinstance(modules, dict) or not isinstance(constants, dict) or not isinstance(nodes, list):
            raise ValueError(
                "onnx_graph: the program needs 'modules' and 'constants' dicts and a 'nodes' list"
            )
        if len(nodes) > MAX_NODES or len(modules) > MAX_NODES or len(constants) > MAX_NODES:
            raise ValueError(f"onnx_graph: more than {MAX_NODES} nodes, modules or constants")

        total = 0
        self.layers = nn.ModuleDict()
        for name, spec in modules.items():
            if not isinstance(spec, dict):
                raise ValueError(f"onnx_graph: module {name!r} is not a dict")
            try:
                self.layers[_check_name(name, "module")] = build_module(spec)
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"onnx_graph: module {name}: {exc}") from None
            total += sum(p.numel() for p in self.layers[name].parameters())
        self.constants = nn.Module()
        for name, shape in constants.items():
            if (
                not isinstance(shape, list)
                or len(shape) > 8
                or not all(
                    isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_TENSOR_ELEMENTS
                    for d in shape
                )
            ):
                raise ValueError(f"onnx_graph: constant {name!r} has shape {shape!r}, not a list of sizes")
            n = 1
            for d in shape:
                n *= d
            total += n
            self.constants.register_buffer(_check_name(name, "constant"), torch.zeros(shape))
        if total > MAX_TOTAL_ELEMENTS:
            raise ValueError(f"onnx_graph: the program holds {total} weights, more than {MAX_TOTAL_ELEMENTS}")

        # (function, module name or None, inputs as (is_constant, name), outputs, values to free after it)
        self._program: list[tuple[Any, str | None, list[tuple[bool, str]], list[str], list[str]]] = []
        self._dropouts: list[int] = []
        self._build_program(nodes, set(constants), dropout)

    def _build_program(self, nodes: list[Any], constants: set[str], dropout: float | None) -> None:
        defined = {self.input_name}
        steps: list[tuple[Any, str | None, list[tuple[bool, str]], list[str]]] = []
        for i, node in enumerate(nodes):
            where = f"onnx_graph: node {i}"
            if not isinstance(node, dict) or not isinstance(node.get("op"), str):
                raise ValueError(f"{where} is not a dict with an 'op'")
            op, attrs = node["op"], node.get("attrs", {})
            ins, outs = node.get("inputs"), node.get("outputs")
            if (
                not isinstance(attrs, dict)
                or not isinstance(ins, list)
                or not isinstance(outs, list)
                or not outs
            ):
                raise ValueError(f"{where} ({op}) needs 'inputs', 'outputs' lists and an 'attrs' dict")
            refs = []
            for name in ins:
                if name in defined:
                    refs.append((False, name))
                elif name in constants:
                    refs.append((True, name))
                else:
                    raise ValueError(f"{where} ({op}) reads {name!r}, which nothing before it defines")
            if op == "Dropout" and dropout is not None:
                attrs = {**attrs, "ratio": float(dropout)}
            mod_name = None
            try:
                if op in MODULE_OPS:
                    mod_name = node.get("module")
                    if mod_name not in self.layers:
                        raise ValueError(f"names module {mod_name!r}, which the program does not have")
                    kind = modules_type(self.layers[mod_name])
                    if kind not in MODULE_OPS[op]:
                        raise ValueError(f"module {mod_name} is a {kind}, not one of {MODULE_OPS[op]}")
                    fn: OpFn | ModuleFn = module_call(op, attrs)
                else:
                    fn = build_op(op, attrs)
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{where} ({op}): {exc}") from None
            for name in outs:
                _check_name(name, "value")
                if name in defined or name in constants:
                    raise ValueError(f"{where} ({op}) redefines {name!r}")
                defined.add(name)
            if op == "Dropout":
                self._dropouts.append(i)
            steps.append((fn, mod_name, refs, [str(o) for o in outs]))
        if self.output_name not in defined:
            raise ValueError(f"onnx_graph: the output {self.output_name!r} is never computed")
        if dropout is not None and dropout > 0 and not self._dropouts:
            raise ValueError("onnx_graph: dropout was given but the imported graph has no Dropout node")
        last_use: dict[str, int] = {}
        for i, (_, _, refs, _) in enumerate(steps):
            for is_const, name in refs:
                if not is_const:
                    last_use[name] = i
        free: list[list[str]] = [[] for _ in steps]
        for name, i in last_use.items():
            if name != self.output_name:
                free[i].append(name)
        self._program = [(fn, mod, refs, outs, free[i]) for i, (fn, mod, refs, outs) in enumerate(steps)]

    def forward(self, x: Tensor) -> Tensor:
        s = self.input_size
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != s or x.shape[3] != s or not x.is_floating_point():
            raise ValueError(
                f"onnx_graph expects a float batch [N, 3, {s}, {s}] preprocessed as the checkpoint's "
                f"meta.preprocess says, got {x.dtype} {list(x.shape)}"
            )
        env: dict[str, Tensor] = {self.input_name: x}
        ctx = OpContext(batch=x.shape[0], training=self.training)
        for fn, mod, refs, outs, free in self._program:
            args = [getattr(self.constants, name) if is_const else env[name] for is_const, name in refs]
            env.update(zip(outs, fn(self.layers[mod], args, ctx) if mod else fn(args, ctx), strict=True))
            for name in free:
                env.pop(name, None)
        return env[self.output_name].reshape(x.shape[0], -1).float()

    def extra_repr(self) -> str:
        return f"{len(self._program)} nodes, input {self.input_size} px, embedding_size={self.embedding_size}"


def modules_type(module: nn.Module) -> str:
    """The program's name for a module's type (the inverse of :func:`.onnx_ops.build_module`)."""
    for cls, kind in (
        (nn.Conv2d, "conv2d"),
        (nn.BatchNorm1d, "batchnorm"),
        (nn.BatchNorm2d, "batchnorm"),
        (nn.PReLU, "prelu"),
        (SlopePReLU, "slope_prelu"),
        (nn.Linear, "linear"),
    ):
        if isinstance(module, cls):
            return kind
    return type(module).__name__


def _size(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"onnx_graph: the program's {what} is {value!r}, not an integer in [{lo}, {hi}]")
    return value


def onnx_graph(
    graph: str, embedding_size: int | None = None, input_size: int | None = None, dropout: float | None = None
) -> OnnxGraphNet:
    """An imported ONNX recognition graph (see :class:`OnnxGraphNet`; made by ``faceforge import onnx``)."""
    return OnnxGraphNet(graph, embedding_size=embedding_size, input_size=input_size, dropout=dropout)
