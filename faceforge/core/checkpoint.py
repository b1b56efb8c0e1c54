"""Checkpoints: written atomically, loaded with ``weights_only=True``, carrying what is needed to use the model.

A faceforge checkpoint is a dict with ``format: "faceforge-checkpoint"``, ``version: 2``, ``meta`` (backbone name +
kwargs, embedding size, preprocessing: input size, colour order, mean/std, alignment template; the resolved
training config, versions) and ``backbone`` (a state dict); a training run adds its objectives', method's and
optimisers' states (layout: :mod:`faceforge.engine.state`).

Only tensors, numbers, strings, lists, tuples and dicts are stored, so ``torch.load(weights_only=True)``
reads it and an untrusted file cannot run code. Writes go to a temporary file in the same folder, are
fsynced, then renamed over the target: a crash leaves either the old or the new checkpoint, never half.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "faceforge-checkpoint"
VERSION = 2  # 2: objectives, method and optimizers by name (1: head, distill, optimizer)


class CheckpointError(ValueError):
    """A file that is not a usable faceforge checkpoint; the message names the file and the fix."""


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files that :func:`atomic_torch_save` leaves when killed mid-write; returns
    them. Only files of that pattern are touched."""
    d = Path(folder)
    if not d.is_dir():
        return []
    stale = sorted(f for f in d.glob(".*.tmp") if f.is_file())
    for f in stale:
        f.unlink(missing_ok=True)
    return stale


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a faceforge checkpoint (``weights_only=True``)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # the weights-only unpickler raises many types on foreign or hostile bytes
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [""]
        why = next((ln for ln in lines if "WeightsUnpickler error" in ln), lines[0])
        raise CheckpointError(
            f"{p} could not be read as a faceforge checkpoint ({type(exc).__name__}: {why}). "
            "Give a file written by 'faceforge train' (runs/<name>/checkpoints/*.pt); other models are "
            "evaluated through their own embedder (ONNX, dlib)."
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{p} is not a faceforge checkpoint (no '{FORMAT}' marker): give a file written by 'faceforge train'"
        )
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{p} was written by a newer faceforge (format version {ckpt['version']}); upgrade"
        )
    for key in ("meta", "backbone"):
        if key not in ckpt:
            raise CheckpointError(f"{p} is incomplete: missing '{key}'")
    return ckpt
