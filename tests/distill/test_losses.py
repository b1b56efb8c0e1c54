"""Distillation losses against hand-written references (plain python loops) and the methods.md properties.

References are written from the formulas in methods.md §2 (DDL), §3 (EKD), §8 (LIAAD) and the baseline
papers, independently of ``faceforge.distill`` internals, in float64 python arithmetic on small seeded
tensors; the modules compute in fp32, so values are compared to 1e-5.
"""

from __future__ import annotations

import math

import pytest
import torch

from faceforge.distill import (
    DISTILL_LOSSES,
    LIAAD_ATTENTIONS,
    CosineLoss,
    DDLBranch,
    DDLLoss,
    EKDLoss,
    FeatureL2Loss,
    LIAADLoss,
    RKDLoss,
    SPLoss,
    branches_from_pairs,
)
from faceforge.distill.ddl import hardest_negatives, soft_histogram
from faceforge.distill.ekd import soft_rank

TOL = 1e-5


def close(actual: torch.Tensor | float, expected: float, tol: float = TOL) -> None:
    a = actual.item() if isinstance(actual, torch.Tensor) else float(actual)
    assert abs(a - expected) <= tol * max(1.0, abs(expected)), f"{a} != {expected}"


def rows(x: torch.Tensor) -> list[list[float]]:
    return x.detach().double().tolist()


def dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True))


def norm(u: list[float]) -> float:
    return math.sqrt(dot(u, u))


def unit(u: list[float]) -> list[float]:
    n = norm(u)
    return [a / n for a in u]


def cos(u: list[float], v: list[float]) -> float:
    return dot(u, v) / (norm(u) * norm(v))


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1.0 else abs(x) - 0.5


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def random_rotation(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(randn(d, d, seed=seed).double())
    return (q * torch.sign(torch.diagonal(r))).float()


# --------------------------------------------------------------------------- registry


def test_registry_names_and_build() -> None:
    assert DISTILL_LOSSES.names() == ["cosine", "ddl", "ekd", "feature_l2", "liaad", "rkd", "sp"]
    assert LIAAD_ATTENTIONS.names() == ["confidence", "fixed", "learned"]
    assert isinstance(DISTILL_LOSSES.build("rkd", distance_weight=1.0), RKDLoss)
    assert DISTILL_LOSSES.build("ekd", topk=7).topk == 7
    with pytest.raises(KeyError, match="available"):
        DISTILL_LOSSES.build("nope")


# --------------------------------------------------------------------------- baselines


def ref_feature_l2(s: torch.Tensor, t: torch.Tensor, normalize: bool) -> float:
    total = 0.0
    for a, b in zip(rows(s), rows(t), strict=True):
        if normalize:
            a, b = unit(a), unit(b)
        total += sum((x - y) ** 2 for x, y in zip(a, b, strict=True))
    return total / len(s)


def ref_cosine(s: torch.Tensor, t: torch.Tensor) -> float:
    return sum(1.0 - cos(a, b) for a, b in zip(rows(s), rows(t), strict=True)) / len(s)


def ref_rkd(s: torch.Tensor, t: torch.Tensor, wd: float = 25.0, wa: float = 50.0) -> float:
    def distances(x: list[list[float]]) -> list[list[float]]:
        n = len(x)
        d = [
            [0.0 if i == j else norm([a - b for a, b in zip(x[i], x[j], strict=True)]) for j in range(n)]
            for i in range(n)
        ]
        mu = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[v / mu for v in r] for r in d]

    def angles(x: list[list[float]]) -> list[float]:
        out = []
        n = len(x)
        for j in range(n):  # vertex
            for i in range(n):
                for k in range(n):
                    u = [a - b for a, b in zip(x[i], x[j], strict=True)]
                    v = [a - b for a, b in zip(x[k], x[j], strict=True)]
                    out.append(0.0 if i == j or k == j else cos(u, v))
        return out

    xs, xt = rows(s), rows(t)
    n = len(xs)
    ds, dt = distances(xs), distances(xt)
    loss_d = sum(huber(ds[i][j] - dt[i][j]) for i in range(n) for j in range(n)) / n**2
    a_s, a_t = angles(xs), angles(xt)
    loss_a = sum(huber(a - b) for a, b in zip(a_s, a_t, strict=True)) / n**3
    return wd * loss_d + wa * loss_a


