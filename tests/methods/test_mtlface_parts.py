"""MTLFace's parts against hand-written references (methods.md §9.8): AFD, age groups, DEX, GRL, the estimator,
the age loss, the AIFR backbones' feature outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from faceforge.methods.mtlface.age import (
    AGE_GROUP_CUTS,
    AgeEstimator,
    GradientReversal,
    age2group,
    age_loss,
    dex_expectation,
    grad_reverse,
    group_ranges,
)
from faceforge.methods.mtlface.predict import age_mae_report
from faceforge.models.backbones import build_backbone
from faceforge.models.backbones.aifr import AttentionDecomposition, SpatialPyramid, adaptive_bins


def _random_stats(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters, so eval-mode outputs are not the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


# ------------------------------------------------------------------------------------------------------ AFD
@pytest.mark.parametrize("decomposition", ["cvpr", "tpami"])
@pytest.mark.parametrize("pooling", ["sum", "concat"])
def test_afd_parts_add_up_and_attention_lies_in_0_1(decomposition: str, pooling: str) -> None:
    torch.manual_seed(0)
    afd = AttentionDecomposition(32, reduction=4, decomposition=decomposition, channel_pooling=pooling).eval()
    _random_stats(afd)
    x = torch.randn(4, 32, 7, 7) * 3
    x_id, x_age = afd(x)
    torch.testing.assert_close(x_id + x_age, x, atol=1e-6, rtol=0)
    ca, sa = afd.attention(x)
    assert ca.shape == (4, 32, 1, 1) and sa.shape == (4, 1, 7, 7)
    for a in (ca.detach(), sa.detach()):
        assert float(a.min()) > 0.0 and float(a.max()) < 1.0
    # the attended part is (x * CA + x * SA) / 2, written out by hand
    attended = 0.5 * (x * ca + x * sa)
    torch.testing.assert_close(x_age if decomposition == "cvpr" else x_id, attended)


def test_afd_by_hand_and_the_tpami_role_swap() -> None:
    """CA and SA from the layer weights written out by hand (avg+max pyramid 1,2,3; 1x1 convs; BN; sigmoid);
    the TPAMI variant with the same weights swaps X_id and X_age."""
    torch.manual_seed(1)
    cvpr = AttentionDecomposition(8, reduction=2).eval()
    _random_stats(cvpr)
    tpami = AttentionDecomposition(8, reduction=2, decomposition="tpami").eval()
    tpami.load_state_dict(cvpr.state_dict())
    x = torch.randn(2, 8, 7, 7)
    # pyramid: grid s -> cells in row-major order, each channel's cells together (channel-major)
    cells = []
    for s in (1, 2, 3):
        cells.append((F.adaptive_avg_pool2d(x, s) + F.adaptive_max_pool2d(x, s)).reshape(2, -1))
    pooled = torch.cat(cells, 1)  # [2, 8 * 14]
    conv1, _, conv2, bn, _ = cvpr.channel
    h = torch.relu(pooled @ conv1.weight[:, :, 0, 0].T)
    z = h @ conv2.weight[:, :, 0, 0].T
    z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    ca = torch.sigmoid(z)[:, :, None, None]
    conv_s, bn_s, _ = cvpr.spatial
    stacked = torch.stack([x.max(dim=1).values, x.mean(dim=1)], dim=1)
    zs = F.conv2d(stacked, conv_s.weight, padding=3)
    zs = (zs - bn_s.running_mean) / torch.sqrt(bn_s.running_var + bn_s.eps) * bn_s.weight + bn_s.bias
    sa = torch.sigmoid(zs)
    age = 0.5 * (x * ca + x * sa)
    x_id, x_age = cvpr(x)
    torch.testing.assert_close(x_age, age, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_id, x - age, atol=1e-5, rtol=1e-5)
    t_id, t_age = tpami(x)
    torch.testing.assert_close(t_id, x_age)
    torch.testing.assert_close(t_age, x_id)
    # momentum 0.01 on both BNs, as the code
    assert bn.momentum == 0.01 and bn_s.momentum == 0.01
    # TPAMI concatenates the avg and max pyramids: twice the first conv's input width
    concat = AttentionDecomposition(8, reduction=2, channel_pooling="concat")
    assert concat.channel[0].in_channels == 2 * conv1.in_channels == 2 * 8 * 14


def test_spatial_pyramid_equals_adaptive_pooling() -> None:
    assert adaptive_bins(7, 2) == [(0, 4), (3, 7)] and adaptive_bins(7, 3) == [(0, 3), (2, 5), (4, 7)]
    x = torch.randn(3, 5, 7, 7)
    for mode, pool in (("avg", F.adaptive_avg_pool2d), ("max", F.adaptive_max_pool2d)):
        ref = torch.cat([pool(x, s).flatten(1) for s in (1, 2, 3)], 1)
        torch.testing.assert_close(SpatialPyramid(mode, (1, 2, 3))(x)[:, :, 0, 0], ref)


def test_afd_rejects_unknown_variants() -> None:
    with pytest.raises(ValueError, match="decomposition"):
        AttentionDecomposition(8, decomposition="eccv")
    with pytest.raises(ValueError, match="channel_pooling"):
        AttentionDecomposition(8, channel_pooling="mean")


# ---------------------------------------------------------------------------------------------- backbones
@pytest.mark.parametrize("name", ["aifr_mobilefacenet", "aifr_iresnet18"])
def test_aifr_backbone_features(name: str) -> None:
    torch.manual_seed(0)
    model = build_backbone(name, embedding_size=64).eval()
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        emb = model(x)
        emb2, feats = model(x, return_features=True)
    torch.testing.assert_close(emb, emb2)
    assert emb.shape == (2, 64) and emb.dtype == torch.float32
    assert tuple(feats) == model.feature_names == ("x_id", "x_age", "x1", "x2", "x3", "x4")
    for n, t in feats.items():
        size = model.skip_sizes[n]
        assert t.shape == (2, model.skip_channels[n], size, size), n
    assert [model.skip_sizes[f"x{i}"] for i in range(1, 5)] == [56, 28, 14, 7]
    # the embedding is the encoder's own head on X_id (nothing else feeds it)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder.embed_map(feats["x_id"]), emb)
        _levels, fmap = model.encoder.forward_levels(x)
        torch.testing.assert_close(feats["x_id"] + feats["x_age"], fmap, atol=1e-5, rtol=1e-5)


def test_encoder_refactor_keeps_the_plain_backbones() -> None:
    """forward = embed_map(forward_levels(x)[1]); forward_features keeps its meaning (IResNet: after bn2)."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    ir = build_backbone("iresnet18", embedding_size=32).eval()
    with torch.no_grad():
        levels, fmap = ir.forward_levels(x)
        torch.testing.assert_close(ir.forward_features(x), ir.bn2(fmap))
        flat = torch.flatten(ir.bn2(fmap), 1)
        torch.testing.assert_close(ir(x), ir.features(ir.fc(flat)))
    assert [t.shape[1] for t in levels] == [64, 128, 256, 512]
    assert "afd" not in "".join(ir.state_dict())


