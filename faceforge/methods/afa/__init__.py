"""AFA (Zhao et al., arXiv 2105.15157, 2021) and the PGD adversarial training it builds on (Madry et al. 2018).

* :mod:`.training`: ``method=pgd_at``, PGD adversarial training on the run's objectives (clean + adversarial);
* :mod:`.method`: ``method=afa``, adaptive feature alignment: dual BN mixed by a predicted per-input weight,
  trained on clean faces and PGD faces at random ε with the predictor supervised by the attack strength;
* the generic parts sit lower: the dual-BN backbone wrapper :mod:`faceforge.models.backbones.dual_bn`
  (``model.name=dual_bn``) and the attacks :mod:`faceforge.models.attacks`;
* configs ``method=pgd_at`` and ``method=afa`` (``faceforge/configs/method/``).
"""

from faceforge.methods.afa import method, training  # noqa: F401  (registers afa and pgd_at)
from faceforge.methods.afa.method import AdaptiveFeatureAlignment, lambda_targets
from faceforge.methods.afa.training import AdversarialTraining

__all__ = ["AdaptiveFeatureAlignment", "AdversarialTraining", "lambda_targets"]
