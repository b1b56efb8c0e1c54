"""Head tests: every head against an independent float64 reference on tiny tensors."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from faceforge.models.heads import (
    HEADS,
    ArcFace,
    CosFace,
    CurricularFace,
    HeadOutput,
    MarginHead,
    arc_target,
    build_head,
)

B, C, D = 4, 5, 3
S = 64.0


# --------------------------------------------------------------------------- references (float64)
def ref_cos(emb: np.ndarray, w: np.ndarray) -> np.ndarray:
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    ww = w / np.linalg.norm(w, axis=1, keepdims=True)
    return np.clip(x @ ww.T, -1.0, 1.0)


def ref_arc_value(c: float, m: float, easy: bool = False) -> float:
    if easy:
        return math.cos(math.acos(c) + m) if c > 0 else c
    if c > math.cos(math.pi - m):
        return math.cos(math.acos(c) + m)
    return c - math.sin(math.pi - m) * m


def ref_arcface(cos: np.ndarray, labels, s: float, m: float, easy: bool = False) -> np.ndarray:
    out = cos.copy()
    for i, y in enumerate(labels):
        out[i, y] = ref_arc_value(cos[i, y], m, easy)
    return s * out


def ref_cosface(cos: np.ndarray, labels, s: float, m: float) -> np.ndarray:
    out = cos.copy()
    for i, y in enumerate(labels):
        out[i, y] -= m
    return s * out


def ref_curricular_step(cos: np.ndarray, labels, t: float, s: float, m: float, alpha: float, train=True):
    """One CurricularFace step written from the paper/official code; returns (logits, new t)."""
    target = np.array([cos[i, y] for i, y in enumerate(labels)])
    if train:
        t = alpha * target.mean() + (1 - alpha) * t
    out = cos.copy()
    for i, y in enumerate(labels):
        raw = math.cos(math.acos(target[i]) + m)  # cos(theta_y + m) without fallback
        for j in range(cos.shape[1]):
            if j == y:
                out[i, j] = ref_arc_value(target[i], m)
            elif cos[i, j] > raw:
                out[i, j] = cos[i, j] * (t + cos[i, j])
    return s * out, t


def ref_arcface_torch64(emb: torch.Tensor, w: torch.Tensor, labels, s: float, m: float) -> torch.Tensor:
    """Differentiable float64 ArcFace via acos (an independent route to the same gradient)."""
    x = emb / emb.norm(dim=1, keepdim=True)
    ww = w / w.norm(dim=1, keepdim=True)
    cos = x @ ww.T
    rows = []
    for i in range(cos.shape[0]):
        row = []
        for j in range(cos.shape[1]):
            c = cos[i, j]
            if j == labels[i]:
                c = (
                    torch.cos(torch.acos(c) + m)
                    if c > math.cos(math.pi - m)
                    else c - math.sin(math.pi - m) * m
                )
            row.append(c)
        rows.append(torch.stack(row))
    return s * torch.stack(rows)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture
def data():
    """Tiny batch; row 0's target class points almost opposite to it (exercises the ArcFace fallback)."""
    g = torch.Generator().manual_seed(1234)
    emb = torch.randn(B, D, generator=g, dtype=torch.float64)
    w = torch.randn(C, D, generator=g, dtype=torch.float64)
    labels = torch.tensor([2, 0, 4, 2])
    w[2] = -emb[0] + 0.05 * torch.randn(D, generator=g, dtype=torch.float64)
    return emb, w, labels


def make_head(name: str, w: torch.Tensor, **kw):
    head = build_head(name, embedding_size=w.shape[1], num_classes=w.shape[0], **kw)
    with torch.no_grad():
        head.weight.copy_(w.float())
    return head


def np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def close(a, b, atol=1e-4):
    np.testing.assert_allclose(np64(a) if isinstance(a, torch.Tensor) else a, b, rtol=1e-5, atol=atol)


# --------------------------------------------------------------------------- registry / output
def test_registry():
    assert HEADS.names() == ["arcface", "cosface", "curricularface", "normface", "softmax"]
    with pytest.raises(KeyError, match="arcface"):
        build_head("sphereface2", embedding_size=3, num_classes=5)


