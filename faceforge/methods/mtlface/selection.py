"""Selective fine-tuning (MTLFace, TPAMI 2022): fine-tune the AIFR model on synthesised faces that pass an
identity and an age check.

The TPAMI paper feeds "high-quality" synthesised faces back into AIFR training; its exact selection rule is not
available to us (neither the TPAMI abstract nor the public code, ``Hzzone/MTLFace``
including its ``python_package``, gives it), so this module implements a rule of its own, with every threshold an option
recorded in ``selection.json``:

* **identity**: ``cos(e(x), e(x')) ≥ id_threshold`` between the AIFR model's embeddings of the source ``x`` and of
  the synthesised face ``x'`` (flip-sum, as ``faceforge eval``). Default 0.5: a same-person score (dlib's
  pairsDevTest genuine pairs sit around 0.9, and an AIFR MobileFaceNet trained on LFW has genuine / impostor means
  around 0.5 / 0.1; pick the threshold from the model's own score distributions);
* **age consistency**: the frozen age estimator of the AIFR checkpoint (its ``age`` objective) puts ``x'`` in the
  target group ``g`` (group head's argmax) **and** its DEX expected age lies within ``age_margin`` years of the
  group's range (default 5). The generator was trained against this same estimator, so this check rejects the
  faces the generator failed on but cannot certify a real change of age; ``--age-model`` may name another
  faceforge checkpoint with an ``age`` objective, trained separately, to judge instead.

How it joins the engine (the choice argued): selection is an offline step that **writes a training list**
(``selected.txt``: the original training rows plus the selected synthesised faces, each with the label of its
source person), so fine-tuning is an ordinary ``faceforge train ... method=mtlface data.list_file=selected.txt
run.init=AIFR.pt`` run: same classes (the AIFR margin head loads), same objectives, exact resume, no special
trainer. Synthesising on the fly inside a step would run the generator and two judges in every step of the
fine-tuning and tie the AIFR run to a GAN checkpoint; the offline list makes the selected set inspectable
(``faces/<person>/<image>_g<k>.png``) and the fine-tuning reproducible. Synthesised faces carry no age label
(their age rows are masked), so only the identity and adversarial terms see them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from faceforge.core.checkpoint import load_checkpoint
from faceforge.core.precision import resolve_device
from faceforge.data.image_io import UnreadableImageError, write_image_rgb
from faceforge.data.preprocess import Preprocess
from faceforge.embedders.checkpoint import backbone_from_checkpoint
from faceforge.methods.mtlface.age import AGE_GROUP_CUTS, dex_expectation, group_ranges, load_age_estimator
from faceforge.methods.mtlface.synthesis import Synthesizer

__all__ = ["SelectionRule", "age_consistent", "select_synthesised"]


@dataclass(frozen=True)
class SelectionRule:
    id_threshold: float = 0.5
    age_margin: float = 5.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "identity": f"cos(AIFR(source), AIFR(synthesised)) >= {self.id_threshold} (flip-sum embeddings)",
            "age": f"estimator's group == target and its DEX age within {self.age_margin} years of the group's range",
            "id_threshold": self.id_threshold,
            "age_margin": self.age_margin,
        }


def group_bounds(group: int, groups: int) -> tuple[float, float]:
    """``(lowest, highest)`` age of ``group`` (ages are integers; the last group ends at 100, the DEX range)."""
    cuts = AGE_GROUP_CUTS[groups]
    lo = 0.0 if group == 0 else float(cuts[group - 1] + 1)
    hi = 100.0 if group == groups - 1 else float(cuts[group])
    return lo, hi


def age_consistent(
    expected_age: np.ndarray, predicted_group: np.ndarray, target: int, groups: int, margin: float
) -> np.ndarray:
    """The age check of the rule (see the module doc) for faces synthesised at group ``target``."""
    lo, hi = group_bounds(target, groups)
    return (predicted_group == target) & (expected_age >= lo - margin) & (expected_age <= hi + margin)


@dataclass
class SelectionReport:
    candidates: int = 0
    kept: int = 0
    per_group: dict[int, dict[str, int]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


class _Judge:
    """The AIFR model's flip-sum embeddings and its age estimator's (expected age, group) of uint8 faces."""

    def __init__(self, aifr: str | Path, age_model: str | Path | None, device: torch.device) -> None:
        ckpt = load_checkpoint(aifr)
        self.device = device
        self.preprocess = Preprocess.from_dict(ckpt["meta"]["preprocess"])
        self.model = backbone_from_checkpoint(ckpt).to(device)
        age_ckpt = ckpt if age_model is None else load_checkpoint(age_model)
        self.age_encoder = self.model if age_model is None else backbone_from_checkpoint(age_ckpt).to(device)
        self.estimator = load_age_estimator(age_ckpt).to(device)

    @torch.inference_mode()
    def __call__(self, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = self.preprocess(torch.from_numpy(np.ascontiguousarray(faces)), self.device)
        emb = self.model(x) + self.model(x.flip(-1))
        _, feats = self.age_encoder(x, return_features=True)
        age_logits, group_logits = self.estimator(feats["x_age"])
        return (
            F.normalize(emb.float(), dim=1).cpu().numpy(),
            dex_expectation(age_logits).cpu().numpy(),
            group_logits.argmax(1).cpu().numpy(),
        )


def select_synthesised(
    fas_model: str | Path,
    aifr_model: str | Path,
    dataset: Any,
    labels: np.ndarray,
    paths: Sequence[str],
    out: str | Path,
    *,
    target_groups: Sequence[int] | None = None,
    per_identity: int = 2,
    rule: SelectionRule = SelectionRule(),
    age_model: str | Path | None = None,
    seed: int = 0,
    batch_size: int = 32,
    device: str = "auto",
) -> SelectionReport:
    """Synthesise up to ``per_identity`` training faces of every identity (rows with a label >= 0, chosen with
    ``seed``) at every group of ``target_groups`` (default: all), keep the faces that pass ``rule``, and write
    ``out/faces/<source stem>_g<k>.png``, ``out/selected.txt`` (every training row, then the kept faces, as
    ``absolute-path label``) and ``out/selection.json``."""
    dst = Path(out)
    dev = resolve_device(device)
    synth = Synthesizer(fas_model, device=str(dev))
    judge = _Judge(aifr_model, age_model, dev)
    groups = list(range(synth.groups)) if target_groups is None else [int(g) for g in target_groups]
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for ident in np.unique(labels[labels >= 0]):
        rows = np.flatnonzero(labels == ident)
        chosen += sorted(rng.choice(rows, size=min(per_identity, len(rows)), replace=False).tolist())
    rep = SelectionReport(
        per_group={g: {"candidates": 0, "identity_ok": 0, "age_ok": 0, "kept": 0} for g in groups}
    )
    kept_lines: list[str] = []
    id_scores: dict[int, list[float]] = {g: [] for g in groups}
    for start in range(0, len(chosen), batch_size):
        rows, faces = [], []
        for r in chosen[start : start + batch_size]:
            try:
                faces.append(dataset.image(r))
                rows.append(r)
            except UnreadableImageError as exc:
                rep.skipped.append(f"{exc.path}: {exc.reason}")
        if not faces:
            continue
        stack = np.stack(faces)
        src_emb, _, _ = judge(stack)
        for g in groups:
            out_faces = synth(stack, g, batch_size)
            emb, age, pred = judge(out_faces)
            cos = (emb * src_emb).sum(1)
            id_ok = cos >= rule.id_threshold
            age_ok = age_consistent(age, pred, g, synth.groups, rule.age_margin)
            keep = id_ok & age_ok
            stats = rep.per_group[g]
            stats["candidates"] += len(rows)
            stats["identity_ok"] += int(id_ok.sum())
            stats["age_ok"] += int(age_ok.sum())
            stats["kept"] += int(keep.sum())
            id_scores[g] += cos.tolist()
            for r, face, k in zip(rows, out_faces, keep, strict=True):
                if not k:
                    continue
                path = (
                    dst / "faces" / f"{Path(paths[r]).parent.name}__{Path(paths[r]).stem}_g{g}.png"
                ).resolve()
                write_image_rgb(path, face)
                kept_lines.append(f"{path} {int(labels[r])}")
    rep.candidates = sum(s["candidates"] for s in rep.per_group.values())
    rep.kept = len(kept_lines)
    dst.mkdir(parents=True, exist_ok=True)
    originals = [f"{Path(p).resolve()} {int(lab)}" for p, lab in zip(paths, labels, strict=True) if lab >= 0]
    (dst / "selected.txt").write_text("\n".join(originals + kept_lines) + "\n")
    ranges = group_ranges(synth.groups)
    (dst / "selection.json").write_text(
        json.dumps(
            {
                "fas_model": str(fas_model),
                "aifr_model": str(aifr_model),
                "age_model": str(age_model) if age_model else "the AIFR checkpoint's age objective",
                "rule": rule.to_dict(),
                "per_identity": per_identity,
                "seed": seed,
                "target_groups": {g: ranges[g] for g in groups},
                "candidates": rep.candidates,
                "kept": rep.kept,
                "per_group": rep.per_group,
                "identity_cosine_mean": {g: float(np.mean(v)) if v else None for g, v in id_scores.items()},
                "training_rows": len(originals),
                "list": str(dst / "selected.txt"),
                "skipped": rep.skipped,
            },
            indent=2,
        )
    )
    return rep
