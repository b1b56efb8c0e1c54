"""dlib's serialisation format: primitives checked against serialize.h's documented bytes, one tiny hand-made
network per layer kind, refusals of broken files, and the real model file."""

from __future__ import annotations

import numpy as np
import pytest

from faceforge.importers.dlib_dat import DatError, DatReader, LayerSpec, read_network, read_network_file
from tests.importers import dlib_writer as w

# ------------------------------------------------------------------------------------------------ primitives


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"\x01\x00", 0),
        (b"\x01\x05", 5),
        (b"\x81\x05", -5),
        (b"\x02\x2c\x01", 300),
        (b"\x84\x00\x00\x00\x80", -(2**31)),
    ],
)
def test_integers_as_serialize_h_documents_them(raw: bytes, value: int) -> None:
    r = DatReader(raw)
    assert r.integer() == value
    assert r.left() == 0
    assert w.integer(value) == raw


def test_float_is_mantissa_times_two_to_the_exponent() -> None:
    # the real file's loss margin: mantissa 0xa3d70a = 10737418, exponent -28 -> 0.04 (as a float32)
    raw = b"\x03\x0a\xd7\xa3\x81\x1c"
    assert DatReader(raw).real() == pytest.approx(10737418 * 2.0**-28)
    assert DatReader(raw).real() == pytest.approx(0.04, rel=1e-7)
    for value in (0.0, 1.0, -2.5, 1e-30, 3.0e38, 122.782):
        assert DatReader(w.real(value)).real() == value
    assert DatReader(w.real(float("inf"))).real() == float("inf")
    assert np.isnan(DatReader(w.real(float("nan"))).real())


def test_bool_string_and_bad_bytes() -> None:
    r = DatReader(b"10" + w.string("con_4"))
    assert (r.flag(), r.flag(), r.string()) == (True, False, "con_4")
    with pytest.raises(DatError, match="bool expected"):
        DatReader(b"x").flag()
    with pytest.raises(DatError, match="integer control byte 0x10"):
        DatReader(b"\x10\x00").integer()
    with pytest.raises(DatError, match="2 bytes needed, 1 left"):
        DatReader(b"\x02\x00").integer()


def test_tensor_size_is_checked_before_allocation() -> None:
    t = w.tensor(np.arange(6, dtype=np.float32).reshape(1, 2, 3, 1))
    assert np.array_equal(DatReader(t).tensor().ravel(), np.arange(6))
    huge = w.integer(2) + b"".join(w.integer(d) for d in (10**6, 10**6, 10**3, 1))
    with pytest.raises(DatError, match=r"needs 4000000000000000 bytes, 0 left"):
        DatReader(huge).tensor()


# ------------------------------------------------------------------------------------ one network per kind
rng = np.random.default_rng(0)
INPUT = ("input", w.input_rgb())
IN_SPEC = LayerSpec("input_rgb_image_sized")


def _read(chain: list[tuple[str, bytes]], specs: list[LayerSpec], loss: bytes | None = None):
    return read_network(w.network(chain, loss), specs)


