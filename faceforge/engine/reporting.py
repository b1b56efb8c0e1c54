"""Training logs: windows of step numbers averaged into history records, tensorboard, the progress bar, log lines.

Every ``run.log_every`` steps (and at the end of each epoch) the numbers the step logged (``loss``, each
objective's terms ``<objective>[/<term>]`` and logs such as ``margin/top1``) are averaged over the window's steps
into one history record with ``step``, ``epoch``, ``lr`` and ``images_per_s``; rank 0 writes them to tensorboard as
``train/<key>``. Evaluation numbers go to ``eval/<benchmark>/<number>``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)

__all__ = ["TrainingLog", "run_report"]


class TrainingLog:
    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        initial_step: int,
        log_every: int,
        images_per_step: int,
        main: bool,
        progress: bool,
    ) -> None:
        self.run_dir = run_dir
        self.total_steps = total_steps
        self.log_every = max(1, int(log_every))
        self.images_per_step = images_per_step
        self.main = main
        self.progress = progress
        self.history: list[dict[str, float]] = []
        self._writer = None
        self._reset()
        self.bar = tqdm(
            total=total_steps,
            initial=initial_step,
            desc="train",
            unit="step",
            disable=not (progress and main),
            dynamic_ncols=True,
        )

    def _reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0
        self.t0 = time.perf_counter()

    @property
    def writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._writer

    def scalar(self, name: str, value: float, step: int) -> None:
        if self.main:
            self.writer.add_scalar(name, value, step)

    def step(self, logs: dict[str, float], step: int, epoch: int, lr: float, end_of_epoch: bool) -> None:
        """Add one optimiser step's numbers; emit a history record at the window's end."""
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1
        self.bar.update(1)
        if step % self.log_every and not end_of_epoch:
            return
        dt = time.perf_counter() - self.t0
        rec: dict[str, float] = {
            "step": step,
            "epoch": epoch,
            "lr": lr,
            "images_per_s": self.n * self.images_per_step / max(dt, 1e-9),
            **{k: v / self.n for k, v in self.sums.items()},
        }
        self.history.append(rec)
        for k, v in rec.items():
            if k not in ("step", "epoch"):
                self.scalar(f"train/{k}", v, step)
        terms = "  ".join(f"{k} {rec[k]:.4g}" for k in sorted(self.sums) if k != "loss")
        if not self.progress and self.main:
            log.info(
                "step %d/%d epoch %d loss %.4f lr %.4g %.1f img/s  %s",
                step,
                self.total_steps,
                epoch,
                rec.get("loss", float("nan")),
                lr,
                rec["images_per_s"],
                terms,
            )
        self.bar.set_postfix(
            ep=epoch,
            loss=f"{rec.get('loss', float('nan')):.3f}",
            lr=f"{lr:.3g}",
            img_s=f"{rec['images_per_s']:.0f}",
        )
        self._reset()

    def evaluation(self, tag: str, results: dict[str, dict[str, Any]], step: int) -> None:
        """Log every finite summary number of every benchmark as ``eval/<benchmark>/<number>``."""
        import math

        for name, summary in results.items():
            for key, value in summary.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    self.scalar(f"eval/{name}/{key}", value, step)
            if self.main:
                log.info("%s: %s %s", tag, name, {k: v for k, v in summary.items() if v is not None})

    def close(self) -> None:
        self.bar.close()
        if self._writer is not None:
            self._writer.close()


def run_report(t: Any, stopped_early: bool, seconds: float, steps: int, history: list) -> dict[str, Any]:
    """The ``report.json`` of a run (without its model path and evaluation, which the loop adds)."""
    world = t.dist.world_size
    return {
        "completed": not stopped_early,
        "progress": {k: v for k, v in t.progress.to_dict().items() if k != "skipped_images"},
        "train_seconds_this_run": seconds,
        "images_per_s_this_run": steps * t.cfg.data.batch_size * world / max(seconds, 1e-9),
        "world_size": world,
        "objectives": t.meta()["objectives"],
        "preprocess": t.meta()["preprocess"],
        # run.init's origin and the fine-tuning options, as the checkpoint's metadata holds them
        **{k: v for k, v in t.state.output_meta().items() if k in ("init", "finetune")},
        "method": t.method.describe(),
        "num_images": len(t.data.labels),
        "num_identities": t.data.num_classes,
        "data_sources": t.data.sources,
        "precision": t.precision,
        "compile": bool(getattr(t, "compiled", False)),
        "skipped_images": {
            "count": len(t.progress.skipped_images),
            "files": t.progress.skipped_images,
        },
        "data_warnings": t.data.warnings,
        "history": history,
    }
