"""Sharded heads and Partial FC on 2 gloo processes launched by torchrun, against one process.

The worker (tests/dist/sharded_head_worker.py) runs the sharded criterion on the ranks' halves of a fixed
global batch; here the same batch goes through the ordinary full head in this process.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from faceforge.models.heads import build_head
from faceforge.models.heads.criterion import LocalCriterion, ShardedCriterion, shard_range

WORKERS = Path(__file__).resolve().parents[1] / "dist"
HEADS = {"arcface": {"margin": 0.5}, "cosface": {"margin": 0.35}, "curricularface": {"margin": 0.5}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *target: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=N TARGET...`` (a script path and its arguments, or ``-m module ...``)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    cmd += ["--master_addr=127.0.0.1", f"--master_port={free_port()}", *target]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _inputs(num_classes: int = 10, batch: int = 8, dim: int = 16):
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(batch, dim, generator=g)
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    weight = torch.randn(num_classes, dim, generator=g) * 0.1
    return emb, labels, weight


def _full(name: str, weight: torch.Tensor) -> LocalCriterion:
    head = build_head(
        name, embedding_size=weight.shape[1], num_classes=weight.shape[0], scale=16.0, **HEADS[name]
    )
    with torch.no_grad():
        head.weight.copy_(weight)
    return LocalCriterion(head)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("dist")
    torchrun(2, str(WORKERS / "sharded_head_worker.py"), str(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_a_group_opened_here_is_destroyed_at_exit(monkeypatch) -> None:
    """Without destroy_process_group a gloo rank may abort at interpreter teardown ("terminate called without
    an active exception"): init_distributed registers faceforge.core.distributed.shutdown with atexit."""
    import atexit

    from faceforge.core import distributed as D

    registered, opened = [], []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(D.dist, "is_initialized", lambda: bool(opened))
    monkeypatch.setattr(D.dist, "init_process_group", lambda backend: opened.append(backend))
    monkeypatch.setattr(D.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(D.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(atexit, "register", registered.append)
    ctx = D.init_distributed("cpu")
    assert opened == ["gloo"] and registered == [D.shutdown] and (ctx.rank, ctx.world_size) == (1, 2)
    D.init_distributed("cpu")  # joined already: neither opened nor registered again
    assert opened == ["gloo"] and registered == [D.shutdown]
    destroyed = []
    monkeypatch.setattr(D.dist, "destroy_process_group", lambda: destroyed.append(opened.pop()))
    D.shutdown()
    D.shutdown()  # no group left: a no-op
    assert destroyed == ["gloo"]


def test_shard_ranges_cover_the_classes() -> None:
    assert [shard_range(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [shard_range(4, r, 2) for r in range(2)] == [(0, 2), (2, 4)]


@pytest.mark.parametrize("name", sorted(HEADS))
def test_sharded_head_on_two_ranks_equals_the_full_head(two_ranks: list[dict], name: str) -> None:
    emb, labels, weight = _inputs()
    x = emb.clone().requires_grad_(True)
    crit = _full(name, weight)
    ref = crit(x, labels)
    ref.loss.backward()
    for r, res in enumerate(two_ranks):
        got = res[name]
        torch.testing.assert_close(got["loss"], ref.loss.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["top1"], ref.top1, rtol=0, atol=1e-6)
        # the gather's backward multiplies by the world size so that DDP's average is the global gradient
        torch.testing.assert_close(got["emb_grad"] / 2, x.grad[r * 4 : (r + 1) * 4], rtol=1e-4, atol=1e-6)
        s, e = shard_range(10, r, 2)
        torch.testing.assert_close(got["weight_grad"], crit.head.weight.grad[s:e], rtol=1e-4, atol=1e-7)
        if name == "curricularface":  # t is updated from the globally gathered target cosines
            torch.testing.assert_close(got["t"], crit.head.t, rtol=1e-5, atol=1e-7)


def test_partial_fc_keeps_positives_and_remaps_labels(two_ranks: list[dict]) -> None:
    emb, labels, weight = _inputs(num_classes=20)
    kept = []
    for res in two_ranks:
        p = res["pfc"]
        start, end = p["range"]
        sampled = p["sampled"]
        assert len(sampled) == math.ceil(0.5 * (end - start))  # 5 of the 10 classes of each block
        assert bool(((sampled >= start) & (sampled < end)).all())
        positives = set(labels[(labels >= start) & (labels < end)].tolist())
        assert positives <= set(sampled.tolist())
        kept.append(sampled)
    # the loss equals ArcFace + softmax over exactly the kept classes, labels remapped into them
    index = torch.cat(kept)
    head = build_head("arcface", embedding_size=16, num_classes=len(index), scale=16.0, margin=0.5)
    with torch.no_grad():
        head.weight.copy_(weight[index])
    remapped = torch.searchsorted(index, labels)
    assert torch.equal(index[remapped], labels)
    x = emb.clone().requires_grad_(True)
    ref = F.cross_entropy(head(x, remapped).logits, remapped)
    ref.backward()
    for r, res in enumerate(two_ranks):
        torch.testing.assert_close(res["pfc"]["loss"], ref.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            res["pfc"]["emb_grad"] / 2, x.grad[r * 4 : (r + 1) * 4], rtol=1e-4, atol=1e-6
        )


def test_head_saved_on_two_ranks_continues_identically_on_one(two_ranks: list[dict]) -> None:
    saved = two_ranks[0]["saved"]
    # the consolidated head is gathered on rank 0 only: rank 1 never holds the whole matrix
    assert two_ranks[1]["saved"]["head"]["weight"] is None and two_ranks[1]["saved"]["momentum"] is None
    assert saved["head"]["weight"].shape == (10, 16) and saved["momentum"].shape == (10, 16)
    # one process resumes from the consolidated state and runs the same two global batches
    head = build_head("curricularface", embedding_size=16, num_classes=10, scale=16.0, margin=0.5)
    crit = ShardedCriterion(head, 10)  # world size 1: the whole block
    crit.load_full_state_dict(saved["head"])
    opt = torch.optim.SGD(crit.head.parameters(), lr=0.5, momentum=0.9)
    opt.state[crit.head.weight]["momentum_buffer"] = saved["momentum"].clone()
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(8, 16, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(5)]
    for e, y in batches[3:]:
        opt.zero_grad()
        crit(e, y).loss.backward()
        opt.step()
    torch.testing.assert_close(
        crit.head.weight.detach(), two_ranks[0]["continued_weight"], rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(crit.head.t, two_ranks[0]["continued_t"], rtol=1e-5, atol=1e-7)


def test_partial_fc_in_one_process_and_bad_settings() -> None:
    emb, labels, _ = _inputs(num_classes=20)
    head = build_head("cosface", embedding_size=16, num_classes=20, scale=16.0, margin=0.35)
    torch.manual_seed(0)
    crit = ShardedCriterion(head, 20, sample_rate=0.3)
    out = crit(emb, labels)
    assert len(crit.last_sampled) == max(6, len(set(labels.tolist())))
    assert set(labels.tolist()) <= set(crit.last_sampled.tolist())
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="sample_rate"):
        ShardedCriterion(head, 20, sample_rate=0.0)
    with pytest.raises(ValueError, match="margin head"):
        ShardedCriterion(build_head("softmax", embedding_size=16, num_classes=20), 20)
    with pytest.raises(ValueError, match="labels must be in"):
        crit(emb, labels + 20)


@pytest.mark.slow
def test_two_process_ddp_training_on_lfw_then_resume_in_one(lfw_small: Path, tmp_path: Path) -> None:
    from faceforge.config import compose_config
    from faceforge.core.checkpoint import load_checkpoint
    from faceforge.engine.loop import Trainer

    run = tmp_path / "run"
    args = [
        "lfw_mobilefacenet_arcface",
        f"data.root={lfw_small}",
        f"run.dir={run}",
        "run.progress=false",
        "run.threads=1",
        "run.log_every=3",
        "eval.pairs=null",
        "model.embedding_size=64",
        "data.exclude_pairs=[]",
        "data.preload=true",
        "data.num_workers=0",
        "data.batch_size=16",
        "optim.lr=0.1",
        "head.sharded=true",
        "head.sample_rate=0.5",
    ]
    # 791 faces, 2 x 16 per step: 24 steps an epoch; stop inside epoch 2 of 2 (a changed optim.epochs would
    # change the schedule, so resume refuses it: the run is stopped early instead)
    proc = torchrun(2, "-m", "faceforge", "train", *args, "optim.epochs=2", "run.max_steps=30", timeout=900)
    report = json.loads((run / "report.json").read_text())
    assert report["world_size"] == 2 and report["objectives"]["margin"]["sharded"] is True
    losses = [h["loss"] for h in report["history"]]
    assert losses[-1] < losses[0] - 0.3, (losses, proc.stdout[-2000:])
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["last.pt"]  # one consolidated file, written by rank 0
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    classes = report["num_identities"]
    assert last["objectives"]["margin"]["weight"].shape == (classes, 64)
    momentum = [s["momentum_buffer"] for s in last["optimizers"]["main"]["state"].values()]
    assert any(m.shape == (classes, 64) for m in momentum)  # the head's momentum is consolidated too
    steps = last["progress"]["global_step"]
    # the same run continues in one process, with the full head in one block, for 6 more steps
    assert last["progress"]["epoch"] == 1 and steps == 30
    cfg = compose_config(args[0], [*args[1:], "optim.epochs=2", "run.resume=auto", "run.max_steps=6"])
    more = Trainer(cfg).fit()
    assert more["world_size"] == 1
    after = load_checkpoint(run / "checkpoints" / "last.pt")
    assert after["progress"]["epoch"] == 1 and after["progress"]["global_step"] == steps + 6  # run.max_steps
    assert not torch.equal(after["objectives"]["margin"]["weight"], last["objectives"]["margin"]["weight"])


@pytest.fixture(scope="module")
def distill_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("distill_gather")
    torchrun(2, str(WORKERS / "distill_gather_worker.py"), str(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("method", ["rkd", "sp", "ekd", "ddl"])
def test_relation_distillation_sees_the_global_batch(distill_ranks: list[dict], method: str) -> None:
    """Every rank computes the term of the whole batch; each rank's row gradients are world x the
    single-process gradients of those rows, so DDP's average gives the parameters the exact gradient."""
    ref = distill_ranks[0]["reference"][method]
    rows = {"sp": ([0, 1, 2, 3, 4, 5], [6, 7])}.get(method, ([0, 1, 2, 3], [4, 5, 6, 7]))
    for rank, res in enumerate(distill_ranks):
        r = res[method]
        assert r["global_batch"] is True
        torch.testing.assert_close(r["loss"], ref["loss"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["grad"], 2 * ref["grad"][rows[rank]], rtol=1e-4, atol=1e-6)
        if method == "ddl":
            torch.testing.assert_close(
                r["extra_grad"], 2 * ref["extra_grad"][rows[rank]], rtol=1e-4, atol=1e-6
            )
    assert float(ref["grad"].abs().sum()) > 0


@pytest.mark.parametrize("method", ["rkd", "ekd", "ddl"])
def test_tface_gather_gradient_is_world_size_times_the_exact_one(
    distill_ranks: list[dict], method: str
) -> None:
    """gather_grad=tface: the same term, and each rank's row gradients multiplied by the world size (2) against
    the exact default, as TFace's AllGather does."""
    for res in distill_ranks:
        exact, tface = res[method], res["tface"][method]
        torch.testing.assert_close(tface["loss"], exact["loss"])
        torch.testing.assert_close(tface["grad"], 2 * exact["grad"], rtol=1e-5, atol=1e-7)
        assert float(exact["grad"].abs().sum()) > 0
        if method == "ddl":
            torch.testing.assert_close(tface["extra_grad"], 2 * exact["extra_grad"], rtol=1e-5, atol=1e-7)


def test_per_sample_and_per_rank_distillation_stay_local(distill_ranks: list[dict]) -> None:
    for res in distill_ranks:
        assert res["feature_l2"]["global_batch"] is False and res["rkd_per_rank"]["global_batch"] is False
    # feature matching is a mean over rows: the two ranks' terms average to the global one
    ref = distill_ranks[0]["reference"]["feature_l2"]["loss"]
    mean = (distill_ranks[0]["feature_l2"]["loss"] + distill_ranks[1]["feature_l2"]["loss"]) / 2
    torch.testing.assert_close(mean, ref, rtol=1e-5, atol=1e-6)
    # rkd per rank sees half the relations: a different term from the global one
    assert not torch.allclose(
        distill_ranks[0]["rkd_per_rank"]["loss"], distill_ranks[0]["reference"]["rkd"]["loss"]
    )


@pytest.fixture(scope="module")
def local_head_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("local_head")
    torchrun(2, str(WORKERS / "local_head_worker.py"), str(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_replicated_curricularface_t_is_the_global_batch_one(local_head_ranks: list[dict]) -> None:
    """A replicated CurricularFace head under DDP: t, the averaged loss and the averaged head gradient on 2
    ranks equal one process on the whole batch (t no longer drifts per rank)."""
    emb, labels, weight = _inputs()
    crit = _full("curricularface", weight)
    x = emb.clone().requires_grad_(True)
    ref = crit(x, labels)
    ref.loss.backward()
    for res in local_head_ranks:
        torch.testing.assert_close(res["t"], crit.head.t, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(res["weight_grad_averaged"], crit.head.weight.grad, rtol=1e-4, atol=1e-6)
    mean_loss = (local_head_ranks[0]["loss"] + local_head_ranks[1]["loss"]) / 2
    torch.testing.assert_close(mean_loss, ref.loss.detach(), rtol=1e-5, atol=1e-6)
    # what each rank had before: t from its own half only, which differs from the global one
    half = _full("curricularface", weight)
    half(emb[:4].clone(), labels[:4])
    assert abs(float(half.head.t) - float(crit.head.t)) > 1e-4
