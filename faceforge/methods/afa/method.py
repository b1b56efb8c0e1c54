"""AFA: adaptive feature alignment for adversarial training (``method=afa``), a reconstruction.

Zhao et al., "Adaptive Feature Alignment for Adversarial Training", arXiv 2105.15157 (2021). Published: the BN
statistics of a network move monotonically and smoothly with the attack strength ε; a dual-BN network (a clean
and an adversarial branch) mixed by a fusing weight λ that a small predictor gives per input aligns the features
of any attack strength with one model and no test-time setting. The paper has no public code and no
face-recognition experiment; what follows the mechanism and what is this reconstruction's choice:

* network: the run's backbone with every BN doubled and a predictor of λ from the input image
  (:class:`faceforge.models.backbones.dual_bn.DualBNNet`, ``model.name=dual_bn``, ``model.base=<backbone>``);
* data per step [published]: clean faces and PGD faces at a random ε ∈ [0, ε_max] per face (uniform [choice]);
  the attack is :class:`~faceforge.methods.afa.training.AdversarialTraining`'s, run against the whole network
  (predicted λ, eval mode);
* losses [published: clean CE, adversarial CE, predictor supervised by the attack strength]::

      L = w_clean · L_obj(f_{λ=0}(x)) + w_adv · L_obj(f_{λ*}(x + δ)) + w_λ · BCE(p(·), λ*)
      λ* = (ε / ε_max)^γ  for attacked faces, 0 for clean ones            (γ = ``lambda_power``, 1 [choice])

  with ``L_obj`` the run's objectives (the margin head); the clean rows take the clean path exactly (clean BN
  statistics and affine), the attacked rows are mixed with λ* (``mix_with: target`` [choice]: the target
  strength during training, so the branches learn what each mixture should give; ``predicted``: the
  predictor's own output, as at test time) and BCE is taken on the predictor's output for every row;
* test time [published]: nothing to set; ``λ = p(x)`` mixes the branches in every forward, in PyTorch and in
  an exported ONNX graph.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from faceforge.engine.method import METHODS, MethodContext
from faceforge.methods.afa.training import AdversarialTraining
from faceforge.models.backbones.dual_bn import DualBNNet

__all__ = ["AdaptiveFeatureAlignment", "lambda_targets"]

MIX_WITH = ("target", "predicted")
LAMBDA_LOSSES = ("bce", "mse")


def lambda_targets(eps: Tensor, eps_max: float, power: float = 1.0) -> Tensor:
    """``λ* = (ε / ε_max)^power`` clamped to [0, 1] (``ε_max = 0``: all zeros)."""
    if eps_max <= 0:
        return torch.zeros_like(eps)
    return (eps / eps_max).clamp(0.0, 1.0).pow(power)


@METHODS.register("afa")
class AdaptiveFeatureAlignment(AdversarialTraining):
    """AFA (module doc). Options (``method.*``), besides :class:`AdversarialTraining`'s (``eps`` is ε_max and
    ``eps_sampling`` is ``uniform`` by default here): ``lambda_weight`` (1.0), ``lambda_loss`` (``bce`` | ``mse``),
    ``lambda_power`` (1.0), ``mix_with`` (``target`` | ``predicted``)."""

    def __init__(
        self,
        ctx: MethodContext,
        *,
        eps: float | str = "8/255",
        eps_sampling: str = "uniform",
        steps: int = 3,
        step_size: float | None = None,
        random_start: bool = True,
        attack_loss: str = "cosine",
        clean_weight: float = 0.5,
        adv_weight: float = 0.5,
        adv_fraction: float = 1.0,
        lambda_weight: float = 1.0,
        lambda_loss: str = "bce",
        lambda_power: float = 1.0,
        mix_with: str = "target",
    ) -> None:
        if not isinstance(ctx.backbone, DualBNNet):
            raise ValueError(
                f"method=afa trains a dual-BN network, but the model is {type(ctx.backbone).__name__}: set "
                "model.name=dual_bn and model.base=<your backbone> (the packaged method=afa config does, with base "
                "mobilefacenet)"
            )
        super().__init__(ctx, eps=eps, eps_sampling=eps_sampling, steps=steps, step_size=step_size,
                         random_start=random_start, attack_loss=attack_loss, clean_weight=clean_weight,
                         adv_weight=adv_weight, adv_fraction=adv_fraction)  # fmt: skip
        if mix_with not in MIX_WITH:
            raise ValueError(f"method.mix_with={mix_with!r}: use one of {MIX_WITH}")
        if lambda_loss not in LAMBDA_LOSSES:
            raise ValueError(f"method.lambda_loss={lambda_loss!r}: use one of {LAMBDA_LOSSES}")
        if lambda_weight < 0 or lambda_power <= 0:
            raise ValueError("method.lambda_weight must be >= 0 and method.lambda_power > 0")
        self.lambda_weight, self.lambda_loss = float(lambda_weight), lambda_loss
        self.lambda_power, self.mix_with = float(lambda_power), mix_with

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "name": "afa",
            "lambda_weight": self.lambda_weight,
            "lambda_loss": self.lambda_loss,
            "lambda_target": f"(eps / eps_max)^{self.lambda_power:g}, 0 for clean faces",
            "mix_with": self.mix_with,
            "reconstruction": "Zhao et al. 2021 (arXiv 2105.15157) from its published mechanism; see "
            "faceforge.methods.afa.method",
        }

    def forward_pair(
        self, engine: Any, x: Tensor, x_adv: Tensor, eps: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        net: DualBNNet = engine.t.backbone
        n = len(x)
        target = torch.cat([torch.zeros(n), lambda_targets(eps.cpu(), self.eps, self.lambda_power)]).to(
            x.device
        )
        route = target if self.mix_with == "target" else "predict"
        with net.routing(route, clean_rows=n):
            emb = engine.embed(torch.cat([x, x_adv]))
        predicted = net.last_lambda.float()
        if self.lambda_loss == "bce":
            sup = F.binary_cross_entropy(predicted.clamp(1e-6, 1 - 1e-6), target)
        else:
            sup = F.mse_loss(predicted, target)
        with torch.no_grad():
            engine.log(
                {
                    "afa/lambda_loss": float(sup.detach()),
                    "afa/lambda_clean": float(predicted[:n].mean()),
                    "afa/lambda_adv": float(predicted[n:].mean()),
                    "afa/lambda_abs_err": float((predicted - target).abs().mean()),
                },
                1.0 / engine.accumulate,
            )
        return emb[:n], emb[n:], self.lambda_weight * sup
