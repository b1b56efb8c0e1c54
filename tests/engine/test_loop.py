"""The training loop on real aligned LFW faces: the loss falls, resume is exact, bad states stop clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from faceforge.cli.train import evaluation_hook
from faceforge.config import compose_config
from faceforge.core.checkpoint import load_checkpoint
from faceforge.engine.loop import NonFiniteLossError, Trainer


def _cfg(root: Path, run_dir: Path, *overrides: str):
    return compose_config(
        "lfw_mobilefacenet_arcface",
        [
            f"data.root={root}",
            f"run.dir={run_dir}",
            "run.progress=false",
            "eval.pairs=null",
            "model.embedding_size=64",
            "data.exclude_pairs=[]",
            "data.preload=false",
            "data.num_workers=0",
            "run.threads=2",
            *overrides,
        ],
    )


def test_resume_mid_epoch_gives_identical_weights(lfw_small: Path, tmp_path: Path, list_file) -> None:
    """6 steps straight vs 3 steps, stop, resume in a new Trainer, 3 more steps (crossing an epoch)."""
    lf = list_file(lfw_small, tmp_path / "train.txt", per_person=4, people=8)  # 32 images, 4 steps/epoch
    common = [
        f"data.list_file={lf}",
        "data.batch_size=8",
        "optim.epochs=3",
        "head=curricularface",
        "data.num_workers=1",
    ]
    straight = Trainer(_cfg(lfw_small, tmp_path / "a", *common, "run.max_steps=6"))
    straight.fit()
    first = Trainer(_cfg(lfw_small, tmp_path / "b", *common, "run.max_steps=3"))
    first.fit()
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["progress"]["step_in_epoch"] == 3
    second = Trainer(_cfg(lfw_small, tmp_path / "b", *common, "run.max_steps=3", "run.resume=auto"))
    second.fit()
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert a["progress"] == b["progress"] and a["progress"]["global_step"] == 6
    for k, v in a["backbone"].items():
        assert torch.equal(v, b["backbone"][k]), f"backbone.{k} differs after resume"
    for k, v in a["objectives"]["margin"].items():
        assert torch.equal(v, b["objectives"]["margin"][k]), f"head {k} differs after resume"
    assert float(a["objectives"]["margin"]["t"]) != 0.0  # the CurricularFace buffer moved and was restored
    sa, sb = a["optimizers"]["main"]["state"], b["optimizers"]["main"]["state"]
    assert all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)


@pytest.mark.slow
def test_loss_falls_and_run_dir_is_complete(lfw_small: Path, tmp_path: Path) -> None:
    cfg = _cfg(
        lfw_small,
        tmp_path / "run",
        "data.batch_size=32",
        "optim.epochs=1",
        "optim.lr=0.1",
        "head=cosface",
        "run.log_every=3",
        "data.preload=true",
    )
    report = Trainer(cfg).fit()
    losses = [h["loss"] for h in report["history"]]
    assert len(losses) >= 4
    assert losses[-1] < losses[0] - 3.0, losses  # one epoch falls by ~8 (fp32 and bf16)
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and (run / "report.json").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    model = load_checkpoint(run / "checkpoints" / "model.pt")
    assert "optimizers" not in model
    meta = model["meta"]
    assert meta["preprocess"]["colour"] == "RGB" and meta["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert meta["preprocess"]["alignment"] == "arcface_112" and meta["embedding_size"] == 64
    assert meta["train_config"]["head"]["name"] == "cosface"
    assert json.loads((run / "report.json").read_text())["skipped_images"]["count"] == 0


def test_unreadable_training_images_are_skipped_and_counted(lfw_small: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    for person in sorted(p for p in lfw_small.iterdir() if p.is_dir())[:3]:
        (root / person.name).mkdir(parents=True)
        for f in sorted(person.glob("*.jpg"))[:6]:
            (root / person.name / f.name).write_bytes(f.read_bytes())
    bad = next((root).glob("*/*.jpg"))
    bad.write_bytes(b"\xff\xd8\xff garbage")
    report = Trainer(_cfg(root, tmp_path / "run", "data.batch_size=6", "optim.epochs=1")).fit()
    assert report["skipped_images"]["count"] == 1 and bad.name in report["skipped_images"]["files"][0]


def test_nan_loss_stops_with_advice(lfw_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = Trainer(_cfg(lfw_small, tmp_path / "run", "data.batch_size=8", "optim.epochs=1"))
    head = trainer.objectives["margin"].head
    real_forward = head.forward

    def nan_forward(emb, labels):
        out = real_forward(emb, labels)
        out.logits.data.fill_(float("nan"))
        return out

    monkeypatch.setattr(head, "forward", nan_forward)
    with pytest.raises(NonFiniteLossError, match=r"at step 0 .*lower optim\.lr.*last good checkpoint"):
        trainer.fit()


def test_gradient_accumulation_bad_settings(lfw_small: Path, tmp_path: Path, list_file) -> None:
    lf = list_file(lfw_small, tmp_path / "train.txt", per_person=4, people=8)
    common = [f"data.list_file={lf}", "data.batch_size=8", "optim.epochs=1", "run.max_steps=2"]
    with pytest.raises(ValueError, match=r"accumulate_steps=3 must be >= 1 and divide data\.batch_size=8"):
        Trainer(_cfg(lfw_small, tmp_path / "bad", *common, "optim.accumulate_steps=3"))
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        Trainer(_cfg(lfw_small, tmp_path / "gc", *common, "run.gradient_checkpointing=true"))


def test_periodic_evaluation_on_several_benchmarks(lfw_small: Path, tmp_path: Path, list_file) -> None:
    """eval.benchmarks run every epoch and at the end; each summary number reaches tensorboard."""
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lf = list_file(lfw_small, tmp_path / "train.txt", per_person=4, people=8)
    held_out = tmp_path / "held_out"  # 4 images of each of the 4 people not trained on
    for person in sorted(p for p in lfw_small.iterdir() if p.is_dir())[8:]:
        (held_out / person.name).mkdir(parents=True)
        for f in sorted(person.glob("*.jpg"))[:4]:
            shutil.copy(f, held_out / person.name / f.name)
    cfg = _cfg(
        lfw_small,
        tmp_path / "run",
        f"data.list_file={lf}",
        "data.batch_size=16",
        "optim.epochs=2",
        "eval.every_epochs=1",
        f"eval.benchmarks=[allpairs:{held_out}:2,ident:{held_out}:1:2]",
    )
    report = Trainer(cfg, evaluate=evaluation_hook(cfg)).fit()
    final = report["eval"]
    name_all, name_id = "allpairs:held_out", "ident:held_out"
    assert set(report["eval_during_training"]) == {"epoch1"}
    # the hook is faceforge eval's code: the same numbers as evaluating model.pt directly
    from faceforge.embedders import embedder_from_spec
    from faceforge.eval.benchmarks import run_benchmarks

    direct = (
        run_benchmarks(  # in the hook's precision (fp32; `auto` would pick bf16 on a CPU with native bf16)
            embedder_from_spec(report["model"], precision="fp32"),
            [f"allpairs:{held_out}:2", f"ident:{held_out}:1:2"],
            None,
            progress=False,
        )["benchmarks"]
    )
    assert final[name_all]["auc"] == pytest.approx(direct[name_all]["summary"]["auc"], abs=1e-6)
    assert final[name_id]["rank-1"] == pytest.approx(direct[name_id]["summary"]["rank-1"], abs=1e-6)
    assert (tmp_path / "run" / "eval_epoch1" / "result.json").is_file()
    assert not (tmp_path / "run" / "checkpoints" / "eval_epoch1.pt").exists()  # the temporary model is gone
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    auc = acc.Scalars(f"eval/{name_all}/auc")
    assert [e.step for e in auc] == [2, 4]  # after epoch 1 (2 steps) and at the end
    assert f"eval/{name_id}/rank-1" in tags and "train/margin" in tags and "train/margin/top1" in tags
    assert auc[-1].value == pytest.approx(final[name_all]["auc"])


def test_init_from_checkpoint_copies_weights_and_starts_fresh(
    lfw_small: Path, tmp_path: Path, list_file
) -> None:
    """run.init: the new run starts at step 0 with the checkpoint's weights; mismatches stop clearly."""
    lf = list_file(lfw_small, tmp_path / "train.txt", per_person=4, people=8)
    common = [f"data.list_file={lf}", "data.batch_size=8", "optim.epochs=1"]
    Trainer(_cfg(lfw_small, tmp_path / "a", *common)).fit()  # 4 steps, then model.pt
    src = load_checkpoint(tmp_path / "a" / "checkpoints" / "model.pt")
    tuned = Trainer(
        _cfg(lfw_small, tmp_path / "b", *common, f"run.init={tmp_path / 'a/checkpoints/model.pt'}")
    )
    assert tuned.progress.global_step == 0
    for k, v in src["backbone"].items():
        assert torch.equal(v, tuned.backbone.state_dict()[k]), k
    head = lambda t: t.objectives["margin"].head.weight.detach()  # noqa: E731
    assert torch.equal(src["objectives"]["margin"]["weight"], head(tuned))
    fresh = Trainer(_cfg(lfw_small, tmp_path / "c", *common))
    assert not torch.equal(src["objectives"]["margin"]["weight"], head(fresh))
    # a fresh head for another label space keeps the backbone
    no_head = Trainer(
        _cfg(
            lfw_small,
            tmp_path / "d",
            *common,
            f"run.init={tmp_path / 'a/checkpoints/last.pt'}",
            "run.init_head=false",
        )
    )
    assert torch.equal(head(no_head), head(fresh))
    kept = no_head.backbone.state_dict()
    assert all(torch.equal(v, kept[k]) for k, v in src["backbone"].items())
    lf2 = list_file(lfw_small, tmp_path / "train2.txt", per_person=4, people=6)
    with pytest.raises(ValueError, match=r"run\.init_head=false"):
        Trainer(
            _cfg(
                lfw_small,
                tmp_path / "e",
                f"data.list_file={lf2}",
                "data.batch_size=8",
                f"run.init={tmp_path / 'a/checkpoints/model.pt'}",
            )
        )
    with pytest.raises(ValueError, match="set model= and its options"):
        Trainer(
            _cfg(
                lfw_small,
                tmp_path / "f",
                *common,
                "model.embedding_size=32",
                f"run.init={tmp_path / 'a/checkpoints/model.pt'}",
            )
        )
    with pytest.raises(ValueError, match="checkpoint not found"):
        Trainer(_cfg(lfw_small, tmp_path / "g", *common, f"run.init={tmp_path / 'missing.pt'}"))


