"""Distillation inside the one training loop: batches, teacher targets and the per-step term.

``distill.method`` names an objective of :data:`faceforge.distill.DISTILL_LOSSES`; the trainer adds
``distill.weight * L_kd`` to the margin loss of the configured head, so every objective combines with
every head.  How a method is fed is a *step kind* (registry :data:`STEP_KINDS`):

* ``teacher`` (``feature_l2``, ``cosine``, ``rkd``, ``sp``, ``ekd``): the student embedding of each
  image against the first teacher's cached embedding of the same image.  Feature-matching losses
  (``feature_l2``, ``cosine``) go through a learned linear projection (student dim -> teacher dim,
  trained with the student) when the sizes differ or ``distill.projection=linear``; relation losses
  (``rkd``, ``sp``, ``ekd``) compare within-batch relations and need none.
* ``multi_teacher`` (``liaad``): one projection per teacher, angular loss weighted by per-sample
  attention over teachers; ``confidence`` attention reads each teacher's cosine between the image and
  its class centroid in that teacher's space (unlabelled images: equal confidence).
* ``self`` (``ddl``): no teacher.  Batches hold P identities x 2 images; the hard branch is the same
  batch degraded on the fly by ``distill.hard`` (augmentations by name, default continuous random low
  resolution), or real hard photos of the same identities from ``distill.hard_images`` (a folder or a
  list; :mod:`faceforge.distill.hard_pool`), embedded by the same network.  The margin loss is applied to both branches with the
  one head (hard images keep their identities; TFace's separate per-branch heads exist because its
  easy and hard sets are different datasets).

Batches (``batch_sampler``): ``ddl`` uses identity-balanced P x 2 batches (as many steps per epoch as a
shuffled pass over the images); ``ekd`` uses TFace's
composition, a uniformly random half plus an identity-balanced half (``distill.balanced_k`` images
per identity), with the margin loss on the random half only and the distillation on all of it; the
others use the trainer's shuffled sampler.  Unlabelled faces (``distill.unlabelled_root``, e.g.
UTKFace) join the data with label -1: they feed the distillation term only.

Distributed runs: the relation objectives (``rkd``, ``sp``, ``ekd``, ``ddl``; :data:`GATHERED`) see the
global batch, as TFace's all-gather does: embeddings (with gradient), labels and indices of every rank
are concatenated and each rank computes the same term.  Backward sums each rank's row gradients over the
ranks (``world`` x the gradient of the term) and DDP then averages over ranks, so the parameters get
exactly the gradient of the global term; EKD's EMA thresholds move identically on every rank.
``distill.gather=false`` keeps the term per rank.  Per-sample objectives (feature matching, LIAAD)
need no gather.  DDL's margin loss on the hard branch stays per rank, like the main margin loss.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from faceforge.core.registry import Registry
from faceforge.data.image_io import is_image_file
from faceforge.data.transforms import build_augmentations
from faceforge.distill.ddl import branches_from_pairs
from faceforge.distill.hard_pool import HardPool
from faceforge.distill.registry import DISTILL_LOSSES
from faceforge.distill.teachers import (
    TeacherTable,
    build_teacher_tables,
    class_centroids,
    default_teacher_cache,
)

log = logging.getLogger(__name__)

__all__ = ["STEP_KINDS", "Distillation", "JoinedFaces", "StepInputs", "scan_unlabelled"]

#: which step kind feeds each objective (objectives not listed are teacher-based)
METHOD_STEP_KIND = {"ddl": "self", "liaad": "multi_teacher"}
FEATURE_LOSSES = frozenset({"feature_l2", "cosine"})
#: objectives over within-batch relations: computed on the batch gathered from every rank
GATHERED = frozenset({"rkd", "sp", "ekd", "ddl"})


@dataclass
class StepInputs:
    """What the trainer hands the distillation term for one batch."""

    embeddings: Tensor  # student embeddings [B, D] (fp32)
    labels: Tensor  # [B], -1 for unlabelled images
    indices: Tensor  # [B] dataset indices (rows of the teacher tables)
    extra: Tensor | None  # embeddings of the images from extra_images() (DDL's hard branch), same forward
    margin: Callable[[Tensor, Tensor], Any]  # (embeddings, labels) -> LossOutput of the head


@dataclass
class DistillOutput:
    loss: Tensor  # weighted distillation term (already multiplied by distill.weight)
    extra_margin: Tensor | None = None  # margin loss of extra branches (DDL's hard branch)
    logs: dict[str, float] | None = None


class JoinedFaces(Dataset):
    """Labelled training faces followed by unlabelled ones (label -1); indices are global."""

    def __init__(self, labelled: Any, unlabelled: Any) -> None:
        self.parts = [labelled, unlabelled]
        self.offset = len(labelled)

    def __len__(self) -> int:
        return self.offset + len(self.parts[1])

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        if index < self.offset:
            img, label, _ = self.parts[0][index]
            return img, label, index
        img, label, _ = self.parts[1][index - self.offset]
        return img, (-1 if img is not None else label), index

    def set_epoch(self, epoch: int) -> None:
        for p in self.parts:
            p.set_epoch(epoch)

    @property
    def preload_skipped(self) -> list[str]:
        return [s for p in self.parts for s in p.preload_skipped]

    def image(self, index: int) -> np.ndarray:
        """The un-augmented aligned face of ``index`` (raises ``UnreadableImageError``)."""
        if index < self.offset:
            return self.parts[0].image(index)
        return self.parts[1].image(index - self.offset)


class SameDatasetBranches:
    """A :class:`~faceforge.data.samplers.MultiBranchBatchSampler` whose branches all index one dataset:
    yields each step's batch as local indices (branch 0's rows first)."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for batch in self.sampler:
            yield np.concatenate(self.sampler.to_local(batch)).tolist()


