"""SDD-FIQA (Ou et al., CVPR 2021): face image quality learned from Similarity Distribution Distance.

* :mod:`.pseudo_labels` - the quality pseudo-label of every image of an identity-labelled folder from a
  frozen recogniser (Wasserstein distance between its same-identity and other-identity cosines).
"""

from faceforge.methods.sddfiqa.pseudo_labels import (
    SINGLETON_RULES,
    PseudoLabels,
    label_folder,
    sdd_pseudo_labels,
    wasserstein_rows,
)

__all__ = ["SINGLETON_RULES", "PseudoLabels", "label_folder", "sdd_pseudo_labels", "wasserstein_rows"]
