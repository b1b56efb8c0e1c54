"""Face age synthesis with a trained ``mtlface_fas`` run: load the frozen encoder and the generator from its
checkpoint, and write each face at each target age group plus a grid (``faceforge synthesize``).

The checkpoint is self-contained: the encoder is its backbone, the generator's shape and the encoder's skip maps
are in ``meta["method"]`` (written by :meth:`FaceAgeSynthesis.describe`), its weights under
``method["generator.*"]``. Inputs are aligned 112x112 faces (``faceforge align`` / ``prepare``); outputs are
``clamp(input + residual)`` converted back to pixels (the generator itself is unclamped).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faceforge.core.checkpoint import CheckpointError, load_checkpoint
from faceforge.core.hashing import file_sha256
from faceforge.core.precision import resolve_device
from faceforge.data.files import list_images
from faceforge.data.image_io import UnreadableImageError, read_image_rgb, write_image_rgb
from faceforge.data.preprocess import Preprocess
from faceforge.embedders.checkpoint import backbone_from_checkpoint
from faceforge.methods.mtlface.age import group_ranges
from faceforge.methods.mtlface.generator import AgeGenerator, to_uint8

__all__ = ["SynthesisReport", "Synthesizer", "face_grid", "synthesize_folder"]


class Synthesizer:
    """``synth(faces uint8 [N, 112, 112, 3], group) -> uint8 [N, 112, 112, 3]`` from a FAS run's checkpoint."""

    def __init__(self, path: str | Path, device: str = "auto") -> None:
        self.path = Path(path)
        ckpt = load_checkpoint(self.path)
        m = ckpt["meta"].get("method") or {}
        if m.get("name") != "mtlface_fas" or not ckpt.get("method"):
            raise CheckpointError(
                f"{self.path} is not a face age synthesis model (its method is {m.get('name')!r}): give the "
                "model.pt or last.pt of a 'faceforge train ... method=mtlface_fas' run"
            )
        self.device = resolve_device(device)
        self.meta = m
        self.groups = int(m["groups"])
        self.skips = list(m["skips"])
        self.preprocess = Preprocess.from_dict(ckpt["meta"]["preprocess"])
        self.encoder = backbone_from_checkpoint(ckpt).to(self.device)
        self.generator = AgeGenerator(
            int(m["feature_channels"]),
            [int(c) for c in m["skip_channels"]],
            self.groups,
            int(m["units"]),
            float(m["sigma"]),
            int(m["blocks"]),
            int(m["final_channels"]),
            decoder_channels=m.get("decoder_channels"),
        )
        state = {
            k.removeprefix("generator."): v for k, v in ckpt["method"].items() if k.startswith("generator.")
        }
        self.generator.load_state_dict(state)
        self.generator.to(self.device).eval()

    @torch.inference_mode()
    def __call__(self, faces: np.ndarray, group: int, batch_size: int = 32) -> np.ndarray:
        if not 0 <= int(group) < self.groups:
            raise ValueError(
                f"age group {group} is outside 0..{self.groups - 1} ({', '.join(group_ranges(self.groups))})"
            )
        out = []
        for i in range(0, len(faces), batch_size):
            x = self.preprocess(
                torch.from_numpy(np.ascontiguousarray(faces[i : i + batch_size])), self.device
            )
            _, feats = self.encoder(x, return_features=True)
            g = torch.full((len(x),), int(group), dtype=torch.long, device=self.device)
            y = self.generator(x, feats["x_id"], [feats[n] for n in self.skips], g)
            out.append(to_uint8(y, self.preprocess.mean, self.preprocess.std).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, *faces.shape[1:]), np.uint8)

    def describe(self) -> dict[str, Any]:
        return {"model": str(self.path), "sha256": file_sha256(self.path), "groups": self.groups,
                "group_ranges": group_ranges(self.groups), "generator": self.meta}  # fmt: skip


def face_grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Tile equal-size faces: one row per list, white padding between cells."""
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = img
    return grid


@dataclass
class SynthesisReport:
    written: int = 0
    faces: int = 0
    skipped: list[str] = field(default_factory=list)
    grid: str | None = None


def synthesize_folder(
    synth: Synthesizer,
    images: str | Path,
    out: str | Path,
    groups: list[int],
    grid_rows: int = 16,
    batch_size: int = 32,
) -> SynthesisReport:
    """Every aligned face under ``images`` at every group in ``groups``: ``out/group<g>/<relative path>.png``;
    ``out/grid.png`` (the first ``grid_rows`` faces: the source, then one column per group) and
    ``out/synthesize_report.json``. Unreadable or non-aligned images are skipped and listed with the reason."""
    src, dst = Path(images), Path(out)
    files = list_images(src, exclude=dst if dst.is_relative_to(src) else None, what="--images")
    size = synth.preprocess.input_size
    faces, names, rep = [], [], SynthesisReport()
    for f in files:
        try:
            img = read_image_rgb(f)
        except UnreadableImageError as exc:
            rep.skipped.append(f"{f}: {exc.reason}")
            continue
        if img.shape[:2] != (size, size):
            rep.skipped.append(
                f"{f}: {img.shape[1]}x{img.shape[0]}, not an aligned {size}x{size} face (run faceforge align or prepare first)"
            )
            continue
        faces.append(img)
        names.append(f.relative_to(src) if src.is_dir() else Path(f.name))
    rep.faces = len(faces)
    columns: dict[int, np.ndarray] = {}
    if faces:
        stack = np.stack(faces)
        for g in groups:
            columns[g] = synth(stack, g, batch_size)
            for name, face in zip(names, columns[g], strict=True):
                write_image_rgb(dst / f"group{g}" / name.with_suffix(".png"), face)
                rep.written += 1
        rows = [[faces[i]] + [columns[g][i] for g in groups] for i in range(min(grid_rows, len(faces)))]
        write_image_rgb(dst / "grid.png", face_grid(rows))
        rep.grid = str(dst / "grid.png")
    dst.mkdir(parents=True, exist_ok=True)
    ranges = group_ranges(synth.groups)
    (dst / "synthesize_report.json").write_text(json.dumps({
        **synth.describe(), "images": str(src), "target_groups": groups,
        "target_ranges": [ranges[g] for g in groups], "faces": rep.faces, "written": rep.written,
        "grid": rep.grid, "grid_columns": ["source", *[f"group {g} ({ranges[g]})" for g in groups]],
        "output": "clamp(input + residual) as 8-bit PNG", "skipped": rep.skipped,
    }, indent=2))  # fmt: skip
    return rep
