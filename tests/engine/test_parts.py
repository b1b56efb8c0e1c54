"""Schedules, parameter groups and checkpoint files."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from faceforge.core.checkpoint import CheckpointError, atomic_torch_save, load_checkpoint
from faceforge.engine.optim import parameter_groups
from faceforge.engine.schedule import ScheduleSpec, learning_rate


def test_schedules_by_hand() -> None:
    warm = ScheduleSpec(base_lr=0.1, total_steps=110, warmup_steps=10, decay="poly")
    assert learning_rate(0, warm) == 0.0
    assert learning_rate(5, warm) == pytest.approx(0.05)  # linear warmup from 0
    assert learning_rate(10, warm) == pytest.approx(0.1)
    assert learning_rate(60, warm) == pytest.approx(0.05)  # half of the 100 post-warmup steps done
    assert learning_rate(110, warm) == pytest.approx(0.0)
    poly2 = ScheduleSpec(base_lr=1.0, total_steps=10, decay="poly", power=2.0)
    assert learning_rate(5, poly2) == pytest.approx(0.25)
    cos = ScheduleSpec(base_lr=1.0, total_steps=100, decay="cosine", min_lr=0.1)
    assert learning_rate(50, cos) == pytest.approx(0.5)
    assert learning_rate(100, cos) == pytest.approx(0.1)  # floored at min_lr
    assert learning_rate(25, cos) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    step = ScheduleSpec(base_lr=1.0, total_steps=100, decay="step", milestones=(30, 60), gamma=0.1)
    assert [learning_rate(s, step) for s in (29, 30, 59, 60)] == pytest.approx([1.0, 0.1, 0.1, 0.01])


def test_no_weight_decay_on_norm_and_bias() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.PReLU(4), nn.Flatten(), nn.Linear(4, 2)
    )
    decay, no_decay = parameter_groups([net], 5e-4, True)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(net[0].weight), id(net[4].weight)}
    assert len(no_decay["params"]) == 5  # conv bias, BN weight+bias, PReLU, linear bias
    (only,) = parameter_groups([net], 5e-4, False)
    assert len(only["params"]) == 7


def test_atomic_save_and_refusals(tmp_path: Path) -> None:
    target = tmp_path / "ck" / "x.pt"
    atomic_torch_save({"format": "faceforge-checkpoint", "version": 1, "meta": {}, "backbone": {}}, target)
    assert load_checkpoint(target)["version"] == 1
    assert [p.name for p in target.parent.iterdir()] == ["x.pt"]  # no temporary file left behind
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match="not a faceforge checkpoint"):
        load_checkpoint(foreign)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(text)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/faceforge_pwned"),))


def test_code_executing_pickle_is_refused(tmp_path: Path) -> None:
    marker = Path("/tmp/faceforge_pwned")
    marker.unlink(missing_ok=True)
    evil = tmp_path / "evil.pt"
    torch.save({"format": "faceforge-checkpoint", "payload": _Payload()}, evil, pickle_protocol=2)
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    assert not marker.exists()
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not marker.exists()