def ref_sp(s: torch.Tensor, t: torch.Tensor) -> float:
    def gram(x: list[list[float]]) -> list[list[float]]:
        return [unit([dot(a, b) for b in x]) for a in x]

    gs, gt = gram(rows(s)), gram(rows(t))
    n = len(gs)
    return sum((gs[i][j] - gt[i][j]) ** 2 for i in range(n) for j in range(n)) / n**2


LABELS8 = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])


@pytest.mark.parametrize("normalize", [True, False])
def test_feature_l2_matches_reference(normalize: bool) -> None:
    s, t = randn(8, 6, seed=1), randn(8, 6, seed=2)
    close(FeatureL2Loss(normalize=normalize)(s, t, LABELS8), ref_feature_l2(s, t, normalize))


def test_cosine_matches_reference_and_feature_l2_relation() -> None:
    s, t = randn(8, 6, seed=3), randn(8, 6, seed=4)
    close(CosineLoss()(s, t, LABELS8), ref_cosine(s, t))
    # ||n(s) - n(t)||^2 = 2 (1 - cos)
    close(FeatureL2Loss()(s, t, LABELS8), 2.0 * ref_cosine(s, t))


@pytest.mark.parametrize(("ds", "dt"), [(6, 6), (5, 8)])
def test_rkd_matches_reference(ds: int, dt: int) -> None:
    s, t = randn(7, ds, seed=5), randn(7, dt, seed=6)
    close(RKDLoss()(s, t, LABELS8[:7]), ref_rkd(s, t))
    close(RKDLoss(distance_weight=1.0, angle_weight=0.0)(s, t, LABELS8[:7]), ref_rkd(s, t, 1.0, 0.0))


@pytest.mark.parametrize(("ds", "dt"), [(6, 6), (4, 8)])
def test_sp_matches_reference(ds: int, dt: int) -> None:
    s, t = randn(8, ds, seed=7), randn(8, dt, seed=8)
    close(SPLoss()(s, t, LABELS8), ref_sp(s, t))


def test_rkd_and_sp_invariant_to_teacher_rotation_and_scale() -> None:
    s, t = randn(8, 5, seed=9), randn(8, 7, seed=10)
    q = random_rotation(7, seed=11)
    for loss in (RKDLoss(), SPLoss()):
        base = float(loss(s, t, LABELS8))
        assert base > 1e-3
        close(loss(s, t @ q, LABELS8), base)
        close(loss(s, 3.7 * t, LABELS8), base)


@pytest.mark.parametrize("name", ["feature_l2", "cosine"])
def test_elementwise_losses_reject_mismatched_sizes(name: str) -> None:
    with pytest.raises(ValueError, match=r"student embedding size 6 != teacher embedding size 8.*projection"):
        DISTILL_LOSSES.build(name)(randn(4, 6, seed=0), randn(4, 8, seed=1), LABELS8[:4])


def test_batch_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="student batch 4 != teacher batch 5"):
        SPLoss()(randn(4, 6, seed=0), randn(5, 6, seed=1), LABELS8[:4])


@pytest.mark.parametrize("name", ["feature_l2", "cosine", "rkd", "sp", "ekd"])
def test_gradient_reaches_student_not_teacher(name: str) -> None:
    kwargs = {"warm_start": True} if name == "ekd" else {}
    loss_fn = DISTILL_LOSSES.build(name, **kwargs)
    s = randn(10, 6, seed=12).requires_grad_()
    t = randn(10, 6, seed=13).requires_grad_()
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 4, 4])
    loss = loss_fn(s, t, labels)
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert s.grad is not None and bool(torch.isfinite(s.grad).all())
    assert float(s.grad.abs().sum()) > 0
    assert t.grad is None


