"""The dual-BN wrapper: λ = 0 (λ = 1) is the plain network with the clean (adversarial) statistics and affine
parameters; training routes keep adversarial rows out of the clean statistics; the predicted λ needs no setting
and survives ONNX export (the mixed path is in the graph)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from faceforge.models.backbones import build_backbone
from faceforge.models.backbones.dual_bn import DualBatchNorm, DualBNNet

TINY = {"base": "mobilefacenet", "scale": 1, "embedding_size": 16}


def _dual(seed: int = 0) -> DualBNNet:
    torch.manual_seed(seed)
    net = build_backbone("dual_bn", **TINY)
    for m in net.modules():  # distinct statistics and affine parameters in every branch
        if isinstance(m, DualBatchNorm):
            for bn in (m.clean, m.adv):
                bn.running_mean.normal_(0, 0.2)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.data.normal_(1, 0.2)
                bn.bias.data.normal_(0, 0.2)
    return net


def _plain_with(net: DualBNNet, branch: str) -> torch.nn.Module:
    kwargs = {k: v for k, v in TINY.items() if k != "base"}
    plain = build_backbone("mobilefacenet", **kwargs)
    state = {}
    for key, value in net.net.state_dict().items():
        if f".{branch}." in key:
            state[key.replace(f".{branch}.", ".")] = value
        elif ".clean." not in key and ".adv." not in key:
            state[key] = value
    plain.load_state_dict(state)
    return plain


@pytest.mark.parametrize("branch,lam", [("clean", 0.0), ("adv", 1.0)])
def test_lambda_0_and_1_are_the_plain_network_with_one_branch(branch: str, lam: float) -> None:
    net = _dual().eval()
    x = torch.randn(3, 3, 112, 112)
    with torch.no_grad(), net.routing(torch.full((3,), lam)):
        got = net(x)
    want = _plain_with(net, branch).eval()(x)
    assert torch.equal(got, want.detach())
    with torch.no_grad(), net.routing(torch.full((3,), 0.5)):
        mixed = net(x)  # a real mixture differs from both ends
    assert not torch.allclose(mixed, want.detach(), atol=1e-4)


def test_clean_rows_train_like_the_plain_network_and_adversarial_rows_leave_clean_statistics() -> None:
    net = _dual().train()
    plain = _plain_with(net, "clean").train()
    x = torch.randn(6, 3, 112, 112)
    before = {n: b.clone() for n, b in net.named_buffers() if ".clean.running" in n}
    with net.routing(None):  # the clean path only: exactly the plain network, statistics included
        assert torch.allclose(net(x[:3]), plain(x[:3]), atol=1e-5)
    state = {n.replace(".clean.", "."): b for n, b in net.net.named_buffers() if ".clean.running" in n}
    for n, b in plain.named_buffers():
        if n in state:
            assert torch.allclose(state[n], b)
    snapshot = {n: b.clone() for n, b in net.named_buffers() if ".clean.running" in n}
    assert any(not torch.equal(before[n], snapshot[n]) for n in before)
    lam = torch.tensor([0.0, 0.0, 0.0, 0.3, 0.7, 1.0])
    adv_before = {n: b.clone() for n, b in net.named_buffers() if ".adv.running" in n}
    with net.routing(lam, clean_rows=3):
        net(torch.cat([torch.zeros(0, 3, 112, 112), x]))
    # the clean rows moved the clean statistics as a clean batch of 3 would; the attacked rows did not
    plain2 = copy.deepcopy(plain)
    plain2(x[:3])
    for n, b in net.net.named_buffers():
        if ".clean.running" in n:
            assert torch.allclose(b, dict(plain2.named_buffers())[n.replace(".clean.", ".")], atol=1e-6)
    assert any(not torch.equal(adv_before[n], b) for n, b in net.named_buffers() if ".adv.running" in n)
    assert net.last_lambda.shape == (6,) and net.last_lambda.requires_grad


def test_predicted_lambda_needs_no_setting_and_survives_onnx_export(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from faceforge.deploy.export_onnx import export_onnx
    from faceforge.importers.base import ImportedModel, save_imported

    net = _dual().eval()
    with torch.no_grad():
        net.predictor.fc.bias.fill_(0.0)
        net.predictor.fc.weight.normal_(0, 1.0)  # λ varies with the input
    preprocess = {
        "input_size": 112,
        "colour": "RGB",
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "alignment": "arcface_112",
    }
    path = save_imported(ImportedModel({"name": "dual_bn", "kwargs": dict(TINY)}, net.state_dict(), 16, preprocess,
                                       {"network": "test"}), tmp_path / "dual.pt")  # fmt: skip
    report = export_onnx(path, tmp_path / "dual.onnx", exporter="torchscript")
    import onnxruntime as ort

    x = torch.randn(3, 3, 112, 112) * 0.5
    sess = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = net(x).numpy()
        lam = net.last_lambda
        assert float(lam.min()) > 0.01 and float(lam.max()) < 0.99
        with net.routing(torch.zeros(3)):
            clean_only = net(x).numpy()
    assert np.abs(got - want).max() < 1e-3 * max(1.0, np.abs(want).max())
    assert np.abs(got - clean_only).max() > 1e-3
