"""The hand-written ONNX converter on hand-made graphs: dequantisation against numpy, the op set against
onnxruntime, the program as a trainable module, and the one-line refusals."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from faceforge.importers.base import ModelImportError
from faceforge.importers.onnx_fold import dequantize_linear
from faceforge.importers.onnx_net import import_onnx
from faceforge.models.backbones import build_backbone
from tests.importers.graphs import model, save, tiny_net

YUNET = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "models" / "face_detection_yunet_2026may.onnx"
)


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _torch(imported, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return imported.build()(torch.from_numpy(x)).numpy()


def test_blocked_dequantize_linear_matches_a_loop() -> None:
    rng = np.random.default_rng(0)
    q = rng.integers(-128, 128, (5, 10), dtype=np.int8)
    for axis, block in ((1, 4), (0, 2), (1, 10), (0, 5)):
        blocks = [-(-q.shape[a] // block) if a == axis else q.shape[a] for a in range(2)]
        scale = rng.uniform(0.001, 0.1, blocks).astype(np.float32)
        zp = rng.integers(-20, 20, blocks, dtype=np.int8)
        want = np.zeros(q.shape, np.float32)
        for i in range(5):
            for j in range(10):
                b = (i // block, j) if axis == 0 else (i, j // block)
                want[i, j] = np.float32(int(q[i, j]) - int(zp[b])) * scale[b]
        assert np.array_equal(dequantize_linear(q, scale, zp, axis, block), want)
    per_axis = rng.uniform(0.01, 0.1, 5).astype(np.float32)
    assert np.array_equal(dequantize_linear(q, per_axis, None, 0), q.astype(np.float32) * per_axis[:, None])
    assert np.array_equal(dequantize_linear(q, np.float32(0.5), np.int8(3)), (q.astype(np.float32) - 3) * 0.5)


def _quantised_graph(tmp: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """An int8 graph as OpenCV Zoo writes SFace: blocked weights, DequantizeLinear -> Reshape -> Conv; the Gemm
    weight per-axis quantised; the weights also listed (unused) among the graph inputs."""
    rng = np.random.default_rng(1)
    q1 = rng.integers(-128, 128, (6, 27), dtype=np.int8)  # Conv 6x3x3x3, blocks of 9 along axis 1
    s1 = rng.uniform(0.005, 0.02, (6, 3)).astype(np.float32)
    z1 = rng.integers(-10, 10, (6, 3), dtype=np.int8)
    q2 = rng.integers(-128, 128, (12, 6), dtype=np.int8)
    s2 = rng.uniform(0.01, 0.05, 12).astype(np.float32)
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in (
            (q1, "w_q"),
            (s1, "w_s"),
            (z1, "w_z"),
            (np.array([6, 3, 3, 3]), "w_shape"),
            (q2, "fc_q"),
            (s2, "fc_s"),
        )
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w_dequantized"], axis=1, block_size=9),
        helper.make_node("Reshape", ["w_dequantized", "w_shape"], ["w_reshaped"]),
        helper.make_node("Conv", ["x", "w_reshaped"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["c"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("DequantizeLinear", ["fc_q", "fc_s"], ["fc"], axis=0),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    m = model(nodes, inits, 16, 12, opset=21, batch=1)
    m.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [6, 3, 3, 3]))
    want_w = dequantize_linear(q1, s1, z1, 1, 9).reshape(6, 3, 3, 3)
    return save(m, tmp / "int8.onnx"), {"conv": want_w, "fc": q2.astype(np.float32) * s2[:, None]}


def test_quantised_weights_become_float_parameters(tmp_path: Path) -> None:
    path, want = _quantised_graph(tmp_path)
    imported = import_onnx(path, input_size=16)
    assert imported.backbone["name"] == "onnx_graph"
    assert torch.equal(imported.weights["layers.conv0.weight"], torch.from_numpy(want["conv"]))
    assert torch.equal(imported.weights["layers.fc0.weight"], torch.from_numpy(want["fc"]))
    assert any("2 quantised weight tensors dequantised" in n for n in imported.notes)
    net = imported.build()
    assert {n for n, p in net.named_parameters()} == {"layers.conv0.weight", "layers.fc0.weight"}
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    m = onnx.load(str(path))
    del m.graph.input[1:]  # onnxruntime needs the unused weight input gone
    onnx.save(m, str(tmp_path / "for_ort.onnx"))
    np.testing.assert_allclose(_torch(imported, x), _ort(tmp_path / "for_ort.onnx", x), rtol=1e-5, atol=1e-6)


def _op_zoo(tmp: Path) -> Path:
    """One graph with most of the supported ops, several in the forms exporters write them."""
    rng = np.random.default_rng(3)
    f = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.5  # noqa: E731
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    inits = {
        "half": np.float32(127.5),
        "scale": np.float32(1 / 128),
        "w1": f(8, 3, 3, 3),
        "b1": f(8),
        "g": f(8) + 1,
        "be": f(8),
        "mu": f(8),
        "var": np.abs(f(8)) + 0.5,
        "slope": f(8, 1, 1),
        "wdw": f(8, 1, 3, 3),
        "wse": f(8, 8, 1, 1),
        "pads": i64(0, 0, 1, 1, 0, 0, 1, 1),
        "ax": i64(2, 3),
        "lo": np.float32(-2.0),
        "hi": np.float32(6.0),
        "fc": f(16, 10),
        "fcb": f(10),
        "zero": i64(0),
        "minus1": i64(-1),
        "g1": f(10) + 1,
        "b1d": f(10),
        "m1d": f(10),
        "v1d": np.abs(f(10)) + 0.5,
        "starts": i64(0),
        "ends": i64(16),
        "axes1": i64(1),
    }
    nodes = [
        helper.make_node("Sub", ["x", "half"], ["s0"]),
        helper.make_node("Mul", ["s0", "scale"], ["s1"]),
        helper.make_node("Conv", ["s1", "w1", "b1"], ["c1"], pads=[0, 0, 1, 1], strides=[2, 2]),  # asymmetric
        helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["n1"]),
        helper.make_node("PRelu", ["n1", "slope"], ["p1"]),
        helper.make_node("MaxPool", ["p1"], ["m1"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["m1", "wdw"], ["c2"], group=8, auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("LeakyRelu", ["c2"], ["l2"], alpha=0.2),
        helper.make_node("Pad", ["l2", "pads"], ["pd"], mode="reflect"),
        helper.make_node("AveragePool", ["pd"], ["a2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Sigmoid", ["a2"], ["sg"]),
        helper.make_node("Conv", ["sg", "wse"], ["se"]),
        helper.make_node("Concat", ["a2", "se"], ["cat"], axis=1),
        helper.make_node("Transpose", ["cat"], ["t1"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["t1"], ["t2"], perm=[0, 3, 1, 2]),
        helper.make_node("ReduceMean", ["t2", "ax"], ["rm"], keepdims=1),
        helper.make_node("Clip", ["rm", "lo", "hi"], ["cl"]),
        helper.make_node("Shape", ["cl"], ["shp"]),
        helper.make_node("Gather", ["shp", "zero"], ["n"]),
        helper.make_node("Concat", ["n", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["cl", "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["mm"]),
        helper.make_node("Add", ["mm", "fcb"], ["lin"]),
        helper.make_node("Dropout", ["lin"], ["dr"]),
        helper.make_node("Identity", ["dr"], ["id"]),
        helper.make_node("BatchNormalization", ["id", "g1", "b1d", "m1d", "v1d"], ["bn1d"], epsilon=2e-5),
        helper.make_node("Slice", ["bn1d", "starts", "ends", "axes1"], ["y"]),
    ]
    inits_list = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    return save(model(nodes, inits_list, 16, 10, opset=18), tmp / "zoo.onnx")


def test_the_op_set_matches_onnxruntime_and_trains(tmp_path: Path) -> None:
    path = _op_zoo(tmp_path)
    imported = import_onnx(path, input_size=16, mean=0, std=255)
    prog = json.loads(imported.backbone["kwargs"]["graph"])
    assert prog["modules"]["fc0"]["bias"]  # MatMul + Add(const) became one Linear with a trainable bias
    assert not any(n["op"] in ("Shape", "Gather", "Identity", "Add") for n in prog["nodes"])
    x = np.random.default_rng(4).uniform(0, 255, (4, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(_torch(imported, x), _ort(path, x), rtol=1e-4, atol=1e-5)
    net = imported.build()
    with torch.no_grad():  # each face alone gives the same as the batch (nothing mixes the batch)
        one = torch.cat([net(torch.from_numpy(x[i : i + 1])) for i in range(4)])
    np.testing.assert_allclose(one.numpy(), _torch(imported, x), rtol=1e-5, atol=1e-6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = net(torch.from_numpy(x))
    assert (
        low.dtype == torch.float32
        and torch.nn.functional.cosine_similarity(low, torch.from_numpy(_ort(path, x))).min() > 0.99
    )

    # trainable: gradients reach every parameter, BatchNorm running statistics move in train mode only
    net.train()
    bn = net.layers["bn0"]
    before = bn.running_mean.clone()
    net(torch.from_numpy(x)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert not torch.equal(before, bn.running_mean)
    assert isinstance(bn, torch.nn.BatchNorm2d) and isinstance(net.layers["bn1"], torch.nn.BatchNorm1d)


def test_a_copied_network_runs_its_own_modules(tmp_path: Path) -> None:
    net = import_onnx(save(tiny_net(), tmp_path / "tiny.onnx")).build()
    twin = copy.deepcopy(net)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        before = net(x)
        twin.layers["fc0"].weight.zero_()
        twin.layers["fc0"].bias.zero_()
        assert torch.equal(net(x), before) and not twin(x).any()


def test_a_program_is_checked_when_built(tmp_path: Path) -> None:
    good = json.loads(import_onnx(save(tiny_net(), tmp_path / "tiny.onnx")).backbone["kwargs"]["graph"])
    bad = {**good, "nodes": [{**good["nodes"][0], "inputs": ["nowhere"]}, *good["nodes"][1:]]}
    with pytest.raises(ValueError, match="reads 'nowhere', which nothing before it defines"):
        build_backbone("onnx_graph", graph=json.dumps(bad))
    huge = {
        **good,
        "modules": {**good["modules"], "conv0": {**good["modules"]["conv0"], "out_channels": 1 << 40}},
    }
    with pytest.raises(ValueError, match="conv out"):
        build_backbone("onnx_graph", graph=json.dumps(huge))
    with pytest.raises(ValueError, match="embedding_size=7"):
        build_backbone("onnx_graph", graph=json.dumps(good), embedding_size=7)


# ------------------------------------------------------------------------------------------ refusals
def _one_line(exc: pytest.ExceptionInfo, *words: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    return msg


def test_refusals_are_one_line_naming_the_file(tmp_path: Path, data_dir: Path) -> None:
    tiny = onnx.load(str(save(tiny_net(), tmp_path / "tiny.onnx")))
    # an unsupported op, named with its node
    m = onnx.ModelProto.FromString(tiny.SerializeToString())
    m.graph.node[5].op_type, m.graph.node[5].name = "Einsum", "mix_3"
    m.graph.node[5].attribute.append(helper.make_attribute("equation", "nchw->nchw"))
    onnx.save(m, str(tmp_path / "einsum.onnx"))
    with pytest.raises(ModelImportError) as e:
        import_onnx(tmp_path / "einsum.onnx")
    _one_line(e, "einsum.onnx", "node 'mix_3'", "unsupported op Einsum")
    # not a recognition graph: YuNet (a detector) has one image input and twelve outputs
    yunet = data_dir / "models" / "face_detection_yunet_2026may.onnx"
    with pytest.raises(ModelImportError) as e:
        import_onnx(yunet)
    _one_line(e, yunet.name, "not a recognition graph", "12 outputs")
    # a feature map, not an embedding
    m = onnx.ModelProto.FromString(tiny.SerializeToString())
    m.graph.output[0].name = "r2"
    onnx.save(m, str(tmp_path / "fmap.onnx"))
    with pytest.raises(ModelImportError) as e:
        import_onnx(tmp_path / "fmap.onnx")
    _one_line(e, "fmap.onnx", "not a recognition graph", "[2, 16, 7, 7]")
    # not ONNX at all; truncated; a torch checkpoint
    (tmp_path / "notes.onnx").write_text("these are not the weights you are looking for\n" * 10)
    data = (tmp_path / "tiny.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    torch.save({"a": torch.zeros(2)}, tmp_path / "model.pt")
    for name in ("notes.onnx", "cut.onnx", "model.pt"):
        with pytest.raises(ModelImportError) as e:
            import_onnx(tmp_path / name)
        _one_line(e, name)
    with pytest.raises(ModelImportError) as e:
        import_onnx(tmp_path / "missing.onnx")
    _one_line(e, "missing.onnx", "not found")


def test_hostile_tensor_sizes_are_refused_before_allocation(tmp_path: Path) -> None:
    m = tiny_net()
    w = m.graph.initializer[0]
    del w.dims[:]
    w.dims.extend([1 << 20, 1 << 20, 3, 3])  # a 10^13-element tensor claimed by a few hundred bytes
    onnx.save(m, str(tmp_path / "huge.onnx"))
    with pytest.raises(ModelImportError) as e:
        import_onnx(tmp_path / "huge.onnx")
    _one_line(e, "huge.onnx", "declares")
    m = tiny_net()
    m.graph.initializer[0].dims[0] = 9  # 9x3x3x3 claimed, 8x3x3x3 stored
    onnx.save(m, str(tmp_path / "short.onnx"))
    with pytest.raises(ModelImportError) as e:
        import_onnx(tmp_path / "short.onnx")
    _one_line(e, "short.onnx", "holds")
    pads = numpy_helper.from_array(np.array([0, 0, 4096, 4096, 0, 0, 4096, 4096], np.int64), "pads")
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"]),  # (112 + 8192)^2 pixels per channel, from 64 bytes
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["y"]),
    ]
    save(model(nodes, [pads], 112, 3), tmp_path / "pad.onnx")
    with pytest.raises(ModelImportError) as e:
        import_onnx(tmp_path / "pad.onnx")
    _one_line(e, "pad.onnx", "node 'Pad'", "its output would hold")
    m = tiny_net()
    m.metadata_props.add(key="faceforge", value=json.dumps({"preprocess": {"input_size": 1 << 20}}))
    onnx.save(m, str(tmp_path / "meta.onnx"))
    with pytest.raises(ModelImportError) as e:
        import_onnx(tmp_path / "meta.onnx")
    _one_line(e, "meta.onnx", "input_size")
    m = tiny_net()
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="/etc/passwd")
    onnx.save(m, str(tmp_path / "external.onnx"))
    with pytest.raises(ModelImportError) as e:
        import_onnx(tmp_path / "external.onnx")
    _one_line(e, "external.onnx", "external data")
