"""LIAAD: attentive angular distillation from several teachers (provisional).

Source: Truong, Duong, Quach, Le, Bui, Luu, "LIAAD: Lightweight Attentive Angular Distillation for
Large-scale Age-Invariant Face Recognition", Neurocomputing 543:126198 (2023); first as arXiv 2004.05085.

**Provisional design, reconstructed from the abstract only.** No public code was found and the paper
body was not read; the abstract gives two heavy teachers (a general FR teacher and an age-invariant FR
teacher) and a lightweight student that learns "attentive" and "angular" knowledge from both. The exact
attention formula, whether attention also acts on intermediate feature maps, and all loss weights are
**unverified**; check them against the PDF before quoting results as LIAAD's.

Loss (per sample, then averaged over the batch)::

    L_AAD = (1/B) sum_i sum_k alpha_k(x_i) * (1 - cos(f_S^k(x_i), f_Tk(x_i)))

``f_S^k`` is the student embedding already projected into teacher k's space (the caller owns the
projections and passes one student tensor per teacher), ``f_Tk`` is teacher k's embedding (detached).
``alpha(x)`` [B, K] sums to 1 over the teachers and comes from a pluggable attention, chosen by name
from :data:`LIAAD_ATTENTIONS`:

* ``fixed``: the given ``weights`` normalised to sum 1 (default uniform), the same for every sample;
* ``confidence``: ``softmax_k(confidence[:, k] / temperature)``, temperature 0.1; ``confidence`` [B, K]
  comes from the caller (e.g. each teacher's cosine to its class centroid / margin-free target cosine)
  and is detached;
* ``learned``: ``softmax(MLP(concat_k f_Tk))`` with ``MLP = Linear(sum D_k, hidden=64) - ReLU -
  Linear(hidden, K)`` on the detached teacher embeddings. Caveat: trained only through this loss, the MLP
  is rewarded for moving weight onto whichever teacher the student already matches best, so it can
  collapse to one teacher; monitor ``last_attention``.

Total objective (caller): ``L = L_margin(student) + lambda * L_AAD`` with frozen teachers.
``last_attention`` holds the detached [B, K] weights of the last call, for logging.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceforge.core.precision import no_autocast
from faceforge.core.registry import Registry

from .baselines import check_batch, require_same_dim
from .registry import DISTILL_LOSSES

__all__ = [
    "LIAAD_ATTENTIONS",
    "AttentionConfig",
    "ConfidenceAttention",
    "FixedAttention",
    "LIAADLoss",
    "LearnedAttention",
]

LIAAD_ATTENTIONS: Registry[nn.Module] = Registry("LIAAD teacher attention")


@dataclass(frozen=True)
class AttentionConfig:
    """Everything an attention may need; each attention reads only its own fields."""

    num_teachers: int
    weights: tuple[float, ...] | None = None
    temperature: float = 0.1
    teacher_dims: tuple[int, ...] | None = None
    hidden: int = 64


@LIAAD_ATTENTIONS.register("fixed")
class FixedAttention(nn.Module):
    """``alpha_k = w_k / sum_j w_j`` for every sample (default ``w`` uniform)."""

    def __init__(self, cfg: AttentionConfig) -> None:
        super().__init__()
        k = cfg.num_teachers
        w = torch.ones(k) if cfg.weights is None else torch.tensor(cfg.weights, dtype=torch.float32)
        if w.shape != (k,) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(
                f"liaad: fixed attention needs {k} non-negative weights with a positive sum, got {cfg.weights}"
            )
        self.register_buffer("weights", w / w.sum())

    def forward(self, teachers: Sequence[Tensor], confidence: Tensor | None) -> Tensor:
        return self.weights.to(teachers[0]).expand(teachers[0].shape[0], -1)


@LIAAD_ATTENTIONS.register("confidence")
class ConfidenceAttention(nn.Module):
    """``alpha(x) = softmax_k(confidence[:, k] / temperature)``; ``confidence`` [B, K] is detached."""

    def __init__(self, cfg: AttentionConfig) -> None:
        super().__init__()
        if cfg.temperature <= 0:
            raise ValueError(f"liaad: temperature must be > 0, got {cfg.temperature}")
        self.num_teachers = cfg.num_teachers
        self.temperature = float(cfg.temperature)

    def forward(self, teachers: Sequence[Tensor], confidence: Tensor | None) -> Tensor:
        b, k = teachers[0].shape[0], self.num_teachers
        if confidence is None or confidence.shape != (b, k):
            got = None if confidence is None else list(confidence.shape)
            raise ValueError(
                f"liaad: attention='confidence' needs confidence of shape [{b}, {k}] (one score per "
                f"sample and teacher, e.g. each teacher's cosine to its class centroid), got {got}"
            )
        return F.softmax(confidence.detach().to(teachers[0]) / self.temperature, dim=1)


@LIAAD_ATTENTIONS.register("learned")
class LearnedAttention(nn.Module):
    """``alpha(x) = softmax(Linear(hidden, K)(ReLU(Linear(sum D_k, hidden)(concat_k t_k))))``."""

    def __init__(self, cfg: AttentionConfig) -> None:
        super().__init__()
        if not cfg.teacher_dims or len(cfg.teacher_dims) != cfg.num_teachers:
            raise ValueError(
                f"liaad: attention='learned' needs teacher_dims (one embedding size per teacher, "
                f"{cfg.num_teachers} values), got {cfg.teacher_dims}"
            )
        self.mlp = nn.Sequential(
            nn.Linear(sum(cfg.teacher_dims), cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.num_teachers)
        )

    def forward(self, teachers: Sequence[Tensor], confidence: Tensor | None) -> Tensor:
        return F.softmax(self.mlp(torch.cat([t.detach() for t in teachers], dim=1)), dim=1)


@DISTILL_LOSSES.register("liaad")
class LIAADLoss(nn.Module):
    """Attentive angular distillation from K teachers (provisional LIAAD, see the module docstring).

    ``forward(students: Sequence[Tensor[B, D_k]], teachers: Sequence[Tensor[B, D_k]], labels: Tensor[B],
    confidence: Tensor[B, K] | None = None) -> scalar``. ``labels`` is unused (uniform signature).

    Args:
        num_teachers: K. The abstract's setting is 2 (general FR teacher, age-invariant FR teacher).
        attention: ``"fixed"`` | ``"confidence"`` | ``"learned"`` (see :data:`LIAAD_ATTENTIONS`).
        weights: fixed attention weights, normalised to sum 1; default uniform.
        temperature: softmax temperature of the confidence attention. Default 0.1.
        teacher_dims: embedding size per teacher; required by the learned attention.
        hidden: hidden width of the learned attention MLP. Default 64.
    """

    def __init__(
        self,
        num_teachers: int = 2,
        attention: str = "fixed",
        weights: Sequence[float] | None = None,
        temperature: float = 0.1,
        teacher_dims: Sequence[int] | None = None,
        hidden: int = 64,
    ) -> None:
        super().__init__()
        if num_teachers < 1:
            raise ValueError(f"liaad: num_teachers must be >= 1, got {num_teachers}")
        self.num_teachers = int(num_teachers)
        self.attention_name = attention
        cfg = AttentionConfig(
            num_teachers=self.num_teachers,
            weights=None if weights is None else tuple(float(w) for w in weights),
            temperature=float(temperature),
            teacher_dims=None if teacher_dims is None else tuple(int(d) for d in teacher_dims),
            hidden=int(hidden),
        )
        self.attention = LIAAD_ATTENTIONS.get(attention)(cfg)
        self.last_attention: Tensor | None = None

    def forward(
        self,
        students: Sequence[Tensor],
        teachers: Sequence[Tensor],
        labels: Tensor,
        confidence: Tensor | None = None,
    ) -> Tensor:
        k = self.num_teachers
        if len(students) != k or len(teachers) != k:
            raise ValueError(
                f"liaad: expected {k} student tensors (one per teacher, already projected into that "
                f"teacher's space) and {k} teacher tensors, got {len(students)} and {len(teachers)}"
            )
        for i, (s, t) in enumerate(zip(students, teachers, strict=True)):
            check_batch(f"liaad teacher {i}", s, t, labels)
            require_same_dim(f"liaad teacher {i}", s, t)
        if len({s.shape[0] for s in students}) != 1:
            raise ValueError(f"liaad: all inputs must share the batch size, got {[len(s) for s in students]}")
        with no_autocast(students[0].device):
            t_k = [t.detach().float() for t in teachers]
            ang = torch.stack(
                [1.0 - F.cosine_similarity(s.float(), t, dim=1) for s, t in zip(students, t_k, strict=True)],
                dim=1,
            )
            alpha = self.attention(t_k, confidence)
            self.last_attention = alpha.detach()
            return (alpha * ang).sum(dim=1).mean()

    def extra_repr(self) -> str:
        return f"num_teachers={self.num_teachers}, attention={self.attention_name!r}"
