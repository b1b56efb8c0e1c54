"""Methods: what a published recipe adds to the engine beyond objectives, and only where it must.

A method (``method: {name: ..., options...}`` in the config; registry :data:`METHODS`) is an ``nn.Module`` that may

* own **modules** (a generator and a discriminator, an attention decomposition, a regression head): its
  submodules are saved in and resumed from the run's checkpoint (``checkpoint["method"]``);
* bring **optimisers** of its own (:meth:`Method.optimizers`: name -> :class:`OptimizerSpec`, e.g. Adam for a
  GAN with its own learning rate and betas); parameters it does not hand to one are trained by the run's main
  optimiser together with the backbone and the objectives' modules;
* freeze the backbone (``trains_backbone = False``), e.g. face age synthesis on a trained encoder;
* supply the **step** (:meth:`Method.step`), e.g. alternating generator and discriminator updates or an
  adversarial example built inside the step. The step is written with the engine's services
  (:class:`faceforge.engine.step.StepEngine`: micro-batches with DDP's ``no_sync``, the backbone under the run's
  precision, backward with the gradient scaler, the optimiser step with gradient averaging over ranks, clipping
  and learning-rate schedules), so precision, DDP, accumulation, clipping, schedules, exact resume, logging and
  periodic evaluation are the engine's for every method.

``standard`` is the default: no modules of its own and the standard step (every objective on every micro-batch,
one main optimiser step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from faceforge.core.registry import Registry

if TYPE_CHECKING:
    from faceforge.data.dataset import Batch
    from faceforge.engine.step import StepEngine

__all__ = ["METHODS", "Method", "MethodContext", "OptimizerSpec", "StandardMethod", "eval_mode"]


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode inside (BN on running statistics, none updated), its own mode restored after: for
    a method's extra forward passes within a step (an attack, a perceptual loss)."""
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


@dataclass
class OptimizerSpec:
    """An optimiser a method owns: the modules whose parameters it trains (weight decay grouped as the main
    optimiser's: none on normalisation layers and biases) and the ``optim`` settings that differ from the run's
    (``name`` sgd | adamw | adam, ``lr``, ``betas``, ``momentum``, ``weight_decay``, ``grad_clip``,
    ``schedule``...). Its learning rate follows its own ``schedule`` over the run's steps."""

    modules: Sequence[nn.Module]
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodContext:
    """What a method is built from: the run's parts (built before the method) and facts about the data."""

    backbone: nn.Module
    objectives: nn.ModuleDict
    embedding_size: int
    num_classes: int
    labels: Any
    classes: Any
    dataset: Any
    attributes: Any = None
    seed: int = 0


METHODS: Registry[type[Method]] = Registry("method")


class Method(nn.Module):
    """Base class: the standard step and nothing of its own. Subclasses take ``(ctx, *, option=...)``;
    ``method.*`` config keys are validated against ``__init__``'s keyword parameters."""

    trains_backbone: ClassVar[bool] = True

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__()

    def optimizers(self) -> dict[str, OptimizerSpec]:
        """Optimisers of the method's own, by name (``main`` is the run's)."""
        return {}

    def step(self, engine: StepEngine, batch: Batch) -> None:
        """One training step on ``batch`` (uint8 images, labels, indices, branches)."""
        engine.standard_step(batch)

    def describe(self) -> dict[str, Any]:
        return {"name": type(self).__name__}


@METHODS.register("standard")
class StandardMethod(Method):
    """The standard recipe: the configured objectives on the backbone, one optimiser."""
