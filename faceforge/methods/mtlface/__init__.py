"""MTLFace (Huang, Zhang & Shan, CVPR 2021; TPAMI 2022): age-invariant face recognition by attention-based feature
decomposition, with age estimation on the age part and an adversarial age estimator on the identity part.

* the backbones ``aifr_mobilefacenet``, ``aifr_iresnet18/34/50/100``, ``aifr_iresnet_se50``
  (:mod:`faceforge.models.backbones.aifr`): the encoder, AFD and the identity head;
* :mod:`.age`: age groups, DEX expectation, gradient reversal, :class:`~.age.AgeEstimator`;
* :mod:`.objectives`: the ``age`` and ``age_adversarial`` objectives;
* the config ``method=mtlface`` (``faceforge/configs/method/mtlface.yaml``);
* face age synthesis: :mod:`.router` (identity conditional module), :mod:`.generator`, :mod:`.discriminator`,
  :mod:`.fas` (the ``mtlface_fas`` method: LSGAN on a frozen AIFR encoder, config ``method=mtlface_fas``),
  :mod:`.selection` (selective fine-tuning on synthesised faces).
"""

from faceforge.methods.mtlface import fas, objectives  # noqa: F401  (registers mtlface_fas, age, age_adversarial)
from faceforge.methods.mtlface.age import (
    AGE_GROUP_CUTS,
    AgeEstimator,
    GradientReversal,
    age2group,
    age_loss,
    dex_expectation,
    grad_reverse,
    load_age_estimator,
)

__all__ = [
    "AGE_GROUP_CUTS",
    "AgeEstimator",
    "GradientReversal",
    "age2group",
    "age_loss",
    "dex_expectation",
    "grad_reverse",
    "load_age_estimator",
]
