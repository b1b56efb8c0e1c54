"""The rules of the training configuration's numbers and choices (:mod:`faceforge.core.schema`), by dotted key.

``faceforge.config`` checks every key of :data:`CONFIG_RULES` after the schema merge (types are the schema's
job; ranges, finiteness and allowed sets are these rules'), so ``run.seed=-1`` or ``optim.weight_decay=-1``
stops with ``run.seed=-1 must be an integer in [0, 4294967295]``. Every ``int`` or ``float`` field of the
schema has a rule here (``tests/hostile/test_option_rules.py`` checks it).
"""

from __future__ import annotations

from typing import Any

from faceforge.core.rules import Rule

__all__ = ["CONFIG_RULES", "check_config_values"]

_NON_NEGATIVE = Rule(float, 0.0)
_EPOCHS = Rule(float, 0.0, 100_000.0, note="epochs")

CONFIG_RULES: dict[str, Rule] = {
    "run.seed": Rule(int, 0, 2**32 - 1),
    "run.device": Rule(str, choices=("auto", "cpu", "cuda")),
    "run.precision": Rule(str, choices=("auto", "fp32", "bf16", "fp16")),
    "run.threads": Rule(int, 0, 1024, note="0: torch's default"),
    "run.log_every": Rule(int, 1, 10**9),
    "run.save_every_steps": Rule(int, 0, 10**9, note="0: at the end of each epoch"),
    "run.max_steps": Rule(int, 0, 10**12, note="0: no limit"),
    "data.min_images_per_identity": Rule(int, 1, 10**6),
    "data.image_size": Rule(int, 16, 2048),
    "data.num_workers": Rule(int, 0, 256),
    "data.batch_size": Rule(int, 1, 65536),
    "data.max_skipped": Rule(float, 0.0, 1.0, note="a fraction"),
    "optim.lr": Rule(float, 0.0, 1000.0, low_open=True),
    "optim.momentum": Rule(float, 0.0, 1.0, high_open=True),
    "optim.betas": Rule(list, 0.0, 1.0, high_open=True, item=float, count=2),
    "optim.eps": Rule(float, 0.0, 1.0, low_open=True),
    "optim.weight_decay": _NON_NEGATIVE,
    "optim.epochs": Rule(int, 1, 100_000),
    "optim.warmup_epochs": _EPOCHS,
    "optim.warmup_start_factor": Rule(float, 0.0, 1.0),
    "optim.power": _NON_NEGATIVE,
    "optim.milestones": Rule(list, 0.0, 100_000.0, item=float),
    "optim.gamma": Rule(float, 0.0, 1000.0, low_open=True),
    "optim.min_lr": _NON_NEGATIVE,
    "optim.grad_clip": Rule(float, 0.0, note="max gradient norm; 0 disables clipping"),
    "optim.accumulate_steps": Rule(int, 1, 4096),
    "eval.every_epochs": Rule(int, 0, 100_000, note="0: only at the end"),
    "eval.batch_size": Rule(int, 1, 65536),
    "finetune.backbone_lr_mult": Rule(
        float,
        0.0,
        low_open=True,
        note="the backbone's learning rate is this times the schedule's; to keep backbone layers fixed use "
        "finetune.freeze=['*']",
    ),
    "finetune.head_row_norm": Rule(
        float, 0.0, 1e6, low_open=True, optional=True, note="null: the mean row norm of the head as built"
    ),
    "finetune.head_only_epochs": _EPOCHS,
    "finetune.backbone_warmup_epochs": _EPOCHS,
}


def check_config_values(select: Any) -> None:
    """Check every rule's key; ``select(key)`` returns the composed config's value of a dotted key."""
    for key, rule in CONFIG_RULES.items():
        value = select(key)
        rule.check(key, list(value) if rule.kind is list and value is not None else value)