def test_convolution_and_affine() -> None:
    weight, bias = rng.normal(size=(4, 3, 3, 3)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    gamma, beta = rng.normal(size=4).astype(np.float32), rng.normal(size=4).astype(np.float32)
    for version in ("con_4", "con_5", "con_6"):
        chain = [
            INPUT,
            ("layer", w.con(weight, bias, stride=2, padding=0, version=version)),
            ("layer", w.affine(gamma, beta)),
        ]
        specs = [LayerSpec("affine"), LayerSpec("con", filters=4, kernel=(3, 3), stride=(2, 2)), IN_SPEC]
        inp, conv, aff = _read(chain, specs)
        assert inp.values["mean_rgb"] == pytest.approx((122.782, 117.001, 104.298)) and inp.values[
            "size"
        ] == (150, 150)
        assert (
            conv.version == version
            and conv.values["padding"] == (0, 0)
            and conv.values["filters"] == (4, 3, 3, 3)
        )
        p = conv.values["params"].ravel()
        assert np.array_equal(p[:108].reshape(4, 3, 3, 3), weight) and np.array_equal(p[108:], bias)
        assert np.array_equal(aff.values["params"].ravel(), np.concatenate([gamma, beta]))
    wrong = [LayerSpec("affine"), LayerSpec("con", filters=8, kernel=(3, 3), stride=(2, 2)), IN_SPEC]
    with pytest.raises(DatError, match="4 filters 3x3 stride \\(2, 2\\), the network definition has 8"):
        _read(chain, wrong)


def test_batchnorm_stored_where_affine_is_expected() -> None:
    gamma, beta, mean, var = (rng.uniform(0.5, 2, size=3).astype(np.float32) for _ in range(4))
    chain = [
        INPUT,
        ("layer", w.con(np.ones((3, 3, 1, 1), np.float32), np.zeros(3, np.float32), padding=0)),
        ("layer", w.bn_con(gamma, beta, mean, var, eps=1e-3)),
    ]
    _, _, bn = _read(chain, [LayerSpec("affine"), LayerSpec("con", filters=3, kernel=(1, 1)), IN_SPEC])
    assert bn.values["batchnorm"] and bn.values["eps"] == pytest.approx(1e-3)
    assert np.array_equal(bn.values["running_variances"].ravel(), var)


def test_pools_relu_fc_and_loss() -> None:
    wfc = rng.normal(size=(5, 2)).astype(np.float32)
    chain = [
        INPUT,
        ("layer", w.pool("max_pool", 3, 2)),
        ("layer", w.relu()),
        ("layer", w.pool("avg_pool", 0, 1)),
        ("layer", w.fc(wfc)),
    ]
    specs = [
        LayerSpec("loss_metric"),
        LayerSpec("fc", outputs=2, bias=False),
        LayerSpec("avg_pool", kernel=(0, 0), stride=(1, 1)),
        LayerSpec("relu"),
        LayerSpec("max_pool", kernel=(3, 3), stride=(2, 2)),
        IN_SPEC,
    ]
    layers = _read(chain, specs, loss=w.loss_metric(0.04, 0.6))
    assert [lay.spec.kind for lay in layers] == [
        "input_rgb_image_sized",
        "max_pool",
        "relu",
        "avg_pool",
        "fc",
        "loss_metric",
    ]
    assert layers[1].values["stride"] == (2, 2) and layers[3].values["nr"] == 0
    assert (
        np.array_equal(layers[4].values["params"].reshape(5, 2), wfc) and layers[4].values["bias_mode"] == 1
    )
    assert layers[5].values["distance_threshold"] == pytest.approx(0.6)


def test_tags_skips_and_add_prev_carry_nothing_but_are_checked() -> None:
    # relu<add_prev2<avg_pool<skip1<tag2<relu<tag1<input>>>>>>> : wrappers read as versions, no details
    chain = [
        INPUT,
        ("tag", b""),
        ("layer", w.relu()),
        ("tag", b""),
        ("skip", b""),
        ("layer", w.pool("avg_pool", 2, 2)),
        ("layer", w.add_prev()),
        ("layer", w.relu()),
    ]
    specs = [
        LayerSpec("relu"),
        LayerSpec("add_prev", tag=2),
        LayerSpec("avg_pool", kernel=(2, 2), stride=(2, 2)),
        LayerSpec("skip", tag=1),
        LayerSpec("tag", tag=2),
        LayerSpec("relu"),
        LayerSpec("tag", tag=1),
        IN_SPEC,
    ]
    kinds = [lay.spec.kind for lay in _read(chain, specs)]
    assert kinds == ["input_rgb_image_sized", "relu", "avg_pool", "add_prev", "relu"]
    with pytest.raises(DatError, match="add_layer version 1, expected 2"):  # a tag where a layer should be
        _read(
            chain,
            [
                LayerSpec("relu"),
                *specs[1:4],
                LayerSpec("relu"),
                LayerSpec("relu"),
                LayerSpec("tag", tag=1),
                IN_SPEC,
            ],
        )


def test_truncated_and_trailing_bytes_are_refused(tmp_path) -> None:
    data = w.network([INPUT, ("layer", w.relu())], w.loss_metric())
    specs = [LayerSpec("loss_metric"), LayerSpec("relu"), IN_SPEC]
    assert len(read_network(data, specs)) == 3
    with pytest.raises(DatError, match="bytes needed"):
        read_network(data[:-5], specs)
    with pytest.raises(DatError, match="3 bytes left after the last layer"):
        read_network(data + b"abc", specs)
    f = tmp_path / "net.dat"
    f.write_bytes(data[:40])
    with pytest.raises(DatError, match=str(f)):
        read_network_file(f, specs)
    with pytest.raises(DatError, match="not found"):
        read_network_file(tmp_path / "missing.dat", specs)


# ---------------------------------------------------------------------------------------------- real file
def test_the_real_dlib_file_reads_completely() -> None:
    pytest.importorskip("dlib")
    from faceforge.importers.dlib_net import default_model_file, network_definition

    layers = read_network_file(default_model_file(), network_definition())
    kinds = [lay.spec.kind for lay in layers]
    assert kinds.count("con") == 29 and kinds.count("affine") == 29 and kinds.count("fc") == 1
    assert [lay.version for lay in layers[:3]] == ["input_rgb_image_sized", "con_4", "affine_"]
    assert layers[-1].values["distance_threshold"] == pytest.approx(0.6)