def test_defaults():
    assert (CosFace(3, 5).scale, CosFace(3, 5).margin) == (64.0, 0.35)
    arc = ArcFace(3, 5)
    assert (arc.scale, arc.margin, arc.easy_margin, arc.margin_grad) == (64.0, 0.5, False, "full")
    cur = CurricularFace(3, 5)
    assert (cur.scale, cur.margin, cur.alpha) == (64.0, 0.5, 0.01)
    assert float(cur.t) == 0.0
    w = build_head("normface", embedding_size=512, num_classes=1000).weight.detach()
    assert w.shape == (1000, 512)
    assert abs(float(w.std()) - 0.01) < 0.001


@pytest.mark.parametrize("name", HEADS.names())
def test_output_contract(name, data):
    emb, w, labels = data
    head = make_head(name, w).train()
    out = head(emb.float(), labels)
    assert isinstance(out, HeadOutput)
    assert out.logits.shape == out.plain_logits.shape == (B, C)
    assert out.logits.dtype == out.plain_logits.dtype == torch.float32
    assert out.logits.requires_grad
    assert not out.plain_logits.requires_grad


# --------------------------------------------------------------------------- logits vs reference
def test_softmax_matches_reference(data):
    emb, w, labels = data
    head = make_head("softmax", w)
    with torch.no_grad():
        head.bias.copy_(torch.arange(C, dtype=torch.float32) * 0.1)
    out = head(emb.float(), labels)
    ref = emb.numpy() @ w.numpy().T + np.arange(C) * 0.1
    close(out.logits, ref)
    close(out.plain_logits, ref)
    nobias = make_head("softmax", w, bias=False)
    assert nobias.bias is None
    close(nobias(emb.float(), labels).logits, emb.numpy() @ w.numpy().T)


def test_normface_matches_reference(data):
    emb, w, labels = data
    out = make_head("normface", w)(emb.float(), labels)
    close(out.logits, S * ref_cos(emb.numpy(), w.numpy()))
    close(out.plain_logits, S * ref_cos(emb.numpy(), w.numpy()))


@pytest.mark.parametrize("m", [0.35, 0.4])
def test_cosface_matches_reference(data, m):
    emb, w, labels = data
    out = make_head("cosface", w, margin=m)(emb.float(), labels)
    cos = ref_cos(emb.numpy(), w.numpy())
    close(out.logits, ref_cosface(cos, labels.tolist(), S, m))
    close(out.plain_logits, S * cos)


@pytest.mark.parametrize("margin_grad", ["full", "straight_through"])
def test_arcface_matches_reference(data, margin_grad):
    emb, w, labels = data
    cos = ref_cos(emb.numpy(), w.numpy())
    assert cos[0, 2] < math.cos(math.pi - 0.5), "fixture should exercise the fallback branch"
    out = make_head("arcface", w, margin_grad=margin_grad)(emb.float(), labels)
    close(out.logits, ref_arcface(cos, labels.tolist(), S, 0.5))
    close(out.plain_logits, S * cos)


def test_arcface_gradients_match_reference_full(data):
    emb, w, labels = data
    proj = torch.randn(B, C, generator=torch.Generator().manual_seed(7), dtype=torch.float64)

    e64, w64 = emb.clone().requires_grad_(True), w.clone().requires_grad_(True)
    (ref_arcface_torch64(e64, w64, labels.tolist(), S, 0.5) * proj).sum().backward()

    head = make_head("arcface", w)
    e32 = emb.float().requires_grad_(True)
    (head(e32, labels).logits * proj.float()).sum().backward()

    np.testing.assert_allclose(np64(e32.grad), np64(e64.grad), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np64(head.weight.grad), np64(w64.grad), rtol=1e-4, atol=1e-3)


def test_arcface_margin_gradient_modes():
    cos_vals = torch.tensor([[0.9, 0.1], [0.3, -0.2], [-0.95, 0.4]])
    labels = torch.tensor([0, 0, 0])
    derivs = {}
    for mode in ("full", "straight_through"):
        head = ArcFace(2, 2, margin_grad=mode)
        cos = cos_vals.clone().requires_grad_(True)
        out = head.apply_margin(cos, labels) * head.scale
        out[:, 0].sum().backward()
        derivs[mode] = cos.grad[:, 0]
        assert torch.all(cos.grad[:, 1] == 0)
    # straight-through: d(target logit)/d(cos) is exactly s
    assert torch.all(derivs["straight_through"] == S)
    # full: s * (cos m + sin m * c / sqrt(1-c^2)) on the cos(theta+m) branch, s on the fallback branch
    expected = [S * (math.cos(0.5) + math.sin(0.5) * c / math.sqrt(1 - c * c)) for c in (0.9, 0.3)] + [S]
    close(derivs["full"], expected, atol=1e-3)


