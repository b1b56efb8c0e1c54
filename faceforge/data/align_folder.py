"""Align a folder of face photos with a landmarks table, keeping the ImageFolder layout.

``faceforge align --images DIR --landmarks CSV --out DIR`` runs :func:`align_folder`. The landmarks CSV has
a header with a ``file`` column (the image's file name, or its path relative to DIR) and the ten columns
``leye_x, leye_y, reye_x, reye_y, nose_x, nose_y, lmouth_x, lmouth_y, rmouth_x, rmouth_y``.
Images with no landmarks row or unreadable bytes are listed in the report and skipped; the job goes on.
Outputs that already exist are kept, so an interrupted job resumes where it stopped.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from faceforge.data.align import TEMPLATE_NAME, template_for_size, warp_face
from faceforge.data.files import list_images
from faceforge.data.image_io import UnreadableImageError, read_image_rgb, write_image_rgb

LANDMARK_COLUMNS = (
    "leye_x",
    "leye_y",
    "reye_x",
    "reye_y",
    "nose_x",
    "nose_y",
    "lmouth_x",
    "lmouth_y",
    "rmouth_x",
    "rmouth_y",
)


def read_landmarks_csv(path: str | Path, offset: tuple[float, float] = (0.0, 0.0)) -> dict[str, np.ndarray]:
    """Map ``file`` -> landmarks [5, 2] from a CSV; ``offset`` (dx, dy) is added to every point.

    Raises ValueError naming the file when a required column is missing or a value is not a number.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"landmarks file not found: {p}")
    table: dict[str, np.ndarray] = {}
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("file", *LANDMARK_COLUMNS) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{p}: missing column(s) {missing}; expected a header with 'file' and {list(LANDMARK_COLUMNS)}"
            )
        for line_no, row in enumerate(reader, start=2):
            try:
                pts = np.array([float(row[c]) for c in LANDMARK_COLUMNS], dtype=np.float64).reshape(5, 2)
            except ValueError as exc:
                raise ValueError(f"{p}:{line_no}: landmark value is not a number ({exc})") from None
            table[row["file"]] = pts + np.asarray(offset, dtype=np.float64)
    return table


@dataclass
class AlignReport:
    """What an alignment job did; written as JSON next to the aligned images."""

    images_dir: str
    out_dir: str
    size: int
    template: str
    landmark_offset: tuple[float, float]
    aligned: int = 0
    kept_existing: int = 0
    no_landmarks: list[str] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return len(self.no_landmarks) + len(self.unreadable)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["template_points"] = template_for_size(self.size).tolist()
        d["skipped"] = self.skipped
        return d


def _lookup(table: dict[str, np.ndarray], rel: Path) -> np.ndarray | None:
    for key in (rel.as_posix(), rel.name):
        if key in table:
            return table[key]
    return None


def align_folder(
    images_dir: str | Path,
    landmarks_csv: str | Path,
    out_dir: str | Path,
    size: int = 112,
    landmark_offset: tuple[float, float] = (0.0, 0.0),
    out_ext: str = ".jpg",
    overwrite: bool = False,
    workers: int = 2,
    progress: bool = True,
    images: Iterable[Path] | None = None,
) -> AlignReport:
    """Align every image below ``images_dir`` into ``out_dir`` (same relative layout, ``out_ext`` format)."""
    src, dst = Path(images_dir), Path(out_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"images directory not found: {src}")
    table = read_landmarks_csv(landmarks_csv, landmark_offset)
    files = list(images) if images is not None else list_images(src, allow_empty=True)
    if not files:
        raise ValueError(f"no image files found below {src}")
    report = AlignReport(str(src), str(dst), size, TEMPLATE_NAME, tuple(landmark_offset))

    def work(path: Path) -> tuple[str, str, str]:
        rel = path.relative_to(src)
        target = (dst / rel).with_suffix(out_ext)
        if target.exists() and not overwrite:
            return "kept", str(rel), ""
        lmk = _lookup(table, rel)
        if lmk is None:
            return "no_landmarks", str(rel), ""
        try:
            img = read_image_rgb(path)
        except UnreadableImageError as exc:
            return "unreadable", str(rel), exc.reason
        write_image_rgb(target, warp_face(img, lmk, size))
        return "aligned", str(rel), ""

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(work, files)
        for status, rel, reason in tqdm(
            results, total=len(files), desc="align", unit="img", disable=not progress
        ):
            if status == "aligned":
                report.aligned += 1
            elif status == "kept":
                report.kept_existing += 1
            elif status == "no_landmarks":
                report.no_landmarks.append(rel)
            else:
                report.unreadable.append({"file": rel, "reason": reason})
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "align_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    return report
