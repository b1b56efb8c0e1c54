"""The objective contract: one class per training objective that says what it needs and returns named terms.

A training run sums any number of objectives (``objectives:`` in the config, a mapping from an instance name to
``{type, weight, options...}``)::

    total = sum_o weight_o * sum_t term_{o,t}

Each objective is an ``nn.Module`` (its parameters and buffers, e.g. a projection or EKD's thresholds, are trained
with the backbone and saved in the checkpoint) registered in :data:`OBJECTIVES`. It **declares** its needs in a
class attribute :class:`Needs`, which the engine reads to prepare the data and the batch:

* ``identity``: identity labels; rows without one (label ``-1``, e.g. faces of an unlabelled source) are masked
  out by the objective itself through :attr:`StepBatch.labelled`, or refused (``unlabelled_rows=False``);
* ``attributes``: names of per-image attributes (``age``, ``gender``, ``quality``...) read from
  :class:`faceforge.data.attributes.Attributes`; ``StepBatch.attribute(name)`` gives ``(values, mask)``;
* ``teachers``: teacher embeddings (``ctx.teacher(name)`` gives a :class:`~faceforge.distill.teachers.TeacherTable`
  with one row per dataset image);
* ``gathered``: computed on the batch gathered from every rank (``StepBatch.gathered()``), as TFace does for
  relation losses; an objective may turn it off per instance (``gather: false``). The gradient that reaches each
  rank's rows is exactly that of the term on the global batch (``gather_grad: exact``, the default);
  ``gather_grad: tface`` multiplies it by the world size, as TFace's ``AllGather`` does ("gradient correction for
  DistCrossEntropy" in ``torchkit/util/distributed_functions.py``), so a TFace recipe's loss weights act on W
  GPUs as they did there (:meth:`Objective.gathered_batch`);
* ``sampler``: the objective supplies the batch sampler (:meth:`Objective.batch_sampler`: P x K identities, a
  random half plus a balanced half, ...); at most one objective of a run may;
* ``extra_branch``: the objective adds images embedded in the same forward pass (:meth:`Objective.extra_images`,
  e.g. DDL's hard twins); at most one objective of a run may;
* ``features``: named auxiliary outputs of the backbone's same forward pass (a backbone that has them returns
  ``(embedding, {name: tensor})`` from ``forward(x, return_features=True)``, e.g. MTLFace's age and identity
  feature maps); ``StepBatch.features[name]`` holds them (with gradient) for the batch rows.

``forward(batch) -> ObjectiveOutput(terms, logs)``: ``terms`` are scalar tensors added (times the weight) to the
loss, ``logs`` are numbers for the training log only. Every rank must return the same keys at every step (logged
numbers are averaged over ranks with one all-reduce).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from faceforge.core import distributed as D
from faceforge.core.registry import Registry

#: ``gather_grad`` choices of gathered objectives (see the module doc)
GATHER_GRADS = ("exact", "tface")

__all__ = [
    "GATHER_GRADS",
    "OBJECTIVES",
    "Needs",
    "Objective",
    "ObjectiveContext",
    "ObjectiveOutput",
    "SamplerRequest",
    "StepBatch",
]


@dataclass(frozen=True)
class Needs:
    """What an objective needs from the data, the batch and the engine (see the module doc)."""

    identity: bool = True
    unlabelled_rows: bool = True  # False: every row must carry an identity (no data.sources without one)
    attributes: tuple[str, ...] = ()
    teachers: bool = False
    gathered: bool = False
    sampler: bool = False
    extra_branch: bool = False
    features: tuple[str, ...] = ()  # auxiliary outputs of the backbone (forward(x, return_features=True))


@dataclass
class ObjectiveOutput:
    terms: dict[str, Tensor]
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class SamplerRequest:
    """What a batch sampler is built from: every dataset row's identity (-1: none) and the run's layout."""

    labels: np.ndarray
    batch_size: int
    seed: int
    rank: int
    world_size: int
    attributes: Any = None  # faceforge.data.attributes.Attributes of every row


@dataclass
class ObjectiveContext:
    """What an objective is built from (the engine fills it; tests can fill it by hand).

    ``head_config``: the ``head`` config section (name, options, layout); ``labels``: identity of every dataset
    row (-1: none); ``dataset``: ``image(i)`` gives the aligned un-augmented face of row ``i`` (teachers and hard
    pools read it); ``teacher``: name -> teacher table (None -> the first configured teacher);
    ``teacher_names``: the configured teachers in order.
    """

    embedding_size: int
    num_classes: int
    labels: np.ndarray
    classes: Sequence[str]
    dataset: Any
    seed: int = 0
    head_config: dict[str, Any] = field(default_factory=dict)
    teacher: Callable[[str | None], Any] | None = None
    teacher_names: Sequence[str] = ()
    attributes: Any = None
    accumulate_steps: int = 1
    progress: bool = False

    def require_teacher(self, owner: str, name: str | None) -> Any:
        if self.teacher is None or not self.teacher_names:
            raise ValueError(
                f"objective {owner} needs a teacher: add teachers=[{{model: dlib, name: dlib}}] "
                "(a .pt checkpoint, an .onnx file or dlib)"
            )
        if name is not None and name not in self.teacher_names:
            raise ValueError(
                f"objective {owner}: no teacher named {name!r}; configured teachers: {list(self.teacher_names)}"
            )
        return self.teacher(name)


class StepBatch:
    """One (micro-)batch as the objectives see it.

    ``embeddings`` [B, D] fp32 student embeddings (with gradient); ``labels`` [B] identities (-1: none);
    ``indices`` [B] dataset rows; ``branch`` [B] the sampler branch of each row (``branch_names`` names them;
    one branch ``"all"`` when the sampler has none); ``extra`` [B, D] embeddings of the extra branch (row ``i``
    is the extra image made from row ``i``) or None; ``attributes`` name -> (values [B], mask [B]); ``features``
    name -> the backbone's auxiliary output for the rows (see :class:`Needs`); ``mirrored`` [B] bool: the
    augmentation mirrored the row's face (a teacher cached on both views reads the one the student saw).
    """

    def __init__(
        self,
        embeddings: Tensor,
        labels: Tensor,
        indices: Tensor,
        step: int = 0,
        branch: Tensor | None = None,
        branch_names: Sequence[str] = ("all",),
        extra: Tensor | None = None,
        attributes: dict[str, tuple[Tensor, Tensor]] | None = None,
        features: dict[str, Tensor] | None = None,
        mirrored: Tensor | None = None,
    ) -> None:
        self.embeddings = embeddings
        self.labels = labels
        self.indices = indices
        self.step = step
        self.branch = branch if branch is not None else torch.zeros_like(labels)
        self.branch_names = tuple(branch_names)
        self.extra = extra
        self.attributes = attributes or {}
        self.features = features or {}
        self.mirrored = mirrored if mirrored is not None else torch.zeros_like(labels, dtype=torch.bool)
        self._gathered: dict[float, StepBatch] = {}

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def device(self) -> torch.device:
        return self.embeddings.device

    @property
    def labelled(self) -> Tensor:
        return self.labels >= 0

    def in_branches(self, names: Sequence[str] | None) -> Tensor:
        """Rows drawn by the named sampler branches (all rows for None)."""
        if names is None:
            return torch.ones_like(self.labels, dtype=torch.bool)
        unknown = [n for n in names if n not in self.branch_names]
        if unknown:
            raise ValueError(f"batch branches are {list(self.branch_names)}; {unknown} is not one of them")
        ids = torch.tensor([self.branch_names.index(n) for n in names], device=self.branch.device)
        return torch.isin(self.branch, ids)

    def attribute(self, name: str) -> tuple[Tensor, Tensor]:
        if name not in self.attributes:
            raise KeyError(f"attribute {name!r} is not in the batch (have {sorted(self.attributes)})")
        return self.attributes[name]

    def gathered(self, grad_scale: float = 1.0) -> StepBatch:
        """Every rank's rows concatenated in rank order (embeddings keep their gradient); self in one process.

        Backward sums each rank's row gradients over the ranks and DDP averages the parameters' gradients,
        so every parameter gets exactly the gradient of the term on the global batch; ``grad_scale`` multiplies
        the gradient that reaches this rank's rows (``world_size`` reproduces TFace's ``AllGather``).
        """
        if not D.current().enabled:
            return self
        if grad_scale not in self._gathered:
            counts = D.row_counts(len(self), self.labels.device)

            def rows(t: Tensor, grad: bool = False) -> Tensor:
                if grad and grad_scale != 1.0:
                    return D.gather_rows(t, with_grad=True, counts=counts, grad_scale=grad_scale)
                return D.gather_rows(t, with_grad=grad, counts=counts)

            self._gathered[grad_scale] = StepBatch(
                rows(self.embeddings, True),
                rows(self.labels),
                rows(self.indices.to(self.labels.device)),
                self.step,
                rows(self.branch),
                self.branch_names,
                None if self.extra is None else rows(self.extra, True),
                {k: (rows(v), rows(m)) for k, (v, m) in self.attributes.items()},
                {k: rows(v, True) for k, v in self.features.items()},
                rows(self.mirrored),
            )
        return self._gathered[grad_scale]


OBJECTIVES: Registry[type[Objective]] = Registry("objective")


class Objective(nn.Module):
    """Base class of training objectives (see the module doc).

    Subclasses take ``(ctx: ObjectiveContext, *, option=default, ...)``; the config validates
    ``objectives.<name>.*`` against the keyword parameters of ``__init__`` and of :meth:`option_targets`.
    """

    needs: ClassVar[Needs] = Needs()

    def __init__(self, ctx: ObjectiveContext) -> None:
        super().__init__()
        self.name = type(self).__name__  # the instance name, set by the engine

    @classmethod
    def option_targets(cls) -> list[Callable[..., Any]]:
        """Callables whose keyword parameters are this objective's config options."""
        return [cls.__init__]

    @classmethod
    def option_names(cls) -> list[str]:
        names: list[str] = []
        for target in cls.option_targets():
            for n, p in inspect.signature(target).parameters.items():
                if n not in ("self", "ctx") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                    names.append(n)
        return names

    # -------------------------------------------------------------------------- what the engine may ask
    @property
    def gathers(self) -> bool:
        """True when this instance computes on the globally gathered batch."""
        return self.needs.gathered and bool(getattr(self, "gather", True))

    def gathered_batch(self, batch: StepBatch) -> StepBatch:
        """The batch this objective computes on: gathered from every rank when it :attr:`gathers` (with the
        gradient scale its ``gather_grad`` option chooses: ``exact`` 1, ``tface`` the world size), else its own."""
        if not self.gathers:
            return batch
        mode = getattr(self, "gather_grad", "exact")
        return batch.gathered(float(D.current().world_size) if mode == "tface" else 1.0)

    def batch_sampler(self, request: SamplerRequest) -> Any | None:
        """A batch sampler (``set_epoch(epoch, start_batch)``, ``__len__``, ``__iter__`` of index lists, and
        ``branch_names`` / ``branch_of(position)``) when ``needs.sampler``; None keeps the shuffled sampler."""
        return None

    def extra_images(self, images: Tensor, indices: Tensor, labels: Tensor, step: int) -> Tensor | None:
        """uint8 images embedded in the same forward as ``images`` (one per row) when ``needs.extra_branch``."""
        return None

    def optimizer_settings(self) -> dict[str, Any]:
        """Settings of the main optimiser that differ for this objective's parameters, e.g. ``{"weight_decay":
        0.0}`` (MTLFace's adversarial age estimator); empty: the run's ``optim`` settings."""
        return {}

    def begin_step(self, accumulate: int) -> None:
        """Called before the micro-batches of an optimiser step."""

    def end_step(self) -> None:
        """Called after the last micro-batch's backward, before the optimiser step."""

    def sharded_parameters(self) -> dict[int, Any]:
        """``id(parameter) -> owner`` for parameters split over ranks by class (the owner has
        ``gather_rows`` / ``take_rows``); their gradients are not averaged over ranks."""
        return {}

    def checkpoint_state(self) -> dict[str, Any]:
        """The state saved in checkpoints (every rank calls it: a sharded owner gathers here)."""
        return self.state_dict()

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        return {"type": type(self).__name__}

    # forward(batch: StepBatch) -> ObjectiveOutput is what each subclass defines
