"""The engine's services to a training step, and the standard step built from them.

A step (the standard one, or a :class:`~faceforge.engine.method.Method`'s own) never deals with DDP, precision,
gradient scaling, accumulation or clipping itself; it asks :class:`StepEngine`:

* ``micro_batches(batch)``: the batch cut into ``optim.accumulate_steps`` equal parts, each with the context
  that skips DDP's gradient all-reduce on all but the last;
* ``embed(x)``: the backbone (DDP-wrapped under torchrun) under the run's autocast, fp32 out;
* ``objectives(step_batch)``: every objective of the run, ``sum_o weight_o * sum_t term_{o,t}``, each term logged,
  a non-finite total stopped with the step, the learning rate and what to change;
* ``backward(loss, name)`` / ``optimizer_step(name)``: backward through optimiser ``name``'s gradient scaler; then
  gradients of parameters outside DDP averaged over ranks (a sharded head's blocks excepted), unscaled, clipped
  by the global norm (a sharded block's squared norm summed over ranks) and stepped.

Logged numbers are means over the step's micro-batches and over ranks (one all-reduce per step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from faceforge.core import distributed as D
from faceforge.core.precision import autocast
from faceforge.data.dataset import Batch
from faceforge.objectives.base import StepBatch

__all__ = ["NonFiniteLossError", "StepEngine"]


class NonFiniteLossError(RuntimeError):
    pass


class StepEngine:
    """Services for one run's steps (built by the trainer; see the module doc)."""

    def __init__(self, trainer: Any) -> None:
        self.t = trainer
        self.device: torch.device = trainer.device
        self.precision: str = trainer.precision
        self.dist = trainer.dist
        self.accumulate: int = trainer.accumulate
        self.step = 0
        self.lr: dict[str, float] = {}
        self.logs: dict[str, float] = {}

    # --------------------------------------------------------------------------------------------- basics
    @property
    def objectives(self) -> nn.ModuleDict:
        return self.t.objectives

    def preprocess(self, images: Tensor) -> Tensor:
        return self.t.preprocess(images, self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision)

    def embed(self, x: Tensor) -> Tensor:
        """fp32 embeddings of a preprocessed batch through the (DDP-wrapped) backbone under the run's autocast."""
        with self.autocast():
            return self.t.model(x).float()

    def embed_with_features(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Embeddings and the backbone's auxiliary outputs (``forward(x, return_features=True)``), one forward."""
        with self.autocast():
            emb, features = self.t.model(x, return_features=True)
        return emb.float(), {k: v.float() for k, v in features.items()}

    def log(self, values: dict[str, float], scale: float = 1.0) -> None:
        for k, v in values.items():
            self.logs[k] = self.logs.get(k, 0.0) + float(v) * scale

    def micro_batches(self, batch: Batch) -> Iterator[tuple[Batch, contextlib.AbstractContextManager]]:
        k = self.accumulate
        parts = [batch.images.chunk(k), batch.labels.chunk(k), batch.indices.chunk(k)]
        branches = batch.branch.chunk(k) if batch.branch is not None else [None] * k
        mirrored = batch.mirrored.chunk(k) if batch.mirrored is not None else [None] * k
        for i, (im, lab, idx, br, mir) in enumerate(zip(*parts, branches, mirrored, strict=True)):
            last = i == k - 1
            ddp = getattr(self.t, "ddp", None)  # the DDP module itself (self.t.model may be compiled)
            sync = ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext()
            yield Batch(im, lab, idx, [], br, mir), sync

    def step_batch(
        self,
        micro: Batch,
        embeddings: Tensor,
        extra: Tensor | None = None,
        features: dict[str, Tensor] | None = None,
    ) -> StepBatch:
        """The objectives' view of a micro-batch whose images gave ``embeddings`` (and ``extra``, ``features``)."""
        idx = micro.indices
        attrs = {}
        for name in self.t.attribute_names:
            values, mask = self.t.attribute_columns[name]
            attrs[name] = (values[idx].to(self.device), mask[idx].to(self.device))
        labels = micro.labels.to(self.device, non_blocking=True)
        branch = micro.branch.to(self.device) if micro.branch is not None else None
        mirrored = micro.mirrored.to(self.device) if micro.mirrored is not None else None
        return StepBatch(
            embeddings, labels, idx, self.step, branch, self.t.branch_names, extra, attrs, features, mirrored
        )

    # ----------------------------------------------------------------------------------------- objectives
    def objectives_loss(self, batch: StepBatch, scale: float = 1.0) -> Tensor:
        """``sum_o weight_o * sum_t term_{o,t}`` over the run's objectives; terms and logs are logged (times
        ``scale``, e.g. 1/k for a micro-batch) as ``<objective>`` (its main term ``loss``),
        ``<objective>/<term>`` and ``<objective>/<log>``, the weighted total as ``loss``."""
        total: Tensor | None = None
        logs: dict[str, float] = {}
        for name, objective in self.t.objectives.items():
            out = objective(batch)
            weight = self.t.objective_weights[name]
            for term, value in out.terms.items():
                total = weight * value if total is None else total + weight * value
                logs[name if term == "loss" else f"{name}/{term}"] = float(value.detach())
            logs.update({f"{name}/{k}": v for k, v in out.logs.items()})
        if total is None:
            raise ValueError("the run has no objective: set objectives (e.g. objectives.margin={})")
        logs["loss"] = float(total.detach())
        if not torch.isfinite(total.detach()):
            bad = {k: v for k, v in logs.items() if not torch.isfinite(torch.tensor(v))}
            raise NonFiniteLossError(
                f"loss is {logs['loss']} ({bad}) at step {self.step} (lr {self.lr.get('main', 0.0):.4g}, "
                f"precision {self.precision}); lower optim.lr, raise optim.warmup_epochs, lower the objective "
                f"weights, or use run.precision=fp32. The last good checkpoint is {self.t.ckpt_dir / 'last.pt'}"
            )
        self.log(logs, scale)
        return total

    def standard_step(self, batch: Batch) -> None:
        """Every objective on every micro-batch (with the extra branch, if one objective adds it, in the same
        forward), one step of the main optimiser."""
        extra = self.t.extra_images(batch, self.step)
        x = self.preprocess(batch.images)
        x_extra = self.preprocess(extra) if extra is not None else None
        self.zero_grad("main")
        k = self.accumulate
        for obj in self.t.objectives.values():
            obj.begin_step(k)
        # the extra branch's row i is made from batch row i: it is cut into the same micro-batches
        extras = x_extra.chunk(k) if x_extra is not None else [None] * k
        micros = self.micro_batches(Batch(x, batch.labels, batch.indices, [], batch.branch, batch.mirrored))
        for (micro, sync), xe in zip(micros, extras, strict=True):
            with sync:
                xs = micro.images
                both = xs if xe is None else torch.cat([xs, xe])
                features: dict[str, Tensor] | None = None
                if self.t.feature_names:
                    emb, features = self.embed_with_features(both)
                    features = {n: features[n][: len(xs)] for n in self.t.feature_names}
                else:
                    emb = self.embed(both)
                emb, extra_emb = (emb, None) if xe is None else (emb[: len(xs)], emb[len(xs) :])
                loss = self.objectives_loss(self.step_batch(micro, emb, extra_emb, features), scale=1.0 / k)
                self.backward(loss / k, "main")
        for obj in self.t.objectives.values():
            obj.end_step()
        self.optimizer_step("main")

    # ------------------------------------------------------------------------------------------ optimisers
    def zero_grad(self, name: str = "main") -> None:
        self.t.optimizers[name].zero_grad(set_to_none=True)

    def backward(self, loss: Tensor, name: str = "main") -> None:
        scaler = self.t.scalers.get(name)
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def optimizer_step(self, name: str = "main") -> None:
        opt = self.t.optimizers[name]
        params = [p for g in opt.param_groups for p in g["params"]]
        self._average_gradients(params)
        scaler = self.t.scalers.get(name)
        if scaler is not None:
            scaler.unscale_(opt)
        self._clip(params, float(self.t.grad_clip[name]))
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()

    def _average_gradients(self, params: list[nn.Parameter]) -> None:
        """Parameters outside DDP (heads, projections, a method's modules) get their gradients averaged over
        ranks here; a sharded head's class blocks are per rank by design."""
        if not self.dist.enabled:
            return
        skip = self.t.ddp_param_ids | set(self.t.sharded_owners)
        for p in params:
            if p.grad is not None and id(p) not in skip:
                D.all_reduce(p.grad).div_(self.dist.world_size)

    def _clip(self, params: list[nn.Parameter], max_norm: float) -> None:
        """Clip by the global gradient norm; a sharded head's blocks add their squared norms over ranks."""
        if max_norm <= 0:
            return
        sharded = self.t.sharded_owners
        params = [p for p in params if p.grad is not None]
        sq = torch.zeros(2, dtype=torch.float64, device=self.device)
        for p in params:
            sq[1 if id(p) in sharded else 0] += p.grad.detach().double().pow(2).sum()
        if sharded and self.dist.enabled:
            shard_sq = sq[1:].clone()
            D.all_reduce(shard_sq)
            sq[1] = shard_sq[0]
        total = float(sq.sum().sqrt())
        coef = max_norm / (total + 1e-6)
        if coef < 1.0:
            for p in params:
                p.grad.detach().mul_(coef)

    def finish_logs(self) -> dict[str, float]:
        """This step's logged numbers, averaged over ranks (one all-reduce); resets the step's logs."""
        logs, self.logs = self.logs, {}
        if not self.dist.enabled or not logs:
            return logs
        keys = sorted(logs)
        vec = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=self.device)
        D.all_reduce(vec).div_(self.dist.world_size)
        return dict(zip(keys, vec.tolist(), strict=True))
