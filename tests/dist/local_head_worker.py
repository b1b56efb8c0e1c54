"""Run under torchrun by tests/engine/test_distributed.py: a replicated CurricularFace head on several gloo ranks.

Each rank takes its half of the fixed global batch of ``sharded_head_worker.inputs`` through a LocalCriterion,
averages the head gradient over ranks as the engine does, and writes loss, t and that gradient to
``OUT/rank{r}.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from sharded_head_worker import inputs  # the script's own folder is first on the path of a script run

from faceforge.core import distributed as D
from faceforge.models.heads import build_head
from faceforge.models.heads.criterion import LocalCriterion


def main(out: Path) -> None:
    ctx = D.init_distributed("cpu")
    emb, labels, weight = inputs()
    b = emb.shape[0] // ctx.world_size
    head = build_head("curricularface", embedding_size=weight.shape[1], num_classes=weight.shape[0], scale=16.0,
                      margin=0.5)  # fmt: skip
    with torch.no_grad():
        head.weight.copy_(weight)
    crit = LocalCriterion(head)
    rows = slice(ctx.rank * b, (ctx.rank + 1) * b)
    out_ = crit(emb[rows].clone(), labels[rows])
    out_.loss.backward()
    grad = D.all_reduce(head.weight.grad.clone()).div_(ctx.world_size)
    torch.save({"loss": out_.loss.detach(), "t": head.t.clone(), "weight_grad_averaged": grad},
               out / f"rank{ctx.rank}.pt")  # fmt: skip
    D.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
