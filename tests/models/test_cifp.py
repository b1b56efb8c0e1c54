"""CIFP (faceforge/models/heads/cifp.py) against a hand-computed example and a float64 transcription of
TFace's head, in one process; tests/test_distributed.py runs it on 2 gloo ranks."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from faceforge.models.heads import build_head
from faceforge.models.heads.cifp import CIFP, cifp_penalty
from faceforge.models.heads.criterion import LocalCriterion, LogitContext, ShardedCriterion, shard_range

# ---------------------------------------------------------------------------------------------------------
# Hand example: 4 rows x 6 classes, labels 0..3, CosFace m = 0.35, alpha = 1/(6-1) = 0.2.
#   row 0 (y=0): .95 .5  .9  .1  -.2  .3    E0 = {}       (nothing above .95)
#   row 1 (y=1): .2  .6  .7  .4  .45  0     E1 = {2}      (.7 > .6)
#   row 2 (y=2): .1  .3  .9  .2  0   -.1    E2 = {}
#   row 3 (y=3): .48 .35 .05 .5  .25  .6    E3 = {5}      (.6 > .5)
#   N = 4 * 5 = 20 non-target entries, K = 2, k = ceil(.2 * 18) = ceil(3.6) = 4.
#   remaining non-target values, largest first: .9 (0,2), .5 (0,1), .48 (3,0), .45 (1,4), .4 ... -> tau = .45
#   F (strictly above .45): row 0 {2: .9, 1: .5}, row 3 {0: .48}; rows 1, 2 none (k - 1 = 3 in all)
#   margined targets t = c_y - .35: row 0 .6, row 3 .15
#     (0,2): .9 >= .6 -> detached W;  (0,1): .5 < .6 -> trainable;  (3,0): .48 >= .15 -> detached W
#   code_mean:   delta_0 = (1 + .95) * (.81 + .25) / 2 = 1.0335;   delta_3 = (1 + .5) * .2304 = .3456
#   paper_ratio: FPR_i / alpha = (|F_i| / 5) / .2 = |F_i|: delta_0 = 1.95 * 1.06 = 2.067, delta_3 = .3456
# Embeddings x = the rows themselves and W = I (so cos = x W^T = x) make the gradients hand-computable:
#   d(delta_0 + delta_3)/dW: only W_1 (the one trainable entry): 1.95 * (2 * .5) / 2 * x_0 = .975 x_0
#   d delta_0/dx_0 = .53 e_0 (through c_hat_y) + 1.95 * (.9 e_2 + .5 e_1);  d delta_3/dx_3 = .2304 e_3 + 1.5 * 2 * .48 e_0
# ---------------------------------------------------------------------------------------------------------
HAND = [
    [0.95, 0.5, 0.9, 0.1, -0.2, 0.3],
    [0.2, 0.6, 0.7, 0.4, 0.45, 0.0],
    [0.1, 0.3, 0.9, 0.2, 0.0, -0.1],
    [0.48, 0.35, 0.05, 0.5, 0.25, 0.6],
]


def _hand(penalty: str = "code_mean"):
    x = torch.tensor(HAND, dtype=torch.float64, requires_grad=True)
    w = torch.eye(6, dtype=torch.float64, requires_grad=True)
    cos = x @ w.T
    labels = torch.arange(4)
    target = cos.detach()[torch.arange(4), labels]
    res = cifp_penalty(cos, labels, target, target - 0.35, x, w, num_classes=6, penalty=penalty)
    return x, w, res


def test_hand_example_threshold_and_delta() -> None:
    _, _, res = _hand()
    assert (res.num_negatives, res.num_violating, res.k) == (20, 2, 4)
    assert res.tau == pytest.approx(0.45)
    assert res.false_positives.tolist() == [2, 0, 0, 1]
    torch.testing.assert_close(
        res.delta.detach(), torch.tensor([1.0335, 0.0, 0.0, 0.3456], dtype=torch.float64)
    )
    _, _, ratio = _hand("paper_ratio")
    torch.testing.assert_close(
        ratio.delta.detach(), torch.tensor([2.067, 0.0, 0.0, 0.3456], dtype=torch.float64)
    )


def test_hand_example_gradients_skip_detached_weights() -> None:
    x, w, res = _hand()
    res.delta.sum().backward()
    expected_w = torch.zeros(6, 6, dtype=torch.float64)
    expected_w[1] = 0.975 * torch.tensor(HAND[0], dtype=torch.float64)  # the one trainable entry (0, 1)
    torch.testing.assert_close(w.grad, expected_w)  # (0, 2) and (3, 0) took the detached branch: no W grad
    expected_x = torch.zeros(4, 6, dtype=torch.float64)
    expected_x[0] = torch.tensor([0.53, 1.95 * 0.5, 1.95 * 0.9, 0, 0, 0], dtype=torch.float64)
    expected_x[3] = torch.tensor([1.44, 0, 0, 0.2304, 0, 0], dtype=torch.float64)
    torch.testing.assert_close(x.grad, expected_x)


def test_all_detached_penalty_sends_no_gradient_to_w() -> None:
    """With a margin so large that every false positive beats the margined target, the penalty reaches the
    embeddings only (the target cosine itself still trains W through the plain logit)."""
    g = torch.Generator().manual_seed(3)
    x = F.normalize(torch.randn(8, 5, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    w = F.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    cos = x @ w.T
    labels = torch.randint(0, 7, (8,), generator=g)
    target = cos.detach()[torch.arange(8), labels]
    res = cifp_penalty(cos, labels, target, target - 3.0, x, w, num_classes=7)
    assert int(res.false_positives.sum()) > 0
    res.delta.sum().backward()
    assert torch.count_nonzero(w.grad) == 0 and torch.count_nonzero(x.grad) > 0


# ---------------------------------------------------------------------------------------------------------
# float64 transcription of TFace localfc/cifp.py (full detached-W matrix, masks, in-place target write
# replaced by torch.where), with the margin as a function of the raw target cosine
# ---------------------------------------------------------------------------------------------------------
def tface_cifp(emb, weight, labels, s, margin_fn, alpha=None):
    x = F.normalize(emb, dim=1)
    wn = F.normalize(weight, dim=1)
    cos = (x @ wn.T).clamp(-1, 1)
    cos_ = (x @ wn.detach().T).clamp(-1, 1)
    b, c = cos.shape
    mask = F.one_hot(labels, c).to(cos.dtype)
    tmp, tmp_ = cos - 2 * mask, cos_ - 2 * mask
    rows = torch.arange(b)
    tgt, tgt_ = cos[rows, labels][:, None], cos_[rows, labels][:, None]
    tgt_m = margin_fn(tgt)
    far = 1 / (c - 1) if alpha is None else alpha
    viol = tmp > tgt
    k = math.ceil(far * (b * (c - 1) - int(viol.sum())))
    th = torch.topk((tmp - 2 * viol.to(cos.dtype)).flatten(), k)[0][-1]
    cond = (~viol & (tmp > th)).to(cos.dtype)
    neg, neg_ = cond * tmp, cond * tmp_
    neg = torch.where(tgt_m > neg, neg, neg_) ** 2
    times = (neg > 0).sum(1, keepdim=True).to(cos.dtype)
    times = torch.where(times > 0, times, torch.ones_like(times))
    new_t = tgt_m - (1 + tgt_) * neg.sum(1, keepdim=True) / times
    return s * torch.where(mask.bool(), new_t, cos), th


def _data(b: int = 12, c: int = 9, d: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, d, generator=g)
    weight = torch.randn(c, d, generator=g) * 0.1
    labels = torch.randint(0, c, (b,), generator=g)
    return emb, weight, labels


def _criterion(name: str, weight: torch.Tensor, transform=None, **kw) -> LocalCriterion:
    head = build_head(name, embedding_size=weight.shape[1], num_classes=weight.shape[0], scale=16.0, **kw)
    with torch.no_grad():
        head.weight.copy_(weight)
    return LocalCriterion(head, logit_transform=transform)


@pytest.mark.parametrize(
    ("name", "kw", "margin_fn"),
    [
        ("cosface", {"margin": 0.35}, lambda t: t - 0.35),
        ("arcface", {"margin": 0.5}, None),
    ],
)
def test_matches_tface_transcription(name: str, kw: dict, margin_fn) -> None:
    from faceforge.models.heads import arc_target

    margin_fn = margin_fn or (lambda t: arc_target(t, 0.5))
    emb, weight, labels = _data()
    cifp = CIFP()
    crit = _criterion(name, weight, cifp, **kw)
    x = emb.clone().requires_grad_(True)
    out = crit(x, labels)
    out.loss.backward()
    e64 = emb.double().requires_grad_(True)
    w64 = weight.double().requires_grad_(True)
    ref_logits, th = tface_cifp(e64, w64, labels, 16.0, margin_fn)
    ref = F.cross_entropy(ref_logits, labels)
    ref.backward()
    assert cifp.last.tau == pytest.approx(float(th.detach()), abs=1e-6)
    assert int(cifp.last.false_positives.sum()) == cifp.last.k - 1 > 0
    torch.testing.assert_close(out.loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), e64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(crit.head.weight.grad.double(), w64.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "kw"),
    [("cosface", {"margin": 0.35}), ("arcface", {"margin": 0.5}), ("curricularface", {"margin": 0.5})],
)
def test_k_equal_one_gives_the_plain_head(name: str, kw: dict) -> None:
    """alpha so small that k = 1: tau is the largest remaining negative, nothing lies strictly above it."""
    emb, weight, labels = _data()
    cifp = CIFP(alpha=1e-9)
    plain, penalised = _criterion(name, weight, **kw), _criterion(name, weight, cifp, **kw)
    xa, xb = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    a, b = plain(xa, labels), penalised(xb, labels)
    a.loss.backward()
    b.loss.backward()
    assert cifp.last.k == 1 and int(cifp.last.false_positives.sum()) == 0
    assert torch.equal(a.loss, b.loss) and torch.equal(a.top1, b.top1)
    assert torch.equal(xa.grad, xb.grad) and torch.equal(plain.head.weight.grad, penalised.head.weight.grad)
    if name == "curricularface":
        assert torch.equal(plain.head.t, penalised.head.t)


def test_identity_transform_equals_default_path() -> None:
    emb, weight, labels = _data()
    seen: list[LogitContext] = []

    def identity(logits: torch.Tensor, ctx: LogitContext) -> torch.Tensor:
        seen.append(ctx)
        return logits

    plain, hooked = (
        _criterion("arcface", weight, margin=0.5),
        _criterion("arcface", weight, identity, margin=0.5),
    )
    xa, xb = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    a, b = plain(xa, labels), hooked(xb, labels)
    a.loss.backward()
    b.loss.backward()
    assert torch.equal(a.loss, b.loss) and torch.equal(a.top1, b.top1) and torch.equal(xa.grad, xb.grad)
    ctx = seen[0]
    assert ctx.rows_shared is False and ctx.num_classes == 9 and ctx.scale == 16.0
    torch.testing.assert_close(ctx.cos, ctx.embeddings @ ctx.weight.T)
    torch.testing.assert_close(ctx.target_cos, ctx.cos.detach()[torch.arange(12), labels])


def test_cifp_raises_the_loss_and_paper_ratio_at_least_as_much() -> None:
    emb, weight, labels = _data(seed=1)
    losses = {}
    for pen in ("code_mean", "paper_ratio"):
        losses[pen] = float(
            _criterion("cosface", weight, CIFP(penalty=pen), margin=0.35)(emb, labels).loss.detach()
        )
    plain = float(_criterion("cosface", weight, margin=0.35)(emb, labels).loss.detach())
    assert plain < losses["code_mean"] <= losses["paper_ratio"]


def test_sharded_criterion_in_one_process_equals_local() -> None:
    emb, weight, labels = _data()
    local = _criterion("curricularface", weight, CIFP(), margin=0.5)
    head = build_head("curricularface", embedding_size=6, num_classes=9, scale=16.0, margin=0.5)
    with torch.no_grad():
        head.weight.copy_(weight)
    sharded = ShardedCriterion(head, 9, logit_transform=CIFP())
    xa, xb = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    a, b = local(xa, labels), sharded(xb, labels)
    a.loss.backward()
    b.loss.backward()
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(local.head.weight.grad, sharded.head.weight.grad)


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="penalty"):
        CIFP(penalty="sum")
    with pytest.raises(ValueError, match="alpha"):
        CIFP(alpha=0.0)
    with pytest.raises(ValueError, match="margin head"):
        LocalCriterion(build_head("softmax", embedding_size=4, num_classes=3), logit_transform=CIFP())


def test_bf16_autocast_keeps_fp32() -> None:
    emb, weight, labels = _data()
    crit = _criterion("cosface", weight, CIFP(), margin=0.35)
    ref = crit(emb, labels).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = crit(emb, labels).loss
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)


# ---------------------------------------------------------------------------------------------------------
# 2 gloo ranks under torchrun (tests/dist/cifp_worker.py) against one process on the whole batch
# ---------------------------------------------------------------------------------------------------------
WORKER = Path(__file__).resolve().parents[1] / "dist" / "cifp_worker.py"
DIST_HEADS = {"arcface": {"margin": 0.5}, "cosface": {"margin": 0.35}, "curricularface": {"margin": 0.5}}


def _dist_inputs(num_classes: int = 10):
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(8, 16, generator=g)
    labels = torch.randint(0, num_classes, (8,), generator=g)
    weight = torch.randn(num_classes, 16, generator=g) * 0.1
    emb = emb + 12 * weight[labels] * (torch.arange(8) % 2 == 0).float()[:, None]  # as the worker
    return emb, labels, weight


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("cifp_dist")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    cmd += [f"--master_port={_free_port()}", str(WORKER), str(out)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _one_process(name: str, weight: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor, **cifp_kw):
    cifp = CIFP(**cifp_kw)
    crit = _criterion(name, weight, cifp, **DIST_HEADS[name])
    x = emb.clone().requires_grad_(True)
    out = crit(x, labels)
    out.loss.backward()
    return crit, cifp.last, out, x.grad


def test_tau_on_two_data_parallel_ranks_equals_the_concatenated_batch(two_ranks: list[dict]) -> None:
    emb, labels, weight = _dist_inputs()
    crit, ref, out, grad = _one_process("cosface", weight, emb, labels)
    assert ref.k > 1 and int(ref.false_positives.sum()) == ref.k - 1 > 0
    for r, res in enumerate(two_ranks):
        got = res["local"]
        assert got["tau"] == ref.tau and got["k"] == ref.k
        assert (got["violating"], got["negatives"]) == (ref.num_violating, ref.num_negatives)
        rows = slice(4 * r, 4 * r + 4)
        assert torch.equal(got["false_positives"], ref.false_positives[rows])
        torch.testing.assert_close(got["delta"], ref.delta.detach()[rows])
        # each rank's loss is the mean over its 4 rows: twice the gradient of the global mean
        torch.testing.assert_close(got["emb_grad"], 2 * grad[rows], rtol=1e-4, atol=1e-6)
    # DDP averages the ranks' weight gradients: the one-process gradient of the global mean
    mean_w = (two_ranks[0]["local"]["weight_grad"] + two_ranks[1]["local"]["weight_grad"]) / 2
    torch.testing.assert_close(mean_w, crit.head.weight.grad, rtol=1e-4, atol=1e-7)
    loss = (two_ranks[0]["local"]["loss"] + two_ranks[1]["local"]["loss"]) / 2
    torch.testing.assert_close(loss, out.loss.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "penalty"),
    [
        ("arcface", "code_mean"),
        ("cosface", "code_mean"),
        ("curricularface", "code_mean"),
        ("cosface", "paper_ratio"),
    ],
)
def test_sharded_cifp_on_two_ranks_equals_local(two_ranks: list[dict], name: str, penalty: str) -> None:
    emb, labels, weight = _dist_inputs()
    crit, ref, out, grad = _one_process(name, weight, emb, labels, penalty=penalty)
    assert int(ref.false_positives.sum()) > 0
    for r, res in enumerate(two_ranks):
        got = res[f"sharded_{name}_{penalty}"]
        assert got["tau"] == ref.tau and got["k"] == ref.k
        assert torch.equal(got["false_positives"], ref.false_positives)
        torch.testing.assert_close(got["loss"], out.loss.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["top1"], out.top1, rtol=0, atol=1e-6)
        torch.testing.assert_close(got["emb_grad"] / 2, grad[4 * r : 4 * r + 4], rtol=1e-4, atol=1e-6)
        s, e = shard_range(10, r, 2)
        torch.testing.assert_close(got["weight_grad"], crit.head.weight.grad[s:e], rtol=1e-4, atol=1e-6)
        if name == "curricularface":
            torch.testing.assert_close(got["t"], crit.head.t, rtol=1e-5, atol=1e-7)


def test_partial_fc_cifp_uses_the_sampled_classes(two_ranks: list[dict]) -> None:
    """tau, F and the softmax are over the sampled classes; alpha stays 1/(C - 1) over all 20 classes."""
    emb, labels, weight = _dist_inputs(num_classes=20)
    index = torch.cat([two_ranks[0]["pfc"]["sampled"], two_ranks[1]["pfc"]["sampled"]])
    assert len(index) == 10
    remapped = torch.searchsorted(index, labels)
    assert torch.equal(index[remapped], labels)
    _, ref, out, grad = _one_process("arcface", weight[index], emb, labels=remapped, alpha=1 / 19)
    assert ref.num_negatives == 8 * 9 and ref.k == math.ceil((72 - ref.num_violating) / 19)
    for r, res in enumerate(two_ranks):
        got = res["pfc"]
        assert got["tau"] == ref.tau and got["k"] == ref.k
        torch.testing.assert_close(got["loss"], out.loss.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["emb_grad"] / 2, grad[4 * r : 4 * r + 4], rtol=1e-4, atol=1e-6)


def test_distributed_inputs_exercise_both_branches_of_the_detached_rule() -> None:
    """The worker's batch has false positives below the margined target (W trainable) and above it."""
    emb, labels, weight = _dist_inputs()
    _, ref, _, _ = _one_process("cosface", weight, emb, labels)
    x, w = F.normalize(emb, dim=1), F.normalize(weight, dim=1)
    c = x @ w.T
    t = c[torch.arange(8), labels] - 0.35
    fp = (c > ref.tau) & (c <= c[torch.arange(8), labels][:, None])
    fp[torch.arange(8), labels] = False
    rows, cols = fp.nonzero(as_tuple=True)
    trainable = int((t[rows] > c[rows, cols]).sum())
    assert len(rows) == ref.k - 1 and 0 < trainable < len(rows)


def test_cifp_trains_a_small_model() -> None:
    """A linear embedding with CosFace + CIFP on 10 separable classes: finite, decreasing loss, and the
    penalty is active (false positives found) while it trains."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 8, generator=g)
    labels = torch.arange(10).repeat(6)
    data = centres[labels] + 0.6 * torch.randn(60, 8, generator=g)
    net = torch.nn.Linear(8, 16)
    cifp = CIFP()
    crit = LocalCriterion(build_head("cosface", embedding_size=16, num_classes=10, scale=16.0), cifp)
    opt = torch.optim.SGD([*net.parameters(), *crit.parameters()], lr=0.1, momentum=0.9)
    losses, penalised = [], 0
    for _ in range(40):
        opt.zero_grad()
        out = crit(net(data), labels)
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
        penalised += int((cifp.last.false_positives > 0).sum())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.5 * losses[0]
    assert penalised > 0 and float(out.top1) > 0.9