STEP_KINDS: Registry[Callable[..., DistillOutput]] = Registry("distillation step kind")


def _teacher_rows(d: Distillation, k: int, indices: Tensor, device: torch.device) -> Tensor:
    return d.tables[k].embeddings[indices.cpu()].to(device)


@STEP_KINDS.register("teacher")
def _teacher_step(d: Distillation, s: StepInputs) -> DistillOutput:
    t = _teacher_rows(d, 0, s.indices, s.embeddings.device)
    student = d.projections[0](s.embeddings) if len(d.projections) else s.embeddings
    kd = d.loss(student, t, s.labels)
    return DistillOutput(d.weight * kd, logs={"distill_raw": float(kd.detach())})


@STEP_KINDS.register("multi_teacher")
def _multi_teacher_step(d: Distillation, s: StepInputs) -> DistillOutput:
    dev = s.embeddings.device
    teachers = [_teacher_rows(d, k, s.indices, dev) for k in range(len(d.tables))]
    students = [p(s.embeddings) for p in d.projections]
    confidence = None
    if d.centroids is not None:
        lab = s.labels.clamp(min=0)
        conf = [(t * c.to(dev)[lab]).sum(1) for t, c in zip(teachers, d.centroids, strict=True)]
        confidence = torch.stack(conf, dim=1) * (s.labels >= 0).unsqueeze(1)
    kd = d.loss(students, teachers, s.labels, confidence)
    logs = {"distill_raw": float(kd.detach())}
    att = getattr(d.loss, "last_attention", None)
    if att is not None:
        for k, table in enumerate(d.tables):
            logs[f"attention_{table.name}"] = float(att[:, k].mean())
    return DistillOutput(d.weight * kd, logs=logs)


def complete_pairs(labels: Tensor) -> Tensor:
    """Row indices of the consecutive same-label pairs ``(2i, 2i + 1)`` whose label occurs in no other
    pair (a P x 2 batch minus pairs broken by unreadable images)."""
    n = labels.shape[0] - labels.shape[0] % 2
    a, b = labels[0:n:2], labels[1:n:2]
    ok = a == b
    uniq, counts = torch.unique(a[ok], return_counts=True)
    once = torch.isin(a, uniq[counts == 1]) & ok
    first = torch.nonzero(once).flatten() * 2
    return torch.stack([first, first + 1], dim=1).flatten()


@STEP_KINDS.register("self")
def _self_step(d: Distillation, s: StepInputs) -> DistillOutput:
    assert s.extra is not None  # checked by Distillation.forward
    rows = complete_pairs(s.labels)
    if rows.numel() < 4:  # fewer than two identities: no negatives, skip this batch's term
        zero = s.embeddings.sum() * 0.0
        return DistillOutput(zero, logs={"distill_raw": 0.0})
    easy_b, hard_b = branches_from_pairs(s.embeddings[rows], s.extra[rows], s.labels[rows])
    kd = d.loss(easy_b, hard_b)
    logs = {"distill_raw": float(kd.detach())}
    for k, v in (getattr(d.loss, "last_terms", None) or {}).items():
        logs[f"ddl_{k}"] = float(v)
    return DistillOutput(d.weight * kd, logs=logs)


def gather_inputs(s: StepInputs) -> StepInputs:
    """The step inputs of every rank concatenated in rank order (embeddings with gradient)."""
    from faceforge.core import distributed as D

    counts = D.row_counts(s.labels.shape[0], s.labels.device)  # one exchange for the whole batch
    return StepInputs(
        embeddings=D.gather_rows(s.embeddings, with_grad=True, counts=counts),
        labels=D.gather_rows(s.labels, counts=counts),
        indices=D.gather_rows(s.indices.to(s.labels.device), counts=counts),
        extra=None if s.extra is None else D.gather_rows(s.extra, with_grad=True, counts=counts),
        margin=s.margin,
    )