def test_arcface_easy_margin():
    head = ArcFace(2, 1, easy_margin=True)
    c = torch.tensor([0.5, 0.0, -0.3, 0.9, -0.95])
    out = head.apply_margin(c[:, None], torch.zeros(5, dtype=torch.long))[:, 0]
    expected = [ref_arc_value(float(v), 0.5, easy=True) for v in c]
    close(out, expected, atol=1e-6)
    assert out[1] == c[1] and out[2] == c[2] and out[4] == c[4]  # untouched where cos <= 0
    # the default (hard) variant applies the margin to negative cosines too
    hard = ArcFace(2, 1).apply_margin(c[:, None], torch.zeros(5, dtype=torch.long))[:, 0]
    assert hard[2] < c[2] and hard[4] < c[4]


@pytest.mark.parametrize("alpha", [0.01, 0.1])
def test_curricularface_matches_reference_over_steps(data, alpha):
    emb, w, labels = data
    head = make_head("curricularface", w, alpha=alpha).train()
    t = 0.0
    cos = ref_cos(emb.numpy(), w.numpy())
    n_hard = 0
    for step in range(3):
        e = emb * (1 + 0.3 * step)  # same directions; different batches would work as well
        out = head(e.float(), labels)
        ref, t = ref_curricular_step(cos, labels.tolist(), t, S, 0.5, alpha)
        close(out.logits, ref)
        close(out.plain_logits, S * cos)
        np.testing.assert_allclose(float(head.t), t, rtol=1e-5, atol=1e-7)
        n_hard = int(np.sum(np64(out.logits) != S * cos)) - B
    assert n_hard > 0, "fixture should contain hard negatives"


# --------------------------------------------------------------------------- m = 0
def test_zero_margin_equals_normface(data):
    emb, w, labels = data
    cos = S * ref_cos(emb.numpy(), w.numpy())
    close(make_head("arcface", w, margin=0.0)(emb.float(), labels).logits, cos)
    close(
        make_head("arcface", w, margin=0.0, margin_grad="straight_through")(emb.float(), labels).logits, cos
    )
    close(make_head("cosface", w, margin=0.0)(emb.float(), labels).logits, cos)
    # CurricularFace with m = 0 matches s*cos only while no negative beats the target (else t
    # re-weights it even at m = 0), so label every row with its best-matching class.
    argmax = torch.from_numpy(cos.argmax(axis=1))
    head = make_head("curricularface", w, margin=0.0).train()
    close(head(emb.float(), argmax).logits, cos)
    assert float(head.t) != 0.0  # t did update


# --------------------------------------------------------------------------- arcface shape
def test_arcface_target_bounded_and_monotone():
    theta = torch.linspace(0.0, math.pi, 4001, dtype=torch.float64)
    cos = torch.cos(theta).float()
    for m in (0.2, 0.5, 0.8):
        head = ArcFace(2, 1, margin=m)
        target = head.apply_margin(cos[:, None], torch.zeros_like(cos, dtype=torch.long))[:, 0]
        assert torch.all(target <= cos + 1e-6)
        assert torch.all(target[1:] - target[:-1] <= 1e-6), "target must not increase with theta"
        assert torch.equal(target, arc_target(cos, m))
        # cos(theta + m) on the non-fallback range, up to the sqrt clamp (<= sqrt(1e-7) * sin m)
        ok = theta < math.pi - m - 1e-3
        close(target[ok], np.cos(theta[ok].numpy() + m), atol=math.sqrt(1e-7) * math.sin(m) + 1e-6)


# --------------------------------------------------------------------------- curricularface t
def test_curricularface_t_ema_constant_mean():
    r, K = 0.6, 40
    head = CurricularFace(2, 3).train()
    cos = torch.full((4, 3), 0.1)
    cos[:, 0] = torch.tensor([0.5, 0.7, 0.6, 0.6])  # batch mean r
    labels = torch.zeros(4, dtype=torch.long)
    for _ in range(K):
        head.apply_margin(cos, labels)
    np.testing.assert_allclose(float(head.t), r * (1 - 0.99**K), rtol=1e-5)


