"""CIFP: the Consistent Instance False Positive rate penalty, as a logit transform for any margin head.

Source: Xu, Huang, Shen, Li, Li, Huang, Li, Cui, "Consistent Instance False Positive Improves Fairness in
Face Recognition", CVPR 2021; reference implementation TFace ``recognition/torchkit/head/localfc/cifp.py``
(read at commit 9004edb; the computation below follows it step by step). TFace ships it
as a CosFace head that needs an initialised process group even on one GPU; here it is a transform of the
logits of whatever margin head (CosFace, ArcFace, CurricularFace, NormFace) the criterion uses, local or
sharded, in one process (every collective is a no-op) or under torchrun.

Notation: ``c_ij`` the raw cosine of row (instance) ``i`` and class ``j`` (trainable W), ``ĉ_ij`` the
same value with **W detached** (its gradient reaches the embedding only), ``y_i`` the label, ``t_i`` the
head's margined target cosine (``c_iy - m`` for CosFace, ``cos(θ_y + m)`` with fallback for ArcFace and
CurricularFace), ``s`` the scale.

1. Target false-positive rate ``α`` (``alpha``); default ``1 / (C - 1)`` with ``C`` the number of classes of
   the whole classifier, i.e. one false positive per instance on average (TFace's comment offers 1e-4).
2. Already-violating negatives ``E_i = {j ≠ y_i : c_ij > c_iy}`` (raw target cosine). ``K = Σ_i |E_i|``
   is summed over ranks.
3. ``k = ceil(α · (N - K))`` with ``N`` the number of non-target entries of the global batch (TFace:
   ``B · (C - 1) · world``; here counted, so the same formula serves the data-parallel layout, the
   class-sharded layout and Partial FC). Every rank takes the ``k`` largest entries of its block of
   ``c - 2·[j = y] - 2·[j ∈ E]`` (targets and violators pushed below -1), the candidates are all-gathered,
   and the unified threshold ``τ`` is the ``k``-th largest of them, the same value as on the
   concatenated batch in one process.
4. Instance false positives ``F_i = {j ≠ y_i, j ∉ E_i : c_ij > τ}`` (strict, so globally ``k - 1`` of them
   unless there are ties; ``k = 1`` leaves every ``F_i`` empty and CIFP equals the plain head).
5. ``c̃_ij = c_ij`` if ``t_i > c_ij`` else ``ĉ_ij``: a negative that already beats the margined target
   sends the penalty's gradient only into the embedding, not into its class weight.
6. Penalty, ``penalty="code_mean"`` (default; the reference code):
   ``δ_i = (1 + ĉ_iy) · Σ_{j∈F_i} c̃_ij² / max(n_i, 1)``, ``n_i`` = the number of ``j ∈ F_i`` with
   ``c̃_ij² > 0`` (the code counts non-zero squares; that is ``|F_i|`` unless a cosine is exactly 0).
   ``penalty="paper_ratio"``: the paper's abstract says the penalty is "in proportion to the ratio of
   instance FPR over overall FPR"; this multiplies the code's ``δ_i`` by ``FPR_i / α`` with
   ``FPR_i = |F_i| / N_i`` (``N_i`` = the row's non-target entries), which at ``α = 1/(C - 1)`` is
   ``|F_i|``, turning the mean into a sum. The paper's equation could not be checked against the PDF,
   so this option is our reading of the abstract, and the default is the code.
7. Logits: the target logit becomes ``s · (t_i - δ_i)``; every other logit is the head's own. Plain
   cross-entropy follows. Equivalently, ``(exp(s·δ_i) - 1) · Σ_{j≠y} exp(s·c_ij)`` is added to the
   softmax denominator, a penalty that grows with the instance's false-positive similarities.

Layouts (``LogitContext.rows_shared``):

* data-parallel (``LocalCriterion``; one process or DDP): each rank holds different rows and every class.
  Only the batch-level quantities (``K``, ``N``, ``τ``) are combined over ranks; ``δ_i`` is per row.
* class-sharded (``ShardedCriterion``): every rank holds the same global rows and a block of the classes;
  a row's ``F_i`` is spread over ranks, so ``Σ c̃²`` (with gradient: an all-reduce whose backward sums the
  gradients), ``n_i``, ``|F_i|``, ``N_i`` and the margined target ``t_i`` are summed over ranks too, and
  ``δ_i`` is subtracted on the rank that holds the row's class.
* Partial FC (``ShardedCriterion(sample_rate < 1)``): ``N``, ``K``, ``τ`` and ``F_i`` are over the
  **sampled** classes only (the unsampled cosines are never computed). ``alpha=None`` still means
  ``1/(C-1)`` over all ``C`` classes: a uniform sample of negatives estimates the same FPR quantile, so
  ``τ`` estimates the threshold of the full softmax, and a row is penalised for the false positives that
  were sampled (about ``sample_rate`` of them). Pass ``alpha = 1/(C_sampled - 1)`` instead to keep one
  false positive per instance inside the sampled softmax.

Edge cases: ``k <= 0`` (every negative already violates) gives ``δ = 0`` and ``τ = +inf``. The penalty is
computed in fp32 (fp64 for float64 inputs) with autocast off. It has no parameters and no state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn

from faceforge.core import distributed as D
from faceforge.core.precision import no_autocast

from .criterion import LogitContext

__all__ = ["CIFP", "PENALTIES", "CIFPResult", "cifp_penalty"]

PENALTIES = ("code_mean", "paper_ratio")


@dataclass
class CIFPResult:
    """``delta``: [B] penalty per row (differentiable; meaningful on the rank holding the row's class).
    The rest are detached statistics of the global batch, for tests and logs."""

    delta: Tensor
    tau: float
    k: int
    num_negatives: int
    num_violating: int
    alpha: float
    false_positives: Tensor  # [B] |F_i| over all ranks' blocks of the row's classes

    def log(self) -> dict[str, float]:
        rows = self.false_positives.numel()
        return {
            "cifp/tau": self.tau,
            "cifp/k": float(self.k),
            "cifp/violating": float(self.num_violating),
            "cifp/rows_with_fp": float((self.false_positives > 0).sum()) / max(rows, 1),
            "cifp/delta_mean": float(self.delta.detach().mean()) if rows else 0.0,
        }


def _sum_rows(t: Tensor, rows_shared: bool, with_grad: bool = False) -> Tensor:
    """Per-row sum over the ranks' class blocks (class-sharded layout); identity otherwise."""
    if not rows_shared or not D.current().enabled:
        return t
    if with_grad:
        return dist_fn.all_reduce(t)  # backward: all-reduce (sum) of the gradients
    return D.all_reduce(t.clone())


def _detached_weight_cos(cos: Tensor, x: Tensor, w: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``ĉ`` at (rows, cols): the value of ``cos`` there, with the gradient of ``x_r · w_c.detach()``
    (into the embedding only). Computed for the few entries needed, not as a second [B, C] matrix."""
    dot = (x[rows] * w.detach()[cols]).sum(dim=1)
    return cos.detach()[rows, cols] + (dot - dot.detach())


def cifp_penalty(
    cos: Tensor,
    labels: Tensor,
    target_cos: Tensor,
    margined_target: Tensor,
    embeddings: Tensor,
    weight: Tensor,
    num_classes: int,
    alpha: float | None = None,
    penalty: str = "code_mean",
    rows_shared: bool = False,
) -> CIFPResult:
    """The CIFP penalty ``δ`` of every row (module doc, steps 1-6).

    Args:
        cos: [B, C_blk] raw cosines ``clamp(embeddings @ weight.T, -1, 1)`` (differentiable).
        labels: [B] long, column of each row's class in this block, ``-1`` when another rank holds it.
        target_cos: [B] raw target cosine of every row (global; used as a statistic only).
        margined_target: [B] the head's margined target cosine of every row (global; compared only).
        embeddings: [B, D] L2-normalised embeddings behind ``cos`` (differentiable).
        weight: [C_blk, D] L2-normalised class weights behind ``cos`` (detached here for ``ĉ``).
        num_classes: classes of the whole classifier, for the default ``alpha = 1/(num_classes - 1)``.
        alpha: target overall FPR in (0, 1]; None for the default.
        penalty: ``"code_mean"`` or ``"paper_ratio"`` (module doc, step 6).
        rows_shared: True in the class-sharded layout (every rank holds these rows).
    """
    if penalty not in PENALTIES:
        raise ValueError(f"CIFP: penalty must be one of {', '.join(PENALTIES)}, got {penalty!r}")
    if alpha is None:
        if num_classes < 2:
            raise ValueError(f"CIFP needs at least 2 classes for alpha = 1/(C-1), got {num_classes}")
        alpha = 1.0 / (num_classes - 1)
    if not 0.0 < float(alpha) <= 1.0:
        raise ValueError(f"CIFP: alpha (target FPR) must be in (0, 1], got {alpha!r}")
    alpha = float(alpha)
    n_rows, n_cols = cos.shape
    device = cos.device
    dt = torch.promote_types(cos.dtype, torch.float32)  # fp32, or fp64 for float64 inputs
    with no_autocast(device):
        with torch.no_grad():
            c = cos.detach().to(dt)
            here = labels >= 0
            columns = torch.arange(n_cols, device=device)
            is_target = labels.unsqueeze(1) == columns.unsqueeze(0)
            violating = (c > target_cos.detach().to(dt).unsqueeze(1)) & ~is_target
            counts = torch.stack([violating.sum(), torch.tensor(n_rows * n_cols, device=device) - here.sum()])
            D.all_reduce(counts)
            num_violating, num_negatives = int(counts[0]), int(counts[1])
            k = math.ceil(alpha * (num_negatives - num_violating))  # Python float as the reference
            if k <= 0:
                tau = math.inf
                fp = torch.zeros_like(violating)
            else:
                pool = (c - 2.0 * is_target.to(dt) - 2.0 * violating.to(dt)).flatten()
                top = torch.topk(pool, min(k, pool.numel())).values
                if top.numel() < k:  # a small block: pad so every rank gathers k values
                    top = torch.cat([top, top.new_full((k - top.numel(),), -math.inf)])
                tau_t = torch.topk(D.all_gather_cat(top), k).values[-1]
                tau = float(tau_t)
                fp = ~violating & ~is_target & (c > tau_t)
            fp_rows = _sum_rows(fp.sum(dim=1).to(dt), rows_shared)
        rows, cols = fp.nonzero(as_tuple=True)
        cos, x, w = cos.to(dt), embeddings.to(dt), weight.to(dt)
        c_train = cos[rows, cols]
        c_det = _detached_weight_cos(cos, x, w, rows, cols)
        keep = margined_target.detach().to(dt)[rows] > c_train.detach()
        sq = torch.where(keep, c_train, c_det).pow(2)
        sum_sq = torch.zeros(n_rows, device=device, dtype=dt).index_add(0, rows, sq)
        nonzero = torch.zeros(n_rows, device=device, dtype=dt).index_add(0, rows, (sq.detach() > 0).to(dt))
        sum_sq = _sum_rows(sum_sq, rows_shared, with_grad=True)
        nonzero = _sum_rows(nonzero, rows_shared)
        mean_sq = sum_sq / torch.where(nonzero > 0, nonzero, torch.ones_like(nonzero))
        target_rows = torch.nonzero(here).squeeze(1)
        c_hat_y = torch.zeros(n_rows, device=device, dtype=dt)
        if target_rows.numel():
            c_hat_y = c_hat_y.index_put(
                (target_rows,), _detached_weight_cos(cos, x, w, target_rows, labels[target_rows])
            )
        delta = (1.0 + c_hat_y) * mean_sq
        if penalty == "paper_ratio":
            row_negatives = _sum_rows((n_cols - here.long()).to(dt), rows_shared)
            delta = delta * (fp_rows / row_negatives.clamp(min=1.0)) / alpha
    return CIFPResult(
        delta=delta,
        tau=tau,
        k=k,
        num_negatives=num_negatives,
        num_violating=num_violating,
        alpha=alpha,
        false_positives=fp_rows.detach(),
    )


class CIFP(nn.Module):
    """CIFP as a criterion logit transform: ``LocalCriterion(head, logit_transform=CIFP())`` or
    ``ShardedCriterion(head, C, sample_rate, logit_transform=CIFP())``. See the module doc.

    ``forward(logits, ctx)`` returns the head's scaled logits with ``s · δ_i`` subtracted from each row's
    target logit (on the rank that holds the target). The margined target ``t_i`` is read from the logits
    (``logits[i, y_i] / s``) and, in the class-sharded layout, summed over ranks so every rank can apply
    the detached-weight rule to its block. ``last`` holds the last step's :class:`CIFPResult`.

    Args:
        alpha: target overall FPR; None (default) for ``1 / (C - 1)`` as TFace.
        penalty: ``"code_mean"`` (default, TFace's code) or ``"paper_ratio"``.
    """

    def __init__(self, alpha: float | None = None, penalty: str = "code_mean") -> None:
        super().__init__()
        if penalty not in PENALTIES:
            raise ValueError(f"CIFP: penalty must be one of {', '.join(PENALTIES)}, got {penalty!r}")
        if alpha is not None and not 0.0 < float(alpha) <= 1.0:
            raise ValueError(f"CIFP: alpha (target FPR) must be in (0, 1], got {alpha!r}")
        self.alpha = None if alpha is None else float(alpha)
        self.penalty = penalty
        self.last: CIFPResult | None = None

    def forward(self, logits: Tensor, ctx: LogitContext) -> Tensor:
        with no_autocast(logits.device):
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            labels = ctx.labels
            here = labels >= 0
            with torch.no_grad():
                margined = logits.new_zeros(labels.shape[0])
                rows = torch.nonzero(here).squeeze(1)
                margined[rows] = logits.detach()[rows, labels[rows]] / ctx.scale
                margined = _sum_rows(margined, ctx.rows_shared)
            res = cifp_penalty(
                ctx.cos,
                labels,
                ctx.target_cos,
                margined,
                ctx.embeddings,
                ctx.weight,
                num_classes=ctx.num_classes,
                alpha=self.alpha,
                penalty=self.penalty,
                rows_shared=ctx.rows_shared,
            )
            self.last = res
            columns = torch.arange(logits.shape[1], device=logits.device)
            is_target = (labels.unsqueeze(1) == columns.unsqueeze(0)).to(logits.dtype)
            return logits - (ctx.scale * res.delta).unsqueeze(1) * is_target

    def extra_repr(self) -> str:
        alpha = "1/(C-1)" if self.alpha is None else f"{self.alpha:g}"
        return f"alpha={alpha}, penalty={self.penalty}"
