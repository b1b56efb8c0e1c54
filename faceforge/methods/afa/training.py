"""PGD adversarial training as a method of the one engine (``method=pgd_at``), the baseline AFA builds on.

Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018: train on inputs
perturbed by PGD against the current network. For face recognition the attack needs no identity label: it
pushes each face's embedding away from its own clean embedding (option ``attack_loss``)::

    cosine (default):  max_{‖δ‖∞ ≤ ε}  −cos( f(x + δ), sg(f(x)) )          (the verification dodging attack)
    margin:            max_{‖δ‖∞ ≤ ε}  CE( head(f(x + δ)), y )               (the run's margin head, eval mode)

Each step, per micro-batch: the attack runs with the backbone in eval mode (running statistics, nothing
updated, no parameter gradient; :func:`faceforge.models.attacks.pgd` in the network's input space, pixels kept
in [0, 1]); then the run's objectives are applied to the clean and the adversarial embeddings of one forward in
train mode::

    L = w_clean · L_obj(f(x)) + w_adv · L_obj(f(x + δ))

``clean_weight = 0`` is Madry's adversarial-only training, ``0.5 / 0.5`` the hybrid ("clean + adversarial")
variant; ``adv_fraction < 1`` attacks only the first share of each batch's faces (the clean term still sees all
of them), the cost of the attack falling in proportion. ``ε`` is one number (``eps``) or, with ``eps_sampling: uniform``, drawn per face from ``U(0, ε)``.
Random numbers (ε draws, random starts) come from a generator seeded by ``(run.seed, step, rank)``, so a
resumed run draws what an unbroken run draws.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from faceforge.core import distributed as D
from faceforge.data.dataset import Batch
from faceforge.engine.method import METHODS, Method, MethodContext, eval_mode
from faceforge.models.attacks import AttackSettings, InputBox, parse_epsilon, pgd
from faceforge.objectives.margin import find_margin

__all__ = ["ATTACK_LOSSES", "AdversarialTraining", "step_generator"]

ATTACK_LOSSES = ("cosine", "margin")
EPS_SAMPLING = ("fixed", "uniform")


def step_generator(seed: int, step: int, rank: int, salt: int = 0xAFA) -> torch.Generator:
    """A CPU generator seeded by ``(seed, step, rank)``: the same draws in a resumed run."""
    mixed = (int(seed) * 1_000_003 + int(step) * 9_176 + int(rank) * 7 + salt) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


@METHODS.register("pgd_at")
class AdversarialTraining(Method):
    """PGD adversarial training (module doc). Options (``method.*``):

    ``eps`` (``4/255``; a fraction of the pixel range, as a number or ``"N/255"``), ``eps_sampling``
    (``fixed`` | ``uniform``: per face from ``U(0, eps)``), ``steps`` (3), ``step_size`` (multiple of ε; null:
    ``2.5 / steps``), ``random_start`` (true), ``attack_loss`` (``cosine`` | ``margin``), ``clean_weight`` (0.5),
    ``adv_weight`` (0.5), ``adv_fraction`` (1.0: the share of each batch's faces that also get an adversarial
    copy, the first ones; less bounds the attack's cost).
    """

    def __init__(
        self,
        ctx: MethodContext,
        *,
        eps: float | str = "4/255",
        eps_sampling: str = "fixed",
        steps: int = 3,
        step_size: float | None = None,
        random_start: bool = True,
        attack_loss: str = "cosine",
        clean_weight: float = 0.5,
        adv_weight: float = 0.5,
        adv_fraction: float = 1.0,
    ) -> None:
        super().__init__(ctx)
        if not 0.0 < adv_fraction <= 1.0:
            raise ValueError(f"method.adv_fraction={adv_fraction} must lie in (0, 1]")
        if attack_loss not in ATTACK_LOSSES:
            raise ValueError(f"method.attack_loss={attack_loss!r}: use one of {ATTACK_LOSSES}")
        if eps_sampling not in EPS_SAMPLING:
            raise ValueError(f"method.eps_sampling={eps_sampling!r}: use one of {EPS_SAMPLING}")
        if clean_weight < 0 or adv_weight < 0 or clean_weight + adv_weight == 0:
            raise ValueError("method.clean_weight and method.adv_weight must be >= 0 and not both 0")
        if attack_loss == "margin" and find_margin(ctx.objectives) is None:
            raise ValueError("method.attack_loss=margin needs the margin objective (objectives.margin)")
        self.eps = parse_epsilon(str(eps))
        self.eps_sampling = eps_sampling
        self.attack = AttackSettings(int(steps), step_size, bool(random_start))
        self.attack_loss, self.clean_weight, self.adv_weight = (
            attack_loss,
            float(clean_weight),
            float(adv_weight),
        )
        self.seed = int(ctx.seed)
        self.adv_fraction = float(adv_fraction)

    def describe(self) -> dict[str, Any]:
        return {
            "name": "pgd_at", "eps": self.eps, "eps_label": f"{self.eps * 255:g}/255",
            "eps_sampling": self.eps_sampling, "attack": self.attack.describe(), "attack_loss": self.attack_loss,
            "clean_weight": self.clean_weight, "adv_weight": self.adv_weight, "adv_fraction": self.adv_fraction,
        }  # fmt: skip

    # --------------------------------------------------------------------------------------------- pieces
    def attacked_rows(self, n: int) -> int:
        """How many leading rows of an ``n``-row micro-batch are attacked (``adv_fraction``, at least one)."""
        return max(1, min(n, round(self.adv_fraction * n)))

    def draw_eps(self, n: int, gen: torch.Generator) -> Tensor:
        if self.eps_sampling == "uniform":
            return torch.rand(n, generator=gen) * self.eps
        return torch.full((n,), self.eps)

    def attack_inputs(
        self, engine: Any, x: Tensor, labels: Tensor, eps: Tensor, gen: torch.Generator
    ) -> Tensor:
        """PGD inputs against the backbone in eval mode (module doc)."""
        backbone = engine.t.backbone
        pre = engine.t.preprocess
        box = InputBox(tuple(pre.mean), tuple(pre.std))
        eps = eps.to(x.device)
        margin = find_margin(engine.objectives) if self.attack_loss == "margin" else None
        labels = labels.to(x.device)
        with eval_mode(backbone), eval_mode(engine.objectives):
            with torch.no_grad(), engine.autocast():
                ref = F.normalize(backbone(x).float(), dim=1)

            def loss(xa: Tensor) -> Tensor:
                with engine.autocast():
                    emb = backbone(xa).float()
                if margin is not None:
                    return margin.criterion(emb, labels).loss
                return -(F.normalize(emb, dim=1) * ref).sum(1)

            return pgd(loss, x, eps, box, self.attack, generator=gen)

    def forward_pair(
        self, engine: Any, x: Tensor, x_adv: Tensor, eps: Tensor
    ) -> tuple[Tensor | None, Tensor, Tensor]:
        """Embeddings of the clean rows (None when they carry no weight) and of the adversarial rows (one forward,
        train mode) and the method's extra loss (0 here)."""
        if self.clean_weight == 0:
            emb = engine.embed(x_adv)
            return None, emb, emb.new_zeros(())
        emb = engine.embed(torch.cat([x, x_adv]))
        return emb[: len(x)], emb[len(x) :], emb.new_zeros(())

    # ----------------------------------------------------------------------------------------------- step
    def step(self, engine: Any, batch: Batch) -> None:
        k = engine.accumulate
        gen = step_generator(self.seed, engine.step, D.current().rank)
        x = engine.preprocess(batch.images)
        eps = self.draw_eps(len(x), gen)
        engine.zero_grad("main")
        for obj in engine.objectives.values():
            obj.begin_step(2 * k)
        micros = engine.micro_batches(Batch(x, batch.labels, batch.indices, [], batch.branch))
        for (micro, sync), eps_m in zip(micros, eps.chunk(k), strict=True):
            with sync:
                m = self.attacked_rows(len(micro))
                attacked = Batch(micro.images[:m], micro.labels[:m], micro.indices[:m], [],
                                 None if micro.branch is None else micro.branch[:m])  # fmt: skip
                x_adv = self.attack_inputs(engine, attacked.images, attacked.labels, eps_m[:m], gen)
                emb_c, emb_a, total = self.forward_pair(engine, micro.images, x_adv, eps_m[:m])
                for name, part_of, emb, weight in (
                    ("clean", micro, emb_c, self.clean_weight),
                    ("adv", attacked, emb_a, self.adv_weight),
                ):
                    if weight == 0 or emb is None:
                        continue
                    part = engine.objectives_loss(engine.step_batch(part_of, emb), scale=0.5 / k)
                    total = total + weight * part
                    engine.log({f"at/{name}_loss": float(part.detach())}, 1.0 / k)
                logs = {"at/eps_x255": float(eps_m[:m].mean()) * 255}
                if emb_c is not None:
                    logs["at/cos_clean_adv"] = float(
                        F.cosine_similarity(emb_c[:m].detach(), emb_a.detach()).mean()
                    )
                engine.log(logs, 1.0 / k)
                engine.backward(total / k, "main")
        for obj in engine.objectives.values():
            obj.end_step()
        engine.optimizer_step("main")