def test_curricularface_hard_negative_modulation_uses_updated_t():
    head = CurricularFace(2, 3, alpha=0.5).train()
    head.t.fill_(0.2)
    cos = torch.tensor([[0.6, 0.8, -0.1], [0.9, 0.2, 0.3]])
    labels = torch.tensor([0, 0])
    out = head.apply_margin(cos, labels)
    t = 0.5 * 0.75 + 0.5 * 0.2  # updated before modulation
    assert float(head.t) == pytest.approx(t)
    # row 0: cos(acos(0.6)+0.5) ~ 0.196 -> 0.8 is hard, -0.1 easy; row 1: ~0.555 -> none hard
    expected = [
        [ref_arc_value(0.6, 0.5), 0.8 * (t + 0.8), -0.1],
        [ref_arc_value(0.9, 0.5), 0.2, 0.3],
    ]
    close(out, expected, atol=1e-6)


def test_curricularface_eval_keeps_t_and_state_dict():
    head = CurricularFace(3, 5).train()
    emb, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 3])
    head(emb, labels)
    t_train = float(head.t)
    assert t_train != 0.0
    head.eval()
    head(emb, labels)
    assert float(head.t) == t_train
    state = head.state_dict()
    assert "t" in state and float(state["t"]) == t_train
    fresh = CurricularFace(3, 5)
    fresh.load_state_dict(state)
    assert float(fresh.t) == t_train


# --------------------------------------------------------------------------- sharding
def shard_labels(labels: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    inside = (labels >= start) & (labels < stop)
    return torch.where(inside, labels - start, torch.full_like(labels, -1))


@pytest.mark.parametrize("name", ["arcface", "cosface", "curricularface"])
def test_minus_one_rows_keep_target_untouched(name):
    head = build_head(name, embedding_size=3, num_classes=3).train()
    cos = torch.tensor([[0.7, 0.2, -0.3], [0.1, 0.5, 0.4], [0.3, -0.6, 0.8]])
    labels = torch.tensor([0, -1, -1])
    target_cos = torch.tensor([0.7, 0.35, -0.2])  # rows 1, 2: targets live on another shard
    out = head.apply_margin(cos, labels, target_cos=target_cos)
    if name == "curricularface":
        t = float(head.t)
        for i in (1, 2):
            raw = math.cos(math.acos(float(target_cos[i])) + 0.5)
            expected = [c * (t + c) if c > raw else c for c in cos[i].tolist()]
            close(out[i], expected, atol=1e-6)
    else:
        assert torch.equal(out[1:], cos[1:])
    assert out[0, 0] < cos[0, 0]  # the owned row did get its margin
    with pytest.raises(ValueError, match="target_cos"):
        head.apply_margin(cos, labels)


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("arcface", {}),
        ("arcface", {"margin_grad": "straight_through"}),
        ("arcface", {"easy_margin": True}),
        ("cosface", {}),
        ("curricularface", {}),
        ("normface", {}),
    ],
)
def test_sharded_apply_margin_equals_unsharded(name, kw, data):
    emb, w, labels = data
    head = make_head(name, w, **kw).train()
    if name == "curricularface":
        head.t.fill_(0.3)
    shards = [copy.deepcopy(head), copy.deepcopy(head)]  # one module per "rank"
    proj = torch.randn(B, C, generator=torch.Generator().manual_seed(3))

    cos_full = head.cosine(emb.float()).detach().requires_grad_(True)
    full = head.apply_margin(cos_full, labels)
    (full * proj).sum().backward()

    cos_sharded = cos_full.detach().clone().requires_grad_(True)
    target_cos = cos_sharded.detach().gather(1, labels[:, None]).squeeze(1)  # the "all-reduced" values
    bounds = [(0, 2), (2, C)]
    parts = [
        shard.apply_margin(cos_sharded[:, a:b], shard_labels(labels, a, b), target_cos=target_cos)
        for shard, (a, b) in zip(shards, bounds, strict=True)
    ]
    sharded = torch.cat(parts, dim=1)
    (sharded * proj).sum().backward()

    close(sharded, np64(full), atol=1e-6)
    close(cos_sharded.grad, np64(cos_full.grad), atol=1e-5)
    if name == "curricularface":
        for shard in shards:
            assert float(shard.t) == pytest.approx(float(head.t))


