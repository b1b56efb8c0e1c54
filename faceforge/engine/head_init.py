"""How the margin head starts (``finetune.head_init``): at random, or from each identity's mean embedding.

A head started at random on a pretrained backbone spends its first steps sending large, meaningless gradients
into weights that were already good (the "naive fine-tune" that loses accuracy). Starting each class row at
the direction of the class's own faces under the initial backbone -- *weight imprinting*, Qi, Brown and Lowe,
"Low-Shot Learning with Imprinted Weights", CVPR 2018, eq. (2) -- gives a head that already classifies the
training identities, so the first gradients are small and informative:

    m_c = sum_{i : y_i = c} f(x_i) / |f(x_i)|,        w_c = r * m_c / |m_c|

with ``f`` the backbone in eval mode (running BN statistics, no dropout) under the run's precision, on every
training image of class ``c`` exactly as read, without augmentation (no flip); images that cannot be read and
rows without an identity are left out. ``r`` is ``finetune.head_row_norm``; left null, it is the mean row norm
of the head as it was built (N(0, 0.01) rows, ~0.01 sqrt(d)), so the head's effective learning rate is what it
would have been from a random start. For a normalised head the angular step of a row scales as ``1/|w|^2``: at
``r`` ~ 0.1 and lr 0.1 the first head-only steps turn the imprinted rows far enough that the training loss
*rises* (the SFace import: 0.56 -> 3.25 in 30 steps with the backbone frozen), so the ``finetune`` recipe sets
``r = 1``. A class with no readable image keeps its random row.

Layouts: the embedding pass is split over ranks (row ``i`` on rank ``i mod world``) and the sums and counts
are added with one all-reduce, so every rank holds all ``C`` means; the margin objective's criterion then
keeps what it owns (:meth:`~faceforge.models.heads.criterion.ShardedCriterion.load_full_state_dict` takes this
rank's block of a sharded or Partial FC head; a local head takes all of it).

Initialisers are looked up by name in :data:`HEAD_INITS` (``init(trainer) -> record``); the record goes to
``meta.finetune.head_init`` of the checkpoint and to ``report.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceforge.core import distributed as D
from faceforge.core.precision import autocast
from faceforge.core.registry import Registry
from faceforge.data.image_io import UnreadableImageError
from faceforge.data.preprocess import Preprocess
from faceforge.objectives.margin import MarginObjective, find_margin

log = logging.getLogger(__name__)

__all__ = ["HEAD_INITS", "class_mean_directions", "imprint_head"]

HEAD_INITS: Registry[dict[str, Any]] = Registry("head initialisation")


@torch.no_grad()
def class_mean_directions(
    backbone: nn.Module,
    read_image: Callable[[int], np.ndarray],
    labels: Sequence[int] | np.ndarray,
    num_classes: int,
    preprocess: Preprocess,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 128,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[Tensor, Tensor, list[str]]:
    """``(directions [C, D] fp32, counts [C] int64, unreadable files)``: the unit vector ``m_c/|m_c|`` of every
    class (zeros where ``counts == 0``), from the images ``read_image(i)`` of rows ``i`` with a label >= 0.

    The backbone runs in eval mode and is put back in the mode it had. Under torchrun each rank embeds rows
    ``rank::world_size`` and the sums and counts are all-reduced.
    """
    labels = np.asarray(labels)
    rows = [i for i in range(rank, len(labels), world_size) if labels[i] >= 0]
    was_training = backbone.training
    backbone.eval()
    sums: Tensor | None = None
    counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
    skipped: list[str] = []
    try:
        for start in range(0, len(rows), batch_size):
            images, ys = [], []
            for i in rows[start : start + batch_size]:
                try:
                    images.append(read_image(i))
                except UnreadableImageError as exc:
                    skipped.append(f"{exc.path}: {exc.reason}")
                    continue
                ys.append(int(labels[i]))
            if not images:
                continue
            x = preprocess(torch.from_numpy(np.stack(images)), device)
            with autocast(device, precision):
                emb = backbone(x)
            unit = F.normalize(emb.float(), dim=1).double()
            if sums is None:
                sums = torch.zeros(num_classes, unit.shape[1], dtype=torch.float64, device=device)
            y = torch.tensor(ys, dtype=torch.long, device=device)
            sums.index_add_(0, y, unit)
            counts.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
    finally:
        backbone.train(was_training)
    if sums is None:
        dim = int(getattr(backbone, "embedding_size", 0))
        sums = torch.zeros(num_classes, dim, dtype=torch.float64, device=device)
    if D.current().enabled:
        D.all_reduce(sums)
        D.all_reduce(counts)
    return F.normalize(sums, dim=1).float(), counts.long(), skipped


def imprint_head(
    margin: MarginObjective, directions: Tensor, counts: Tensor, row_norm: float | None = None
) -> float:
    """Write ``r * directions[c]`` into every class row with ``counts[c] > 0`` of the margin objective's head (all
    of it, or this rank's block); ``r`` = ``row_norm``, or when it is None the mean row norm of the head as built
    (over every rank's block). Returns ``r``."""
    head = margin.criterion.head
    weight = head.weight.detach()
    norms = torch.stack([weight.float().norm(dim=1).sum().double(), torch.tensor(float(len(weight)))])
    norms = norms.to(weight.device, torch.float64)
    if margin.sharded and D.current().enabled:
        D.all_reduce(norms)  # every rank takes part, whatever row_norm says
    radius = float(norms[0] / norms[1]) if row_norm is None else float(row_norm)
    state = dict(head.state_dict())
    full = torch.zeros(margin.num_classes, weight.shape[1], dtype=weight.dtype, device=weight.device)
    if margin.sharded:
        crit = margin.criterion
        full[crit.start : crit.end] = weight  # the other blocks are not this rank's: take_rows drops them
    else:
        full.copy_(weight)
    seen = counts.to(weight.device) > 0
    full[seen] = (radius * directions.to(weight.device)[seen]).to(weight.dtype)
    state["weight"] = full
    margin.criterion.load_full_state_dict(state)
    return radius


@HEAD_INITS.register("random")
def _random(trainer: Any) -> dict[str, Any]:
    """The head as built: N(0, 0.01) rows (or what run.init copied)."""
    return {"name": "random"}


@HEAD_INITS.register("class_mean")
def _class_mean(trainer: Any) -> dict[str, Any]:
    """Weight imprinting from the initial backbone (see the module doc)."""
    t = trainer
    margin = find_margin(t.objectives)
    if margin is None:
        raise ValueError(
            "finetune.head_init=class_mean initialises a margin head, and this run has none: add "
            "objectives.margin={} (or set finetune.head_init=random)"
        )
    if getattr(t, "init_record", None) and t.init_record.get("head"):
        raise ValueError(
            f"finetune.head_init=class_mean would replace the head run.init={t.init_record['path']} copies: set "
            "run.init_head=false (or finetune.head_init=random to keep the copied head)"
        )
    directions, counts, skipped = class_mean_directions(
        t.backbone,
        t.dataset.image,
        t.data.labels,
        margin.num_classes,
        t.preprocess,
        t.device,
        t.precision,
        int(t.cfg.eval.batch_size),
        t.dist.rank,
        t.dist.world_size,
    )
    row_norm = t.cfg.finetune.get("head_row_norm")
    radius = imprint_head(margin, directions, counts, None if row_norm is None else float(row_norm))
    empty = int((counts == 0).sum())
    log.info(
        "finetune.head_init=class_mean: %d class rows from the mean embeddings of %d images (%d unreadable, "
        "%d classes without an image kept random), row norm %.4g",
        margin.num_classes - empty,
        int(counts.sum()),
        len(skipped),
        empty,
        radius,
    )
    return {
        "name": "class_mean",
        "images": int(counts.sum()),
        "classes_imprinted": margin.num_classes - empty,
        "classes_kept_random": empty,
        "unreadable_images": skipped[:20],
        "row_norm": radius,
        "row_norm_rule": "as built (mean norm of the head's first rows)"
        if row_norm is None
        else "finetune.head_row_norm",
        "rule": "w_c = r * m_c/|m_c|, m_c = sum of f(x)/|f(x)| over class c (eval mode, no augmentation)",
    }
