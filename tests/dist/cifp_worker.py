"""Run under torchrun by tests/test_cifp.py: the CIFP logit transform on several gloo ranks.

Writes ``OUT/rank{r}.pt`` with, per case, the loss, the CIFP statistics (tau, k, violating count, per-row
false positives and delta), this rank's embedding gradient and its weight gradient:

* ``local``: data-parallel, as TFace's localfc CIFP: each rank holds its half of the batch and every class;
* ``sharded_<head>``: class-sharded (ShardedCriterion), every rank the global batch and half the classes;
* ``pfc``: Partial FC (sample_rate 0.5 on 20 classes) with CIFP.

All inputs come from fixed seeds, so the test rebuilds them in one process and compares.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from faceforge.core import distributed as D
from faceforge.models.heads import build_head
from faceforge.models.heads.cifp import CIFP
from faceforge.models.heads.criterion import LocalCriterion, ShardedCriterion, shard_range

HEADS = {"arcface": {"margin": 0.5}, "cosface": {"margin": 0.35}, "curricularface": {"margin": 0.5}}
SCALE = 16.0


def inputs(num_classes: int = 10, batch: int = 8, dim: int = 16) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(batch, dim, generator=g)
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    weight = torch.randn(num_classes, dim, generator=g) * 0.1
    # every other row points at its class, so some false positives keep W trainable and some do not
    emb = emb + 12 * weight[labels] * (torch.arange(batch) % 2 == 0).float()[:, None]
    return emb, labels, weight


def stats(cifp: CIFP) -> dict[str, object]:
    r = cifp.last
    return {
        "tau": r.tau,
        "k": r.k,
        "violating": r.num_violating,
        "negatives": r.num_negatives,
        "false_positives": r.false_positives.clone(),
        "delta": r.delta.detach().clone(),
    }


def step(crit, x: torch.Tensor, labels: torch.Tensor, cifp: CIFP) -> dict[str, object]:
    x = x.clone().requires_grad_(True)
    out = crit(x, labels)
    out.loss.backward()
    return {
        "loss": out.loss.detach(),
        "top1": out.top1,
        "emb_grad": x.grad,
        "weight_grad": crit.head.weight.grad,
        "t": crit.head.state_dict().get("t"),
        **stats(cifp),
    }


def main(out: Path) -> None:
    ctx = D.init_distributed("cpu")
    r, w = ctx.rank, ctx.world_size
    results: dict[str, object] = {"world_size": w}
    emb, labels, weight = inputs()
    b = emb.shape[0] // w
    mine = slice(r * b, (r + 1) * b)

    # data-parallel: this rank's rows, every class
    cifp = CIFP()
    head = build_head("cosface", embedding_size=16, num_classes=10, scale=SCALE, margin=0.35)
    with torch.no_grad():
        head.weight.copy_(weight)
    results["local"] = step(LocalCriterion(head, logit_transform=cifp), emb[mine], labels[mine], cifp)

    # class-sharded: the global batch is gathered, this rank's block of classes
    s, e = shard_range(10, r, w)
    cases = [(name, "code_mean") for name in HEADS] + [("cosface", "paper_ratio")]
    for name, penalty in cases:
        cifp = CIFP(penalty=penalty)
        head = build_head(name, embedding_size=16, num_classes=e - s, scale=SCALE, **HEADS[name])
        with torch.no_grad():
            head.weight.copy_(weight[s:e])
        crit = ShardedCriterion(head, 10, logit_transform=cifp)
        results[f"sharded_{name}_{penalty}"] = step(crit, emb[mine], labels[mine], cifp)

    # Partial FC on 20 classes at rate 0.5, alpha = 1/(20 - 1) over all classes
    emb20, labels20, weight20 = inputs(num_classes=20)
    s, e = shard_range(20, r, w)
    torch.manual_seed(1)
    cifp = CIFP()
    head = build_head("arcface", embedding_size=16, num_classes=e - s, scale=SCALE, margin=0.5)
    with torch.no_grad():
        head.weight.copy_(weight20[s:e])
    crit = ShardedCriterion(head, 20, sample_rate=0.5, logit_transform=cifp)
    results["pfc"] = {**step(crit, emb20[mine], labels20[mine], cifp), "sampled": crit.last_sampled}
    torch.save(results, out / f"rank{r}.pt")
    D.barrier()
    D.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