def test_aifr_mobilefacenet_head_options() -> None:
    gdc = build_backbone("aifr_mobilefacenet", embedding_size=32)
    flat = build_backbone("aifr_mobilefacenet", embedding_size=32, id_head="flatten", dropout=0.5)
    assert sum(p.numel() for p in flat.encoder.features.parameters()) > 512 * 49 * 32
    assert flat.encoder.features.dropout.p == 0.5
    plain = build_backbone("mobilefacenet", embedding_size=32, scale=1)
    # the GDC variant is the plain network plus AFD, nothing else
    extra = {k for k in gdc.state_dict() if not k.startswith("encoder.")}
    assert all(k.startswith("afd.") for k in extra)
    assert {k[len("encoder.") :] for k in gdc.state_dict() if k.startswith("encoder.")} == set(
        plain.state_dict()
    )
    with pytest.raises(ValueError, match="id_head"):
        build_backbone("aifr_mobilefacenet", id_head="linear")


# ----------------------------------------------------------------------------------------------- age parts
def test_age2group_default_and_variants() -> None:
    ages = torch.tensor([0.0, 10.0, 11.0, 20.0, 21.0, 60.0, 61.0, 100.0])
    assert age2group(ages).tolist() == [0, 0, 1, 1, 2, 5, 6, 6]
    assert age2group(torch.tensor([10.0, 11.0, 61.0])).tolist() == [0, 1, 6]  # methods.md §9.8
    expected = {
        4: ([30, 31, 40, 41, 50, 51], [0, 1, 1, 2, 2, 3]),
        5: ([20, 21, 30, 31, 50, 51], [0, 1, 1, 2, 3, 4]),
        6: ([10, 11, 50, 51], [0, 1, 4, 5]),
        8: ([12, 13, 18, 19, 25, 26, 65, 66], [0, 1, 1, 2, 2, 3, 6, 7]),
    }
    for groups, (a, g) in expected.items():
        assert age2group(torch.tensor(a, dtype=torch.float64), groups).tolist() == g, groups
        assert len(AGE_GROUP_CUTS[groups]) == groups - 1
    assert group_ranges(7) == ["0-10", "11-20", "21-30", "31-40", "41-50", "51-60", "61+"]
    with pytest.raises(ValueError, match="variants"):
        age2group(ages, 9)


