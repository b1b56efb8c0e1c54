"""Decision thresholds for a target false-match rate (FMR), from impostor scores measured in advance.

A calibration file (JSON) belongs to one model file (its SHA-256) and one face pipeline (detector,
alignment), and lists, for each target FMR, the cosine threshold and the false non-match rate (FNMR) seen at
it. The service decides ``match = score >= threshold``.

Threshold rule (conservative): with the ``N`` impostor scores sorted in descending order ``s_1 >= s_2 >=
...``, at most ``k = floor(FMR * N)`` impostor pairs may reach the threshold, so the threshold is the
smallest float above ``s_(k+1)``; the measured FMR is then ``#(impostor >= t) / N <= FMR``. Targets below
``1 / N`` cannot be resolved by the data and are not listed.

The packaged files (``faceforge/serve/calibrations/*.json``) were made by ``faceforge serve calibrate`` on
LFW people that appear in ``pairsDevTrain.txt`` (and so never in ``pairsDevTest.txt``, which measures
accuracy): every photo of them through the service's own pipeline (YuNet on the raw 160 px LFW crops, the
largest face, ArcFace alignment, no flip), all cross-identity pairs as impostors and all same-identity
pairs as genuine pairs; the README gives the command.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from faceforge.core.text_files import load_json

DEFAULT_FMR = 1e-4
FMR_TARGETS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


@dataclass
class Calibration:
    """Thresholds per target FMR for one model; ``source`` says how they were obtained."""

    model_sha256: str | None
    model_kind: str
    source: str
    table: list[dict[str, float]]  # {"fmr": target, "threshold": t, "fmr_measured": .., "fnmr": ..}
    impostor_pairs: int = 0
    genuine_pairs: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    def threshold_for(self, fmr: float | None = None) -> dict[str, float]:
        """The row for target ``fmr`` (default :data:`DEFAULT_FMR`, or the only row); a target between rows
        uses the next stricter row (lower FMR), never a looser one."""
        if not self.table:
            raise ValueError("the calibration has no thresholds")
        if fmr is None:
            if len(self.table) == 1:
                return dict(self.table[0])
            fmr = DEFAULT_FMR
        fmr = float(fmr)
        rows = sorted(self.table, key=lambda r: -r["fmr"] if r["fmr"] is not None else 0)
        ok = [r for r in rows if r["fmr"] is None or r["fmr"] <= fmr * (1 + 1e-9)]
        if not ok:
            lowest = min(r["fmr"] for r in rows if r["fmr"] is not None)
            raise ValueError(
                f"target FMR {fmr:g} is below the lowest calibrated FMR {lowest:g} of this model"
            )
        return dict(ok[0])

    def fmrs(self) -> list[float]:
        return [r["fmr"] for r in self.table if r["fmr"] is not None]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        keys = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in keys})

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        p = Path(path)
        try:
            return cls.from_dict(load_json(p, "calibration"))
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"{p}: not a faceforge calibration file ({exc})") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def fixed(cls, threshold: float, model: dict[str, Any]) -> Calibration:
        """A threshold given by hand (``--threshold``): no FMR is known for it."""
        return cls(
            model.get("sha256"),
            str(model.get("kind", "?")),
            "fixed threshold given by the operator (--threshold); its FMR is unknown",
            [{"fmr": None, "threshold": float(threshold), "fmr_measured": None, "fnmr": None}],  # type: ignore[list-item]
        )


def thresholds_from_scores(
    genuine: np.ndarray, impostor: np.ndarray, targets: tuple[float, ...] = FMR_TARGETS
) -> list[dict[str, float]]:
    """The conservative threshold for each resolvable target FMR (module doc), with measured FMR and FNMR."""
    imp = np.sort(np.asarray(impostor, dtype=np.float64))[::-1]
    gen = np.asarray(genuine, dtype=np.float64)
    n = len(imp)
    rows = []
    for fmr in targets:
        if n == 0 or fmr * n < 1:
            continue
        k = math.floor(fmr * n + 1e-9)
        t = float(np.nextafter(imp[k], np.inf)) if k < n else float(imp[-1])
        t = (
            float(np.float32(t))
            if np.float32(t) > imp[k]
            else float(np.nextafter(np.float32(imp[k]), np.float32(np.inf)))
        )
        rows.append(
            {
                "fmr": float(fmr),
                "threshold": t,
                "fmr_measured": float(np.count_nonzero(imp >= t) / n),
                "fnmr": float(np.count_nonzero(gen < t) / len(gen)) if len(gen) else float("nan"),
            }
        )
    return rows


def all_pair_scores(
    embeddings: np.ndarray, labels: np.ndarray, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of every unordered pair: (genuine, impostor), by label equality."""
    e = np.asarray(embeddings, dtype=np.float32)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    lab = np.asarray(labels)
    gen, imp = [], []
    for start in range(0, len(e), chunk):
        s = e[start : start + chunk] @ e.T
        rows = np.arange(start, min(start + chunk, len(e)))[:, None]
        upper = np.arange(len(e))[None, :] > rows
        same = lab[start : start + chunk, None] == lab[None, :]
        gen.append(s[upper & same])
        imp.append(s[upper & ~same])
    return np.concatenate(gen), np.concatenate(imp)


def packaged_calibration(model: dict[str, Any]) -> Calibration | None:
    """The packaged calibration whose ``model_sha256`` is the model's, if any."""
    sha = model.get("sha256")
    if not sha:
        return None
    folder = resources.files("faceforge.serve") / "calibrations"
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            cal = Calibration.from_dict(json.loads(entry.read_text()))
            if cal.model_sha256 == sha:
                return cal
    return None