# --------------------------------------------------------------------------- EKD

ANCHORS = (10, 100, 1000, 10000, 100000, 1000000)


def ref_rank(x: float, taus: list[float], temp: float = 0.01) -> float:
    return sum(1.0 / (1.0 + math.exp(min(max(-(x - tau) / temp, -50.0), 50.0))) for tau in taus)


def ref_ekd(
    batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    topk: int = 2000,
    warm_start: bool = False,
    momentum: float = 0.01,
) -> tuple[list[float], list[float], list[float]]:
    """Losses of consecutive training steps, and the final student / teacher thresholds."""
    s_tau, t_tau = [0.0] * 6, [0.0] * 6
    losses = []
    for step, (s, t, y) in enumerate(batches):
        sn, tn, lab = [unit(r) for r in rows(s)], [unit(r) for r in rows(t)], y.tolist()
        n = len(sn)
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        ss = [dot(sn[i], sn[j]) for i, j in pairs]
        tt = [dot(tn[i], tn[j]) for i, j in pairs]
        pos = [p for p, (i, j) in enumerate(pairs) if lab[i] == lab[j]]
        neg = [p for p, (i, j) in enumerate(pairs) if lab[i] != lab[j]]
        s_sorted = sorted((ss[p] for p in neg), reverse=True)
        t_sorted = sorted((tt[p] for p in neg), reverse=True)
        m = 1.0 if (warm_start and step == 0) else momentum
        for k, a in enumerate(ANCHORS):
            idx = min(len(neg) // a, len(neg) - 1)
            s_tau[k] = m * s_sorted[idx] + (1 - m) * s_tau[k]
            t_tau[k] = m * t_sorted[idx] + (1 - m) * t_tau[k]
        critical = sorted(neg, key=lambda p: ss[p], reverse=True)[:topk]

        sq = [(ref_rank(ss[p], s_tau) - ref_rank(tt[p], t_tau)) ** 2 for p in range(len(pairs))]
        mse_pos = sum(sq[p] for p in pos) / len(pos) if pos else 0.0
        mse_neg = sum(sq[p] for p in critical) / len(critical)
        losses.append(0.02 * mse_pos + 0.01 * mse_neg)
    return losses, s_tau, t_tau


def ekd_batches(n_steps: int, b: int = 10, ds: int = 6, dt: int = 8) -> list[tuple[torch.Tensor, ...]]:
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 4, 4])[:b]
    out = []
    for k in range(n_steps):
        s = randn(b, ds, seed=100 + k)
        t = s[:, :1].repeat(1, dt) * 0.3 + randn(b, dt, seed=200 + k)  # correlated teacher, other size
        out.append((s, t, labels))
    return out


@pytest.mark.parametrize(("topk", "warm_start"), [(2000, False), (5, False), (5, True)])
def test_ekd_matches_reference_over_steps(topk: int, warm_start: bool) -> None:
    batches = ekd_batches(3)
    loss_fn = EKDLoss(topk=topk, warm_start=warm_start)
    got = [float(loss_fn(s, t, y)) for s, t, y in batches]
    want, s_tau, t_tau = ref_ekd(batches, topk=topk, warm_start=warm_start)
    for g, w in zip(got, want, strict=True):
        close(g, w)
    assert max(want) > 1e-4  # the comparison is not trivially 0 == 0
    for g, w in zip(loss_fn.s_anchor.tolist() + loss_fn.t_anchor.tolist(), s_tau + t_tau, strict=True):
        close(g, w, 1e-6)
    assert int(loss_fn.num_updates) == 3


