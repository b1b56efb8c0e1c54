"""``faceforge import dlib``: dlib's face-recognition ResNet, read from its ``.dat`` file, as a faceforge backbone.

The file (``dlib_face_recognition_resnet_model_v1.dat``, installed by ``pip install face-recognition-models``;
the network and weights are Davis King's, published with dlib under the Boost Software Licence 1.0 and
trained on about 3 million faces) is read with :mod:`faceforge.importers.dlib_dat` against the network's
C++ definition (``dnn_face_recognition_ex.cpp``: :func:`network_definition` writes it out layer by layer),
and its weights go into :class:`~faceforge.models.backbones.dlib_resnet.DlibResNet`:

* ``con`` (params = filters [F, C, kh, kw] then biases [F]) -> ``nn.Conv2d`` weight and bias;
* ``affine`` (params = gamma [C] then beta [C]) -> :class:`DlibAffine` weight and bias (a ``bn_con`` layer,
  if a file holds one, is folded to the affine form exactly as dlib does on load:
  ``gamma / sqrt(running_var + eps)`` and ``beta - running_mean * that``);
* ``fc_no_bias`` (weights [in, out]) -> ``nn.Linear`` weight (transposed).

The paddings, pool sizes and strides the file records are checked against the module's.

Options (``--option KEY=VALUE``): ``input=arcface112`` (default: ArcFace-aligned 112 px faces, warped to
dlib's chip inside the network) or ``input=chip150`` (dlib's own 150 px chips).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from faceforge.core.hashing import file_sha256
from faceforge.importers.base import IMPORTERS, ImportedModel
from faceforge.importers.dlib_dat import DatError, Layer, LayerSpec, read_network_file
from faceforge.models.backbones.dlib_resnet import DLIB_MEAN_RGB, INPUTS, STAGES, DlibResNet

FILE_NAME = "dlib_face_recognition_resnet_model_v1.dat"
LICENCE = "Boost Software License 1.0 (dlib; network and weights by Davis King, dlib.net)"
INSTALL_HINT = "pip install face-recognition-models   (or: pip install 'faceforge[dlib]')"


def _con(filters: int, kernel: int, stride: int) -> LayerSpec:
    return LayerSpec("con", filters=filters, kernel=(kernel, kernel), stride=(stride, stride))


def _block(filters: int, stride: int) -> list[LayerSpec]:
    """``block<N,affine,stride>`` = affine<con<N,3,3,1,1,relu<affine<con<N,3,3,stride,stride,...>>>>>."""
    return [
        LayerSpec("affine"),
        _con(filters, 3, 1),
        LayerSpec("relu"),
        LayerSpec("affine"),
        _con(filters, 3, stride),
    ]


def _ares(filters: int) -> list[LayerSpec]:
    """``ares<N>`` = relu<add_prev1<block<N,affine,1,tag1<...>>>>."""
    return [LayerSpec("relu"), LayerSpec("add_prev", tag=1), *_block(filters, 1), LayerSpec("tag", tag=1)]


def _ares_down(filters: int) -> list[LayerSpec]:
    """``ares_down<N>`` = relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,affine,2,tag1<...>>>>>>>."""
    return [
        LayerSpec("relu"),
        LayerSpec("add_prev", tag=2),
        LayerSpec("avg_pool", kernel=(2, 2), stride=(2, 2)),
        LayerSpec("skip", tag=1),
        LayerSpec("tag", tag=2),
        *_block(filters, 2),
        LayerSpec("tag", tag=1),
    ]


def network_definition() -> list[LayerSpec]:
    """``anet_type`` of dlib's face recognition example, outermost layer first::

    loss_metric<fc_no_bias<128,avg_pool_everything<alevel0<alevel1<alevel2<alevel3<alevel4<
        max_pool<3,3,2,2,relu<affine<con<32,7,7,2,2,input_rgb_image_sized<150>>>>>>>>>>>>>
    """
    spec = [LayerSpec("loss_metric"), LayerSpec("fc", outputs=128, bias=False), LayerSpec("avg_pool")]
    for stage in reversed(range(len(STAGES))):  # alevel0 (outermost) ... alevel4; each stage's first block
        filters, count = STAGES[stage]  # down-samples, except the first stage's
        spec += [r for _ in range(count - 1) for r in _ares(filters)]
        spec += _ares_down(filters) if stage > 0 else _ares(filters)
    spec += [LayerSpec("max_pool", kernel=(3, 3), stride=(2, 2)), LayerSpec("relu"), LayerSpec("affine")]
    return [*spec, _con(32, 7, 2), LayerSpec("input_rgb_image_sized")]


def default_model_file() -> Path:
    """The ``.dat`` file inside the installed face_recognition_models package (found without importing it)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DatError(f"dlib's model files are not installed: {INSTALL_HINT}, or give the .dat file's path")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / FILE_NAME
    if not path.is_file():
        raise DatError(f"{path} is missing: reinstall with {INSTALL_HINT}")
    return path


def _params(layer: Layer) -> np.ndarray:
    return np.asarray(layer.values["params"]).reshape(-1)


def _conv_weights(layer: Layer, conv: torch.nn.Conv2d, where: str) -> dict[str, torch.Tensor]:
    v = layer.values
    f, c, kh, kw = v["filters"]
    want = tuple(conv.weight.shape)
    if (f, c, kh, kw) != want:
        raise DatError(f"{where}: filters of shape {(f, c, kh, kw)}, the network needs {want}")
    if tuple(v["padding"]) != tuple(conv.padding) or tuple(v["stride"]) != tuple(conv.stride):
        raise DatError(
            f"{where}: padding {v['padding']} stride {v['stride']} in the file, {conv.padding} {conv.stride} here"
        )
    if v.get("use_relu"):
        raise DatError(
            f"{where}: a convolution with a fused ReLU (con_6 use_relu) is not part of this network"
        )
    p = _params(layer)
    n = f * c * kh * kw
    bias = p[n : n + f] if v["use_bias"] and p.size >= n + f else np.zeros(f, np.float32)
    if p.size not in (n, n + f):
        raise DatError(f"{where}: {p.size} parameters for {f} filters of {c}x{kh}x{kw}")
    return {
        "weight": torch.from_numpy(p[:n].reshape(f, c, kh, kw).copy()),
        "bias": torch.from_numpy(bias.copy()),
    }


