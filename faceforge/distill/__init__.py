"""Knowledge-distillation objectives for face embeddings, chosen by name.

>>> from faceforge.distill import DISTILL_LOSSES
>>> kd = DISTILL_LOSSES.build("ekd")                  # teacher-based: kd(student, teacher, labels)
>>> ddl = DISTILL_LOSSES.build("ddl")                 # easy/hard branches: ddl(easy, hard)
>>> aad = DISTILL_LOSSES.build("liaad", num_teachers=2)  # aad(students, teachers, labels)

Registered names: ``feature_l2``, ``cosine``, ``rkd``, ``sp`` (baselines.py), ``ekd`` (ekd.py, CVPR 2022),
``ddl`` (ddl.py, ECCV 2020), ``liaad`` (liaad.py, provisional: no public code). Formulas, defaults
and sources are in each module's docstring (paper, venue, and the reference code's repository and path). Teacher tensors are treated
as constants (detached) by every teacher-based loss; the teacher networks themselves stay frozen by the
caller. The losses compute on the tensors they are given: for a multi-GPU run, all-gather the features
(with gradient) before calling them, as the reference code does.
"""

from __future__ import annotations

from .baselines import CosineLoss, FeatureL2Loss, RKDLoss, SPLoss
from .ddl import DDLBranch, DDLLoss, branches_from_pairs
from .ekd import EKDLoss
from .liaad import LIAAD_ATTENTIONS, LIAADLoss
from .registry import DISTILL_LOSSES

__all__ = [
    "DISTILL_LOSSES",
    "LIAAD_ATTENTIONS",
    "CosineLoss",
    "DDLBranch",
    "DDLLoss",
    "EKDLoss",
    "FeatureL2Loss",
    "LIAADLoss",
    "RKDLoss",
    "SPLoss",
    "branches_from_pairs",
]
