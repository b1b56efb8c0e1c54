"""Running a trained model's attribute heads on aligned faces (``faceforge attributes``).

An attribute head is an objective of a run whose trained module predicts a per-image attribute; the registry
:data:`ATTRIBUTE_HEADS` maps the objective type to a builder ``(checkpoint, objective name) -> head`` where a head
has ``feature`` (the backbone feature it reads), ``columns`` (the attribute names it writes) and
``predict(feature map) -> {column: values [N]}``. Registered: ``age`` (MTLFace's estimator on ``X_age``: the DEX
expected age, and the age group of the group head).

:class:`AttributePredictor` loads the backbone and the heads from one checkpoint and predicts in fp32, eval mode
(batch statistics are the trained running means); with ``flip`` the expected age and the group logits are
averaged over the face and its mirror image before the group is decided. :func:`predict_folder` reads a folder or list of faces, skips (and lists, with the
reason) every unreadable or wrongly sized image, and returns rows keyed by the path relative to the folder (or
to the list file's folder), the key of an attribute sidecar (``data.attributes``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from faceforge.core.checkpoint import CheckpointError, load_checkpoint
from faceforge.core.hashing import file_sha256
from faceforge.core.precision import resolve_device
from faceforge.core.registry import Registry
from faceforge.data.files import list_images
from faceforge.data.image_io import UnreadableImageError, read_image_rgb
from faceforge.data.preprocess import Preprocess
from faceforge.methods.mtlface.age import age2group, dex_expectation, load_age_estimator

__all__ = ["ATTRIBUTE_HEADS", "AttributePredictor", "Prediction", "age_mae_report", "predict_folder"]

ATTRIBUTE_HEADS: Registry[Callable[[dict[str, Any], str], Any]] = Registry("attribute head")


class AgeHead:
    """The ``age`` objective's estimator: columns ``age`` (DEX expected age over 0..100) and ``age_group``
    (argmax of the group head; G from the checkpoint)."""

    columns = ("age", "age_group")

    def __init__(self, ckpt: dict[str, Any], objective: str) -> None:
        self.estimator = load_age_estimator(ckpt, objective)
        self.feature = ckpt["meta"]["objectives"][objective].get("feature", "x_age")
        self.groups = self.estimator.groups

    def logits(self, fmap: Tensor) -> dict[str, Tensor]:
        ages, groups = self.estimator(fmap)
        return {"age": dex_expectation(ages), "age_group_logits": groups.float()}

    def finish(self, out: dict[str, Tensor]) -> dict[str, np.ndarray]:
        return {
            "age": out["age"].cpu().numpy().astype(np.float64),
            "age_group": out["age_group_logits"].argmax(dim=1).cpu().numpy().astype(np.int64),
        }


@ATTRIBUTE_HEADS.register("age")
def _age_head(ckpt: dict[str, Any], objective: str) -> AgeHead:
    return AgeHead(ckpt, objective)


class AttributePredictor:
    """The backbone and the attribute heads of a faceforge checkpoint (see the module doc).

    ``objectives``: the instance names to run (default: every objective whose type is in :data:`ATTRIBUTE_HEADS`).
    """

    def __init__(
        self,
        checkpoint: str | Path,
        objectives: list[str] | None = None,
        device: str = "cpu",
        flip: bool = False,
        batch_size: int = 64,
    ) -> None:
        from faceforge.embedders.checkpoint import backbone_from_checkpoint

        self.path = Path(checkpoint)
        ckpt = load_checkpoint(self.path)
        described = ckpt["meta"].get("objectives") or {}
        available = {n: d["type"] for n, d in described.items() if d.get("type") in ATTRIBUTE_HEADS}
        names = list(available) if objectives is None else list(objectives)
        unknown = [n for n in names if n not in available]
        if unknown or not names:
            raise CheckpointError(
                f"{self.path}: no attribute head {unknown or ''} among its objectives {sorted(described)} "
                f"(attribute heads are objectives of type {ATTRIBUTE_HEADS.names()}; have {sorted(available)})"
            )
        self.device = resolve_device(device)
        self.model = backbone_from_checkpoint(ckpt).to(self.device)
        if not hasattr(self.model, "feature_names"):
            raise CheckpointError(f"{self.path}: its backbone gives no feature maps for attribute heads")
        self.heads = {n: ATTRIBUTE_HEADS.get(available[n])(ckpt, n) for n in names}
        for h in self.heads.values():
            h.estimator.to(self.device)
        self.preprocess = Preprocess.from_dict(ckpt["meta"]["preprocess"])
        self.flip = bool(flip)
        self.batch_size = int(batch_size)
        self.columns = [
            c if len(self.heads) == 1 else f"{n}.{c}" for n, h in self.heads.items() for c in h.columns
        ]
        self._sha256: str | None = None

    @torch.inference_mode()
    def _logits(self, x: Tensor) -> dict[str, dict[str, Tensor]]:
        _, features = self.model(x, return_features=True)
        return {n: h.logits(features[h.feature].float()) for n, h in self.heads.items()}

    @torch.inference_mode()
    def predict(self, faces: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 RGB aligned faces [N, H, W, 3] -> ``{column: values [N]}``."""
        parts: dict[str, list[np.ndarray]] = {c: [] for c in self.columns}
        for i in range(0, len(faces), self.batch_size):
            x = self.preprocess(
                torch.from_numpy(np.ascontiguousarray(faces[i : i + self.batch_size])), self.device
            )
            out = self._logits(x)
            if self.flip:
                mirrored = self._logits(x.flip(-1))
                out = {n: {k: (v + mirrored[n][k]) / 2 for k, v in o.items()} for n, o in out.items()}
            for n, h in self.heads.items():
                for c, v in h.finish(out[n]).items():
                    parts[c if len(self.heads) == 1 else f"{n}.{c}"].append(v)
        return {c: np.concatenate(v) if v else np.zeros(0) for c, v in parts.items()}

    def describe(self) -> dict[str, Any]:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        return {
            "model": str(self.path),
            "sha256": self._sha256,
            "heads": {n: type(h).__name__ for n, h in self.heads.items()},
            "columns": self.columns,
            "flip": self.flip,
            "flip_rule": "outputs (expected age, group logits) averaged over the face and its mirror image",
            "precision": "fp32",
            "batch_statistics": "running (eval mode)",
            "preprocess": self.preprocess.to_dict(),
        }