def test_dex_expectation() -> None:
    logits = torch.full((3, 101), -1e4)
    for row, k in enumerate((0, 37, 100)):
        logits[row, k] = 0.0
    assert dex_expectation(logits).tolist() == [0.0, 37.0, 100.0]
    # uniform softmax -> the middle age; two equal peaks -> their mean
    assert float(dex_expectation(torch.zeros(1, 101))) == pytest.approx(50.0)
    two = torch.full((1, 101), -1e4)
    two[0, 20] = two[0, 40] = 0.0
    assert float(dex_expectation(two)) == pytest.approx(30.0)


def test_gradient_reversal() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(3, 4)
    y = grad_reverse(x, 0.5)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, -0.5 * w)
    x.grad = None
    (GradientReversal()(x) * w).sum().backward()
    torch.testing.assert_close(x.grad, -w)


def test_age_estimator_layers_and_loss_by_hand() -> None:
    torch.manual_seed(0)
    est = AgeEstimator(channels=4, spatial=3, groups=7).eval()
    _random_stats(est)
    assert sorted(est.state_dict()) == sorted(
        [f"norm.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
        + [f"{layer}.{k}" for layer in ("fc1", "fc2", "group") for k in ("weight", "bias")]
    )
    x = torch.randn(5, 4, 3, 3)
    ages = torch.tensor([3.0, 10.0, 11.0, 45.0, 116.0])
    z, g = est(x)
    # by hand: BN (running stats), flatten, fc1, relu, fc2; the group head on the 101 logits
    bn = est.norm
    xn = (x - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var + bn.eps)[None, :, None, None]
    xn = xn * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    h = torch.clamp(xn.reshape(5, -1) @ est.fc1.weight.T + est.fc1.bias, min=0)
    z_ref = h @ est.fc2.weight.T + est.fc2.bias
    torch.testing.assert_close(z, z_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g, z_ref @ est.group.weight.T + est.group.bias, atol=1e-5, rtol=1e-5)
    loss, parts = age_loss(z, g, ages)
    zr = z_ref.detach().double().numpy()
    p = np.exp(zr - zr.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = p @ np.arange(101)
    target = np.minimum(ages.numpy(), 100.0)  # 116 is clamped to the DEX range for the MSE
    mse = np.mean((expected - target) ** 2)
    groups = [0, 0, 1, 4, 6]  # from the unclamped ages
    gl = g.detach().double().numpy()
    lse = np.log(np.exp(gl - gl.max(1, keepdims=True)).sum(1)) + gl.max(1)
    ce = np.mean(lse - gl[np.arange(5), groups])
    assert float(loss.detach()) == pytest.approx(mse + ce, rel=1e-5)
    assert float(parts["mae"]) == pytest.approx(np.mean(np.abs(expected - ages.numpy())), rel=1e-5)
    with pytest.raises(ValueError, match="channels=8 and spatial=7"):
        est.check_input(torch.zeros(1, 8, 7, 7), "x_age")


def test_age_mae_report() -> None:
    r = age_mae_report(np.array([22.0, 30.0, 70.0]), np.array([25.0, 30.0, 60.0]), train_mean=35.0)
    assert r["mae"] == pytest.approx(13 / 3)
    assert r["mean_baseline_mae"] == pytest.approx((10 + 5 + 25) / 3)
    assert r["group_accuracy"] == pytest.approx(2 / 3)  # 22 vs 25: both 21-30; 70 vs 60: 61+ vs 51-60
    assert r["n"] == 3 and math.isfinite(r["train_mean"])


# ---------------------------------------------------------------------------------------------- objectives
def _step_batch(fmap: torch.Tensor, ages: torch.Tensor, mask: torch.Tensor, name: str):
    from faceforge.objectives import StepBatch

    n = len(ages)
    return StepBatch(
        torch.zeros(n, 4), torch.full((n,), -1), torch.arange(n), attributes={"age": (ages, mask)},
        features={name: fmap},
    )  # fmt: skip


def _ctx():
    from faceforge.objectives import ObjectiveContext

    return ObjectiveContext(embedding_size=4, num_classes=0, labels=np.zeros(0), classes=[], dataset=None)


def test_age_objectives_mask_rows_and_reverse_the_gradient() -> None:
    from faceforge.methods.mtlface.objectives import AgeAdversarialObjective, AgeObjective

    torch.manual_seed(0)
    obj = AgeObjective(_ctx(), channels=4, spatial=3, hidden=8).eval()
    fmap = torch.randn(5, 4, 3, 3, requires_grad=True)
    ages = torch.tensor([20.0, 0.0, 35.0, 0.0, 61.0])
    mask = torch.tensor([True, False, True, False, True])
    out = obj(_step_batch(fmap, ages, mask, "x_age"))
    z, g = obj.estimator(fmap[mask])
    ref, _ = age_loss(z, g, ages[mask])
    assert float(out.terms["loss"].detach()) == pytest.approx(float(ref.detach())) and out.logs["used"] == 3
    out.terms["loss"].backward()
    assert float(fmap.grad[~mask].abs().max()) == 0.0 and float(fmap.grad[mask].abs().max()) > 0
    # the adversarial one reads x_id through the gradient reversal: same value, gradient negated (coeff 0.5)
    adv = AgeAdversarialObjective(_ctx(), channels=4, spatial=3, hidden=8, coeff=0.5).eval()
    adv.estimator.load_state_dict(obj.estimator.state_dict())
    x_id = fmap.detach().clone().requires_grad_(True)
    out_adv = adv(_step_batch(x_id, ages, mask, "x_id"))
    assert float(out_adv.terms["loss"].detach()) == pytest.approx(float(ref.detach()))
    out_adv.terms["loss"].backward()
    torch.testing.assert_close(x_id.grad, -0.5 * fmap.grad)
    assert adv.optimizer_settings() == {"weight_decay": 0.0} and obj.optimizer_settings() == {}
    # a batch without any age: a zero term whose gradients reach every estimator parameter (as zeros)
    obj.zero_grad()
    none = obj(
        _step_batch(fmap.detach().requires_grad_(True), ages, torch.zeros(5, dtype=torch.bool), "x_age")
    )
    none.terms["loss"].backward()
    assert float(none.terms["loss"].detach()) == 0.0 and none.logs == {"used": 0.0}
    assert all(p.grad is not None and float(p.grad.abs().max()) == 0.0 for p in obj.estimator.parameters())
    with pytest.raises(ValueError, match="max_age"):
        AgeObjective(_ctx(), max_age=116)
