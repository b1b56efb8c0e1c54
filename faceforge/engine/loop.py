"""The one training loop, for every recipe: data -> backbone -> objectives (and a method's own step) -> update.

:class:`Trainer` builds the run from its config (:mod:`faceforge.engine.setup`), then every step: the learning rate
of every optimiser is set from its schedule (a pure function of the step, :mod:`faceforge.engine.schedule`), the
method's step runs with the engine's services (:class:`faceforge.engine.step.StepEngine`), and the logged numbers
go to the history, tensorboard and the progress bar (:mod:`faceforge.engine.reporting`). Checkpoints
(:mod:`faceforge.engine.state`) hold progress, weights, every objective's and the method's state, every optimiser,
scaler and the RNG; samplers and augmentation are seeded from (seed, epoch, index), so a run stopped mid-epoch and
resumed gives the same weights as one that never stopped.

Fine-tuning is this loop too: a run started from ``run.init`` takes the checkpoint's weights, its preprocessing and,
with ``model=from_init``, its architecture (:mod:`faceforge.engine.init_source`); the head starts as
``finetune.head_init`` says (:mod:`faceforge.engine.head_init`), and the ``finetune`` options decide before every
step what of the backbone trains and at which rate (:mod:`faceforge.engine.finetune`).

Evaluation is not the engine's: the caller passes ``evaluate(model_path, out_dir) -> {benchmark: summary}``
(``faceforge train`` builds it from the ``eval`` config section), run on rank 0 every ``eval.every_epochs`` and at
the end.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from faceforge.core import distributed as D
from faceforge.core.checkpoint import atomic_torch_save, remove_stale_temporaries
from faceforge.core.precision import compile_default, make_scaler, resolve_device, resolve_precision
from faceforge.core.schema import to_dict
from faceforge.core.version import __version__
from faceforge.data.dataset import ResumableSampler, TaggedRows, collate_faces
from faceforge.data.sources import build_training_data
from faceforge.engine import setup
from faceforge.engine.finetune import FineTuning
from faceforge.engine.head_init import HEAD_INITS
from faceforge.engine.init_source import InitSource, input_preprocess
from faceforge.engine.method import MethodContext
from faceforge.engine.reporting import TrainingLog, run_report
from faceforge.engine.schedule import learning_rate
from faceforge.engine.state import Progress, TrainingState
from faceforge.engine.step import NonFiniteLossError, StepEngine
from faceforge.objectives import ObjectiveContext, SamplerRequest
from faceforge.objectives.margin import find_margin
from faceforge.objectives.teacher_bank import TeacherBank

log = logging.getLogger(__name__)

__all__ = ["Evaluate", "NonFiniteLossError", "Trainer"]

Evaluate = Callable[[Path, Path], dict[str, dict[str, Any]]]


class Trainer:
    def __init__(self, cfg: DictConfig, evaluate: Evaluate | None = None) -> None:
        self.cfg = cfg
        self.config_dict = to_dict(cfg)
        self.evaluate_fn = evaluate
        self.run_dir = Path(cfg.run.dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self._set_up_runtime(cfg)
        init = self._build_data_and_backbone(cfg)
        self._build_objectives_and_method(cfg)
        self._build_batches(cfg)
        if init is not None:
            TrainingState(self).init_from(
                init, head=bool(cfg.run.init_head), partial=bool(cfg.run.init_partial)
            )
        del init  # the checkpoint's weights are copied
        self._prepare_model(cfg)
        self._build_optimisers(cfg)

    # -------------------------------------------------------------------------------------------- building
    def _set_up_runtime(self, cfg: DictConfig) -> None:
        """Device, process group, precision, threads, determinism, plug-ins, seed, gradient accumulation."""
        self.device = resolve_device(cfg.run.device)
        self.dist = D.init_distributed(self.device.type)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.precision = resolve_precision(cfg.run.precision, self.device)
        if cfg.run.threads > 0:
            torch.set_num_threads(cfg.run.threads)
        if cfg.run.deterministic:
            torch.use_deterministic_algorithms(True)
        setup.import_plugins(cfg.run.plugins)
        torch.manual_seed(cfg.run.seed)
        self.accumulate = int(cfg.optim.accumulate_steps)
        if self.accumulate < 1 or cfg.data.batch_size % self.accumulate:
            raise ValueError(
                f"optim.accumulate_steps={self.accumulate} must be >= 1 and divide data.batch_size="
                f"{cfg.data.batch_size} (each batch is split into that many equal micro-batches)"
            )

    def _build_data_and_backbone(self, cfg: DictConfig) -> InitSource | None:
        """The training data and the backbone; returns ``run.init``'s checkpoint (None without one)."""
        # data: the main source and data.sources, with identities (-1: none) and attributes of every row
        self.data = build_training_data(cfg.data, seed=cfg.run.seed, progress=cfg.run.progress)
        self.dataset = self.data.dataset
        # run.init's checkpoint, read once: weights, and the architecture (model=from_init) and preprocessing
        init = InitSource.load(cfg.run.init, self.device) if cfg.run.init else None
        self.backbone, self.backbone_meta = setup.build_backbone_from(cfg, self.device, init)
        self.preprocess, self.preprocess_origin = input_preprocess(cfg, self.backbone, init)
        self.embedding_size = int(self.backbone.embedding_size)
        return init

    def _build_objectives_and_method(self, cfg: DictConfig) -> None:
        """Teachers, objectives, the method, and what the step feeds them (attributes, features)."""
        # objectives (teacher tables are filled by rank 0 first; the other ranks then read the cache)
        self.teachers = TeacherBank(
            [to_dict(t) for t in cfg.teachers],
            self.dataset,
            cfg.run.cache_dir,
            cfg.run.progress and self.dist.is_main,
        )
        specs = setup.objective_specs(cfg.objectives)
        ctx = ObjectiveContext(
            embedding_size=self.embedding_size,
            num_classes=self.data.num_classes,
            labels=self.data.labels,
            classes=self.data.classes,
            dataset=self.dataset,
            seed=cfg.run.seed,
            head_config=to_dict(cfg.head),
            teacher=self.teachers.table if self.teachers else None,
            teacher_names=self.teachers.names,
            attributes=self.data.attributes,
            accumulate_steps=self.accumulate,
            progress=cfg.run.progress and self.dist.is_main,
        )
        first = not self.dist.enabled or self.dist.is_main
        if self.teachers and not first:
            D.barrier()
        self.objectives, self.objective_weights = setup.build_objectives(
            specs, ctx, self.data.attributes.names
        )
        self.objectives.to(self.device)
        if self.teachers and self.dist.enabled and first:
            D.barrier()
        self.method = setup.build_method(
            cfg,
            MethodContext(
                self.backbone,
                self.objectives,
                self.embedding_size,
                self.data.num_classes,
                self.data.labels,
                self.data.classes,
                self.dataset,
                self.data.attributes,
                cfg.run.seed,
            ),
        ).to(self.device)
        if not self.method.trains_backbone:
            self.backbone.requires_grad_(False)
        self.attribute_names = sorted({a for o in self.objectives.values() for a in o.needs.attributes})
        self.feature_names = setup.needed_features(self.objectives, self.backbone, self.backbone_meta["name"])
        self.attribute_columns = {
            n: tuple(torch.from_numpy(a) for a in self.data.attributes.numeric(n))
            for n in self.attribute_names
        }
        self.sharded_owners = {
            k: v for o in self.objectives.values() for k, v in o.sharded_parameters().items()
        }

    def _build_batches(self, cfg: DictConfig) -> None:
        """The batch sampler (an objective's, or shuffled epochs) and the number of steps."""
        # batches: an objective's sampler, or shuffled epochs
        request = SamplerRequest(
            self.data.labels,
            cfg.data.batch_size,
            cfg.run.seed,
            self.dist.rank,
            self.dist.world_size,
            self.data.attributes,
        )
        provider = next((o for o in self.objectives.values() if o.needs.sampler), None)
        self.batch_sampler = provider.batch_sampler(request) if provider is not None else None
        self.branch_names = tuple(getattr(self.batch_sampler, "branch_names", ("all",)))
        self.extra_provider = next((o for o in self.objectives.values() if o.needs.extra_branch), None)
        self.sampler = ResumableSampler(len(self.dataset), cfg.run.seed, self.dist.rank, self.dist.world_size)
        if self.batch_sampler is not None:
            self.steps_per_epoch = len(self.batch_sampler)
        else:
            self.steps_per_epoch = len(self.sampler) // cfg.data.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"data.batch_size={cfg.data.batch_size} (per rank) is larger than the {len(self.sampler)} "
                f"training images this rank gets ({len(self.dataset)} over {self.dist.world_size} ranks)"
            )
        self.total_steps = self.steps_per_epoch * cfg.optim.epochs

    def _prepare_model(self, cfg: DictConfig) -> None:
        """Fine-tuning and the head's start, then DDP and torch.compile around the backbone."""
        # fine-tuning options (freezing before DDP sees the parameters) and the head's start (not when resuming:
        # the checkpoint brings the head)
        self.finetune = FineTuning(cfg, self.backbone, self.steps_per_epoch, self.method.trains_backbone)
        self.head_init_record: dict[str, Any] = {"name": str(cfg.finetune.head_init)}
        if self.resume_checkpoint() is None:
            self.head_init_record = HEAD_INITS.get(str(cfg.finetune.head_init))(self)
        self.model: nn.Module = self.backbone
        if self.dist.enabled and self.method.trains_backbone and self.finetune.trainable:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.backbone, device_ids=ids, broadcast_buffers=True)
            if self.device.type == "cuda" and cfg.run.ddp_fp16_compress:
                from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

                self.model.register_comm_hook(None, default_hooks.fp16_compress_hook)
        self.ddp_param_ids = (
            {id(p) for p in self.backbone.parameters()} if self.model is not self.backbone else set()
        )
        self.ddp = self.model if self.model is not self.backbone else None
        # torch.compile wraps the (DDP) backbone for the step only; checkpoints keep saving self.backbone
        self.compiled = compile_default(self.device, cfg.run.compile) and self.method.trains_backbone
        if self.compiled:
            self.model = torch.compile(self.model)
        if self.device.type == "cuda" and not cfg.run.deterministic:
            torch.backends.cudnn.benchmark = True  # fixed 112x112 input: autotuned conv algorithms pay
        self.wrapped_model = self.model  # the head-only phase runs the bare backbone (no DDP hooks)

    def _build_optimisers(self, cfg: DictConfig) -> None:
        """Optimisers, schedules and gradient scalers; progress, the training state and the step engine."""
        trained = ([self.backbone] if self.method.trains_backbone else []) + [self.objectives, self.method]
        self.optimizers, self.schedules, self.grad_clip = setup.build_optimizers(
            cfg, trained, self.method, self.steps_per_epoch, self.total_steps, self.finetune.group_settings()
        )
        self.scalers = {name: make_scaler(self.device, self.precision) for name in self.optimizers}
        self.progress = Progress()
        self.state = TrainingState(self)
        self.engine = StepEngine(self)

    # -------------------------------------------------------------------------------------------- helpers
    def resume_checkpoint(self) -> str | None:
        """The checkpoint ``run.resume`` continues from (``auto``: ``last.pt`` if there is one), or None."""
        resume = self.cfg.run.resume
        if resume == "auto":
            last = self.ckpt_dir / "last.pt"
            return str(last) if last.is_file() else None
        return resume or None

    def meta(self) -> dict[str, Any]:
        margin = find_margin(self.objectives)
        return {
            "backbone": self.backbone_meta,
            "embedding_size": self.embedding_size,
            "preprocess": {**self.preprocess.to_dict(), "origin": self.preprocess_origin},
            "head": {"name": margin.head_name, "num_classes": margin.num_classes}
            if margin is not None
            else None,
            "objectives": {
                n: {**o.describe(), "weight": self.objective_weights[n]} for n, o in self.objectives.items()
            },
            "method": self.method.describe(),
            "teachers": self.teachers.describe(),
            "data": {
                "num_rows": len(self.data.labels),
                "num_classes": self.data.num_classes,
                "sources": self.data.sources,
                "attributes": self.data.attributes.summary(),
            },
            "world_size": self.dist.world_size,
            "train_config": self.config_dict,
            "faceforge_version": __version__,
            "torch_version": str(torch.__version__),
        }

    def save(self, name: str = "last.pt", full: bool = True) -> Path:
        """Every rank takes part (a sharded head is gathered); rank 0 writes one consolidated file."""
        state = self.state.state(full)
        path = self.ckpt_dir / name
        if self.dist.is_main:
            atomic_torch_save(state, path)
        D.barrier()
        return path

    def resume(self, path: str | Path) -> None:
        self.state.resume(path)

    def extra_images(self, batch: Any, step: int) -> torch.Tensor | None:
        if self.extra_provider is None:
            return None
        return self.extra_provider.extra_images(batch.images, batch.indices, batch.labels, step)

    def _loader(self) -> DataLoader:
        workers = self.cfg.data.num_workers
        batching: dict[str, Any] = (
            {"batch_sampler": self.batch_sampler}
            if self.batch_sampler is not None
            else {"batch_size": self.cfg.data.batch_size, "sampler": self.sampler, "drop_last": True}
        )
        return DataLoader(
            TaggedRows(self.dataset),
            num_workers=workers,
            collate_fn=collate_faces,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
            **batching,
        )

    def _set_epoch(self, epoch: int, step_in_epoch: int) -> None:
        if self.batch_sampler is not None:
            self.batch_sampler.set_epoch(epoch, start_batch=step_in_epoch)
        else:
            self.sampler.set_epoch(epoch, start=step_in_epoch * self.cfg.data.batch_size)
        self.dataset.set_epoch(epoch)

    def train_step(self, batch: Any) -> dict[str, float]:
        """One optimiser step (the method's step) on a collated batch; returns the logged numbers."""
        step = self.progress.global_step
        for name, opt in self.optimizers.items():
            lr = learning_rate(step, self.schedules[name])
            self.engine.lr[name] = lr
            for group in opt.param_groups:
                group["lr"] = lr * self.finetune.lr_factor(group, step)
        self.engine.step = step
        self.backbone.train(self.method.trains_backbone)
        self.model = self.wrapped_model if self.finetune.before_step(step) else self.backbone
        self.engine.log(self.finetune.logs(self.engine.lr.get("main", 0.0), step))
        self.objectives.train()
        self.method.train()
        self.method.step(self.engine, batch)
        return self.engine.finish_logs()

    # ------------------------------------------------------------------------------------------------ fit
    def fit(self) -> dict[str, Any]:
        cfg, main, world = self.cfg, self.dist.is_main, self.dist.world_size
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
            for stale in remove_stale_temporaries(self.ckpt_dir):
                log.warning("removed %s, left by a save that was interrupted", stale)
        resume = self.resume_checkpoint()
        if resume:
            self.resume(resume)
        self.progress.skipped_images = list(
            dict.fromkeys(self.progress.skipped_images + self.dataset.preload_skipped)
        )
        # images known unusable (listed once each, with the reason) and rows known good, for data.max_skipped
        self._bad = set(self.progress.skipped_images)
        self._good: set[int] = set()
        self._good_preloaded = (
            len(self.dataset) - len(self.dataset.preload_skipped) if self.cfg.data.preload else 0
        )
        if self.dataset.preload_skipped:
            self._check_skipped(at_least=1)
        log.info(
            "training %s with objectives %s on %d images of %d identities, %d steps/epoch, precision %s, %d rank(s)",
            self.backbone_meta["name"],
            dict(self.objective_weights),
            len(self.data.labels),
            self.data.num_classes,
            self.steps_per_epoch,
            self.precision,
            world,
        )
        tlog = TrainingLog(
            self.run_dir,
            self.total_steps,
            self.progress.global_step,
            cfg.run.log_every,
            cfg.data.batch_size * world,
            main,
            cfg.run.progress,
        )
        self.tlog = tlog
        steps_this_run, stopped_early, t_start = 0, False, time.perf_counter()
        evaluations: dict[str, Any] = {}
        while self.progress.epoch < cfg.optim.epochs:
            epoch = self.progress.epoch
            self._set_epoch(epoch, self.progress.step_in_epoch)
            for batch in self._loader():
                new = [f for f in dict.fromkeys(batch.skipped) if f not in self._bad]
                self.progress.skipped_images.extend(new)
                self._bad.update(new)
                self._good.update(batch.indices.tolist())
                self._check_skipped()
                if len(batch) == 0:
                    continue
                logs = self.train_step(batch)
                self.progress.global_step += 1
                self.progress.step_in_epoch += 1
                self.progress.images_seen += len(batch) * world
                steps_this_run += 1
                end = self.progress.step_in_epoch == self.steps_per_epoch
                tlog.step(logs, self.progress.global_step, epoch, self.engine.lr.get("main", 0.0), end)
                if cfg.run.save_every_steps and self.progress.global_step % cfg.run.save_every_steps == 0:
                    self.save()
                if cfg.run.max_steps and steps_this_run >= cfg.run.max_steps:
                    stopped_early = True
                    break
            if stopped_early:
                break
            self.progress.epoch += 1
            self.progress.step_in_epoch = 0
            self.save()
            every = cfg.eval.every_epochs
            if (
                self.evaluate_fn
                and every
                and self.progress.epoch % every == 0
                and self.progress.epoch < cfg.optim.epochs
            ):
                evaluations[f"epoch{self.progress.epoch}"] = self.evaluate(f"epoch{self.progress.epoch}")
        train_seconds = time.perf_counter() - t_start
        self.save()
        report = run_report(self, stopped_early, train_seconds, steps_this_run, tlog.history)
        if not stopped_early:
            report["model"] = str(self.save("model.pt", full=False))
            if self.evaluate_fn is not None:
                report["eval"] = self.evaluate("final")
        if evaluations:
            report["eval_during_training"] = evaluations
        if main:
            (self.run_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
        tlog.close()
        if self.progress.skipped_images:
            log.warning(
                "%d unreadable images were skipped (listed in %s)",
                len(self.progress.skipped_images),
                self.run_dir / "report.json",
            )
        return report

    def _check_skipped(self, at_least: int | None = None) -> None:
        """Stop when more than ``data.max_skipped`` of the distinct images read so far could not be used (after
        at least two batches' worth, so a few bad files early on do not stop a run that is mostly good)."""
        bad = len(self._bad)
        read = bad + max(len(self._good), self._good_preloaded)
        enough = at_least if at_least is not None else 2 * self.cfg.data.batch_size
        if read >= enough and bad > self.cfg.data.max_skipped * read:
            first = "; ".join(self.progress.skipped_images[:3])
            raise ValueError(
                f"{bad} of the {read} training images read so far could not be used (e.g. {first}): fix or "
                "align the data (faceforge align / prepare), or raise data.max_skipped="
                f"{self.cfg.data.max_skipped} if that many bad files are expected"
            )

    def evaluate(self, tag: str) -> dict[str, Any]:
        """Run the evaluation hook on the consolidated model (rank 0; the other ranks wait)."""
        path = self.save(f"eval_{tag}.pt", full=False) if tag != "final" else self.ckpt_dir / "model.pt"
        result: dict[str, Any] = {}
        if self.dist.is_main and self.evaluate_fn is not None:
            result = self.evaluate_fn(path, self.run_dir / f"eval_{tag}")
            self.tlog.evaluation(tag, result, self.progress.global_step)
            if tag != "final":
                path.unlink(missing_ok=True)
        D.barrier()
        return result