def test_resume_refuses_a_changed_batch_or_dataset(lfw_small: Path, tmp_path: Path, list_file) -> None:
    """Exact resume needs the saved sample order: another batch size or other data stops, naming it."""
    lf = list_file(lfw_small, tmp_path / "train.txt", per_person=4, people=8)
    common = [f"data.list_file={lf}", "optim.epochs=2", "run.max_steps=2"]
    Trainer(_cfg(lfw_small, tmp_path / "run", *common, "data.batch_size=8")).fit()
    with pytest.raises(ValueError, match=r"cannot resume .*data\.batch_size changed"):
        Trainer(_cfg(lfw_small, tmp_path / "run", *common, "data.batch_size=4", "run.resume=auto")).fit()
    lf6 = list_file(lfw_small, tmp_path / "six.txt", per_person=4, people=6)
    with pytest.raises(ValueError, match=r"the data \(32 rows / 8 classes saved, 24 / 6 now\)"):
        Trainer(
            _cfg(
                lfw_small,
                tmp_path / "run",
                f"data.list_file={lf6}",
                "optim.epochs=2",
                "data.batch_size=8",
                "run.resume=auto",
            )
        ).fit()
    # unchanged settings resume
    report = Trainer(_cfg(lfw_small, tmp_path / "run", *common, "data.batch_size=8", "run.resume=auto")).fit()
    assert report["progress"]["global_step"] == 4


def test_interrupted_save_leftovers_are_removed(lfw_small: Path, tmp_path: Path, list_file) -> None:
    lf = list_file(lfw_small, tmp_path / "train.txt", per_person=4, people=8)
    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / ".last.pt.abc123.tmp").write_bytes(b"")
    (ckpt / "notes.txt").write_text("kept")
    Trainer(
        _cfg(
            lfw_small,
            tmp_path / "run",
            f"data.list_file={lf}",
            "data.batch_size=8",
            "optim.epochs=1",
            "run.max_steps=1",
        )
    ).fit()
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.pt", "notes.txt"]


def test_one_identity_is_refused(lfw_small: Path, tmp_path: Path) -> None:
    root = tmp_path / "one"
    person = sorted(p for p in lfw_small.iterdir() if p.is_dir())[0]
    (root / person.name).mkdir(parents=True)
    for f in sorted(person.glob("*.jpg"))[:8]:
        (root / person.name / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ValueError, match="1 identity"):
        Trainer(_cfg(root, tmp_path / "run", "data.batch_size=4"))
