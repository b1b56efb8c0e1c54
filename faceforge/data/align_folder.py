"""Align a folder of face photos with a landmarks table, keeping the ImageFolder layout.

``faceforge align --images DIR --landmarks CSV --out DIR`` runs :func:`align_folder`. The landmarks CSV has
a header with a ``file`` column (the image's file name, or its path relative to DIR) and the ten columns
``leye_x, leye_y, reye_x, reye_y, nose_x, nose_y, lmouth_x, lmouth_y, rmouth_x, rmouth_y``; it must be
UTF-8 (a byte-order mark is allowed).

Nothing in one row or one image stops the job: rows that are short or long, hold a value that is not a
number, NaN/inf or beyond 1e7 pixels, five (nearly) identical points, or repeat a file already given are
listed in the report as ``bad_rows`` with ``file:line`` and the reason (the first row of a file wins);
images with no (usable) landmarks row, unreadable bytes or a taken output name (see
:mod:`faceforge.data.output_names`) are listed and skipped. Outputs that already exist are kept, so an
interrupted job resumes where it stopped.

All cores: the images are read, warped and written in ``workers`` processes (default: one per core;
:class:`faceforge.core.workers.ProcessPool`), :data:`CHUNK` images per task, the report kept in file order by
the parent; each image is aligned on its own, so the outputs equal those of one process.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from faceforge.core.errors import InputError
from faceforge.core.workers import ProcessPool, resolve_workers, worker_tool
from faceforge.data.align import (
    MAX_COORDINATE,
    MIN_SPREAD,
    TEMPLATE_NAME,
    LandmarksError,
    check_landmarks,
    template_for_size,
    warp_face,
)
from faceforge.data.files import list_images
from faceforge.data.image_io import UnreadableImageError, read_image_rgb, write_image_rgb
from faceforge.data.output_names import output_names

#: images per task handed to a worker process
CHUNK = 32
#: a worker process starts (imports) in about a second, the time of ~200 alignments: each takes >= this many
MIN_IMAGES_PER_WORKER = 512

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


def read_landmarks_csv(
    path: str | Path, offset: tuple[float, float] = (0.0, 0.0), bad_rows: list[dict[str, str]] | None = None
) -> dict[str, np.ndarray]:
    """Map ``file`` -> landmarks [5, 2] from a CSV; ``offset`` (dx, dy) is added to every point.

    A missing column or a file that is not UTF-8 text raises :class:`~faceforge.core.errors.InputError`
    naming the file. A bad row (see the module docstring) raises too, naming ``file:line``, unless
    ``bad_rows`` is given: then it is appended there as ``{"row": "file:line", "file", "reason"}`` and
    reading goes on.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"landmarks file not found: {p}")
    # one pass over the rows (structure and numbers), then the landmark checks on all rows at once: the
    # per-row numpy checks were most of the serial time before a many-core alignment starts
    problems: list[tuple[int, str, str]] = []  # (line, file, reason), reported in line order
    lines: list[int] = []
    names: list[str] = []
    values: list[str] = []
    try:
        with p.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None) or []
            missing = [c for c in ("file", *LANDMARK_COLUMNS) if c not in header]
            if missing:
                raise InputError(
                    f"{p}: missing column(s) {missing}; expected a header with 'file' and {list(LANDMARK_COLUMNS)}"
                )
            col = {c: header.index(c) for c in ("file", *LANDMARK_COLUMNS)}
            value_cols = [col[c] for c in LANDMARK_COLUMNS]
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    problems.append((reader.line_num, "", f"not a valid CSV row ({exc})"))
                    continue
                line_no = reader.line_num
                if not row or all(not v.strip() for v in row):
                    continue
                name = row[col["file"]] if len(row) > col["file"] else ""
                if len(row) != len(header):
                    problems.append(
                        (line_no, name, f"row has {len(row)} fields, the header has {len(header)}")
                    )
                    continue
                if not name.strip():
                    problems.append((line_no, name, "empty 'file' value"))
                    continue
                lines.append(line_no)
                names.append(name)
                values.extend(row[i] for i in value_cols)
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{p}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save the landmarks file as UTF-8"
        ) from None
    points, reasons = _parse_points(values, len(names), offset)
    problems += [(lines[i], names[i], why) for i, why in reasons.items()]
    table: dict[str, np.ndarray] = {}
    first_line: dict[str, int] = {}
    for i, name in enumerate(names):
        if i in reasons:
            continue
        if name in table:
            problems.append(
                (lines[i], name, f"{name} already has landmarks on line {first_line[name]} (kept)")
            )
            continue
        table[name] = points[i]
        first_line[name] = lines[i]
    for line_no, name, reason in sorted(problems, key=lambda t: t[0]):
        if bad_rows is None:
            raise InputError(f"{p}:{line_no}: {reason}")
        bad_rows.append({"row": f"{p}:{line_no}", "file": name, "reason": reason})
    return table