# --------------------------------------------------------------------------- validation
def test_forward_input_validation():
    head = ArcFace(3, 5)
    emb, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"label 7 out of range for head with 5 classes: check num_classes"):
        head(emb, torch.tensor([0, 7, 1, 2]))
    with pytest.raises(ValueError, match="label -1 is negative"):
        head(emb, torch.tensor([0, -1, 1, 2]))
    with pytest.raises(ValueError, match=r"shape \[B, 3\].*embedding_size"):
        head(torch.randn(4, 8), labels)
    with pytest.raises(ValueError, match=r"shape \[B, 3\]"):
        head(torch.randn(4, 3, 1), labels)
    with pytest.raises(ValueError, match=r"labels of shape \[4\]"):
        head(emb, labels[:3])
    with pytest.raises(ValueError, match=r"labels of shape \[4\]"):
        head(emb, labels[:, None])
    with pytest.raises(ValueError, match=r"labels\.long\(\)"):
        head(emb, labels.int())
    with pytest.raises(ValueError, match=r"labels\.long\(\)"):
        head(emb, labels.float())
    with pytest.raises(ValueError, match="empty batch"):
        head(emb[:0], labels[:0])
    with pytest.raises(ValueError, match="floating-point"):
        head(emb.long(), labels)


def test_apply_margin_validation():
    head = CosFace(3, 5)
    cos = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="label 3 out of range for 3 columns"):
        head.apply_margin(cos, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="label -2 out of range"):
        head.apply_margin(cos, torch.tensor([0, -2]))
    with pytest.raises(ValueError, match="target_cos of shape"):
        head.apply_margin(cos, torch.tensor([0, 1]), target_cos=torch.zeros(3))


def test_constructor_validation():
    with pytest.raises(ValueError, match="num_classes"):
        build_head("arcface", embedding_size=3, num_classes=0)
    with pytest.raises(ValueError, match="embedding_size"):
        build_head("softmax", embedding_size=-1, num_classes=2)
    with pytest.raises(ValueError, match="scale"):
        build_head("normface", embedding_size=3, num_classes=2, scale=0.0)
    with pytest.raises(ValueError, match="margin_grad must be one of full, straight_through"):
        build_head("arcface", embedding_size=3, num_classes=2, margin_grad="none")
    with pytest.raises(ValueError, match="margin"):
        build_head("cosface", embedding_size=3, num_classes=2, margin=-0.1)
    with pytest.raises(ValueError, match="alpha"):
        build_head("curricularface", embedding_size=3, num_classes=2, alpha=1.5)


# --------------------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("name", HEADS.names())
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16])
def test_autocast_bf16_returns_fp32(name, in_dtype, data):
    emb, w, labels = data
    ref_head = make_head(name, w).eval()
    ref = ref_head(emb.float(), labels).logits
    head = make_head(name, w).eval()
    x = emb.to(in_dtype).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x, labels)
        cos = head.cosine(x) if isinstance(head, MarginHead) else None
    assert out.logits.dtype == torch.float32 and out.plain_logits.dtype == torch.float32
    if cos is not None:
        assert cos.dtype == torch.float32
    # fp32 input: identical maths; bf16 input: only the input rounding differs
    tol = 1e-4 if in_dtype == torch.float32 else 1.0
    close(out.logits, np64(ref), atol=tol)
    out.logits.sum().backward()
    assert head.weight.grad.dtype == torch.float32 and torch.isfinite(head.weight.grad).all()
    assert x.grad is not None and x.grad.dtype == in_dtype


@pytest.mark.parametrize("name", ["softmax", "normface", "cosface", "arcface", "curricularface"])
def test_head_moves_between_devices_and_dtypes(name: str) -> None:
    """nn.Module.to()/float()/double() must work (a head method must not shadow Module internals)."""
    head = build_head(name, embedding_size=3, num_classes=5)
    assert head.to("cpu") is head
    head.double()
    assert next(head.parameters()).dtype == torch.float64
