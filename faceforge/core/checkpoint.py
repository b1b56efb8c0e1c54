"""Checkpoints: written atomically, loaded with ``weights_only=True``, carrying what is needed to use the model.

A faceforge checkpoint is a dict with ``format: "faceforge-checkpoint"``, ``version: 2``, ``meta`` (backbone name +
kwargs, embedding size, preprocessing: input size, colour order, mean/std, alignment template; the resolved
training config, versions) and ``backbone`` (a state dict); a training run adds its objectives', method's and
optimisers' states (layout: :mod:`faceforge.engine.state`).

Only tensors, numbers, strings, lists, tuples and dicts are stored, so ``torch.load(weights_only=True)``
reads it and an untrusted file cannot run code. Writes go to a temporary file in the same folder, are
fsynced, then renamed over the target: a crash leaves either the old or the new checkpoint, never half.

The metadata is not trusted either: :func:`check_model_meta` checks its types and ranges (backbone name
and keyword arguments of plain values, ``embedding_size`` in [1, 65536], preprocessing with an input size
in [8, 4096], RGB/BGR and three finite means and non-zero stds) and that the weights are a dict of tensors,
so a hostile file gives one :class:`CheckpointError` naming it, never a TypeError from deep inside, and no
number in it sizes an allocation unchecked. :func:`load_checkpoint` checks the fields that are present;
code that builds a model requires them. (Whether the weights fit the named backbone is checked where
backbones are known: :func:`faceforge.embedders.checkpoint.backbone_from_checkpoint`.)
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import torch

from faceforge.core.atomic import atomic_writer
from faceforge.core.errors import InputError

FORMAT = "faceforge-checkpoint"
VERSION = 2  # 2: objectives, method and optimizers by name (1: head, distill, optimizer)


#: bounds of the metadata numbers (far outside any face model, far inside what would exhaust memory)
MAX_EMBEDDING_SIZE = 65536
INPUT_SIZE_RANGE = (8, 4096)


class CheckpointError(InputError):
    """A file that is not a usable faceforge checkpoint; the message names the file and the fix."""


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    with atomic_writer(path) as fh:
        torch.save(obj, fh)
    return Path(path)


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
    check_model_meta(ckpt, p)
    return ckpt


def _plain(value: Any) -> bool:
    """A JSON-like scalar (finite if a number) or a list/tuple of them."""
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, bool | int | str)


def check_model_meta(ckpt: dict[str, Any], path: str | Path, require: bool = False) -> None:
    """Raise :class:`CheckpointError` naming ``path`` unless the metadata a model is built from is sane.

    Checked, when present (``require=True``: they must be present): ``meta.backbone`` =
    ``{"name": str, "kwargs": {str: plain value}}``; ``meta.embedding_size`` an int in
    [1, MAX_EMBEDDING_SIZE]; ``meta.preprocess`` a dict with ``input_size`` in INPUT_SIZE_RANGE, ``colour``
    RGB/BGR and 3 finite ``mean``/``std`` (std != 0). Always: ``meta`` is a dict and ``backbone`` (the
    weights) a dict of tensors. Other metadata (head, config, versions) is left alone.
    :func:`load_checkpoint` runs it with ``require=False``; whatever builds a model from the file runs
    it with ``require=True``.
    """
    fix = "the file is damaged or was not written by faceforge; use the model.pt written by 'faceforge train'"

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: hostile or broken checkpoint metadata: {what}; {fix}")

    meta = ckpt.get("meta")
    if not isinstance(meta, dict):
        raise bad(f"'meta' is a {type(meta).__name__}, not a dict")
    weights = ckpt.get("backbone")
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in weights.items()
    ):
        raise bad("'backbone' (the weights) must map parameter names to tensors")
    for key in ("backbone", "embedding_size", "preprocess"):
        if require and key not in meta:
            raise bad(f"'meta.{key}' is missing")
    if "backbone" in meta:
        bb = meta["backbone"]
        if not isinstance(bb, dict) or not isinstance(bb.get("name"), str):
            raise bad("'meta.backbone' must be a dict with a string 'name'")
        kwargs = bb.get("kwargs", {})
        if not isinstance(kwargs, dict) or not all(
            isinstance(k, str) and _plain(v) for k, v in kwargs.items()
        ):
            raise bad("'meta.backbone.kwargs' must map names to plain numbers, strings or booleans")
    if "embedding_size" in meta:
        size = meta["embedding_size"]
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_EMBEDDING_SIZE:
            raise bad(f"'meta.embedding_size' is {size!r}, not an integer in [1, {MAX_EMBEDDING_SIZE}]")
    if "preprocess" in meta:
        _check_preprocess(meta["preprocess"], bad)


def _check_preprocess(pre: Any, bad: Any) -> None:
    if not isinstance(pre, dict):
        raise bad("'meta.preprocess' is not a dict")
    insize = pre.get("input_size", 112)
    lo, hi = INPUT_SIZE_RANGE
    if isinstance(insize, bool) or not isinstance(insize, int) or not lo <= insize <= hi:
        raise bad(f"'meta.preprocess.input_size' is {insize!r}, not an integer in [{lo}, {hi}]")
    if pre.get("colour", "RGB") not in ("RGB", "BGR"):
        raise bad(f"'meta.preprocess.colour' is {pre.get('colour')!r}, not 'RGB' or 'BGR'")
    for key in ("mean", "std"):
        v = pre.get(key, (0.5, 0.5, 0.5))
        ok = (
            isinstance(v, list | tuple)
            and len(v) == 3
            and all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in v)
        )
        if not ok or (key == "std" and any(x == 0 for x in v)):
            raise bad(
                f"'meta.preprocess.{key}' is {v!r}, not three finite numbers"
                + (" (non-zero)" if key == "std" else "")
            )
