"""The one training loop: backbone -> head -> cross-entropy, with checkpoints that resume exactly.

Every step: uint8 batch -> :class:`Preprocess` -> backbone under autocast -> fp32 head -> CE -> backward ->
gradient clipping -> optimiser step, with the learning rate a pure function of the step
(:mod:`faceforge.engine.schedule`). Progress (epoch, position in the epoch, step), model, head (with its
buffers, e.g. CurricularFace ``t``), optimiser, scaler and RNG states go into every checkpoint, and the
sampler and augmentation are seeded from (seed, epoch, index), so a run stopped mid-epoch and resumed
gives the same weights as one that never stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

import faceforge
from faceforge.config import HEAD_LAYOUT_KEYS
from faceforge.core import distributed as D
from faceforge.core.checkpoint import (
    FORMAT,
    VERSION,
    CheckpointError,
    atomic_torch_save,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from faceforge.core.precision import autocast, make_scaler, resolve_device, resolve_precision
from faceforge.core.schema import to_dict
from faceforge.data.build import build_dataset
from faceforge.data.dataset import ResumableSampler, collate_faces
from faceforge.data.preprocess import Preprocess
from faceforge.distill.engine import Distillation, StepInputs
from faceforge.engine.optim import build_optimizer
from faceforge.engine.schedule import ScheduleSpec, learning_rate
from faceforge.models.backbones import build_backbone
from faceforge.models.heads import build_head
from faceforge.models.heads.criterion import LocalCriterion, LossOutput, ShardedCriterion, shard_range

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class Progress:
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    images_seen: int = 0
    skipped_images: list[str] = field(default_factory=list)


class Trainer:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.run.dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.device = resolve_device(cfg.run.device)
        self.dist = D.init_distributed(self.device.type)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.precision = resolve_precision(cfg.run.precision, self.device)
        if cfg.run.threads > 0:
            torch.set_num_threads(cfg.run.threads)
        if cfg.run.deterministic:
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(cfg.run.seed)

        # any data.format (folder, list, rec, tfr_index): a FaceDataset and the Samples describing it
        self.dataset, self.samples = build_dataset(cfg.data, seed=cfg.run.seed, progress=cfg.run.progress)
        self.preprocess = Preprocess(input_size=cfg.data.image_size)
        # labels of every dataset row: the labelled samples, then unlabelled faces (-1) for distillation
        self.labels_all = self.samples.labels
        if cfg.distill.method:
            self._join_unlabelled()
        self.distill: Distillation | None = None
        self.batch_sampler = None
        if cfg.distill.method:
            self.batch_sampler = Distillation.batch_sampler_for(
                cfg.distill.method,
                int(cfg.distill.balanced_k),
                self.labels_all,
                cfg.data.batch_size,
                cfg.run.seed,
                self.dist.rank,
                self.dist.world_size,
            )
        self.sampler = ResumableSampler(
            len(self.dataset), seed=cfg.run.seed, rank=self.dist.rank, world_size=self.dist.world_size
        )
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

        model_kwargs = {k: v for k, v in to_dict(cfg.model).items() if k != "name"}
        self.backbone_meta = {"name": cfg.model.name, "kwargs": model_kwargs}
        self.backbone = build_backbone(cfg.model.name, **model_kwargs).to(self.device)
        if cfg.run.channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        if cfg.run.gradient_checkpointing:
            if not hasattr(self.backbone, "set_gradient_checkpointing"):
                raise ValueError(
                    f"run.gradient_checkpointing=true is not supported by model {cfg.model.name}; "
                    "use an IResNet backbone or set run.gradient_checkpointing=false"
                )
            self.backbone.set_gradient_checkpointing(True)
        self.accumulate = int(cfg.optim.accumulate_steps)
        if self.accumulate < 1 or cfg.data.batch_size % self.accumulate:
            raise ValueError(
                f"optim.accumulate_steps={self.accumulate} must be >= 1 and divide data.batch_size="
                f"{cfg.data.batch_size} (each batch is split into that many equal micro-batches)"
            )
        head_kwargs = {k: v for k, v in to_dict(cfg.head).items() if k not in ("name", *HEAD_LAYOUT_KEYS)}
        sample_rate = float(cfg.head.get("sample_rate", 1.0))
        self.sharded = bool(cfg.head.get("sharded", False)) or sample_rate < 1.0
        self.embedding_size = int(self.backbone.embedding_size)
        num_classes = self.samples.num_classes
        if self.sharded:
            start, end = shard_range(num_classes, self.dist.rank, self.dist.world_size)
            if end <= start:
                raise ValueError(f"{num_classes} classes cannot be sharded over {self.dist.world_size} ranks")
            num_classes = end - start
        # a sharded head initialises only its own block (N(0, 0.01), like the full head)
        self.head = build_head(
            cfg.head.name, embedding_size=self.embedding_size, num_classes=num_classes, **head_kwargs
        ).to(self.device)
        self.criterion = (
            ShardedCriterion(self.head, self.samples.num_classes, sample_rate)
            if self.sharded
            else LocalCriterion(self.head)
        )
        if cfg.run.init:
            self.init_from(cfg.run.init, head=bool(cfg.run.init_head))
        self.model = self.backbone
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.backbone, device_ids=ids, broadcast_buffers=True)
            if self.device.type == "cuda" and cfg.run.ddp_fp16_compress:
                from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

                self.model.register_comm_hook(None, default_hooks.fp16_compress_hook)
        if cfg.distill.method:
            self._build_distillation()
        trained = [self.backbone, self.head] + ([self.distill] if self.distill is not None else [])
        self.optimizer = build_optimizer(trained, cfg.optim)
        self.schedule = ScheduleSpec(
            base_lr=cfg.optim.lr,
            total_steps=self.total_steps,
            warmup_steps=round(cfg.optim.warmup_epochs * self.steps_per_epoch),
            warmup_start_factor=cfg.optim.warmup_start_factor,
            decay=cfg.optim.schedule,
            power=cfg.optim.power,
            milestones=[round(m * self.steps_per_epoch) for m in cfg.optim.milestones],
            gamma=cfg.optim.gamma,
            min_lr=cfg.optim.min_lr,
        )
        self.scaler = make_scaler(self.device, self.precision)
        self.last_distill_logs: dict[str, float] = {}  # numbers of the last step's distillation term
        self.progress = Progress()
        self._writer = None

    # ---------------------------------------------------------------------------------------- distillation
    def _join_unlabelled(self) -> None:
        """``distill.unlabelled_root``: aligned faces without identities join the data with label -1."""
        cfg = self.cfg
        root = cfg.distill.unlabelled_root
        if not root:
            return
        if cfg.distill.method in ("ddl", "ekd"):
            raise ValueError(
                f"distill.method={cfg.distill.method} needs identity labels: remove distill.unlabelled_root"
            )
        if self.sharded_requested():
            raise ValueError(
                "distill.unlabelled_root needs a replicated head (head.sharded=false, sample_rate=1)"
            )
        import numpy as np

        from faceforge.data.dataset import FaceDataset
        from faceforge.data.samples import Samples
        from faceforge.distill.engine import JoinedFaces, scan_unlabelled

        files = scan_unlabelled(root)
        extra = FaceDataset(
            Samples(files, np.zeros(len(files), dtype=np.int64), ["unlabelled"]),
            augment=self.dataset.augment,
            seed=cfg.run.seed,
            image_size=cfg.data.image_size,
            preload=cfg.data.preload,
            progress=cfg.run.progress,
        )
        self.dataset = JoinedFaces(self.dataset, extra)
        self.labels_all = np.concatenate([self.samples.labels, np.full(len(files), -1, dtype=np.int64)])
        log.info("distillation: %d unlabelled faces from %s join the training data", len(files), root)

    def sharded_requested(self) -> bool:
        return bool(self.cfg.head.get("sharded", False)) or float(self.cfg.head.get("sample_rate", 1.0)) < 1.0

    def _build_distillation(self) -> None:
        cfg = self.cfg
        if cfg.distill.method in ("ddl", "ekd") and self.accumulate != 1:
            raise ValueError(
                f"distill.method={cfg.distill.method} builds structured batches: set optim.accumulate_steps=1"
            )
        # rank 0 fills the teacher cache first; the other ranks then read it
        if self.dist.enabled and not self.dist.is_main:
            D.barrier()
        self.distill = Distillation(
            cfg.distill,
            student_dim=self.embedding_size,
            labels=self.labels_all,
            num_classes=self.samples.num_classes,
            dataset=self.dataset,
            seed=cfg.run.seed,
            progress=cfg.run.progress and self.dist.is_main,
            classes=self.samples.classes,
        ).to(self.device)
        if self.dist.enabled and self.dist.is_main:
            D.barrier()

    # ----------------------------------------------------------------------------------------- checkpoints
    def meta(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone_meta,
            "embedding_size": self.embedding_size,
            "preprocess": self.preprocess.to_dict(),
            "head": {"name": self.cfg.head.name, "num_classes": self.samples.num_classes},
            "distill": self.distill.describe() if self.distill is not None else None,
            "train_config": to_dict(self.cfg),
            "faceforge_version": faceforge.__version__,
            "torch_version": str(torch.__version__),
        }

    def state(self, full: bool = True) -> dict[str, Any]:
        state: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "meta": self.meta(),
            "backbone": self.backbone.state_dict(),
            "head": self.criterion.full_state_dict(),
            "distill": self.distill.state_dict() if self.distill is not None else None,
            "progress": {
                "epoch": self.progress.epoch,
                "step_in_epoch": self.progress.step_in_epoch,
                "global_step": self.progress.global_step,
                "images_seen": self.progress.images_seen,
                "skipped_images": list(self.progress.skipped_images),
            },
        }
        if full:
            state["optimizer"] = self._optimizer_state(consolidate=True)
            state["scaler"] = self.scaler.state_dict() if self.scaler is not None else None
            state["rng"] = rng_state()
        return state

    def save(self, name: str = "last.pt", full: bool = True) -> Path:
        """Every rank takes part (a sharded head is gathered); rank 0 writes one consolidated file."""
        state = self.state(full)
        path = self.ckpt_dir / name
        if self.dist.is_main:
            atomic_torch_save(state, path)
        D.barrier()
        return path

    def _sharded_param_ids(self) -> set[int]:
        return {id(self.head.weight)} if self.sharded else set()

    def _optimizer_state(self, consolidate: bool) -> dict[str, Any]:
        """The optimiser state with per-class state of the sharded head weight gathered to all classes."""
        state = self.optimizer.state_dict()
        if not (self.sharded and consolidate):
            return state
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        idx = next(i for i, p in enumerate(params) if p is self.head.weight)
        # state_dict() shares the per-parameter dicts with the live optimiser: replace, never mutate
        per = state["state"][idx] = dict(state["state"].get(idx, {}))
        for k, v in list(per.items()):
            if torch.is_tensor(v) and v.shape == self.head.weight.shape:
                per[k] = self.criterion.gather_rows(v)
        return state

    def _load_optimizer_state(self, state: dict[str, Any]) -> None:
        if self.sharded:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            idx = next(i for i, p in enumerate(params) if p is self.head.weight)
            per = state["state"][idx] = dict(state["state"].get(idx, {}))
            for k, v in list(per.items()):
                if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == self.head.weight.shape[1]:
                    per[k] = self.criterion.take_rows(v)
        self.optimizer.load_state_dict(state)

    def init_from(self, path: str | Path, head: bool = True) -> None:
        """``run.init``: copy backbone (and head) weights from a faceforge checkpoint, e.g. to fine-tune.

        Only weights are taken; optimiser state, schedule, progress and any distillation modules start
        fresh. The backbone must be the same architecture; the head must have the same kind and number of
        classes (``run.init_head=false`` keeps a fresh head, e.g. for new identities).
        """
        ckpt = load_checkpoint(path, map_location=self.device)
        meta = ckpt["meta"]
        theirs = meta.get("backbone", {})
        mismatch = (
            f"run.init={path} holds a {theirs.get('name')} backbone with {theirs.get('kwargs')}, but this run "
            f"builds {self.backbone_meta['name']} with {self.backbone_meta['kwargs']}: set model= and its "
            "options to match the checkpoint"
        )
        if theirs.get("name") != self.backbone_meta["name"]:
            raise CheckpointError(mismatch)
        try:
            self.backbone.load_state_dict(ckpt["backbone"])
        except RuntimeError as exc:  # missing/unexpected keys or other shapes (e.g. embedding_size)
            raise CheckpointError(f"{mismatch} ({str(exc).splitlines()[0]})") from None
        if head:
            their_head = meta.get("head", {})
            if (
                their_head.get("name") != self.cfg.head.name
                or their_head.get("num_classes") != self.samples.num_classes
                or "head" not in ckpt
            ):
                raise CheckpointError(
                    f"run.init={path} has a {their_head.get('name')} head over {their_head.get('num_classes')} "
                    f"classes; this run trains a {self.cfg.head.name} head over {self.samples.num_classes}: "
                    "set run.init_head=false to start the head fresh"
                )
            self.criterion.load_full_state_dict(ckpt["head"])
        log.info("initialised %s from %s", "backbone and head" if head else "backbone", path)

    def resume(self, path: str | Path) -> None:
        ckpt = load_checkpoint(path, map_location=self.device)
        if "optimizer" not in ckpt:
            raise ValueError(f"{path} holds model weights only; resume needs a training checkpoint (last.pt)")
        self.backbone.load_state_dict(ckpt["backbone"])
        self.criterion.load_full_state_dict(ckpt["head"])
        if self.distill is not None:
            if not ckpt.get("distill"):
                raise ValueError(
                    f"{path} was trained without distillation; it cannot resume a distillation run"
                )
            self.distill.load_state_dict(ckpt["distill"])
        self._load_optimizer_state(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        p = ckpt["progress"]
        self.progress = Progress(
            p["epoch"], p["step_in_epoch"], p["global_step"], p["images_seen"], list(p["skipped_images"])
        )
        set_rng_state(ckpt["rng"])
        log.info("resumed from %s at epoch %d step %d", path, self.progress.epoch, self.progress.global_step)

    # ---------------------------------------------------------------------------------------------- loop
    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._writer

    def _loader(self) -> DataLoader:
        workers = self.cfg.data.num_workers
        batching: dict[str, Any] = (
            {"batch_sampler": self.batch_sampler}
            if self.batch_sampler is not None
            else {"batch_size": self.cfg.data.batch_size, "sampler": self.sampler, "drop_last": True}
        )
        return DataLoader(
            self.dataset,
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

    def train_step(
        self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None
    ) -> tuple[float, float]:
        """One optimiser step on a uint8 batch; returns the (global-batch mean) margin loss and top-1.

        With distillation, ``indices`` (dataset rows) select the teacher targets; the distillation
        term's numbers are kept in ``self.last_distill_logs``.
        """
        lr = learning_rate(self.progress.global_step, self.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        extra_images = None
        if self.distill is not None:
            if indices is None:
                raise ValueError("distillation needs the dataset indices of the batch")
            self.distill.step_counter = self.progress.global_step
            extra_images = self.distill.extra_images(images, indices)
        x = self.preprocess(images, self.device)
        x_extra = self.preprocess(extra_images, self.device) if extra_images is not None else None
        labels = labels.to(self.device, non_blocking=True)
        idx = indices if indices is not None else torch.arange(len(labels))
        self.backbone.train()
        self.head.train()
        if self.distill is not None:
            self.distill.train()
        self.optimizer.zero_grad(set_to_none=True)
        k = self.accumulate
        logged = torch.zeros(2, device=self.device)
        self.last_distill_logs = {}
        chunks = zip(x.chunk(k), labels.chunk(k), idx.chunk(k), strict=True)
        for i, (xs, ys, ids) in enumerate(chunks):
            last = i == k - 1
            # DDP all-reduces backbone gradients only on the last micro-batch
            sync = contextlib.nullcontext() if last or not self.dist.enabled else self.model.no_sync()
            with sync:
                # DDL's hard twins go through the same forward pass as the batch (one DDP forward per step)
                with autocast(self.device, self.precision):
                    emb = self.model(xs if x_extra is None else torch.cat([xs, x_extra]))
                emb = emb.float()
                emb, extra_emb = (emb, None) if x_extra is None else (emb[: len(xs)], emb[len(xs) :])
                if self.distill is None:
                    out = self.criterion(emb, ys)
                    total = out.loss
                else:
                    out, total = self._distill_losses(emb, extra_emb, ys, ids, k)
                loss = total / k
                # logged loss and accuracy are global-batch means (a local head's are averaged over ranks)
                part = torch.stack([out.loss.detach(), out.top1.to(out.loss.device)]).float()
                if not self.sharded:
                    D.all_reduce(part).div_(self.dist.world_size)
                logged += part / k
                if not torch.isfinite(part[0]) or not torch.isfinite(total.detach()):
                    raise NonFiniteLossError(
                        f"loss is {part[0].item()} (total with distillation {total.item()}) at step "
                        f"{self.progress.global_step} (lr {lr:.4g}, precision {self.precision}); lower optim.lr, "
                        f"raise optim.warmup_epochs, lower distill.weight, or use run.precision=fp32. The last "
                        f"good checkpoint is {self.ckpt_dir / 'last.pt'}"
                    )
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
        if self.scaler is not None:
            self._sync_head_grads()
            self.scaler.unscale_(self.optimizer)
            self._clip_gradients()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self._sync_head_grads()
            self._clip_gradients()
            self.optimizer.step()
        return float(logged[0]), float(logged[1])

    def _distill_losses(
        self,
        emb: torch.Tensor,
        extra: torch.Tensor | None,
        labels: torch.Tensor,
        indices: torch.Tensor,
        k: int,
    ) -> tuple[LossOutput, torch.Tensor]:
        """Margin loss on the rows the method trains the head with, plus the distillation term."""
        assert self.distill is not None
        rows = self.distill.margin_rows(len(labels), labels)
        if bool(rows.all()):
            out = self.criterion(emb, labels)
        elif bool(rows.any()):
            out = self.criterion(emb[rows], labels[rows])
        else:  # a batch of unlabelled faces only
            out = LossOutput(emb.sum() * 0.0, torch.zeros((), device=emb.device))
        kd = self.distill(StepInputs(emb, labels, indices, extra, margin=self.criterion))
        total = out.loss + kd.loss
        logs = {"distill_loss": float(kd.loss.detach()), **(kd.logs or {})}
        if kd.extra_margin is not None:
            total = total + kd.extra_margin
            logs["hard_margin_loss"] = float(kd.extra_margin.detach())
        for key, v in logs.items():
            self.last_distill_logs[key] = self.last_distill_logs.get(key, 0.0) + v / k
        return out, total

    def _sync_head_grads(self) -> None:
        """A replicated (non-sharded) head and the distillation parameters (projections) are not inside DDP:
        average their gradients over ranks here."""
        if not self.dist.enabled:
            return
        params = [] if self.sharded else list(self.head.parameters())
        if self.distill is not None:
            params += list(self.distill.parameters())
        for p in params:
            if p.grad is not None:
                D.all_reduce(p.grad).div_(self.dist.world_size)

    def _clip_gradients(self) -> None:
        """Clip by the global gradient norm; a sharded head's blocks add their squared norms over ranks."""
        max_norm = self.cfg.optim.grad_clip
        if max_norm <= 0:
            return
        sharded_ids = self._sharded_param_ids()
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        sq = torch.zeros(2, dtype=torch.float64, device=self.device)
        for p in params:
            sq[1 if id(p) in sharded_ids else 0] += p.grad.detach().double().pow(2).sum()
        if self.sharded:
            shard_sq = sq[1:].clone()
            D.all_reduce(shard_sq)
            sq[1] = shard_sq[0]
        total = float(sq.sum().sqrt())
        coef = max_norm / (total + 1e-6)
        if coef < 1.0:
            for p in params:
                p.grad.detach().mul_(coef)

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        main = self.dist.is_main
        world = self.dist.world_size
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        resume = cfg.run.resume
        if resume == "auto":
            resume = str(self.ckpt_dir / "last.pt") if (self.ckpt_dir / "last.pt").is_file() else None
        if resume:
            self.resume(resume)
        self.progress.skipped_images = list(
            dict.fromkeys(self.progress.skipped_images + self.dataset.preload_skipped)
        )
        log.info(
            "training %s + %s on %d images of %d identities, %d steps/epoch, precision %s, %d rank(s), "
            "head %s",
            cfg.model.name,
            cfg.head.name,
            len(self.samples),
            self.samples.num_classes,
            self.steps_per_epoch,
            self.precision,
            world,
            "sharded" if self.sharded else "replicated",
        )
        steps_this_run = 0
        t_start = time.perf_counter()
        history: list[dict[str, float]] = []
        bar = tqdm(
            total=self.total_steps,
            initial=self.progress.global_step,
            desc="train",
            unit="step",
            disable=not (cfg.run.progress and main),
            dynamic_ncols=True,
        )
        stopped_early = False
        while self.progress.epoch < cfg.optim.epochs:
            epoch = self.progress.epoch
            self._set_epoch(epoch, self.progress.step_in_epoch)
            self.dataset.set_epoch(epoch)
            window_loss, window_acc, window_n, t_window = 0.0, 0.0, 0, time.perf_counter()
            window_kd: dict[str, float] = {}
            for batch in self._loader():
                if batch.skipped:
                    self.progress.skipped_images.extend(batch.skipped)
                if len(batch) == 0:
                    continue
                loss, acc = self.train_step(batch.images, batch.labels, batch.indices)
                for key, v in self.last_distill_logs.items():
                    window_kd[key] = window_kd.get(key, 0.0) + v
                self.progress.global_step += 1
                self.progress.step_in_epoch += 1
                self.progress.images_seen += len(batch) * world
                steps_this_run += 1
                window_loss, window_acc, window_n = window_loss + loss, window_acc + acc, window_n + 1
                bar.update(1)
                if (
                    self.progress.global_step % cfg.run.log_every == 0
                    or self.progress.step_in_epoch == self.steps_per_epoch
                ):
                    dt = time.perf_counter() - t_window
                    ips = window_n * cfg.data.batch_size * world / max(dt, 1e-9)
                    rec = {
                        "step": self.progress.global_step,
                        "epoch": epoch,
                        "loss": window_loss / window_n,
                        "train_top1": window_acc / window_n,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "images_per_s": ips,
                        **{key: v / window_n for key, v in window_kd.items()},
                    }
                    history.append(rec)
                    if main:
                        for k in ("loss", "train_top1", "lr", "images_per_s", *window_kd):
                            self.writer.add_scalar(f"train/{k}", rec[k], self.progress.global_step)
                    if not cfg.run.progress and main:
                        log.info(
                            "step %d/%d epoch %d loss %.4f top1 %.3f lr %.4g %.1f img/s",
                            rec["step"],
                            self.total_steps,
                            epoch,
                            rec["loss"],
                            rec["train_top1"],
                            rec["lr"],
                            ips,
                        )
                    bar.set_postfix(
                        ep=epoch,
                        loss=f"{rec['loss']:.3f}",
                        top1=f"{rec['train_top1']:.2f}",
                        lr=f"{rec['lr']:.3g}",
                        img_s=f"{ips:.0f}",
                    )
                    window_loss, window_acc, window_n, t_window = 0.0, 0.0, 0, time.perf_counter()
                    window_kd = {}
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
            if (
                (cfg.eval.pairs or cfg.eval.benchmarks)
                and cfg.eval.every_epochs
                and self.progress.epoch % cfg.eval.every_epochs == 0
                and self.progress.epoch < cfg.optim.epochs
            ):
                self.evaluate(tag=f"epoch{self.progress.epoch}")
        bar.close()
        train_seconds = time.perf_counter() - t_start
        self.save()
        report: dict[str, Any] = {
            "completed": not stopped_early,
            "progress": {
                "epoch": self.progress.epoch,
                "global_step": self.progress.global_step,
                "images_seen": self.progress.images_seen,
            },
            "train_seconds_this_run": train_seconds,
            "images_per_s_this_run": steps_this_run * cfg.data.batch_size * world / max(train_seconds, 1e-9),
            "world_size": world,
            "head_layout": {
                "sharded": self.sharded,
                "sample_rate": float(cfg.head.get("sample_rate", 1.0)),
            },
            "num_images": len(self.samples),
            "num_identities": self.samples.num_classes,
            "precision": self.precision,
            "skipped_images": {
                "count": len(self.progress.skipped_images),
                "files": self.progress.skipped_images[:100],
            },
            "data_warnings": self.samples.warnings,
            "history": history,
        }
        if not stopped_early:
            model_path = self.save("model.pt", full=False)
            report["model"] = str(model_path)
            if cfg.eval.pairs or cfg.eval.benchmarks:
                report["eval"] = self.evaluate(tag="final")
        if main:
            (self.run_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
        if self._writer is not None:
            self._writer.close()
        if self.progress.skipped_images:
            log.warning(
                "%d unreadable images were skipped (listed in %s)",
                len(self.progress.skipped_images),
                self.run_dir / "report.json",
            )
        return report

    def evaluate(self, tag: str) -> dict[str, Any]:
        """Evaluate the consolidated model on ``eval.pairs`` and every ``eval.benchmarks`` spec (rank 0).

        Returns the pairs result (as :func:`faceforge.eval.lfw_benchmark.evaluate_pairs`) with, when
        benchmarks are configured, ``benchmarks``: ``{name: summary}``; every summary number is logged
        to tensorboard as ``eval/<benchmark name>/<number name>``.
        """
        from faceforge.embedders.checkpoint import CheckpointEmbedder

        path = self.save(f"eval_{tag}.pt", full=False) if tag != "final" else self.ckpt_dir / "model.pt"
        if not self.dist.is_main:  # rank 0 evaluates the consolidated model; the others wait
            D.barrier()
            return {}
        embedder = CheckpointEmbedder(path, device=str(self.device), batch_size=self.cfg.eval.batch_size)
        step = self.progress.global_step
        result: dict[str, Any] = {}
        if self.cfg.eval.pairs:
            from faceforge.eval.lfw_benchmark import evaluate_pairs

            result = evaluate_pairs(
                embedder,
                self.cfg.eval.pairs,
                self.cfg.eval.images or self.cfg.data.root,
                out_dir=self.run_dir / f"eval_{tag}",
                flip=self.cfg.eval.flip,
                progress=self.cfg.run.progress,
            )
            acc = result["verification"]["accuracy_mean"]
            self.writer.add_scalar("eval/pairs_accuracy", acc, step)
            if not math.isnan(acc):
                log.info("%s: pairs accuracy %.4f", tag, acc)
        if self.cfg.eval.benchmarks:
            from faceforge.eval.benchmarks import run_benchmarks

            run = run_benchmarks(
                embedder,
                list(self.cfg.eval.benchmarks),
                out_dir=self.run_dir / f"eval_{tag}" / "benchmarks",
                cache_dir=None,  # the model changes every evaluation
                flip=self.cfg.eval.flip,
                batch_size=self.cfg.eval.batch_size,
                progress=self.cfg.run.progress,
            )
            result["benchmarks"] = {name: rec["summary"] for name, rec in run["benchmarks"].items()}
            for name, summary in result["benchmarks"].items():
                for key, value in summary.items():
                    if isinstance(value, int | float) and math.isfinite(value):
                        self.writer.add_scalar(f"eval/{name}/{key}", value, step)
                log.info("%s: %s %s", tag, name, {k: v for k, v in summary.items() if v is not None})
        if tag != "final":
            path.unlink(missing_ok=True)
        D.barrier()
        return result
