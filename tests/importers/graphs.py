"""Hand-made ONNX graphs for the importer tests, and a name scrambler that makes an export look foreign."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def model(
    nodes: list, inits: list, size: int, out_dim: int, opset: int = 18, batch: int | str = "N"
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, out_dim])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def tiny_net(seed: int = 0, size: int = 112, dim: int = 32) -> onnx.ModelProto:
    """A small recognition graph at 112 px: Conv+BN+PRelu, MaxPool, Conv, Relu, GAP, Flatten, Dropout, Gemm."""
    rng = np.random.default_rng(seed)
    f = lambda *s, scale=0.3: (rng.standard_normal(s) * scale).astype(np.float32)  # noqa: E731
    inits = [
        _init("w1", f(8, 3, 3, 3)),
        _init("b1", f(8)),
        _init("g", rng.uniform(0.5, 1.5, 8).astype(np.float32)),
        _init("be", f(8)),
        _init("mu", f(8)),
        _init("var", rng.uniform(0.5, 2, 8).astype(np.float32)),
        _init("slope", f(8, 1, 1)),
        _init("w2", f(16, 8, 3, 3)),
        _init("fc", f(dim, 16)),
        _init("fcb", f(dim)),
        _init("ratio", np.float32(0.3)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[4, 4]),
        helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["n1"], epsilon=1e-3),
        helper.make_node("PRelu", ["n1", "slope"], ["p1"]),
        helper.make_node("MaxPool", ["p1"], ["m1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["m1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Dropout", ["flat", "ratio"], ["drop"]),
        helper.make_node("Gemm", ["drop", "fc", "fcb"], ["y"], transB=1),
    ]
    return model(nodes, inits, size, dim)


def scrambled(m: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy with every value, initialiser and node renamed at random, the initialisers shuffled, the nodes in a
    random topological order, and no metadata: an export that looks like a foreign file."""
    m = onnx.ModelProto.FromString(m.SerializeToString())
    g = m.graph
    rnd = random.Random(seed)
    names = {i.name for i in g.initializer} | {i.name for i in g.input} | {o.name for o in g.output}
    for n in g.node:
        names.update(x for x in [*n.input, *n.output] if x)
    tokens = rnd.sample(range(10 * len(names) + 10), len(names))
    new = {old: f"t{tok}" for old, tok in zip(sorted(names), tokens, strict=True)}
    for t in g.initializer:
        t.name = new[t.name]
    for v in [*g.input, *g.output]:
        v.name = new[v.name]
    for n in g.node:
        n.name = f"n{rnd.randrange(1 << 30)}"
        n.doc_string = ""
        for i, x in enumerate(n.input):
            if x:
                n.input[i] = new[x]
        for i, x in enumerate(n.output):
            if x:
                n.output[i] = new[x]
    inits = list(g.initializer)
    rnd.shuffle(inits)
    del g.initializer[:]
    g.initializer.extend(inits)
    known = {t.name for t in g.initializer} | {v.name for v in g.input}
    pending, order = list(g.node), []
    while pending:
        ready = [n for n in pending if all(not x or x in known for x in n.input)]
        pick = rnd.choice(ready)
        pending.remove(pick)
        order.append(pick)
        known.update(pick.output)
    del g.node[:]
    g.node.extend(order)
    del g.value_info[:]
    del m.metadata_props[:]
    return m
