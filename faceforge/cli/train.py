"""``faceforge train CONFIG [key=value ...]``: config-driven training, evaluated with ``faceforge eval``'s code.

The ``eval`` section becomes the trainer's evaluation hook: ``eval.pairs`` (an LFW pairs file, images from
``eval.images`` or ``data.root``) and every ``eval.benchmarks`` spec run through
:func:`faceforge.eval.benchmarks.run_benchmarks` on the saved model, exactly as ``faceforge eval`` would.
"""

from __future__ import annotations

import argparse
import json

from faceforge.api.training import benchmark_specs, evaluation_hook
from faceforge.cli.registry import command

__all__ = [
    "benchmark_specs",
    "evaluation_hook",
    "run",
]  # the hook lives in the API, shared with faceforge.train


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML path, or the name of a packaged config")
    p.add_argument("overrides", nargs="*", help="overrides, e.g. optim.lr=0.05 model=iresnet50 method=rkd")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


@command("train", "train a backbone with its objectives from a YAML config with key=value overrides")(_add)
def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from faceforge.config import compose_config
    from faceforge.core import distributed as D
    from faceforge.engine.loop import Trainer

    cfg = compose_config(args.config, args.overrides)
    if args.print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    report = Trainer(cfg, evaluate=evaluation_hook(cfg)).fit()
    if not D.current().is_main:  # one summary per run, printed by rank 0
        return 0
    summary = {k: report[k] for k in ("completed", "progress", "images_per_s_this_run", "precision")}
    summary["skipped_images"] = report["skipped_images"]["count"]
    if report.get("history"):
        last = report["history"][-1]
        summary["last_logged"] = {k: round(v, 4) for k, v in last.items() if k not in ("step", "epoch")}
    if report.get("eval"):
        summary["eval"] = report["eval"]
    print(json.dumps(summary, indent=2, default=str))
    print(f"run directory: {cfg.run.dir}")
    return 0