def test_ekd_threshold_positions_and_first_update() -> None:
    # B = 10 with labels below: 6 positive pairs, 39 negatives -> indices 3, 0, 0, 0, 0, 0
    (s, t, y) = ekd_batches(1)[0]
    loss_fn = EKDLoss()
    loss_fn(s, t, y)
    sn = torch.nn.functional.normalize(s.double(), dim=1)
    iu = torch.triu_indices(10, 10, 1)
    sims = (sn @ sn.t())[iu[0], iu[1]]
    neg = sims[y[iu[0]] != y[iu[1]]]
    assert len(neg) == 39
    top = sorted(neg.tolist(), reverse=True)
    expected = [0.01 * top[3]] + [0.01 * top[0]] * 5
    for g, w in zip(loss_fn.s_anchor.tolist(), expected, strict=True):
        close(g, w, 1e-6)


def test_ekd_eval_mode_does_not_update_thresholds() -> None:
    (s, t, y), (s2, t2, y2) = ekd_batches(2)
    loss_fn = EKDLoss(warm_start=True)
    loss_fn(s, t, y)
    before = loss_fn.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    loss_fn.eval()
    loss_fn(s2, t2, y2)
    for k, v in loss_fn.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_ekd_teacher_equal_student_gives_zero() -> None:
    loss_fn = EKDLoss(warm_start=True)
    for s, _, y in ekd_batches(3, dt=6):
        loss = loss_fn(s, s.clone(), y)
        assert float(loss) == 0.0
    assert torch.equal(loss_fn.s_anchor, loss_fn.t_anchor)
    assert float(loss_fn.s_anchor.abs().sum()) > 0


def test_ekd_soft_rank_monotone_and_bounded() -> None:
    sims = torch.linspace(-1.0, 1.0, 2001)
    taus = torch.tensor([0.6, 0.4, 0.3, 0.25, 0.2, 0.1])
    r = soft_rank(sims, taus, 0.01)
    assert float(r.min()) >= 0.0 and float(r.max()) <= 6.0
    assert bool((r[1:] - r[:-1] >= 0).all())
    close(r[0], 0.0, 1e-6)
    close(r[-1], 6.0, 1e-6)
    close(soft_rank(torch.tensor([0.3]), taus, 0.01), ref_rank(0.3, taus.tolist()))


def test_ekd_buffers_round_trip_through_state_dict() -> None:
    b = ekd_batches(4)
    a = EKDLoss(warm_start=True)
    for s, t, y in b[:3]:
        a(s, t, y)
    sd = a.state_dict()
    assert set(sd) == {"s_anchor", "t_anchor", "num_updates"}
    c = EKDLoss(warm_start=True)
    c.load_state_dict(sd)
    s, t, y = b[3]
    close(c(s, t, y), float(a(s, t, y)), 0.0)
    assert torch.equal(a.s_anchor, c.s_anchor) and torch.equal(a.t_anchor, c.t_anchor)
    # a fresh warm-start module would have copied the batch thresholds instead of blending
    fresh = EKDLoss(warm_start=True)
    fresh(s, t, y)
    assert not torch.allclose(fresh.s_anchor, c.s_anchor)


def test_ekd_no_positive_pairs() -> None:
    s, t, _ = ekd_batches(1)[0]
    y = torch.arange(10)
    got = float(EKDLoss(topk=5)(s, t, y))
    want, _, _ = ref_ekd([(s, t, y)], topk=5)
    assert math.isfinite(got)
    close(got, want[0])


# --------------------------------------------------------------------------- DDL


def ref_hist(sims: list[float]) -> list[float]:
    h = [sum(math.exp(-((x - 0.001 * r) ** 2) / (2 * 0.1**2)) for x in sims) for r in range(1000)]
    z = sum(h)
    return [v / z for v in h]


def ref_kl(p: list[float], q: list[float], eps: float = 1e-9) -> float:
    return sum((a + eps) * (math.log(a + eps) - math.log(b + eps)) for a, b in zip(p, q, strict=True))


