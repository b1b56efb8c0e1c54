"""Training objectives as plug-ins (see :mod:`faceforge.objectives.base` for the contract).

Registered here: ``margin`` (the margin head's cross-entropy), ``feature_l2``, ``cosine``, ``rkd``, ``sp``, ``ekd``,
``liaad`` (teacher-based distillation) and ``ddl`` (distribution distillation on hard twins). An objective defined
anywhere else joins by ``@OBJECTIVES.register("name")`` in a module named in ``run.plugins``.
"""

from faceforge.objectives import cifp, ddl_objective, distillation, margin  # noqa: F401  (registration)
from faceforge.objectives.base import (
    OBJECTIVES,
    Needs,
    Objective,
    ObjectiveContext,
    ObjectiveOutput,
    SamplerRequest,
    StepBatch,
)

__all__ = [
    "OBJECTIVES",
    "Needs",
    "Objective",
    "ObjectiveContext",
    "ObjectiveOutput",
    "SamplerRequest",
    "StepBatch",
]
