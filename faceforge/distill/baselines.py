"""Baseline teacher -> student distillation losses, plus the shared base class and input checks.

Every teacher-based loss in ``faceforge.distill`` has the same call::

    loss = kd(student, teacher, labels)   # student [B, Ds], teacher [B, Dt], labels [B] -> scalar

``labels`` may be unused. The teacher tensor is detached inside (it is a constant target), and the
maths runs in fp32 with autocast disabled, whatever precision the backbones used.

Registered here:

* ``feature_l2``: ``mean_i ||n(s_i) - n(t_i)||^2`` with ``n`` = L2 normalisation (``normalize=True``)
  or the identity (FitNet-style hint on the embedding).
* ``cosine``: ``mean_i (1 - cos(s_i, t_i))``.
* ``rkd``: Relational KD (Park, Kim, Lu, Cho, CVPR 2019), distance + angle terms, weights 25 / 50 as in
  the authors' code (github.com/lenscloth/RKD, also TFace ``tasks/ekd/distillation/rkd.py``).
* ``sp``: Similarity-Preserving KD (Tung & Mori, ICCV 2019) on the embeddings.

``feature_l2`` and ``cosine`` compare features element-wise, so they need ``Ds == Dt``; when the sizes
differ they raise ``ValueError`` (the trainer's learned student -> teacher projection should bridge them).
``rkd`` and ``sp`` compare within-batch relations and accept any ``Ds``, ``Dt``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceforge.core.precision import no_autocast

from .registry import DISTILL_LOSSES

__all__ = [
    "CosineLoss",
    "FeatureL2Loss",
    "RKDLoss",
    "SPLoss",
    "TeacherDistillLoss",
    "check_batch",
    "require_same_dim",
]


def check_batch(loss: str, student: Tensor, teacher: Tensor, labels: Tensor | None = None) -> None:
    """Raise ValueError unless ``student`` [B, Ds], ``teacher`` [B, Dt] and ``labels`` [B] line up."""
    for what, x in (("student", student), ("teacher", teacher)):
        if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point():
            shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{loss}: {what} embeddings must be a float tensor [B, D], got {shape}")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{loss}: student batch {student.shape[0]} != teacher batch {teacher.shape[0]}; "
            "both must embed the same images in the same order"
        )
    if student.shape[0] == 0:
        raise ValueError(f"{loss}: empty batch")
    if labels is not None and (labels.dim() != 1 or labels.shape[0] != student.shape[0]):
        raise ValueError(f"{loss}: labels must have shape [{student.shape[0]}], got {list(labels.shape)}")


def require_same_dim(loss: str, student: Tensor, teacher: Tensor) -> None:
    """Raise ValueError naming both sizes when an element-wise loss gets different embedding sizes."""
    ds, dt = student.shape[-1], teacher.shape[-1]
    if ds != dt:
        raise ValueError(
            f"{loss}: student embedding size {ds} != teacher embedding size {dt}; this loss compares "
            "features element-wise, so the trainer's learned projection (student -> teacher space) "
            "should bridge them before the loss is called"
        )


class TeacherDistillLoss(nn.Module):
    """Base class: ``forward(student [B, Ds], teacher [B, Dt], labels [B]) -> scalar``.

    Checks the shapes, detaches the teacher, casts both to fp32 under disabled autocast and calls
    :meth:`compute`. Subclasses set ``same_dim = True`` if they need ``Ds == Dt``.
    """

    same_dim: bool = False

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        name = type(self).__name__
        check_batch(name, student, teacher, labels)
        if self.same_dim:
            require_same_dim(name, student, teacher)
        with no_autocast(student.device):
            return self.compute(student.float(), teacher.detach().float(), labels)

    def compute(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError


@DISTILL_LOSSES.register("feature_l2")
class FeatureL2Loss(TeacherDistillLoss):
    """``L = (1/B) sum_i ||n(s_i) - n(t_i)||_2^2``; ``n`` = L2 normalisation if ``normalize`` else identity.

    With ``normalize=True`` this equals ``2 * mean_i (1 - cos(s_i, t_i))``. Requires ``Ds == Dt``.
    """

    same_dim = True

    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize

    def compute(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        if self.normalize:
            student, teacher = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
        return (student - teacher).pow(2).sum(dim=1).mean()

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}"


@DISTILL_LOSSES.register("cosine")
class CosineLoss(TeacherDistillLoss):
    """``L = (1/B) sum_i (1 - cos(s_i, t_i))`` (angular / cosine-distance KD). Requires ``Ds == Dt``."""

    same_dim = True

    def compute(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        return (1.0 - F.cosine_similarity(student, teacher, dim=1)).mean()


def pairwise_distance(x: Tensor, eps: float = 1e-12) -> Tensor:
    """[B, D] -> [B, B] Euclidean distances ``sqrt(max(|x_i|^2 + |x_j|^2 - 2 x_i.x_j, eps))``, diagonal 0.

    As in the RKD code: the clamp keeps the sqrt differentiable, the diagonal is set to exactly 0.
    """
    sq = x.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * x @ x.t()).clamp(min=eps).sqrt()
    return d * (1.0 - torch.eye(len(x), dtype=d.dtype, device=d.device))


def triplet_angles(x: Tensor) -> Tensor:
    """[B, D] -> [B, B, B] with ``[j, i, k] = cos angle(x_i - x_j, x_k - x_j)`` (0 where a vector is 0)."""
    diff = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)  # [j, i] = n(x_i - x_j)
    return torch.bmm(diff, diff.transpose(1, 2))


@DISTILL_LOSSES.register("rkd")
class RKDLoss(TeacherDistillLoss):
    """Relational Knowledge Distillation (Park et al., CVPR 2019), distance-wise + angle-wise.

    Distance: ``d_ij = ||x_i - x_j|| / mu``, ``mu`` = mean of ``||x_i - x_j||`` over the off-diagonal
    pairs, for student and teacher separately; ``L_D = mean_{i,j} huber(d^s_ij - d^t_ij)`` over the full
    B x B matrix (diagonal 0 on both sides, as in the authors' code).

    Angle: ``a_ijk = <n(x_i - x_j), n(x_k - x_j)>`` (cosine of the angle at vertex j);
    ``L_A = mean_{i,j,k} huber(a^s_ijk - a^t_ijk)`` over all B^3 triplets (degenerate ones give 0 on
    both sides). ``huber`` is smooth-L1 with beta 1.

    ``L = distance_weight * L_D + angle_weight * L_A``; defaults 25 and 50 from the authors' code.
    Accepts ``Ds != Dt`` and needs B >= 2.
    """

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0) -> None:
        super().__init__()
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)

    @staticmethod
    def _normalised_distance(x: Tensor) -> Tensor:
        d = pairwise_distance(x)
        off = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
        return d / d[off].mean()

    def compute(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        if student.shape[0] < 2:
            raise ValueError(f"rkd needs at least 2 samples per batch, got {student.shape[0]}")
        loss_d = F.smooth_l1_loss(self._normalised_distance(student), self._normalised_distance(teacher))
        loss_a = F.smooth_l1_loss(triplet_angles(student), triplet_angles(teacher))
        return self.distance_weight * loss_d + self.angle_weight * loss_a

    def extra_repr(self) -> str:
        return f"distance_weight={self.distance_weight}, angle_weight={self.angle_weight}"


@DISTILL_LOSSES.register("sp")
class SPLoss(TeacherDistillLoss):
    """Similarity-Preserving KD (Tung & Mori, ICCV 2019) on the embeddings.

    ``G = row_l2_normalise(x x^T)`` for student and teacher (the paper's Eq. 2-3);
    ``L = ||G_s - G_t||_F^2 / B^2``. Invariant to rotations and to positive scaling of either input;
    accepts ``Ds != Dt``. (TFace's copy instead L2-normalises the embeddings before ``x x^T`` and skips
    the row normalisation; this follows the paper.)
    """

    def compute(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        g_s = F.normalize(student @ student.t(), p=2, dim=1)
        g_t = F.normalize(teacher @ teacher.t(), p=2, dim=1)
        return (g_s - g_t).pow(2).sum() / student.shape[0] ** 2
