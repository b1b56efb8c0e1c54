"""Learning-rate schedules as pure functions of the optimiser step, so resume needs only the step count.

``lr(step) = base_lr * warmup(step) * decay(step)``. Warmup is linear from ``warmup_start_factor`` to 1
over ``warmup_steps``; decay runs over the steps after warmup:
- ``poly``: ``(1 - p)^power`` with p the fraction of post-warmup steps done (arcface_torch
  ``PolynomialLRWarmup``, power 1);
- ``cosine``: ``0.5 (1 + cos(pi p))``;
- ``step``: ``gamma^k`` with k the number of ``milestones`` (in steps) passed (TFace, CurricularFace recipes);
- ``constant``: 1.
The result is floored at ``min_lr``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from faceforge.core.registry import Registry

Decay = Callable[[int, int, "ScheduleSpec"], float]
SCHEDULES: Registry[Decay] = Registry("lr schedule")


@dataclass(frozen=True)
class ScheduleSpec:
    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    warmup_start_factor: float = 0.0
    decay: str = "poly"
    power: float = 1.0
    milestones: Sequence[int] = ()
    gamma: float = 0.1
    min_lr: float = 0.0


@SCHEDULES.register("poly")
def _poly(step: int, span: int, spec: ScheduleSpec) -> float:
    return max(0.0, 1.0 - step / max(1, span)) ** spec.power


@SCHEDULES.register("cosine")
def _cosine(step: int, span: int, spec: ScheduleSpec) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(1, span))))


@SCHEDULES.register("step")
def _step(step: int, span: int, spec: ScheduleSpec) -> float:
    passed = sum(1 for m in spec.milestones if step + spec.warmup_steps >= m)
    return spec.gamma**passed


@SCHEDULES.register("constant")
def _constant(step: int, span: int, spec: ScheduleSpec) -> float:
    return 1.0


def learning_rate(step: int, spec: ScheduleSpec) -> float:
    """Learning rate for optimiser step ``step`` (0-based)."""
    if spec.warmup_steps > 0 and step < spec.warmup_steps:
        f0 = spec.warmup_start_factor
        factor = f0 + (1.0 - f0) * step / spec.warmup_steps
    else:
        span = spec.total_steps - spec.warmup_steps
        factor = SCHEDULES.get(spec.decay)(step - spec.warmup_steps, span, spec)
    return max(spec.min_lr, spec.base_lr * factor)
