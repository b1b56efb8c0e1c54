"""Gradient accumulation: K micro-batches make the same optimiser step as one batch.

Batch norm computes its statistics per micro-batch, so the equivalence is shown on a backbone without it: a
toy linear backbone registered here (a plug-in, like any user's). With ArcFace the weights after two steps are
equal (to float rounding); with CurricularFace the head's ``t`` after a step is exactly one batch's (the
rule: ``t`` is updated once per optimiser step with the whole step's statistic; inside micro-batch j the
hard-negative modulation uses t_j, the step's starting t moved by micro-batch j's own statistic).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from faceforge.config import compose_config
from faceforge.engine.loop import Trainer
from faceforge.models.backbones import BACKBONES
from faceforge.models.heads import build_head


class ToyLinear(nn.Module):
    """8x8 average pool -> flatten -> linear: a backbone with no batch statistics."""

    input_size = 112
    #: the batch size of every training-mode forward (the test reads how the step was cut)
    seen: ClassVar[list[int]] = []

    def __init__(self, embedding_size: int = 16, input_size: int = 112, dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.fc = nn.Linear(3 * 8 * 8, embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            ToyLinear.seen.append(len(x))
        return self.fc(F.adaptive_avg_pool2d(x, 8).flatten(1))


@pytest.fixture(autouse=True, scope="module")
def _toy_backbone():
    """The toy backbone is a plug-in for this module's runs only."""
    BACKBONES.register("toy_linear")(ToyLinear)
    yield
    BACKBONES.unregister("toy_linear")


def _run(root: Path, lf: Path, run: Path, head: str, k: int, steps: int) -> Trainer:
    cfg = compose_config(
        "lfw_mobilefacenet_arcface",
        [f"data.root={root}", f"data.list_file={lf}", f"run.dir={run}", "model=mobilefacenet",
         "model.name=toy_linear", "model.embedding_size=16", f"head={head}", "data.exclude_pairs=[]",
         "data.batch_size=8", "optim.epochs=1", f"run.max_steps={steps}", "run.progress=false", "run.precision=fp32",
         "run.channels_last=false", "data.num_workers=0", "eval.pairs=null", f"optim.accumulate_steps={k}",
         "optim.warmup_epochs=0"],
    )  # fmt: skip
    trainer = Trainer(cfg)
    ToyLinear.seen = []
    trainer.fit()
    # each optimiser step is k forwards of 8 / k faces: a run that ignored accumulate_steps would pass the
    # equality below trivially (two identical runs)
    assert ToyLinear.seen == [8 // k] * (k * steps), (k, ToyLinear.seen)
    return trainer


@pytest.mark.parametrize("head", ["arcface", "curricularface"])
def test_two_micro_batches_equal_one_batch(lfw_small: Path, tmp_path: Path, list_file, head: str) -> None:
    lf = list_file(lfw_small, tmp_path / "train.txt", per_person=4, people=8)
    # CurricularFace: one step (after it the weights differ by the t_j modulation, so later t's drift apart)
    steps = 2 if head == "arcface" else 1
    one = _run(lfw_small, lf, tmp_path / "one", head, 1, steps)
    two = _run(lfw_small, lf, tmp_path / "two", head, 2, steps)
    h1, h2 = one.objectives["margin"].head, two.objectives["margin"].head
    if head == "arcface":
        torch.testing.assert_close(two.backbone.fc.weight, one.backbone.fc.weight, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(h2.weight, h1.weight, rtol=1e-5, atol=1e-7)
        m1, m2 = one.optimizers["main"].state, two.optimizers["main"].state
        torch.testing.assert_close(m2[two.backbone.fc.weight]["momentum_buffer"],
                                   m1[one.backbone.fc.weight]["momentum_buffer"], rtol=1e-5, atol=1e-7)  # fmt: skip
    else:
        assert float(h1.t) != 0.0
        torch.testing.assert_close(h2.t, h1.t, rtol=1e-6, atol=1e-8)


def test_curricularface_t_rule_by_hand() -> None:
    """One update per step from the mean over micro-batches; each micro-batch uses its own t_j."""
    head = build_head("curricularface", embedding_size=4, num_classes=3, alpha=0.5)
    with torch.no_grad():
        head.t.fill_(0.2)
    head.begin_accumulation()
    t1 = head.observe(torch.tensor([0.4, 0.6]))  # mean 0.5 -> t_1 = 0.5 * 0.2 + 0.5 * 0.5
    t2 = head.observe(torch.tensor([0.0, 0.2, 0.4, 0.6]))  # mean 0.3 -> t_2 = 0.25
    assert float(t1) == pytest.approx(0.35) and float(t2) == pytest.approx(0.25)
    assert float(head.t) == pytest.approx(0.2)  # unchanged until the step ends
    head.end_accumulation()
    # the step's mean over all 6 rows is 2.2 / 6; t = 0.5 * 0.2 + 0.5 * 2.2 / 6
    assert float(head.t) == pytest.approx(0.1 + 0.5 * 2.2 / 6)
    # without accumulation: the reference update at every call
    assert float(head.observe(torch.tensor([1.0]))) == pytest.approx(0.5 * float(0.1 + 0.5 * 2.2 / 6) + 0.5)
