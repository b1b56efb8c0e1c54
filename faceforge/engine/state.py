"""The training state of a run: what a checkpoint holds, how it is written, resumed, and how a run starts from
another run's weights.

A faceforge checkpoint (format ``faceforge-checkpoint``, version 2; :mod:`faceforge.core.checkpoint` writes it
atomically and reads it with ``weights_only=True``)::

    meta:        backbone name + kwargs, embedding size, preprocessing, head {name, num_classes}, objectives and
                 method descriptions, data description, the resolved training config, versions; predicts (what
                 the output is: an identity embedding, a quality score); init (what run.init copied, if used,
                 with the file's SHA-256 and its own import record and init); finetune (the fine-tuning options,
                 what they froze, and how the head started)
    backbone:    state dict (all that ``eval``, ``embed`` and ONNX export need)
    objectives:  {name: state}   (a sharded head gathered into one [C, D] weight)
    method:      state of the method's own modules (or None)
    progress:    epoch, step_in_epoch, global_step, images_seen, skipped_images
    (training checkpoints, ``last.pt``, also) optimizers {name: state, per-class rows of a sharded head gathered},
    scalers {name: state}, rng

A run saved at one world size resumes at any other. Resuming checks that the data and the batch layout are those
of the saved run (otherwise "exact resume" would silently continue on another schedule) and names what changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from faceforge.core.checkpoint import (
    FORMAT,
    VERSION,
    CheckpointError,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from faceforge.core.schema import TrainConfig, to_dict
from faceforge.engine.init_source import InitSource
from faceforge.objectives.margin import find_margin

log = logging.getLogger(__name__)

#: ``meta.predicts`` of a backbone without a ``predicts`` attribute
IDENTITY_EMBEDDING = "identity embedding (compare with cosine similarity)"

#: config keys whose change makes an exact resume impossible (the sample order, the schedule or what trains moves)
RESUME_KEYS = (
    "data.batch_size",
    "optim.epochs",
    "optim.accumulate_steps",
    "run.seed",
    "finetune.backbone_lr_mult",
    "finetune.freeze",
    "finetune.freeze_bn",
    "finetune.head_only_epochs",
    "finetune.backbone_warmup_epochs",
)
#: the schema's defaults: a key a saved config lacks (written before the key existed) had its default value
_DEFAULTS: dict[str, Any] = to_dict(OmegaConf.structured(TrainConfig))


@dataclass
class Progress:
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    images_seen: int = 0
    skipped_images: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "images_seen": self.images_seen,
            "skipped_images": list(self.skipped_images),
        }


def _select(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _saved(cfg: dict[str, Any], dotted: str) -> Any:
    """A saved config's value, or the schema default where the saved config predates the key."""
    value = _select(cfg, dotted)
    return _select(_DEFAULTS, dotted) if value is None else value


