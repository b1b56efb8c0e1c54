"""Run under torchrun by tests/engine/test_distributed.py: sharded heads on several gloo ranks.

Writes ``OUT/rank{r}.pt`` with, per case, the loss, this rank's embedding gradient, its head-block weight
gradient and the classes Partial FC kept; plus a save-on-N / continue run of the head and its optimiser.
All inputs come from fixed seeds, so the test rebuilds them in one process and compares.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from faceforge.core import distributed as D
from faceforge.models.heads import build_head
from faceforge.models.heads.criterion import ShardedCriterion, shard_range

HEADS = {"arcface": {"margin": 0.5}, "cosface": {"margin": 0.35}, "curricularface": {"margin": 0.5}}


def inputs(num_classes: int = 10, batch: int = 8, dim: int = 16) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(batch, dim, generator=g)
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    weight = torch.randn(num_classes, dim, generator=g) * 0.1
    return emb, labels, weight


def sharded(name: str, weight: torch.Tensor, rate: float = 1.0) -> ShardedCriterion:
    ctx = D.current()
    s, e = shard_range(weight.shape[0], ctx.rank, ctx.world_size)
    head = build_head(name, embedding_size=weight.shape[1], num_classes=e - s, scale=16.0, **HEADS[name])
    with torch.no_grad():
        head.weight.copy_(weight[s:e])
    return ShardedCriterion(head, weight.shape[0], sample_rate=rate)


def main(out: Path) -> None:
    ctx = D.init_distributed("cpu")
    r, w = ctx.rank, ctx.world_size
    results: dict[str, object] = {"world_size": w}
    emb, labels, weight = inputs()
    b = emb.shape[0] // w
    for name in HEADS:
        crit = sharded(name, weight)
        x = emb[r * b : (r + 1) * b].clone().requires_grad_(True)
        out_ = crit(x, labels[r * b : (r + 1) * b])
        out_.loss.backward()
        results[name] = {
            "loss": out_.loss.detach(),
            "top1": out_.top1,
            "emb_grad": x.grad,
            "weight_grad": crit.head.weight.grad,
            "t": crit.head.state_dict().get("t"),
        }
    # Partial FC on 20 classes at rate 0.5
    emb20, labels20, weight20 = inputs(num_classes=20)
    torch.manual_seed(1)
    crit = sharded("arcface", weight20, rate=0.5)
    x = emb20[r * b : (r + 1) * b].clone().requires_grad_(True)
    pfc = crit(x, labels20[r * b : (r + 1) * b])
    pfc.loss.backward()
    results["pfc"] = {
        "loss": pfc.loss.detach(),
        "sampled": crit.last_sampled,
        "range": (crit.start, crit.end),
        "emb_grad": x.grad,
    }
    # head + SGD with momentum: 3 steps here, then save the consolidated state and 2 more steps
    crit = sharded("curricularface", weight)
    opt = torch.optim.SGD(crit.head.parameters(), lr=0.5, momentum=0.9)
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(8, 16, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(5)]
    for step, (e, y) in enumerate(batches):
        if step == 3:
            mom = opt.state[crit.head.weight]["momentum_buffer"]
            results["saved"] = {
                "head": {k: None if v is None else v.clone() for k, v in crit.full_state_dict().items()},
                "momentum": crit.gather_rows(mom),
            }
        opt.zero_grad()
        crit(e[r * b : (r + 1) * b], y[r * b : (r + 1) * b]).loss.backward()
        opt.step()
    results["continued_weight"] = crit.gather_rows(crit.head.weight)
    results["continued_t"] = crit.head.t.clone()
    torch.save(results, out / f"rank{r}.pt")
    D.barrier()
    D.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