def ref_branch(br: DDLBranch) -> tuple[list[float], list[float]]:
    pos = [c for c in (cos(a, b) for a, b in zip(rows(br.pos_a), rows(br.pos_b), strict=True)) if c > 0]
    x = rows(br.normal)
    n = len(x)
    neg = [max([0.0] + [cos(x[i], x[j]) for j in range(i + 1, n)]) for i in range(n)]
    return pos, neg


def ref_ddl(easy: DDLBranch, hard: DDLBranch, w=(0.1, 0.02, 0.5)) -> tuple[float, float, float, float]:
    pe, ne = ref_branch(easy)
    ph, nh = ref_branch(hard)
    kl_pos = ref_kl(ref_hist(pe), ref_hist(ph))
    kl_neg = ref_kl(ref_hist(ne), ref_hist(nh))
    order = 0.0
    for n in (ne, nh):
        for p in (pe, ph):
            order += sum(n) / len(n) - sum(p) / len(p)
    return w[0] * kl_pos + w[1] * kl_neg + w[2] * order, kl_pos, kl_neg, w[2] * order


def ddl_branches(p: int = 6, d: int = 5, seed: int = 0) -> tuple[DDLBranch, DDLBranch]:
    base = randn(p, d, seed=seed)
    easy_b = base + 0.3 * randn(p, d, seed=seed + 1)
    easy_b[0] = -base[0] + 0.1 * randn(d, seed=seed + 2)  # a positive pair with cos <= 0: dropped
    hard_a = base + 0.6 * randn(p, d, seed=seed + 3)
    hard_b = base + 0.9 * randn(p, d, seed=seed + 4)
    easy = DDLBranch(normal=randn(p + 1, d, seed=seed + 5), pos_a=base, pos_b=easy_b)
    hard = DDLBranch(normal=randn(p + 1, d, seed=seed + 6), pos_a=hard_a, pos_b=hard_b)
    return easy, hard


def test_ddl_matches_reference() -> None:
    easy, hard = ddl_branches()
    assert len(ref_branch(easy)[0]) == 5  # the flipped pair is dropped
    loss_fn = DDLLoss()
    total, kl_pos, kl_neg, order = ref_ddl(easy, hard)
    close(loss_fn(easy, hard), total)
    close(loss_fn.last_terms["kl_pos"], kl_pos)
    close(loss_fn.last_terms["kl_neg"], kl_neg)
    close(loss_fn.last_terms["order"], order)
    assert kl_pos > 1e-3 and kl_neg > 1e-3


def test_ddl_custom_weights_match_reference() -> None:
    easy, hard = ddl_branches(seed=10)
    loss_fn = DDLLoss(pos_kl_weight=1.0, neg_kl_weight=2.0, order_loss_weight=0.25)
    close(loss_fn(easy, hard), ref_ddl(easy, hard, (1.0, 2.0, 0.25))[0])


def test_ddl_identical_branches_give_zero_kl() -> None:
    easy, _ = ddl_branches(seed=20)
    loss_fn = DDLLoss()
    loss = loss_fn(easy, DDLBranch(easy.normal.clone(), easy.pos_a.clone(), easy.pos_b.clone()))
    # zero up to float rounding: the two histograms come from separate (threaded) reductions
    assert abs(float(loss_fn.last_terms["kl_pos"])) < 1e-7
    assert abs(float(loss_fn.last_terms["kl_neg"])) < 1e-7
    pe, ne = ref_branch(easy)
    close(loss, 0.5 * 4 * (sum(ne) / len(ne) - sum(pe) / len(pe)))


def test_ddl_histogram_nonnegative_and_normalised() -> None:
    loss_fn = DDLLoss()
    sims = torch.tensor([-0.3, 0.0, 0.2, 0.21, 0.7, 0.999])
    h = loss_fn.histogram(sims)
    assert h.shape == (1, 1000)
    assert float(h.min()) >= 0.0
    close(h.sum(), 1.0, 1e-6)
    want = ref_hist(sims.double().tolist())
    assert max(abs(a - b) for a, b in zip(h[0].tolist(), want, strict=True)) < 1e-7
    close(soft_histogram(sims, torch.arange(0.0, 1.0, 0.001)).sum(), 1.0, 1e-6)


