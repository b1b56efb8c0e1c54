"""SDD-FIQA (Ou et al., CVPR 2021): face image quality learned from Similarity Distribution Distance.

* :mod:`.pseudo_labels` - the quality pseudo-label of every image of an identity-labelled folder from a
  frozen recogniser (Wasserstein distance between its same-identity and other-identity cosines);
* :mod:`.regression` - the ``quality_regression`` objective: a quality backbone
  (:mod:`faceforge.models.backbones.quality`, ``model=sddfiqa_*``) regresses the pseudo-labels (SmoothL1, masked
  where a row has none), optionally on batches balanced over label bins (:mod:`.sampler`).

The recipe is ``method=sddfiqa`` (``faceforge/configs/method/sddfiqa.yaml``), the LFW experiment ``lfw_sddfiqa``.
"""

from faceforge.methods.sddfiqa.pseudo_labels import (
    SINGLETON_RULES,
    PseudoLabels,
    label_folder,
    sdd_pseudo_labels,
    wasserstein_rows,
)
from faceforge.methods.sddfiqa.regression import LOSSES, QualityRegression, regression_loss
from faceforge.methods.sddfiqa.sampler import BinBalancedBatchSampler, label_bins

__all__ = [
    "LOSSES",
    "SINGLETON_RULES",
    "BinBalancedBatchSampler",
    "PseudoLabels",
    "QualityRegression",
    "label_bins",
    "label_folder",
    "regression_loss",
    "sdd_pseudo_labels",
    "wasserstein_rows",
]