class Distillation(nn.Module):
    """The distillation term of a training run (built by the trainer from the ``distill`` config).

    Owns the objective, the learned projections (parameters trained with the student, saved in the
    checkpoint together with the objective's buffers, e.g. EKD's EMA thresholds) and the teacher
    tables (not saved: they are rebuilt from the cache).
    """

    def __init__(
        self,
        cfg: Any,
        student_dim: int,
        labels: np.ndarray,
        num_classes: int,
        dataset: Any,
        seed: int,
        progress: bool,
        embedder_factory: Callable[[str, dict[str, Any]], Any] | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        from faceforge.core.schema import to_dict

        self.method = str(cfg.method)
        self.kind = METHOD_STEP_KIND.get(self.method, "teacher")
        self.weight = float(cfg.weight)
        self.seed = int(seed)
        self.step_counter = 0
        options = to_dict(cfg.options) if cfg.options else {}
        teachers_cfg = [to_dict(t) for t in cfg.teachers]
        if self.kind == "self" and teachers_cfg:
            raise ValueError(f"distill.method={self.method} uses no teacher: remove distill.teachers")
        if self.kind != "self" and not teachers_cfg:
            raise ValueError(
                f"distill.method={self.method} needs distill.teachers, e.g. "
                "distill.teachers=[{model: dlib}] (a .pt checkpoint, an .onnx file or dlib)"
            )
        if self.kind == "teacher" and len(teachers_cfg) > 1:
            raise ValueError(f"distill.method={self.method} takes one teacher; liaad takes several")

        self.tables: list[TeacherTable] = []
        if teachers_cfg:
            self.tables = self._build_tables(teachers_cfg, dataset, cfg.cache_dir, progress, embedder_factory)
        dims = [t.dim for t in self.tables]
        if self.kind == "multi_teacher":
            options.setdefault("num_teachers", len(dims))
            options.setdefault("teacher_dims", dims)
        self.loss = DISTILL_LOSSES.build(self.method, **options)
        project = cfg.projection
        if project not in ("auto", "linear", "none"):
            raise ValueError(f"distill.projection must be auto, linear or none, got {project!r}")
        needs = self.kind == "multi_teacher" or (
            self.method in FEATURE_LOSSES and (project == "linear" or dims[0] != student_dim)
        )
        if needs and project == "none" and any(d != student_dim for d in dims):
            raise ValueError(
                f"student embeddings are {student_dim}-d but the teachers' are {dims}: "
                "set distill.projection=auto (a learned linear map) or match model.embedding_size"
            )
        self.projections = nn.ModuleList(
            [nn.Linear(student_dim, d, bias=False) for d in dims] if needs and project != "none" else []
        )
        self.centroids: list[Tensor] | None = None
        if self.kind == "multi_teacher" and self.loss.attention_name == "confidence":
            self.centroids = [class_centroids(t, labels, num_classes) for t in self.tables]
        self.row_labels = np.asarray(labels)
        self.hard = build_augmentations(to_dict(cfg.hard)) if self.kind == "self" and cfg.hard else None
        self.hard_pool: HardPool | None = None
        hard_images = cfg.hard_images
        if hard_images:
            if self.kind != "self":
                raise ValueError(
                    f"distill.hard_images is for ddl's hard branch, not distill.method={self.method}"
                )
            if classes is None:
                raise ValueError("distill.hard_images needs the training identity names (classes)")
            self.hard_pool = HardPool(hard_images, classes, self.hard)
        if self.kind == "self" and self.hard is None and self.hard_pool is None:
            raise ValueError(
                f"distill.method={self.method} needs hard samples: a degradation in distill.hard "
                "(e.g. {lowres: {}}) or real hard images in distill.hard_images"
            )
        self.hard_margin = bool(cfg.hard_margin)
        self.balanced_k = int(cfg.balanced_k)
        self.gather = bool(cfg.gather)

    # ------------------------------------------------------------------------------------------ set-up
    @staticmethod
    def _build_tables(
        teachers_cfg: list[dict[str, Any]],
        dataset: Any,
        cache_dir: str | None,
        progress: bool,
        embedder_factory: Callable[[str, dict[str, Any]], Any] | None,
    ) -> list[TeacherTable]:
        from faceforge.embedders import embedder_from_spec

        factory = embedder_factory or (lambda spec, opts: embedder_from_spec(spec, **opts))
        embedders, names, flips = [], [], []
        for i, t in enumerate(teachers_cfg):
            if not t.get("model") or t["model"] == "???":
                raise ValueError(f"distill.teachers[{i}].model is not set (a .pt, an .onnx or dlib)")
            embedders.append(factory(str(t["model"]), dict(t.get("options") or {})))
            names.append(t.get("name") or f"teacher{i}")
            flips.append(bool(t.get("flip", False)))
        cache = None if cache_dir == "none" else (cache_dir or default_teacher_cache())
        return build_teacher_tables(
            embedders, len(dataset), dataset.image, names, flips, cache, progress=progress
        )

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "step_kind": self.kind,
            "weight": self.weight,
            "projections": [tuple(p.weight.shape[::-1]) for p in self.projections],
            "hard_images": self.hard_pool.describe() if self.hard_pool is not None else None,
            "global_batch": self.gather and self.method in GATHERED,
            "teachers": [
                {
                    "name": t.name,
                    "dim": t.dim,
                    "model": t.description,
                    "cache_folder": t.cache_folder,
                    "embedded_this_run": t.computed,
                    "valid_rows": int(t.valid.sum()),
                }
                for t in self.tables
            ],
        }

    # -------------------------------------------------------------------------------------------- step
    @staticmethod
    def batch_sampler_for(
        method: str, balanced_k: int, labels: np.ndarray, batch_size: int, seed: int, rank: int, world: int
    ) -> Any:
        """The method's batch sampler (``None``: the trainer's shuffled sampler)."""
        from faceforge.data.samplers import Branch, IdentityBalancedBatchSampler, MultiBranchBatchSampler

        if method == "ddl":
            if batch_size % 2:
                raise ValueError(
                    f"ddl batches are P identities x 2 images: data.batch_size={batch_size} is odd"
                )
            # as many steps per epoch as a shuffled pass over the images (one pass over the identities
            # would be len(identities) / (P * world) steps, a fraction of the data)
            steps = max(1, len(labels) // (batch_size * world))
            return IdentityBalancedBatchSampler(
                labels, batch_size // 2, 2, seed, rank, world, batches_per_epoch=steps, min_images=2
            )
        if method == "ekd":
            half, k = batch_size // 2, balanced_k
            if batch_size % 2 or half % k:
                raise ValueError(
                    f"ekd batches are a random half plus a balanced half of identities x {k} images: "
                    f"data.batch_size={batch_size} must be even with a half divisible by distill.balanced_k={k}"
                )
            branches = [Branch(len(labels), half, "random"), Branch(labels, half, "balanced", k)]
            return SameDatasetBranches(MultiBranchBatchSampler(branches, seed, rank, world))
        return None

    def margin_rows(self, n: int, labels: Tensor) -> Tensor:
        """Rows that take part in the margin loss: labelled, and for EKD the random half only."""
        keep = labels >= 0
        if self.method == "ekd":
            keep = keep & (torch.arange(n, device=labels.device) < n // 2)
        return keep

    def extra_images(self, images: Tensor, indices: Tensor) -> Tensor | None:
        """Images embedded in the same forward pass as the batch: DDL's hard twins, degraded with seed
        ``(seed, step_counter, dataset index)`` or drawn from the hard pool with seed
        ``(seed, step_counter, label)``, so a resumed run gets exactly what an unbroken one would."""
        if self.kind != "self":
            return None
        if self.hard_pool is not None:
            idx = indices.numpy()
            twins = self.hard_pool.twins(
                images.numpy(), self.row_labels[idx], idx, self.seed, self.step_counter
            )
            return torch.from_numpy(twins)
        out = [
            self.hard(img, np.random.default_rng((self.seed, self.step_counter, int(i))))
            for img, i in zip(images.numpy(), indices.tolist(), strict=True)
        ]
        return torch.from_numpy(np.stack(out))

    def forward(self, s: StepInputs) -> DistillOutput:
        """The distillation term of one batch (of the global batch for :data:`GATHERED` objectives)."""
        from faceforge.core import distributed as D

        hard_margin = None
        if self.kind == "self":
            if s.extra is None:
                raise RuntimeError(
                    "ddl needs the hard branch: the trainer must embed extra_images() with the batch"
                )
            if self.hard_margin:  # per rank, like the margin loss of the easy images
                hard_margin = s.margin(s.extra, s.labels).loss
        if self.gather and self.method in GATHERED and D.current().enabled:
            s = gather_inputs(s)
        out = STEP_KINDS.get(self.kind)(self, s)
        if hard_margin is not None:
            out.extra_margin = hard_margin
        return out


def scan_unlabelled(root: str) -> list[str]:
    """Every image file under ``root`` (recursive, sorted)."""
    from pathlib import Path

    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"distill.unlabelled_root: folder not found: {root}")
    files = sorted(str(f) for f in r.rglob("*") if f.is_file() and is_image_file(f))
    if not files:
        raise ValueError(f"distill.unlabelled_root: no images under {root}")
    return files
