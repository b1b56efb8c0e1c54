"""Classifier memory and step time per rank: full head vs sharded head vs Partial FC.

For 100k, 1M and 2M identities at embedding size 512, each layout runs a few SGD (momentum 0.9) steps of
the classifier alone (ArcFace margin, random normalised embeddings standing in for the backbone) and
records, per rank, the peak resident memory added by the head (weights, gradients, momentum, logits and
their softmax) and the median step time:

- ``full``: every rank holds all C classes and computes logits for its own batch; gradients are averaged
  over ranks (what a plain DDP head does);
- ``sharded``: rank r holds C / W classes and computes logits for the gathered global batch
  (:class:`faceforge.models.heads.criterion.ShardedCriterion`, sample_rate 1);
- ``pfc0.1``: the same with Partial FC at sample rate 0.1.

Two kinds of runs:

- ``measured_2_ranks``: real 2-process gloo runs launched with torchrun on this machine;
- ``one_rank_of_8``: one process doing exactly what one rank of 8 does (a C/8 block, the gathered batch
  of 8 x b embeddings; communication excluded), which is how the per-rank share scales to 8 ranks.

Configurations whose estimated memory would not fit this machine (for example the full head at 2M on 2
ranks: weights, gradients and momentum of 4 GB each per rank) are skipped and listed with the estimate.

    python benchmarks/partial_fc.py [--classes 100000 1000000 2000000] [--batch 128] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import REPO

MODES = {"full": 1.0, "sharded": 1.0, "pfc0.1": 0.1}
DIM = 512


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(mode: str, classes: int, batch: int, steps: int, simulate_world: int, out: Path) -> None:
    """Run in each rank (or alone for the simulated rank); writes one JSON line per rank."""
    from faceforge.core import distributed as D
    from faceforge.models.heads import build_head
    from faceforge.models.heads.criterion import LocalCriterion, ShardedCriterion, shard_range

    ctx = D.init_distributed("cpu")
    torch.manual_seed(ctx.rank)
    world = ctx.world_size if simulate_world == 0 else simulate_world
    rows_batch = batch if (mode == "full" or simulate_world == 0) else batch * simulate_world
    base = rss_bytes()
    if mode == "full":
        head = build_head("arcface", embedding_size=DIM, num_classes=classes)
        crit = LocalCriterion(head)
    else:
        start, end = shard_range(classes, 0, world)
        head = build_head("arcface", embedding_size=DIM, num_classes=end - start)
        crit = ShardedCriterion(head, classes if simulate_world == 0 else end - start, MODES[mode])
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    times = []
    for _ in range(steps):
        emb = torch.nn.functional.normalize(torch.randn(rows_batch, DIM), dim=1).requires_grad_(True)
        labels = torch.randint(0, crit.num_classes if mode != "full" else classes, (rows_batch,))
        t0 = time.perf_counter()
        loss = crit(emb, labels).loss
        opt.zero_grad(set_to_none=True)  # as the trainer: no second full-size gradient buffer
        loss.backward()
        if mode == "full" and ctx.world_size > 1:
            D.all_reduce(head.weight.grad).div_(ctx.world_size)
        opt.step()
        times.append(time.perf_counter() - t0)
    rec = {
        "mode": mode,
        "classes": classes,
        "rank": ctx.rank,
        "world_size": world,
        "simulated": simulate_world > 0,
        "classes_on_rank": int(head.weight.shape[0]),
        "logit_rows": rows_batch if mode == "full" else (rows_batch if simulate_world else batch * world),
        "head_peak_mb": round((peak_bytes() - base) / 2**20, 1),
        "weight_grad_momentum_mb": round(3 * head.weight.numel() * 4 / 2**20, 1),
        "step_s_median": round(sorted(times)[len(times) // 2], 3),
    }
    with open(out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    D.barrier()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(mode: str, classes: int, args: argparse.Namespace, nproc: int, simulate: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.jsonl"
        target = [str(Path(__file__).resolve()), "--worker", mode, str(classes), str(args.batch)]
        target += [str(args.steps), str(simulate), str(out)]
        if nproc > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
            cmd += ["--master_addr=127.0.0.1", f"--master_port={free_port()}", *target]
        else:
            cmd = [sys.executable, *target]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // nproc))}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            killed = "SIGKILL" in proc.stderr or "exitcode  : -9" in proc.stderr
            reason = "killed by the kernel: out of memory" if killed else proc.stderr[-500:]
            return [{"mode": mode, "classes": classes, "world_size": nproc, "error": reason}]
        return [json.loads(line) for line in out.read_text().splitlines()]


def estimate_bytes(mode: str, classes: int, world: int, batch: int) -> float:
    """Rough per-rank need: weight + grad + momentum, and about 5 logit-sized buffers."""
    per_rank = classes if mode == "full" else classes / world
    rows = batch if mode == "full" else batch * world
    return 3 * per_rank * DIM * 4 + 5 * rows * per_rank * MODES[mode] * 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, nargs="+", default=[100_000, 1_000_000, 2_000_000])
    ap.add_argument("--batch", type=int, default=128, help="images per rank per step (arcface_torch: 128)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--memory-limit-gb", type=float, default=18.0, help="skip configurations estimated above")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "partial_fc.json")
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        mode, classes, batch, steps, simulate, out = args.worker
        worker(mode, int(classes), int(batch), int(steps), int(simulate), Path(out))
        return

    results: dict[str, list] = {"measured_2_ranks": [], "one_rank_of_8": [], "skipped": []}
    for classes in args.classes:
        for mode in MODES:
            need = 2 * estimate_bytes(mode, classes, 2, args.batch) / 2**30
            if need < args.memory_limit_gb:
                results["measured_2_ranks"] += launch(mode, classes, args, 2, 0)
            else:
                results["skipped"].append(
                    {
                        "mode": mode,
                        "classes": classes,
                        "world_size": 2,
                        "estimated_gb_both_ranks": round(need, 1),
                    }
                )
            if mode != "full":  # a full head's share does not depend on the world size
                results["one_rank_of_8"] += launch(mode, classes, args, 1, 8)
            print(json.dumps(results["measured_2_ranks"][-2:] + results["one_rank_of_8"][-1:]), flush=True)

    def mem(kind: str, mode: str, classes: int) -> float | None:
        vals = [
            r["head_peak_mb"] for r in results[kind] if r.get("mode") == mode and r.get("classes") == classes
        ]
        return max(vals) if vals else None

    ratios = {}
    for classes in args.classes:
        for kind in ("measured_2_ranks", "one_rank_of_8"):
            s, p = mem(kind, "sharded", classes), mem(kind, "pfc0.1", classes)
            if s and p:
                ratios[f"{kind}/{classes}"] = round(s / p, 2)
    summary = {
        "benchmark": "partial_fc",
        "embedding_size": DIM,
        "batch_per_rank": args.batch,
        "steps": args.steps,
        "head": "arcface s=64 m=0.5, SGD momentum 0.9, fp32",
        "memory": "peak RSS added by the head in each rank (weights, grads, momentum, logits, softmax)",
        "sharded_over_pfc0.1_memory": ratios,
        "target": "Partial FC 0.1 at least 3x less head memory per rank than the full sharded head",
        "results": results,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=2))


if __name__ == "__main__":
    main()