def _affine_weights(layer: Layer, channels: int, where: str) -> dict[str, torch.Tensor]:
    v = layer.values
    p = _params(layer)
    if p.size != 2 * channels:
        raise DatError(
            f"{where}: {p.size} affine parameters, {2 * channels} expected for {channels} channels"
        )
    gamma, beta = p[:channels].astype(np.float64), p[channels:].astype(np.float64)
    if v.get("batchnorm"):  # bn_con stored: fold the running statistics, as dlib's affine_(bn_) does
        mean = np.asarray(v["running_means"], np.float64).reshape(-1)
        var = np.asarray(v["running_variances"], np.float64).reshape(-1)
        gamma = gamma / np.sqrt(var + float(v["eps"]))
        beta = beta - mean * gamma
    elif v.get("disabled"):
        gamma, beta = np.ones(channels), np.zeros(channels)
    return {
        "weight": torch.from_numpy(gamma.astype(np.float32)),
        "bias": torch.from_numpy(beta.astype(np.float32)),
    }


def weights_from_layers(layers: list[Layer], net: DlibResNet) -> dict[str, torch.Tensor]:
    """Map the layers read from the file (input first) onto ``net``'s state dict, checking every shape."""
    convs = [lay for lay in layers if lay.spec.kind == "con"]
    affines = [lay for lay in layers if lay.spec.kind == "affine"]
    fcs = [lay for lay in layers if lay.spec.kind == "fc"]
    targets = [("conv1", "affine1", net.conv1)] + [
        (f"blocks.{i}.conv{j}", f"blocks.{i}.affine{j}", getattr(b, f"conv{j}"))
        for i, b in enumerate(net.blocks)
        for j in (1, 2)
    ]
    if len(convs) != len(targets) or len(affines) != len(targets) or len(fcs) != 1:
        raise DatError(
            f"{len(convs)} convolutions and {len(fcs)} fully-connected layers, {len(targets)} and 1 expected"
        )
    state: dict[str, torch.Tensor] = {}
    for (conv_name, aff_name, conv), con, aff in zip(targets, convs, affines, strict=True):
        state.update({f"{conv_name}.{k}": t for k, t in _conv_weights(con, conv, conv_name).items()})
        state.update(
            {f"{aff_name}.{k}": t for k, t in _affine_weights(aff, conv.out_channels, aff_name).items()}
        )
    for pool in (lay for lay in layers if lay.spec.kind in ("max_pool", "avg_pool")):
        if tuple(pool.values["padding"]) != (0, 0):
            raise DatError(f"a {pool.spec.kind} with padding {pool.values['padding']}; this network has none")
    fc = fcs[0].values
    if fc["bias_mode"] != 1 or fc["num_inputs"] != net.fc.in_features:
        raise DatError(
            f"fully-connected layer of {fc['num_inputs']} inputs (bias mode {fc['bias_mode']}), 256 without bias expected"
        )
    w = np.asarray(fc["params"]).reshape(-1)[: fc["num_inputs"] * fc["num_outputs"]]
    state["fc.weight"] = torch.from_numpy(w.reshape(fc["num_inputs"], fc["num_outputs"]).T.copy())
    mean = layers[0].values["mean_rgb"]
    if not np.allclose(mean, DLIB_MEAN_RGB, atol=1e-3) or layers[0].values.get("size", (150, 150)) != (
        150,
        150,
    ):
        raise DatError(
            f"input layer of mean {mean} size {layers[0].values.get('size')}, dlib's 150 px chips expected"
        )
    return state


@IMPORTERS.register("dlib")
def import_dlib(source: str | Path | None = None, input: str = "arcface112") -> ImportedModel:
    """Read dlib's ResNet ``.dat`` (default: the installed face_recognition_models file) into :class:`DlibResNet`."""
    if input not in INPUTS:
        raise DatError(f"--option input={input}: use one of {sorted(INPUTS)}")
    path = Path(source) if source else default_model_file()
    layers = read_network_file(path, network_definition())
    net = DlibResNet(input=input)
    weights = weights_from_layers(layers, net)
    loss = layers[-1].values
    return ImportedModel(
        backbone={"name": "dlib_resnet", "kwargs": {"input": input}},
        weights=weights,
        embedding_size=128,
        preprocess=net.preprocess_meta,
        source={
            "format": "dlib dat",
            "path": str(path),
            "file": path.name,
            "sha256": file_sha256(path),
            "licence": LICENCE,
            "network": "dlib_face_recognition_resnet_model_v1 (ResNet-29, 128-d)",
            "converter": "faceforge.importers.dlib_net",
            "dlib_metric": {"margin": loss["margin"], "distance_threshold": loss["distance_threshold"]},
        },
        notes=[
            "dlib's affine layers are kept as per-channel scale and shift (no batch statistics to re-estimate)",
            "input=arcface112: ArcFace-aligned 112 px faces are warped to dlib's 150 px chip geometry by a fixed "
            "transform inside the network"
            if input == "arcface112"
            else "input=chip150: feed dlib's own 150 px chips (dlib.get_face_chip, padding 0.25)",
        ],
    )