@dataclass
class Prediction:
    keys: list[str] = field(default_factory=list)  # path relative to the folder / the list file's folder
    values: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}


def _base(images: Path) -> Path:
    return images if images.is_dir() else images.parent


def predict_folder(
    predictor: AttributePredictor, images: str | Path, chunk: int = 256, progress: bool = False
) -> Prediction:
    """Predict every face of a folder (recursive) or list file; unreadable or wrongly sized images are skipped
    and listed with the reason, never stopping the job."""
    src = Path(images)
    files = list_images(src, what="--images")
    base = _base(src).resolve()
    size = predictor.preprocess.input_size
    out = Prediction(values={c: [] for c in predictor.columns})  # type: ignore[arg-type]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), desc="attributes", unit="img")
    for start in range(0, len(files), chunk):
        faces, keys = [], []
        for f in files[start : start + chunk]:
            rel = f.resolve().relative_to(base).as_posix() if f.resolve().is_relative_to(base) else str(f)
            try:
                img = read_image_rgb(f)
            except (UnreadableImageError, FileNotFoundError) as exc:
                out.skipped.append({"path": rel, "reason": getattr(exc, "reason", str(exc))})
                continue
            if img.shape[:2] != (size, size):
                out.skipped.append(
                    {
                        "path": rel,
                        "reason": f"{img.shape[1]}x{img.shape[0]}, not an aligned {size}x{size} face",
                    }
                )
                continue
            faces.append(img)
            keys.append(rel)
        if faces:
            pred = predictor.predict(np.stack(faces))
            for c, v in pred.items():
                out.values[c].append(v)  # type: ignore[attr-defined]
            out.keys.extend(keys)
        if bar is not None:
            bar.update(len(files[start : start + chunk]))
    if bar is not None:
        bar.close()
    out.values = {c: np.concatenate(v) if v else np.zeros(0) for c, v in out.values.items()}  # type: ignore[misc]
    return out


def age_mae_report(
    predicted: np.ndarray, true: np.ndarray, train_mean: float, groups: int = 7
) -> dict[str, float]:
    """MAE of predicted ages against true ones, beside the MAE of predicting ``train_mean`` for everyone (the
    predict-the-mean baseline), and the age-group accuracy of the predicted ages (``age2group`` of both)."""
    p = np.asarray(predicted, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    if p.shape != t.shape or not len(p):
        raise ValueError(f"need as many predicted as true ages (got {p.shape} and {t.shape})")
    gp = age2group(torch.from_numpy(p), groups).numpy()
    gt = age2group(torch.from_numpy(t), groups).numpy()
    return {
        "n": len(p),
        "mae": float(np.abs(p - t).mean()),
        "mean_baseline_mae": float(np.abs(train_mean - t).mean()),
        "train_mean": float(train_mean),
        "group_accuracy": float((gp == gt).mean()),
    }
