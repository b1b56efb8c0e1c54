"""DDL: Distribution Distillation Loss (Huang et al., ECCV 2020, arXiv 2002.03662).

Reference: TFace ``recognition/torchkit/loss/ddl.py`` (its behaviour is the default here). One network
embeds an *easy* branch E (teacher, e.g. high resolution / frontal) and a *hard* branch H (student, e.g.
low resolution / profile); the hard similarity distributions are pulled toward the easy ones.

Per branch ``b`` (embeddings L2-normalised inside):

* positives ``S+_b = {cos(a_p, b_p)}`` over the positive pairs, values ``<= 0`` dropped;
* negatives ``S-_b = {max_j C_ij}_i`` where ``C = triu(cos matrix of the normal batch, offset 1)`` with
  zeros elsewhere: the hardest negative per anchor, clipped at 0 because the zeros take part in the
  max, and the last row is always 0 (TFace quirk, kept by default; ``mask_last_row=True`` drops that
  row, the clipping at 0 stays). No labels are used: the normal batch must hold one image per identity.
* soft histogram on the grid ``t_r = 0, 0.001, ..., 0.999`` (R = 1000):
  ``h_r = sum_i exp(-(s_i - t_r)^2 / (2 sigma^2))``, ``sigma = 0.1``, normalised to ``sum_r h_r = 1``.

Loss, with ``P = hist(E)`` (teacher) and ``Q = hist(H)`` (student)::

    KL(P || Q) = sum_r (P_r + eps) (log(P_r + eps) - log(Q_r + eps)),  eps = 1e-9
               = F.kl_div(log(Q + eps), P + eps, reduction="batchmean") on a 1 x R tensor
    L_KL    = 0.1 * KL(P+ || Q+) + 0.02 * KL(P- || Q-)
    L_order = 0.5 * sum_{i, j in {E, H}} (mean(S-_i) - mean(S+_j))        (four terms)
    L_DDL   = L_KL + L_order

Gradients reach both branches (TFace does not detach the teacher distribution); ``detach_teacher=True``
detaches P+ and P- in the KL terms only (the order loss still trains both branches).

Edge case (NaN in TFace, handled here): when a branch has no positive similarity > 0 the positive KL
term is 0 and that branch's positive mean is left out of the order loss.

For a multi-GPU run all-gather the features (with gradient) before calling the loss: the histograms
are global-batch statistics in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceforge.core.precision import no_autocast

from .registry import DISTILL_LOSSES

__all__ = [
    "DDLBranch",
    "DDLLoss",
    "branches_from_pairs",
    "hardest_negatives",
    "positive_similarities",
    "soft_histogram",
]


@dataclass
class DDLBranch:
    """Embeddings of one DDL branch (easy or hard).

    Attributes:
        normal: [B, D], one image per identity (every pair in it is a negative pair).
        pos_a: [P, D], first images of the positive pairs.
        pos_b: [P, D], second images of the positive pairs (``pos_a[p]`` and ``pos_b[p]`` share an identity).
    """

    normal: Tensor
    pos_a: Tensor
    pos_b: Tensor

    def check(self, name: str) -> None:
        for what, x in (("normal", self.normal), ("pos_a", self.pos_a), ("pos_b", self.pos_b)):
            if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] == 0 or not x.is_floating_point():
                shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"ddl: {name}.{what} must be a non-empty float tensor [N, D], got {shape}")
        if self.pos_a.shape != self.pos_b.shape or self.pos_a.shape[1] != self.normal.shape[1]:
            raise ValueError(
                f"ddl: {name} branch shapes disagree: normal {list(self.normal.shape)}, "
                f"pos_a {list(self.pos_a.shape)}, pos_b {list(self.pos_b.shape)} "
                "(pos_a and pos_b must be [P, D] with the normal batch's D)"
            )


def branches_from_pairs(emb_easy: Tensor, emb_hard: Tensor, labels: Tensor) -> tuple[DDLBranch, DDLBranch]:
    """Build the easy and hard branches from a P x 2 identity batch.

    Rows come as consecutive same-identity pairs: rows ``2i`` and ``2i + 1`` share a label and the P
    labels are distinct. ``normal`` = the first image of each pair, ``pos_a`` / ``pos_b`` = the two images.
    ``emb_easy[k]`` and ``emb_hard[k]`` are the easy / hard version of the same sample.
    """
    if emb_easy.dim() != 2 or emb_easy.shape != emb_hard.shape:
        raise ValueError(
            f"ddl: emb_easy {list(emb_easy.shape)} and emb_hard {list(emb_hard.shape)} must both be [2P, D]"
        )
    n = emb_easy.shape[0]
    if n == 0 or n % 2 or labels.shape != (n,):
        raise ValueError(
            f"ddl: expected a P x 2 identity batch (an even, non-zero number of rows and labels [2P]); "
            f"got {n} embeddings and labels {list(labels.shape)}"
        )
    first, second = labels[0::2], labels[1::2]
    if not torch.equal(first, second):
        bad = int((first != second).nonzero()[0, 0])
        raise ValueError(
            f"ddl: rows {2 * bad} and {2 * bad + 1} have labels {int(first[bad])} and {int(second[bad])}; "
            "rows 2i and 2i+1 must be two images of the same identity (use a P x 2 identity sampler)"
        )
    if len(torch.unique(first)) != len(first):
        raise ValueError(
            "ddl: an identity appears in more than one pair; the P pairs must have distinct labels "
            "because every pair of normal images is used as a negative"
        )

    def split(emb: Tensor) -> DDLBranch:
        return DDLBranch(normal=emb[0::2], pos_a=emb[0::2], pos_b=emb[1::2])

    return split(emb_easy), split(emb_hard)


def soft_histogram(similarities: Tensor, grid: Tensor, sigma: float = 0.1) -> Tensor:
    """[N] similarities -> [1, R] Gaussian-kernel histogram on ``grid`` [R], normalised to sum 1."""
    diff = similarities.reshape(-1, 1) - grid.reshape(1, -1)
    h = torch.exp(-0.5 * (diff / sigma).pow(2)).sum(dim=0, keepdim=True)
    return h / h.sum(dim=1, keepdim=True)


def positive_similarities(pos_a: Tensor, pos_b: Tensor, threshold: float = 0.0) -> Tensor:
    """Cosines of the positive pairs, keeping only values ``> threshold``."""
    cos = (F.normalize(pos_a, dim=1) * F.normalize(pos_b, dim=1)).sum(dim=1)
    return cos[cos > threshold]


def hardest_negatives(normal: Tensor, mask_last_row: bool = False) -> Tensor:
    """Row-wise max of the upper-triangular (offset 1) cosine matrix with zeros: [B] (``[B - 1]`` masked)."""
    x = F.normalize(normal, dim=1)
    neg = torch.triu(x @ x.t(), diagonal=1).max(dim=1).values
    return neg[:-1] if mask_last_row else neg


@DISTILL_LOSSES.register("ddl")
class DDLLoss(nn.Module):
    """Distribution Distillation Loss: ``forward(easy: DDLBranch, hard: DDLBranch) -> scalar``.

    Args:
        pos_kl_weight, neg_kl_weight, order_loss_weight: lambda_1, lambda_2, lambda_3. TFace: 0.1, 0.02, 0.5.
        sigma: Gaussian kernel width of the soft histogram. TFace: 0.1.
        bin_step: grid spacing; the grid is ``arange(0, 1, bin_step)``. TFace: 0.001 (R = 1000).
        positive_threshold: positives ``<= threshold`` are dropped. TFace: 0.
        eps: added to both distributions in the KL. TFace: 1e-9.
        mask_last_row: drop the always-0 last row of the negatives (deviation; default off = TFace).
        detach_teacher: detach the easy-branch distributions in the KL terms (default off = TFace).

    After each call ``last_terms`` holds the detached ``kl_pos``, ``kl_neg`` (unweighted) and ``order``
    (weighted) values for logging.
    """

    def __init__(
        self,
        pos_kl_weight: float = 0.1,
        neg_kl_weight: float = 0.02,
        order_loss_weight: float = 0.5,
        sigma: float = 0.1,
        bin_step: float = 0.001,
        positive_threshold: float = 0.0,
        eps: float = 1e-9,
        mask_last_row: bool = False,
        detach_teacher: bool = False,
    ) -> None:
        super().__init__()
        if sigma <= 0 or not 0 < bin_step < 1:
            raise ValueError(f"ddl: sigma must be > 0 and bin_step in (0, 1), got {sigma}, {bin_step}")
        self.pos_kl_weight = float(pos_kl_weight)
        self.neg_kl_weight = float(neg_kl_weight)
        self.order_loss_weight = float(order_loss_weight)
        self.sigma = float(sigma)
        self.positive_threshold = float(positive_threshold)
        self.eps = float(eps)
        self.mask_last_row = bool(mask_last_row)
        self.detach_teacher = bool(detach_teacher)
        self.register_buffer("grid", torch.arange(0.0, 1.0, bin_step), persistent=False)
        self.last_terms: dict[str, Tensor] = {}

    def histogram(self, similarities: Tensor) -> Tensor:
        """[N] -> [1, R] soft histogram on this loss's grid."""
        return soft_histogram(similarities, self.grid, self.sigma)

    def similarities(self, branch: DDLBranch) -> tuple[Tensor, Tensor]:
        """(positive similarities [<= P], hardest-negative similarities [B]) of one branch."""
        if self.mask_last_row and branch.normal.shape[0] < 2:
            raise ValueError("ddl: mask_last_row=True needs at least 2 normal images per branch")
        pos = positive_similarities(branch.pos_a, branch.pos_b, self.positive_threshold)
        return pos, hardest_negatives(branch.normal, self.mask_last_row)

    def kl(self, p: Tensor, q: Tensor) -> Tensor:
        """``KL(P || Q)`` as TFace computes it: ``kl_div(log(Q + eps), P + eps, 'batchmean')`` on [1, R]."""
        if self.detach_teacher:
            p = p.detach()
        return F.kl_div(torch.log(q + self.eps), p + self.eps, reduction="batchmean")

    def loss_from_similarities(self, pos_e: Tensor, neg_e: Tensor, pos_h: Tensor, neg_h: Tensor) -> Tensor:
        """The DDL loss given the easy (teacher) and hard (student) similarity sets."""
        zero = neg_e.new_zeros(())
        if pos_e.numel() and pos_h.numel():
            kl_pos = self.kl(self.histogram(pos_e), self.histogram(pos_h))
        else:
            kl_pos = zero
        kl_neg = self.kl(self.histogram(neg_e), self.histogram(neg_h))
        pos_means = [p.mean() for p in (pos_e, pos_h) if p.numel()]
        order = sum((n.mean() - p for n in (neg_e, neg_h) for p in pos_means), zero)
        self.last_terms = {
            "kl_pos": kl_pos.detach(),
            "kl_neg": kl_neg.detach(),
            "order": (self.order_loss_weight * order).detach(),
        }
        return self.pos_kl_weight * kl_pos + self.neg_kl_weight * kl_neg + self.order_loss_weight * order

    def forward(self, easy: DDLBranch, hard: DDLBranch) -> Tensor:
        easy.check("easy")
        hard.check("hard")
        with no_autocast(easy.normal.device):
            easy, hard = (DDLBranch(b.normal.float(), b.pos_a.float(), b.pos_b.float()) for b in (easy, hard))
            pos_e, neg_e = self.similarities(easy)
            pos_h, neg_h = self.similarities(hard)
            return self.loss_from_similarities(pos_e, neg_e, pos_h, neg_h)

    def extra_repr(self) -> str:
        return (
            f"pos_kl_weight={self.pos_kl_weight}, neg_kl_weight={self.neg_kl_weight}, "
            f"order_loss_weight={self.order_loss_weight}, sigma={self.sigma}, bins={len(self.grid)}, "
            f"mask_last_row={self.mask_last_row}, detach_teacher={self.detach_teacher}"
        )
