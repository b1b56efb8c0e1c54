"""Train from a config with overrides: ``faceforge.train("mobilefacenet_arcface", {"data.root": "faces"})``.

The config is composed and validated as ``faceforge train`` does (:func:`faceforge.config.compose_config`: YAML
groups under ``faceforge/configs/``, Hydra overrides, the typed schema, every key checked with a message that
names it), and trained by the one engine (:class:`faceforge.engine.loop.Trainer`); the ``eval`` section becomes
the evaluation hook (:func:`evaluation_hook`, shared with the command), so a run from Python and one from the
shell give the same files and numbers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from faceforge.api.results import TrainingRun

_PLAIN = re.compile(r"^[\w./:+-]*$")


def benchmark_specs(cfg: Any) -> list[Any]:
    """The ``faceforge eval`` specs of a training config's ``eval`` section."""
    from faceforge.eval.benchmarks import lfw_spec

    specs: list[Any] = [lfw_spec(cfg.eval.pairs, cfg.eval.images or cfg.data.root)] if cfg.eval.pairs else []
    return specs + list(cfg.eval.benchmarks)


def evaluation_hook(cfg: Any):
    """``evaluate(model_path, out_dir) -> {benchmark: summary}`` for the trainer, or None without benchmarks."""
    specs = benchmark_specs(cfg)
    if not specs:
        return None

    def evaluate(model_path: Path, out_dir: Path) -> dict[str, dict[str, Any]]:
        from faceforge.eval.benchmarks import evaluate_checkpoint

        return evaluate_checkpoint(
            model_path,
            specs,
            out_dir,
            flip=cfg.eval.flip,
            batch_size=cfg.eval.batch_size,
            device=cfg.run.device,
            progress=cfg.run.progress,
        ).summaries

    return evaluate


def override_strings(overrides: Sequence[str] | Mapping[str, Any] | None) -> list[str]:
    """``key=value`` strings as the command line takes them, from a list of them or a ``{key: value}`` mapping.

    Mapping values are written as YAML (JSON is YAML): ``None`` -> ``null``, lists and dicts as such, strings
    quoted unless plain (``model=iresnet50`` stays a group choice).

    >>> override_strings({"optim.lr": 0.05, "model": "iresnet50", "eval.pairs": None, "data.exclude_pairs": []})
    ['optim.lr=0.05', 'model=iresnet50', 'eval.pairs=null', 'data.exclude_pairs=[]']
    """
    if overrides is None:
        return []
    if isinstance(overrides, str):
        raise TypeError(
            "overrides: give a list of 'key=value' strings or a {key: value} mapping, not one string"
        )
    if not isinstance(overrides, Mapping):
        return [str(o) for o in overrides]
    out = []
    for key, value in overrides.items():
        if isinstance(value, str) and _PLAIN.match(value):
            text = value
        elif isinstance(value, Path):
            text = json.dumps(str(value))
        else:
            text = json.dumps(value)
        out.append(f"{key}={text}")
    return out


def train(
    config: str | Path,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    *,
    evaluate: bool = True,
) -> TrainingRun:
    """Train a model.

    Args:
        config: a packaged config name (``mobilefacenet_arcface``: your own aligned folder;
            ``lfw_mobilefacenet_arcface``: the LFW demo; ``paper_*``: the papers' recipes) or a YAML file.
        overrides: ``["optim.lr=0.05", "model=iresnet50"]`` or ``{"optim.lr": 0.05, "model": "iresnet50"}``;
            every key of the schema can be set (``data.root`` is required by the packaged configs).
        evaluate: run the config's ``eval`` benchmarks on the trained model (as ``faceforge train`` does).

    Returns:
        A :class:`~faceforge.api.results.TrainingRun`; load the model with ``load_model(run.model_path)``.
        A run directory that already holds a run is continued only with ``run.resume=auto``.
    """
    from faceforge.config import compose_config
    from faceforge.engine.loop import Trainer

    cfg = compose_config(str(config), override_strings(overrides))
    report = Trainer(cfg, evaluate=evaluation_hook(cfg) if evaluate else None).fit()
    run_dir = Path(cfg.run.dir)
    model = Path(report["model"]) if report.get("model") else run_dir / "checkpoints" / "last.pt"
    return TrainingRun(run_dir, model, bool(report.get("completed")), dict(report.get("eval") or {}), report)