def test_ddl_negatives_length_b_with_trailing_zero() -> None:
    normal = randn(7, 5, seed=30)
    neg = hardest_negatives(normal)
    assert neg.shape == (7,)
    assert float(neg[-1]) == 0.0 and float(neg.min()) >= 0.0
    want = ref_branch(DDLBranch(normal, normal, normal))[1]
    for g, w in zip(neg.tolist(), want, strict=True):
        close(g, w)
    masked = hardest_negatives(normal, mask_last_row=True)
    assert masked.shape == (6,) and torch.equal(masked, neg[:-1])


def test_ddl_mask_last_row_matches_reference() -> None:
    easy, hard = ddl_branches(seed=40)
    pe, ne = ref_branch(easy)
    ph, nh = ref_branch(hard)
    ne, nh = ne[:-1], nh[:-1]
    order = sum(sum(n) / len(n) - sum(p) / len(p) for n in (ne, nh) for p in (pe, ph))
    want = 0.1 * ref_kl(ref_hist(pe), ref_hist(ph)) + 0.02 * ref_kl(ref_hist(ne), ref_hist(nh)) + 0.5 * order
    close(DDLLoss(mask_last_row=True)(easy, hard), want)


def angle_pairs(cosines: list[float], d: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (a_p, b_p) of unit vectors whose cosine is exactly ``cosines[p]`` (up to rounding)."""
    a = torch.zeros(len(cosines), d, dtype=torch.float64)
    b = torch.zeros(len(cosines), d, dtype=torch.float64)
    for p, c in enumerate(cosines):
        a[p, p % d] = 1.0
        b[p, p % d] = c
        b[p, (p + 1) % d] = math.sqrt(1.0 - c * c)
    return a.float(), b.float()


def test_ddl_shifting_student_positives_lowers_order_loss_by_lambda3_times_2delta() -> None:
    delta = 0.01
    cos_h = [0.35, 0.5, 0.62, 0.2, 0.71]
    normal_e, normal_h = randn(6, 4, seed=50), randn(6, 4, seed=51)
    easy = DDLBranch(normal_e, *angle_pairs([0.8, 0.7, 0.9, 0.75, 0.85]))
    before = DDLBranch(normal_h, *angle_pairs(cos_h))
    after = DDLBranch(normal_h, *angle_pairs([c + delta for c in cos_h]))
    loss_fn = DDLLoss()
    loss_fn(easy, before)
    order_before = float(loss_fn.last_terms["order"])
    loss_fn(easy, after)
    order_after = float(loss_fn.last_terms["order"])
    close(order_before - order_after, 0.5 * 2 * delta)
    only_order = DDLLoss(pos_kl_weight=0.0, neg_kl_weight=0.0)
    close(float(only_order(easy, before)) - float(only_order(easy, after)), 0.5 * 2 * delta)


def test_ddl_gradients_and_detach_teacher() -> None:
    easy, hard = ddl_branches(seed=60)
    for detach in (False, True):
        e = DDLBranch(*(x.clone().requires_grad_() for x in (easy.normal, easy.pos_a, easy.pos_b)))
        h = DDLBranch(*(x.clone().requires_grad_() for x in (hard.normal, hard.pos_a, hard.pos_b)))
        # KL terms only, so the only path into the easy branch is the teacher distribution
        loss = DDLLoss(order_loss_weight=0.0, detach_teacher=detach)(e, h)
        loss.backward()
        for x in (h.normal, h.pos_a, h.pos_b):
            assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0
        easy_grad = sum(float(x.grad.abs().sum()) for x in (e.normal, e.pos_a, e.pos_b) if x.grad is not None)
        assert (easy_grad == 0.0) if detach else (easy_grad > 0.0)


def test_ddl_no_positive_pair_is_finite() -> None:
    easy, hard = ddl_branches(seed=70)
    hard = DDLBranch(hard.normal, hard.pos_a, -hard.pos_a)  # every hard positive cosine is -1: all dropped
    loss_fn = DDLLoss()
    loss = loss_fn(easy, hard)
    pe, ne = ref_branch(easy)
    _, nh = ref_branch(hard)
    order = sum(sum(n) / len(n) - sum(pe) / len(pe) for n in (ne, nh))
    close(loss, 0.02 * ref_kl(ref_hist(ne), ref_hist(nh)) + 0.5 * order)
    assert float(loss_fn.last_terms["kl_pos"]) == 0.0


def test_branches_from_pairs_layout_and_errors() -> None:
    emb_e, emb_h = randn(8, 5, seed=80), randn(8, 5, seed=81)
    labels = torch.tensor([3, 3, 7, 7, 1, 1, 9, 9])
    easy, hard = branches_from_pairs(emb_e, emb_h, labels)
    assert torch.equal(easy.normal, emb_e[[0, 2, 4, 6]]) and torch.equal(easy.pos_a, emb_e[[0, 2, 4, 6]])
    assert torch.equal(easy.pos_b, emb_e[[1, 3, 5, 7]]) and torch.equal(hard.pos_b, emb_h[[1, 3, 5, 7]])
    close(DDLLoss()(easy, hard), ref_ddl(easy, hard)[0])
    with pytest.raises(ValueError, match="rows 2 and 3 have labels 7 and 8"):
        branches_from_pairs(emb_e, emb_h, torch.tensor([3, 3, 7, 8, 1, 1, 9, 9]))
    with pytest.raises(ValueError, match="distinct labels"):
        branches_from_pairs(emb_e, emb_h, torch.tensor([3, 3, 7, 7, 3, 3, 9, 9]))
    with pytest.raises(ValueError, match="P x 2"):
        branches_from_pairs(emb_e[:7], emb_h[:7], labels[:7])


# --------------------------------------------------------------------------- LIAAD


def ref_liaad(students: list[torch.Tensor], teachers: list[torch.Tensor], alpha: list[list[float]]) -> float:
    b = len(students[0])
    total = 0.0
    for i in range(b):
        for k in range(len(students)):
            total += alpha[i][k] * (1.0 - cos(rows(students[k])[i], rows(teachers[k])[i]))
    return total / b


def liaad_inputs(b: int = 6) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    students = [randn(b, 4, seed=90), randn(b, 6, seed=91)]
    teachers = [randn(b, 4, seed=92), randn(b, 6, seed=93)]
    return students, teachers


def test_liaad_fixed_matches_reference() -> None:
    students, teachers = liaad_inputs()
    loss_fn = LIAADLoss(weights=[1.0, 3.0])
    close(loss_fn(students, teachers, LABELS8[:6]), ref_liaad(students, teachers, [[0.25, 0.75]] * 6))
    uniform = LIAADLoss()
    close(uniform(students, teachers, LABELS8[:6]), ref_liaad(students, teachers, [[0.5, 0.5]] * 6))
    assert uniform.last_attention.shape == (6, 2)


def test_liaad_confidence_matches_reference() -> None:
    students, teachers = liaad_inputs()
    conf = randn(6, 2, seed=94) * 0.2
    alpha = []
    for c0, c1 in conf.double().tolist():
        e0, e1 = math.exp(c0 / 0.1), math.exp(c1 / 0.1)
        alpha.append([e0 / (e0 + e1), e1 / (e0 + e1)])
    loss_fn = LIAADLoss(attention="confidence")
    close(loss_fn(students, teachers, LABELS8[:6], confidence=conf), ref_liaad(students, teachers, alpha))
    for g, w in zip(loss_fn.last_attention.tolist(), alpha, strict=True):
        close(g[0], w[0])
    with pytest.raises(ValueError, match="confidence of shape"):
        loss_fn(students, teachers, LABELS8[:6])


def test_liaad_learned_matches_reference() -> None:
    torch.manual_seed(0)
    students, teachers = liaad_inputs()
    loss_fn = LIAADLoss(attention="learned", teacher_dims=[4, 6])
    w1, b1 = rows(loss_fn.attention.mlp[0].weight), loss_fn.attention.mlp[0].bias.double().tolist()
    w2, b2 = rows(loss_fn.attention.mlp[2].weight), loss_fn.attention.mlp[2].bias.double().tolist()
    assert len(w1) == 64 and len(w1[0]) == 10 and len(w2) == 2
    alpha = []
    for i in range(6):
        x = rows(teachers[0])[i] + rows(teachers[1])[i]
        h = [max(0.0, dot(w, x) + b) for w, b in zip(w1, b1, strict=True)]
        z = [dot(w, h) + b for w, b in zip(w2, b2, strict=True)]
        e = [math.exp(v - max(z)) for v in z]
        alpha.append([v / sum(e) for v in e])
    loss = loss_fn(students, teachers, LABELS8[:6])
    close(loss, ref_liaad(students, teachers, alpha))
    loss.backward()
    assert float(loss_fn.attention.mlp[0].weight.grad.abs().sum()) > 0  # the attention itself learns
    with pytest.raises(ValueError, match="teacher_dims"):
        LIAADLoss(attention="learned")


@pytest.mark.parametrize("attention", ["fixed", "confidence", "learned"])
def test_liaad_alpha_sums_to_one(attention: str) -> None:
    students, teachers = liaad_inputs()
    loss_fn = LIAADLoss(attention=attention, teacher_dims=[4, 6], weights=[2.0, 5.0])
    loss_fn(students, teachers, LABELS8[:6], confidence=randn(6, 2, seed=95))
    alpha = loss_fn.last_attention
    assert alpha.shape == (6, 2) and not alpha.requires_grad
    assert float(alpha.min()) >= 0.0
    assert float((alpha.sum(dim=1) - 1.0).abs().max()) < 1e-6


def test_liaad_one_hot_equals_single_teacher_angular_kd() -> None:
    students, teachers = liaad_inputs()
    got = LIAADLoss(weights=[0.0, 1.0])(students, teachers, LABELS8[:6])
    close(got, float(CosineLoss()(students[1], teachers[1], LABELS8[:6])))
    close(got, ref_cosine(students[1], teachers[1]))


def test_liaad_student_equal_teacher_gives_zero() -> None:
    _, teachers = liaad_inputs()
    loss = LIAADLoss(attention="confidence")(
        [t.clone() for t in teachers], teachers, LABELS8[:6], confidence=randn(6, 2, seed=96)
    )
    close(loss, 0.0, 1e-6)
    # only teacher 0 matched: the loss is teacher 1's term alone
    students, _ = liaad_inputs()
    half = LIAADLoss()([teachers[0].clone(), students[1]], teachers, LABELS8[:6])
    close(half, 0.5 * ref_cosine(students[1], teachers[1]))


def test_liaad_gradients_and_errors() -> None:
    students, teachers = liaad_inputs()
    s = [x.clone().requires_grad_() for x in students]
    t = [x.clone().requires_grad_() for x in teachers]
    loss = LIAADLoss(weights=[0.3, 0.7])(s, t, LABELS8[:6])
    loss.backward()
    for x in s:
        assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0
    assert all(x.grad is None for x in t)
    with pytest.raises(ValueError, match="projection"):
        LIAADLoss()([students[0], students[0]], teachers, LABELS8[:6])
    with pytest.raises(ValueError, match="expected 2 student tensors"):
        LIAADLoss()(students[:1], teachers[:1], LABELS8[:6])
    with pytest.raises(KeyError, match="available"):
        LIAADLoss(attention="cross")