def _parse_points(
    values: list[str], rows: int, offset: tuple[float, float]
) -> tuple[np.ndarray, dict[int, str]]:
    """``rows`` rows of ten numbers as text -> points [rows, 5, 2] (+ ``offset``) and, for each row that cannot
    define an alignment, why (its first non-number, or what :func:`~faceforge.data.align.check_landmarks` says:
    it decides every row the vectorised test doubts, so the rows and messages are those of the one-row check)."""
    try:
        flat = np.fromiter(map(float, values), dtype=np.float64, count=len(values))
    except ValueError:  # some value is not a number: those become NaN, their rows are named below
        flat = np.array([float(v) if _is_number(v) else np.nan for v in values], dtype=np.float64)
    points = flat.reshape(rows, 5, 2) + np.asarray(offset, dtype=np.float64)
    with np.errstate(all="ignore"):
        finite = np.isfinite(points).all(axis=(1, 2))
        within = np.abs(points).max(axis=(1, 2), initial=0.0) < MAX_COORDINATE * (1 - 1e-9)
        centred = points - points.mean(axis=1, keepdims=True)
        spread = np.sqrt((centred**2).sum(axis=2).mean(axis=1))
    reasons: dict[int, str] = {}
    for i in np.flatnonzero(~(finite & within & (spread > MIN_SPREAD * (1 + 1e-9)))).tolist():
        row = values[10 * i : 10 * i + 10]
        bad = next((k for k, v in enumerate(row) if not _is_number(v)), None)
        if bad is not None:
            reasons[i] = f"{LANDMARK_COLUMNS[bad]}={row[bad]!r} is not a number"
            continue
        try:  # near a limit, or bad: the one-row check decides
            check_landmarks(points[i])
        except LandmarksError as exc:
            reasons[i] = str(exc)
    return points, reasons


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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
    bad_landmarks: list[dict[str, str]] = field(default_factory=list)
    name_taken: list[dict[str, str]] = field(default_factory=list)
    renamed: list[dict[str, str]] = field(default_factory=list)
    bad_rows: list[dict[str, str]] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return len(self.no_landmarks) + len(self.unreadable) + len(self.bad_landmarks) + len(self.name_taken)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["template_points"] = template_for_size(self.size).tolist()
        d["skipped"] = self.skipped
        return d


def _lookup(table: dict[str, object], rel: Path) -> object | None:
    for key in (rel.as_posix(), rel.name):
        if key in table:
            return table[key]
    return None


class _Aligner:
    """Align one image: ``(status, relative path, reason)``; built once per worker process."""

    def __init__(
        self,
        src: Path,
        dst: Path,
        size: int,
        outputs: dict[str, str],
        table: dict[str, np.ndarray],
        bad_by_file: dict[str, str],
        overwrite: bool,
    ) -> None:
        self.src, self.dst, self.size = src, dst, size
        self.outputs, self.table, self.bad_by_file, self.overwrite = outputs, table, bad_by_file, overwrite

    def __call__(self, path: Path) -> tuple[str, str, str]:
        rel = path.relative_to(self.src)
        key = rel.as_posix()
        if key not in self.outputs:
            return "name_taken", key, ""
        target = self.dst / self.outputs[key]
        if target.exists() and not self.overwrite:
            return "kept", key, ""
        lmk = _lookup(self.table, rel)
        if lmk is None:
            why = _lookup(self.bad_by_file, rel)
            return ("bad_landmarks", key, str(why)) if why is not None else ("no_landmarks", key, "")
        try:
            img = read_image_rgb(path)
        except (UnreadableImageError, OSError) as exc:  # OSError: the file vanished since it was listed
            return "unreadable", key, exc.reason if isinstance(exc, UnreadableImageError) else str(exc)
        try:
            face = warp_face(img, lmk, self.size)
        except LandmarksError as exc:
            return "bad_landmarks", key, str(exc)
        write_image_rgb(target, face)
        return "aligned", key, ""


def _align_in_worker(path: Path) -> tuple[str, str, str]:
    aligner: _Aligner = worker_tool()
    return aligner(path)


def align_folder(
    images_dir: str | Path,
    landmarks_csv: str | Path,
    out_dir: str | Path,
    size: int = 112,
    landmark_offset: tuple[float, float] = (0.0, 0.0),
    out_ext: str = ".jpg",
    overwrite: bool = False,
    workers: int = 0,
    progress: bool = True,
    images: Iterable[Path] | None = None,
) -> AlignReport:
    """Align every image below ``images_dir`` into ``out_dir`` (same relative layout, ``out_ext`` format);
    ``workers`` processes (0: one per core), at most one per :data:`MIN_IMAGES_PER_WORKER` images (a small
    job runs in this process)."""
    src, dst = Path(images_dir), Path(out_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"images directory not found: {src}")
    bad_rows: list[dict[str, str]] = []
    table = read_landmarks_csv(landmarks_csv, landmark_offset, bad_rows=bad_rows)
    files = list(images) if images is not None else list_images(src, allow_empty=True)
    if not files:
        raise ValueError(f"no image files found below {src}")
    report = AlignReport(str(src), str(dst), size, TEMPLATE_NAME, tuple(landmark_offset))
    report.bad_rows = bad_rows
    bad_by_file: dict[str, str] = {}
    for r in bad_rows:
        if r["file"]:
            bad_by_file.setdefault(r["file"], f"landmarks row {r['row']}: {r['reason']}")
    names = output_names([p.relative_to(src) for p in files], out_ext)
    report.renamed, report.name_taken = names.renamed, names.refused

    aligner = _Aligner(src, dst, size, names.outputs, table, bad_by_file, overwrite)
    workers = min(resolve_workers(workers), max(1, len(files) // MIN_IMAGES_PER_WORKER))
    pool = ProcessPool(workers, _Aligner, aligner.__dict__) if workers > 1 else None
    try:
        results = pool.map(_align_in_worker, files, chunksize=CHUNK) if pool else map(aligner, files)
        for status, rel, reason in tqdm(
            results, total=len(files), desc="align", unit="img", disable=not progress
        ):
            if status == "aligned":
                report.aligned += 1
            elif status == "kept":
                report.kept_existing += 1
            elif status == "no_landmarks":
                report.no_landmarks.append(rel)
            elif status == "bad_landmarks":
                report.bad_landmarks.append({"file": rel, "reason": reason})
            elif status == "unreadable":
                report.unreadable.append({"file": rel, "reason": reason})
    finally:
        if pool is not None:
            pool.close()
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "align_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    return report
