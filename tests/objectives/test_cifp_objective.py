"""CIFP through ``faceforge train``: the packaged ``method=cifp`` replaces the margin objective on the same head."""

from __future__ import annotations

from pathlib import Path

import pytest

from faceforge.config import compose_config
from faceforge.engine.loop import Trainer


def _run(root: Path, lf: Path, run: Path, *more: str) -> dict:
    cfg = compose_config(
        "lfw_mobilefacenet_arcface",
        [f"data.root={root}", f"data.list_file={lf}", f"run.dir={run}", "head=cosface", "data.exclude_pairs=[]",
         "data.batch_size=16", "optim.epochs=1", "run.max_steps=1", "run.log_every=1", "run.progress=false",
         "run.precision=fp32", "model.embedding_size=32", "data.num_workers=0", "eval.pairs=null", *more],
    )  # fmt: skip
    return Trainer(cfg).fit()


def test_cifp_objective_penalises_the_target_logit(lfw_small: Path, tmp_path: Path, list_file) -> None:
    lf = list_file(lfw_small, tmp_path / "train.txt", per_person=4, people=8)
    plain = _run(lfw_small, lf, tmp_path / "plain")
    cifp = _run(lfw_small, lf, tmp_path / "cifp", "method=cifp")
    assert set(cifp["objectives"]) == {"cifp"} and cifp["objectives"]["cifp"]["penalty"] == "code_mean"
    first_plain, first_cifp = plain["history"][0], cifp["history"][0]
    # same initial weights and batch: the penalty only lowers target logits, so CE can only rise
    assert first_cifp["cifp"] > first_plain["margin"]
    assert first_cifp["cifp/delta_mean"] > 0 and -1.0 <= first_cifp["cifp/tau"] <= 1.0
    assert first_cifp["cifp/k"] >= 1 and first_cifp["cifp/top1"] == pytest.approx(first_plain["margin/top1"])
    # alpha so small that k = 1: no false positive can be found, CIFP is the plain head
    tiny = _run(lfw_small, lf, tmp_path / "tiny", "method=cifp", "objectives.cifp.alpha=1e-9")
    assert tiny["history"][0]["cifp"] == pytest.approx(first_plain["margin"], rel=1e-6)
    assert tiny["history"][0]["cifp/delta_mean"] == 0.0
