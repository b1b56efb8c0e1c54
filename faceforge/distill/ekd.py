"""EKD: Evaluation-oriented Knowledge Distillation (Huang, Wu, Xu, Ding; CVPR 2022).

Reference: TFace ``recognition/tasks/ekd/distillation/ekd.py`` (its behaviour is the default here).

For the (gathered) batch with L2-normalised student features ``s`` and teacher features ``t``:

1. Pairs: all ``i < j``; positives ``P`` = same label, negatives ``N`` = different label.
2. Batch thresholds at FPR = 1/a_k, ``a_k in {1e1, ..., 1e6}``: sort the negative similarities of each
   model descending and take ``tau_hat_k = sorted_neg[min(floor(|N| / a_k), |N| - 1)]`` (0-based).
   The student uses its own negatives, the teacher its own.
3. EMA (buffers ``s_anchor``, ``t_anchor``, initialised to 0, no gradient):
   ``tau_k <- momentum * tau_hat_k + (1 - momentum) * tau_k``, momentum 0.01. As in TFace, the update
   happens *before* the ranks of the same batch are computed, and only in training mode
   (``module.train()``); in eval mode the stored thresholds are used unchanged.
4. Soft rank of a pair against a model's thresholds: ``R(p) = sum_k sigmoid((S(p) - tau_k) / T)``,
   ``T = 0.01``, with the logistic's exponent clamped to [-50, 50]; ``R`` is in [0, 6] and counts the
   operating points at which the pair would be accepted.
5. Critical pairs: all positives; the ``topk = 2000`` negatives with the highest *student* similarity
   (the same pair indices are used for the teacher).
6. ``L = 0.02 * MSE(R_s(P), R_t(P)) + 0.01 * MSE(R_s(C_N), R_t(C_N))``; student ranks use the student
   thresholds, teacher ranks the teacher thresholds (different per model by design).

Edge cases (not reachable in TFace's balanced sampler, handled here and documented): a batch with no
positive pair gives a positive term of 0; a batch with no negative pair gives a negative term of 0 and
leaves the thresholds unchanged.

Deviation (opt-in): ``warm_start=True`` sets the EMA to the batch thresholds at the first update
instead of blending with the zero initialisation. The 0.01-momentum EMA otherwise needs a few hundred
steps to leave 0, which dominates short runs. ``num_updates`` is a buffer so this
and the thresholds resume exactly from a state_dict.

Pitfall: with a few hundred images ``floor(|N| / 1e6) = 0``, so the deepest anchors
collapse to the batch maximum; the loss needs a large gathered batch to be meaningful.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .baselines import TeacherDistillLoss
from .registry import DISTILL_LOSSES

__all__ = ["EKDLoss", "soft_rank", "threshold_indices"]


def soft_rank(similarity: Tensor, thresholds: Tensor, temperature: float = 0.01) -> Tensor:
    """``R(p) = sum_k 1 / (1 + exp(clamp(-(S(p) - tau_k) / T, -50, 50)))``: [M] x [K] -> [M] in [0, K]."""
    exponent = (-(similarity.unsqueeze(1) - thresholds.unsqueeze(0)) / temperature).clamp(-50.0, 50.0)
    return (1.0 / (1.0 + torch.exp(exponent))).sum(dim=1)


def threshold_indices(num_negatives: int, anchors: Sequence[float]) -> list[int]:
    """0-based positions ``min(floor(|N| / a_k), |N| - 1)`` in the descending negative similarities."""
    return [min(int(num_negatives // a), num_negatives - 1) for a in anchors]


@DISTILL_LOSSES.register("ekd")
class EKDLoss(TeacherDistillLoss):
    """Evaluation-oriented KD: match the soft ranks of critical pairs against FPR thresholds.

    ``forward(student [B, Ds], teacher [B, Dt], labels [B]) -> scalar``; ``Ds`` may differ from ``Dt``.

    Args:
        topk: number of critical negatives (highest student similarity). TFace: 2000.
        temperature: logistic temperature ``T`` of the soft rank. TFace: 0.01.
        anchors: FPR anchors ``a_k`` (threshold at FPR = 1/a_k). TFace: 1e1..1e6.
        momentum: EMA weight of the batch threshold. TFace: 0.01.
        pos_weight, neg_weight: weights of the positive / critical-negative rank MSE. TFace: 0.02, 0.01.
        warm_start: first EMA update copies the batch thresholds (deviation for short runs, default off).
    """

    def __init__(
        self,
        topk: int = 2000,
        temperature: float = 0.01,
        anchors: Sequence[float] = (1e1, 1e2, 1e3, 1e4, 1e5, 1e6),
        momentum: float = 0.01,
        pos_weight: float = 0.02,
        neg_weight: float = 0.01,
        warm_start: bool = False,
    ) -> None:
        super().__init__()
        if topk <= 0 or temperature <= 0 or not anchors or not 0.0 < momentum <= 1.0:
            raise ValueError(
                "ekd: topk and temperature must be positive, anchors non-empty and momentum in (0, 1]; "
                f"got topk={topk}, temperature={temperature}, anchors={anchors}, momentum={momentum}"
            )
        self.topk = int(topk)
        self.temperature = float(temperature)
        self.anchors = tuple(float(a) for a in anchors)
        self.momentum = float(momentum)
        self.pos_weight = float(pos_weight)
        self.neg_weight = float(neg_weight)
        self.warm_start = bool(warm_start)
        self.register_buffer("s_anchor", torch.zeros(len(self.anchors)))
        self.register_buffer("t_anchor", torch.zeros(len(self.anchors)))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _update_thresholds(self, s_neg_sorted: Tensor, t_neg_sorted: Tensor) -> None:
        idx = threshold_indices(len(s_neg_sorted), self.anchors)
        first = self.warm_start and int(self.num_updates) == 0
        m = 1.0 if first else self.momentum
        # rebind the buffers, as TFace does
        self.s_anchor = m * s_neg_sorted[idx] + (1.0 - m) * self.s_anchor
        self.t_anchor = m * t_neg_sorted[idx] + (1.0 - m) * self.t_anchor
        self.num_updates += 1

    def _rank_mse(self, s_sim: Tensor, t_sim: Tensor) -> Tensor:
        if s_sim.numel() == 0:
            return s_sim.new_zeros(())
        r_s = soft_rank(s_sim, self.s_anchor, self.temperature)
        r_t = soft_rank(t_sim, self.t_anchor, self.temperature)
        return F.mse_loss(r_s, r_t)

    def compute(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        b = student.shape[0]
        iu = torch.triu_indices(b, b, offset=1, device=student.device)
        labels = labels.to(student.device)
        same = labels[iu[0]] == labels[iu[1]]
        s_n, t_n = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
        s_pairs = (s_n[iu[0]] * s_n[iu[1]]).sum(dim=1)
        t_pairs = (t_n[iu[0]] * t_n[iu[1]]).sum(dim=1)
        s_pos, t_pos = s_pairs[same], t_pairs[same]
        s_neg, t_neg = s_pairs[~same], t_pairs[~same]
        s_neg_sorted, order = torch.sort(s_neg, descending=True)
        if self.training and len(s_neg) > 0:
            t_neg_sorted, _ = torch.sort(t_neg, descending=True)
            self._update_thresholds(s_neg_sorted.detach(), t_neg_sorted)
        critical = order[: self.topk]
        loss_pos = self._rank_mse(s_pos, t_pos)
        loss_neg = self._rank_mse(s_neg[critical], t_neg[critical])
        return self.pos_weight * loss_pos + self.neg_weight * loss_neg

    def extra_repr(self) -> str:
        return (
            f"topk={self.topk}, temperature={self.temperature}, anchors={self.anchors}, "
            f"momentum={self.momentum}, pos_weight={self.pos_weight}, neg_weight={self.neg_weight}, "
            f"warm_start={self.warm_start}"
        )
