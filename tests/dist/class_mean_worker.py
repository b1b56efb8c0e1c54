"""Run under torchrun by tests/engine/test_finetune.py: class-mean head initialisation on 2 gloo ranks.

Every rank embeds its share of the rows of ``tiny_setup`` (the same fixed images, labels and backbone on every
rank), the sums are all-reduced, and the result is imprinted into a sharded head (``head.sharded=true``, or
Partial FC with ``sample_rate``). Rank 0 writes ``OUT`` with the gathered ``[C, D]`` head weight and the initial
rows of every rank's block, which the test compares with the same computation in one process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from faceforge.core import distributed as D
from faceforge.data.preprocess import Preprocess
from faceforge.engine.head_init import class_mean_directions, imprint_head
from faceforge.objectives import ObjectiveContext
from faceforge.objectives.margin import MarginObjective


def tiny_setup() -> tuple[torch.nn.Module, list, list[int], int]:
    """A fixed 3-d backbone on 2x2 faces, 9 rows of 4 classes (class 3 has no image, one row unlabelled)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    g = torch.Generator().manual_seed(1)
    images = [torch.randint(0, 256, (2, 2, 3), generator=g, dtype=torch.uint8).numpy() for _ in range(9)]
    labels = [0, 1, 2, 0, 1, 2, 0, -1, 1]
    return net, images, labels, 4


def main(out: Path) -> None:
    ctx = D.init_distributed("cpu")
    net, images, labels, classes = tiny_setup()
    pre = Preprocess(input_size=2)
    dirs, counts, _ = class_mean_directions(
        net,
        images.__getitem__,
        labels,
        classes,
        pre,
        torch.device("cpu"),
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    results = {}
    for rate in (1.0, 0.5):  # the sharded head, and Partial FC
        torch.manual_seed(10 + ctx.rank)  # the blocks start different on every rank
        octx = ObjectiveContext(
            embedding_size=3,
            num_classes=classes,
            labels=np.array([y for y in labels if y >= 0]),  # a sharded head takes labelled rows only
            classes=[str(c) for c in range(classes)],
            dataset=None,
            head_config={"name": "arcface", "sharded": True, "sample_rate": rate},
        )
        margin = MarginObjective(octx)
        before = margin.criterion.gather_rows(margin.head.weight.detach())
        radius = imprint_head(margin, dirs, counts)
        after = margin.criterion.full_state_dict()["weight"]
        results[str(rate)] = {"before": before, "after": after, "radius": radius, "counts": counts}
    if ctx.is_main:
        torch.save(results, out)
    D.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
