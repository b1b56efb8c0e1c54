"""faceforge's own architectures: checkpoint -> ``export_onnx`` -> ``faceforge import onnx`` -> the same network.

Every architecture is exported with faceforge's exporter (its metadata names the backbone and preprocessing) and
imported back into the same faceforge module; then the export is made foreign (every name scrambled, nodes in
another topological order, no metadata) and still lands in the same module, found by structure alone. The
exporters fold each Conv's BatchNorm into the Conv: the import reports it and sets those BNs to exact identities.
The networks are random but not trivial: BN statistics and PReLU slopes are drawn, so folding changes numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from faceforge.core.checkpoint import FORMAT, VERSION, atomic_torch_save, load_checkpoint
from faceforge.data.preprocess import Preprocess
from faceforge.deploy.export_onnx import export_onnx
from faceforge.embedders.checkpoint import backbone_from_checkpoint
from faceforge.importers.base import save_imported
from faceforge.importers.onnx_net import import_onnx
from faceforge.importers.onnx_structure import identity_variance
from faceforge.models.backbones import build_backbone
from tests.importers.graphs import scrambled

PREPROCESS = Preprocess(colour="BGR", mean=(0.45, 0.5, 0.55), std=(0.2, 0.25, 0.3))
ARCHITECTURES = [("iresnet18", {}), ("mobilefacenet", {"scale": 1})]
#: the deeper IResNets, imported as foreign files only (what insightface's r50/r100 files are); the same code path
#: finds each depth, so CI (``make test``) checks IResNet-34 and ``make test-all`` the 50 and 100 too (~25 s more)
DEEP = ["iresnet34", pytest.param("iresnet50", marks=pytest.mark.full),
        pytest.param("iresnet100", marks=pytest.mark.full)]  # fmt: skip


def _random_network(name: str, kwargs: dict) -> torch.nn.Module:
    """Random weights, PReLU slopes and BN affine parameters; BN statistics from a random batch (so that even
    an iresnet100 gives outputs of order 1), then moved off, so that folding them changes numbers."""
    torch.manual_seed(0)
    net = build_backbone(name, embedding_size=64, **kwargs)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.PReLU):
                m.weight.uniform_(0.0, 0.5)
        for m in bns:
            m.momentum = None  # cumulative average of the calibration batch
            if m.weight.requires_grad:
                m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.1)
        net.train()(torch.randn(2, 3, 112, 112))
        for m in bns:
            m.running_mean.add_(torch.randn_like(m.running_mean) * 0.05)
            m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.8, 1.25))
    return net.eval()


def _export(
    tmp: Path, name: str, kwargs: dict, exporter: str = "torchscript"
) -> tuple[torch.nn.Module, Path]:
    net = _random_network(name, kwargs)
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "meta": {
            "backbone": {"name": name, "kwargs": {"embedding_size": 64, **kwargs}},
            "embedding_size": 64,
            "preprocess": PREPROCESS.to_dict(),
        },
        "backbone": net.state_dict(),
    }
    atomic_torch_save(ckpt, tmp / "model.pt")
    export_onnx(tmp / "model.pt", tmp / "model.onnx", exporter=exporter)
    return net, tmp / "model.onnx"


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> float:
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    scale = float(ya.abs().max())
    diff = float((ya - yb).abs().max())
    assert diff <= 1e-5 * max(1.0, scale), f"outputs differ by {diff} (max |y| {scale})"
    return diff


@pytest.mark.parametrize(("name", "kwargs"), ARCHITECTURES)
def test_export_import_gives_the_same_network(name: str, kwargs: dict, tmp_path: Path) -> None:
    net, path = _export(tmp_path, name, kwargs)
    imported = import_onnx(path)
    assert imported.backbone == {"name": name, "kwargs": {"embedding_size": 64, **kwargs}}
    assert imported.preprocess["colour"] == "BGR" and imported.preprocess["std"] == list(PREPROCESS.std)
    assert any("folded" in n for n in imported.notes)
    _same_outputs(net, imported.build())

    # the same file made foreign: names scrambled, nodes reordered, no faceforge metadata
    foreign = tmp_path / "foreign.onnx"
    onnx.save(scrambled(onnx.load(str(path)), seed=3), str(foreign))
    again = import_onnx(foreign, mean=127.5, std=127.5)
    assert again.backbone["name"] == name and again.preprocess["colour"] == "RGB"
    _same_outputs(net, again.build())


@pytest.mark.slow
@pytest.mark.parametrize("name", DEEP)
def test_deeper_iresnets_found_by_structure_alone(name: str, tmp_path: Path) -> None:
    net, path = _export(tmp_path, name, {})
    foreign = tmp_path / "foreign.onnx"
    onnx.save(scrambled(onnx.load(str(path)), seed=5), str(foreign))
    path.unlink()
    imported = import_onnx(foreign)
    assert imported.backbone == {"name": name, "kwargs": {"embedding_size": 64}}
    _same_outputs(net, imported.build())


@pytest.mark.slow
def test_dynamo_export_and_checkpoint_round_trip(tmp_path: Path) -> None:
    """faceforge's default exporter (dynamo, which also folds the embedding BatchNorm1d into the Gemm); the saved
    checkpoint loads through the checkpoint reader that every command uses."""
    net, path = _export(tmp_path, "mobilefacenet", {"scale": 1}, exporter="dynamo")
    imported = import_onnx(path)
    folded = next(n for n in imported.notes if "folded" in n)
    assert folded.startswith("BatchNorm folded into the preceding Conv/Linear in 50 of 83 layers")
    out = save_imported(imported, tmp_path / "imported.pt")
    ckpt = load_checkpoint(out)
    assert ckpt["meta"]["source"]["sha256"] and ckpt["meta"]["backbone"]["name"] == "mobilefacenet"
    _same_outputs(net, backbone_from_checkpoint(ckpt, out))


def test_a_folded_batchnorm_is_an_exact_identity_plus_bias() -> None:
    for eps in (1e-5, 1e-3, 2e-5, 1e-10):
        v = identity_variance(eps)
        assert np.float32(np.float32(v) + np.float32(eps)) == np.float32(1.0)
        bn = torch.nn.BatchNorm2d(4, eps=eps).eval()
        with torch.no_grad():
            bn.running_var.fill_(v)
            bn.bias.copy_(torch.tensor([0.5, -1.25, 3.0, 0.0]))
        x = torch.randn(2, 4, 5, 5) * 100
        assert torch.equal(bn(x), x + bn.bias.view(1, 4, 1, 1))
