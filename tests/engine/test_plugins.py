"""The plug-in contract, proven from outside the package: a method written in this file trains through
``faceforge train`` with no edit to the engine.

It has the two kinds of parts a published method brings (see README "Write your own method"):

* :class:`GroupHead`, an objective with its own head: it predicts a per-image attribute (``group``, read from a
  CSV sidecar that labels only some images) from the embedding, with the rows that have no value masked out;
* :class:`CriticMethod`, a method with a module, an optimiser and a step of its own: after the standard step
  (every objective, the main optimiser) it trains a small critic on the detached embeddings with Adam, the
  alternating pattern of a GAN's discriminator update.

The run is launched with ``run.plugins=[tests.engine.test_plugins]`` (the engine imports this module, where
the classes register themselves), trained, stopped, resumed exactly, and its checkpoint holds both parts.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from faceforge.cli.main import main
from faceforge.core.checkpoint import load_checkpoint
from faceforge.engine.method import METHODS, Method, MethodContext, OptimizerSpec
from faceforge.objectives import OBJECTIVES, Needs, Objective, ObjectiveContext, ObjectiveOutput, StepBatch

PLUGIN = __name__  # "tests.engine.test_plugins" when pytest imports it


class GroupHead(Objective):
    """Cross-entropy of a linear head that predicts the ``group`` attribute; rows without one are masked."""

    needs = Needs(identity=False, attributes=("group",))

    def __init__(self, ctx: ObjectiveContext, *, groups: int = 2, hidden: int = 16) -> None:
        super().__init__(ctx)
        self.head = nn.Sequential(nn.Linear(ctx.embedding_size, hidden), nn.ReLU(), nn.Linear(hidden, groups))

    def forward(self, batch: StepBatch) -> ObjectiveOutput:
        values, mask = batch.attribute("group")
        used = int(mask.sum())
        if used == 0:
            return ObjectiveOutput({"loss": batch.embeddings.sum() * 0.0}, {"used": 0.0})
        logits = self.head(batch.embeddings[mask])
        loss = F.cross_entropy(logits, values[mask].long())
        return ObjectiveOutput({"loss": loss}, {"used": float(used)})


class CriticMethod(Method):
    """The standard step, then one Adam step of a critic on the detached embeddings (its own optimiser)."""

    def __init__(self, ctx: MethodContext, *, lr: float = 1e-3) -> None:
        super().__init__(ctx)
        self.critic = nn.Linear(ctx.embedding_size, 1)
        self.lr = lr

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"critic": OptimizerSpec([self.critic], {"name": "adam", "lr": self.lr, "weight_decay": 0.0})}

    def step(self, engine: Any, batch: Any) -> None:
        engine.standard_step(batch)
        engine.zero_grad("critic")
        for micro, sync in engine.micro_batches(batch):
            with sync, torch.no_grad():
                emb = engine.embed(engine.preprocess(micro.images))
            target = emb.norm(dim=1, keepdim=True) / 10.0
            loss = F.mse_loss(self.critic(emb), target)
            engine.backward(loss / engine.accumulate, "critic")
            engine.log({"critic/mse": float(loss.detach())}, 1.0 / engine.accumulate)
        engine.optimizer_step("critic")


for name, cls, registry in (
    ("test_group_head", GroupHead, OBJECTIVES),
    ("test_critic", CriticMethod, METHODS),
):
    if name not in registry:
        registry.register(name)(cls)


@pytest.fixture(scope="module")
def data(lfw_small: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """8 people x 4 images as a list file; a sidecar gives 'group' (person index parity) to 3 of each 4."""
    tmp = tmp_path_factory.mktemp("plugin")
    people = sorted(p for p in lfw_small.iterdir() if p.is_dir())[:8]
    lines, rows = [], []
    for label, person in enumerate(people):
        for i, f in enumerate(sorted(person.glob("*.jpg"))[:4]):
            rel = f.relative_to(lfw_small).as_posix()
            lines.append(f"{rel} {label}")
            rows.append([rel, str(label % 2) if i < 3 else ""])  # the 4th image of everyone has no group
    (tmp / "train.txt").write_text("\n".join(lines) + "\n")
    with (tmp / "groups.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["path", "group"], *rows])
    return {"root": lfw_small, "list": tmp / "train.txt", "sidecar": tmp / "groups.csv", "tmp": tmp}


def _train(data: dict[str, Path], run: Path, *more: str) -> int:
    return main(
        [
            "train", "lfw_mobilefacenet_arcface",
            f"data.root={data['root']}", f"data.list_file={data['list']}", f"data.attributes={data['sidecar']}",
            "data.exclude_pairs=[]", "data.preload=false", "data.num_workers=0", "data.batch_size=8",
            "model.embedding_size=32", "optim.epochs=1", "run.log_every=1", "run.progress=false", "run.threads=2",
            "run.precision=fp32", "eval.pairs=null", f"run.dir={run}",
            f"run.plugins=[{PLUGIN}]", "objectives.group.type=test_group_head", "objectives.group.weight=0.5",
            "method.name=test_critic", "method.lr=0.01", *more,
        ]
    )  # fmt: skip


def test_a_method_from_outside_the_package_trains_and_resumes(data: dict[str, Path]) -> None:
    straight, broken = data["tmp"] / "straight", data["tmp"] / "broken"
    assert _train(data, straight) == 0
    report = __import__("json").loads((straight / "report.json").read_text())
    assert report["completed"] and report["progress"]["global_step"] == 4
    hist = report["history"]
    # every step logged both objectives, the weighted total and the method's own number
    for rec in hist:
        assert rec["loss"] == pytest.approx(rec["margin"] + 0.5 * rec["group"], rel=1e-5)
        assert rec["critic/mse"] >= 0.0
    # the sidecar labels 24 of the 32 images: the epoch's masked rows add up to exactly that
    assert len(hist) == 4 and sum(r["group/used"] for r in hist) == 24
    ckpt = load_checkpoint(straight / "checkpoints" / "last.pt")
    assert set(ckpt["objectives"]) == {"margin", "group"} and "head.0.weight" in ckpt["objectives"]["group"]
    assert set(ckpt["method"]) == {"critic.weight", "critic.bias"}
    assert set(ckpt["optimizers"]) == {"main", "critic"}
    assert ckpt["meta"]["objectives"]["group"]["weight"] == 0.5
    assert ckpt["meta"]["data"]["attributes"]["group"]["rows_with_value"] == 24
    # the critic is trained by its own optimiser only, which stepped at every step
    critic_opt = ckpt["optimizers"]["critic"]
    assert sum(len(g["params"]) for g in critic_opt["param_groups"]) == 2
    assert all(float(s["step"]) == 4 for s in critic_opt["state"].values())
    assert (
        sum(len(g["params"]) for g in ckpt["optimizers"]["main"]["param_groups"])
        == len([k for k in ckpt["backbone"] if "running" not in k and "num_batches" not in k]) + 1 + 4
    )  # backbone parameters, the margin head's weight, the group head's two layers
    # stop after 2 steps, resume: the same weights, head, critic and Adam state as the unbroken run
    assert _train(data, broken, "run.max_steps=2") == 0
    assert _train(data, broken, "run.resume=auto") == 0
    resumed = load_checkpoint(broken / "checkpoints" / "last.pt")
    for part in ("backbone", "method"):
        for k, v in ckpt[part].items():
            assert torch.equal(v, resumed[part][k]), f"{part}.{k}"
    for name in ("margin", "group"):
        for k, v in ckpt["objectives"][name].items():
            assert torch.equal(v, resumed["objectives"][name][k]), f"{name}.{k}"
    a, b = ckpt["optimizers"]["critic"]["state"], resumed["optimizers"]["critic"]["state"]
    assert all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)


def test_plugin_options_are_validated(data: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    assert _train(data, data["tmp"] / "bad", "objectives.group.hiden=4") == 2
    assert "objectives.group: unknown key 'hiden'" in capsys.readouterr().err
    assert _train(data, data["tmp"] / "bad", "method.learning_rate=4") == 2
    assert "method: unknown key 'learning_rate'" in capsys.readouterr().err
    assert _train(data, data["tmp"] / "bad", "run.plugins=[no_such_module_here]") == 2
    assert "run.plugins: cannot import 'no_such_module_here'" in capsys.readouterr().err
    # an objective that needs an attribute no source gives stops before training, naming it
    assert _train(data, data["tmp"] / "bad", "data.attributes=null") == 2
    assert "needs the attribute(s) ['group']" in capsys.readouterr().err