class TrainingState:
    """Save / resume / init for a :class:`~faceforge.engine.loop.Trainer` (every rank calls save: a sharded head
    is gathered; rank 0 writes one file)."""

    def __init__(self, trainer: Any) -> None:
        self.t = trainer

    # ------------------------------------------------------------------------------------------------ save
    def state(self, full: bool = True) -> dict[str, Any]:
        t = self.t
        state: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "meta": {**t.meta(), **self.output_meta()},
            "backbone": t.backbone.state_dict(),
            "objectives": {name: obj.checkpoint_state() for name, obj in t.objectives.items()},
            "method": t.method.state_dict() if len(t.method.state_dict()) else None,
            "progress": t.progress.to_dict(),
        }
        if full:
            state["optimizers"] = {name: self._optimizer_state(opt) for name, opt in t.optimizers.items()}
            state["scalers"] = {n: s.state_dict() for n, s in t.scalers.items() if s is not None}
            state["rng"] = rng_state()
        return state

    def output_meta(self) -> dict[str, Any]:
        """``predicts``: what the backbone's output is (its ``predicts`` attribute, e.g. a quality score; else an
        identity embedding); ``init``: what ``run.init`` copied (see :meth:`init_from`), when it ran."""
        t = self.t
        out: dict[str, Any] = {"predicts": str(getattr(t.backbone, "predicts", IDENTITY_EMBEDDING))}
        if getattr(t, "init_record", None):
            out["init"] = t.init_record
        if getattr(t, "finetune", None) is not None:
            out["finetune"] = {**t.finetune.describe(), "head_init": t.head_init_record}
        return out

    def _optimizer_state(self, opt: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimiser state with the per-class state of sharded parameters gathered to all classes."""
        state = opt.state_dict()
        params = [p for g in opt.param_groups for p in g["params"]]
        for i, p in enumerate(params):
            owner = self.t.sharded_owners.get(id(p))
            if owner is None:
                continue
            # state_dict() shares the per-parameter dicts with the live optimiser: replace, never mutate
            per = state["state"][i] = dict(state["state"].get(i, {}))
            for k, v in list(per.items()):
                if torch.is_tensor(v) and v.shape == p.shape:
                    per[k] = owner.gather_rows(v)
        return state

    def _load_optimizer_state(self, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        params = [p for g in opt.param_groups for p in g["params"]]
        for i, p in enumerate(params):
            owner = self.t.sharded_owners.get(id(p))
            if owner is None or i not in state["state"]:
                continue
            per = state["state"][i] = dict(state["state"][i])
            for k, v in list(per.items()):
                if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == p.shape[1]:
                    per[k] = owner.take_rows(v)
        opt.load_state_dict(state)

    # ---------------------------------------------------------------------------------------------- resume
    def check_resumable(self, path: str | Path, ckpt: dict[str, Any]) -> None:
        """Stop, naming the key, when the saved run's data or batch layout differ from this run's."""
        t = self.t
        if ckpt.get("version") != VERSION or "optimizers" not in ckpt:
            raise CheckpointError(
                f"{path} holds model weights only or was written by an older faceforge; resume needs a "
                "training checkpoint (last.pt) of this version: start with run.init=PATH to fine-tune from it"
            )
        meta = ckpt["meta"]
        saved_cfg = meta.get("train_config") or {}
        now = t.config_dict
        changed = [k for k in RESUME_KEYS if _saved(saved_cfg, k) != _select(now, k)]
        data = meta.get("data") or {}
        if data.get("num_rows") != len(t.data.labels) or data.get("num_classes") != t.data.num_classes:
            changed.append(
                f"the data ({data.get('num_rows')} rows / {data.get('num_classes')} classes saved, "
                f"{len(t.data.labels)} / {t.data.num_classes} now)"
            )
        if meta.get("world_size", t.dist.world_size) != t.dist.world_size:
            log.warning(
                "%s was saved by %s rank(s) and resumes on %d: the weights, optimiser and head carry over, but "
                "the sample order of the rest of the epoch differs from an unbroken run",
                path,
                meta.get("world_size"),
                t.dist.world_size,
            )
        saved_objectives = sorted((meta.get("objectives") or {}).keys())
        if saved_objectives != sorted(t.objectives.keys()):
            changed.append(f"the objectives ({saved_objectives} saved, {sorted(t.objectives.keys())} now)")
        if changed:
            raise CheckpointError(
                f"cannot resume {path} exactly: {', '.join(changed)} changed. Restore the saved settings "
                "(its config is in run.dir/config.yaml), or start a new run.dir with run.init=PATH to "
                "fine-tune from its weights"
            )

    def resume(self, path: str | Path) -> None:
        t = self.t
        ckpt = load_checkpoint(path, map_location=t.device)
        self.check_resumable(path, ckpt)
        t.backbone.load_state_dict(ckpt["backbone"])
        for name, obj in t.objectives.items():
            obj.load_checkpoint_state(ckpt["objectives"][name])
        if ckpt.get("method"):
            t.method.load_state_dict(ckpt["method"])
        for name, opt in t.optimizers.items():
            self._load_optimizer_state(opt, ckpt["optimizers"][name])
        for name, scaler in t.scalers.items():
            if scaler is not None and name in ckpt.get("scalers", {}):
                scaler.load_state_dict(ckpt["scalers"][name])
        p = ckpt["progress"]
        t.progress = Progress(
            p["epoch"], p["step_in_epoch"], p["global_step"], p["images_seen"], list(p["skipped_images"])
        )
        set_rng_state(ckpt["rng"])
        saved_init = (ckpt["meta"].get("finetune") or {}).get("head_init")
        if saved_init is not None:  # how the head started, in the run that started it
            t.head_init_record = saved_init
        log.info("resumed from %s at epoch %d step %d", path, t.progress.epoch, t.progress.global_step)

    # ------------------------------------------------------------------------------------------------ init
    def init_from(self, source: str | Path | InitSource, head: bool = True, partial: bool = False) -> None:
        """``run.init``: copy backbone (and margin-head) weights from a faceforge checkpoint, e.g. to fine-tune.

        Only weights are taken; optimisers, schedule, progress and every other objective start fresh. The
        backbone must be the same architecture (``model=from_init`` builds the checkpoint's); the head the same
        kind and number of classes (``run.init_head=false`` keeps a fresh head, e.g. for new identities; a
        checkpoint without a head, such as an imported network, leaves the head fresh either way). ``partial``
        (``run.init_partial``): see :meth:`_init_partial`. What was taken, and the checkpoint's own origin
        (:meth:`~faceforge.engine.init_source.InitSource.lineage`: file hash, import record, its own init), is
        kept as ``trainer.init_record`` (checkpoint ``meta.init``).
        """
        t = self.t
        src = source if isinstance(source, InitSource) else InitSource.load(source, t.device)
        path, ckpt, meta = src.path, src.ckpt, src.meta
        theirs = meta.get("backbone", {})
        if partial:
            record = self._init_partial(path, ckpt["backbone"], theirs)
        else:
            mismatch = (
                f"run.init={path} holds a {theirs.get('name')} backbone with {theirs.get('kwargs')}, but this run "
                f"builds {t.backbone_meta['name']} with {t.backbone_meta['kwargs']}: set model= and its options to "
                "match the checkpoint (model=from_init builds its architecture), or run.init_partial=true to take "
                "the layers the two networks share"
            )
            if theirs.get("name") != t.backbone_meta["name"]:
                raise CheckpointError(mismatch)
            try:
                t.backbone.load_state_dict(ckpt["backbone"])
            except RuntimeError as exc:  # missing/unexpected keys or other shapes (e.g. embedding_size)
                raise CheckpointError(f"{mismatch} ({str(exc).splitlines()[0]})") from None
            record = {"path": str(path), "backbone": theirs, "partial": False}
        record.update({k: v for k, v in src.lineage().items() if k not in record})
        margin = find_margin(t.objectives)
        their_head = meta.get("head") or {}
        state = (ckpt.get("objectives") or {}).get("margin") or ckpt.get("head")
        has_head = bool(their_head) or state is not None
        record["head"] = bool(head and margin is not None and has_head)
        if record["head"]:
            if (
                their_head.get("name") != margin.head_name
                or their_head.get("num_classes") != margin.num_classes
                or state is None
            ):
                raise CheckpointError(
                    f"run.init={path} has a {their_head.get('name')} head over {their_head.get('num_classes')} "
                    f"classes; this run trains a {margin.head_name} head over {margin.num_classes}: set "
                    "run.init_head=false to start the head fresh"
                )
            margin.load_checkpoint_state(state)
        t.init_record = record
        log.info(
            "initialised %s from %s%s",
            "backbone and head" if record["head"] else "backbone",
            path,
            "" if has_head or margin is None else " (it has no head: the head starts fresh)",
        )

    def _init_partial(
        self, path: str | Path, weights: dict[str, torch.Tensor], theirs: dict
    ) -> dict[str, Any]:
        """Copy every backbone tensor (parameters and buffers) whose name this run's backbone also has.

        Names only here start fresh (``new``, e.g. a quality head), names only in the checkpoint are left out
        (``left_out``, e.g. the recognition head); a shared name with another shape stops the run, naming every
        such key, and so does a checkpoint with no name in common. Both lists are logged and returned. A backbone
        with a ``partial_init_prefix`` (``AIFRNet``: ``encoder.``) reads a checkpoint of its plain encoder.
        """
        t = self.t
        ours = t.backbone.state_dict()
        # a network built around another's encoder (an AIFR model around a plain recogniser) names that encoder's
        # weights with a prefix: the plain checkpoint's names are read with it
        prefix = str(getattr(t.backbone, "partial_init_prefix", ""))
        if prefix and not any(k in ours for k in weights) and any(prefix + k in ours for k in weights):
            weights = {prefix + k: v for k, v in weights.items()}
        shared = [k for k in ours if k in weights]
        wrong = [
            f"{k} ({list(weights[k].shape)} saved, {list(ours[k].shape)} here)"
            for k in shared
            if weights[k].shape != ours[k].shape
        ]
        where = (
            f"run.init={path} ({theirs.get('name')} {theirs.get('kwargs')}) into {t.backbone_meta['name']} "
            f"{t.backbone_meta['kwargs']}"
        )
        if wrong:
            raise CheckpointError(
                f"{where}: shared weights differ in shape: {'; '.join(wrong[:5])}"
                + (f" and {len(wrong) - 5} more" if len(wrong) > 5 else "")
                + ". Set the model options (e.g. model.scale, model.embedding_size) to those of the checkpoint"
            )
        if not shared:
            raise CheckpointError(
                f"{where}: the two networks have no weight name in common, so nothing would be initialised; "
                "give a checkpoint of the same encoder family"
            )
        new = [k for k in ours if k not in weights]
        left_out = [k for k in weights if k not in ours]
        with torch.no_grad():
            for k in shared:
                ours[k].copy_(weights[k])
        log.info(
            "run.init_partial: %d of %d backbone tensors copied from %s; fresh: %s; left out: %s",
            len(shared),
            len(ours),
            path,
            new or "none",
            left_out or "none",
        )
        return {
            "path": str(path),
            "backbone": theirs,
            "partial": True,
            "copied": len(shared),
            "new": new,
            "left_out": left_out,
        }
