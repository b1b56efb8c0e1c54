"""``faceforge train CONFIG [key=value ...]``: config-driven training."""

from __future__ import annotations

import argparse
import json

from faceforge.cli.main import command


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML path, or the name of a packaged config")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. optim.lr=0.05 model=iresnet50")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


@command("train", "train a backbone + head from a YAML config with key=value overrides")(_add)
def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from faceforge.config import compose_config
    from faceforge.engine.trainer import Trainer

    cfg = compose_config(args.config, args.overrides)
    if args.print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    report = Trainer(cfg).fit()
    summary = {k: report[k] for k in ("completed", "progress", "images_per_s_this_run", "precision")}
    summary["skipped_images"] = report["skipped_images"]["count"]
    if "eval" in report:
        v = report["eval"]["verification"]
        summary["pairs_accuracy"] = (
            f"{v['accuracy_mean'] * 100:.2f} +- {v['accuracy_std'] * 100:.2f} ({v['rule']})"
        )
    print(json.dumps(summary, indent=2))
    print(f"run directory: {cfg.run.dir}")
    return 0
