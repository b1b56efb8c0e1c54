"""Detect, select and align the faces of a photo folder: raw photos in, training-ready faces out.

``faceforge prepare --images DIR --out DIR`` runs :func:`prepare_folder`. ``DIR`` is an ImageFolder tree
(``DIR/<identity>/<photo>``, any depth below the identity) or a flat folder of photos. Each photo is run
through a face detector (:mod:`faceforge.deploy.detect`), one face is chosen by the selection policy (or
every face with ``all``) and aligned to the ArcFace template with the detected landmarks.

Outputs:

* ``folder``: ``out/<same relative path>.jpg`` (JPEG q95); with ``all``, ``out/<dir>/<stem>_<k>.jpg`` per
  face (k in left-to-right order).
* ``rec``: the aligned JPEGs are kept in ``out/aligned/`` (so an interrupted job resumes) and packed into
  ``out/train.rec`` + ``out/train.idx`` in insightface's layout; labels are the identity folders that got at
  least one face, numbered contiguously in sorted order (``out/labels.txt``: ``label<TAB>identity``).

Output names follow :mod:`faceforge.data.output_names`: photos of one folder that differ only in their
extension (``a.jpg``, ``a.png``) are written as ``a_jpg.jpg`` and ``a_png.jpg`` (listed in ``renamed``)
instead of one overwriting or hiding the other.

``out/prepare_report.json`` lists photos with no face above ``min_score`` (``no_face``), photos with more
than one such face when only one is kept (``several_faces``; the chosen face is still written), photos that
cannot be read or decoded (``unreadable``: empty, truncated, not an image, larger than the pixel limit,
broken symbolic links, FIFOs, ...; with the reason), photos too small for the detector to search
(``too_small``), photos whose detected landmarks give no usable alignment (``bad_landmarks``) and photos
whose output name is taken (``name_taken``). One bad photo never stops the job. Outputs that already exist
are kept, so running the same command again resumes an interrupted job.

All cores (``workers``, ``faceforge prepare --workers``, default one per core): photos are read, detected,
selected and aligned in worker processes (:mod:`faceforge.deploy.align_photos`), each with its own detector
built from a :class:`~faceforge.deploy.align_photos.DetectorSpec`, in chunks of a few photos (a detector with
``detect_many``, e.g. MTCNN, batches a chunk); the parent writes the faces, applies the quality gate and keeps
the report, in file order. The chunks are the same whatever the number of workers, so the outputs and the
report equal those of one process (tested).

Quality gate (``faceforge prepare --min-quality X --quality-model Q``; :class:`QualityGate`): every aligned face
is scored by a quality model (a faceforge checkpoint or ONNX file with one output per face, e.g. the SDD-FIQA
regressor of ``faceforge train lfw_sddfiqa``), one forward pass, no flip. A face scoring below ``X`` (or with no
finite score) is not written and is listed in ``low_quality`` with its score, the photo, the face's number
(``select=all``) and the output it would have had; a photo all of whose faces are dropped counts in
``dropped_photos``. Faces already in ``out`` from an earlier run are scored too, and removed and listed
(``"removed_existing": true``) when below ``X``, so ``out`` always holds only faces at or above ``X``.
``prepare_quality.csv`` (``path,quality``, paths relative to the aligned-face folder) holds the score of every
face kept: an attribute sidecar for training and a ``csv=`` quality source for evaluation. The report records
the threshold and the model's description (including what its metadata says it predicts).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from faceforge.data.align import TEMPLATE_NAME, template_for_size
from faceforge.data.files import list_images
from faceforge.data.image_io import UnreadableImageError, read_image_rgb
from faceforge.data.output_names import output_names
from faceforge.deploy.align_photos import DetectorSpec, Found, face_targets, found_in_order, write_faces
from faceforge.deploy.detect import SELECT_POLICIES, FaceDetector

REPORT_NAME = "prepare_report.json"
QUALITY_CSV = "prepare_quality.csv"
OUT_FORMATS = ("folder", "rec")
REC_STAGING = "aligned"
REC_PREFIX = "train"


@dataclass
class QualityGate:
    """Keep an aligned face only when ``score(faces) >= min_quality`` (see the module doc).

    ``score`` maps uint8 RGB aligned faces ``[N, S, S, 3]`` to ``N`` numbers (higher = better); ``input_size``
    (``S``) must equal the prepared faces' size; ``description`` goes to the report.
    """

    score: Callable[[np.ndarray], np.ndarray]
    min_quality: float
    input_size: int | None = None
    description: dict[str, Any] = field(default_factory=dict)

    def scores(self, faces: list[np.ndarray]) -> np.ndarray:
        out = np.asarray(self.score(np.stack(faces)), dtype=np.float64).reshape(-1)
        if out.shape != (len(faces),):
            raise RuntimeError(f"the quality model gave {out.shape} scores for {len(faces)} faces")
        return out

    def keeps(self, q: float) -> bool:
        return math.isfinite(q) and q >= self.min_quality


@dataclass
class PrepareReport:
    """What a prepare job did; written as JSON in the output folder."""

    images_dir: str
    out_dir: str
    detector: str
    select: str
    size: int
    out_format: str
    min_score: float
    template: str = TEMPLATE_NAME
    images: int = 0
    aligned_images: int = 0
    faces_written: int = 0
    kept_existing: int = 0
    no_face: list[str] = field(default_factory=list)
    several_faces: list[dict] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    too_small: list[dict[str, str]] = field(default_factory=list)
    bad_landmarks: list[dict[str, str]] = field(default_factory=list)
    name_taken: list[dict[str, str]] = field(default_factory=list)
    renamed: list[dict[str, str]] = field(default_factory=list)
    rec: str | None = None
    idx: str | None = None
    rec_images: int = 0
    num_classes: int = 0
    min_quality: float | None = None
    quality_model: dict[str, Any] | None = None
    low_quality: list[dict[str, Any]] = field(default_factory=list)
    dropped_photos: int = 0
    quality_csv: str | None = None

    @property
    def skipped(self) -> int:
        return (
            len(self.no_face)
            + len(self.unreadable)
            + len(self.too_small)
            + len(self.bad_landmarks)
            + len(self.name_taken)
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["template_points"] = template_for_size(self.size).tolist()
        d["skipped"] = self.skipped
        return d


def _existing_multi(target_dir: Path, stem: str) -> list[Path]:
    pattern = re.compile(rf"^{re.escape(stem)}_(\d+)\.jpg$")
    if not target_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in target_dir.iterdir() if (m := pattern.match(p.name))]
    return [p for _, p in sorted(found)]


def _previous_several(out: Path) -> dict[str, dict]:
    """``several_faces`` entries of an earlier run, carried over for photos whose outputs are kept."""
    path = out / REPORT_NAME
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text()).get("several_faces", [])
        return {e["file"]: e for e in entries if isinstance(e, dict) and "file" in e}
    except (ValueError, AttributeError, TypeError):
        return {}


def prepare_folder(
    images_dir: str | Path,
    out_dir: str | Path,
    detector: FaceDetector | DetectorSpec,
    select: str = "largest",
    size: int = 112,
    out_format: str = "folder",
    min_score: float = 0.7,
    progress: bool = True,
    overwrite: bool = False,
    detector_name: str | None = None,
    quality: QualityGate | None = None,
    workers: int = 1,
) -> PrepareReport:
    """Detect, select and align every photo below ``images_dir`` into ``out_dir``; see the module doc.

    ``detector`` is any callable image -> list of :class:`~faceforge.deploy.detect.Detection` (e.g.
    ``build_detector("yunet")``), or a :class:`DetectorSpec` to build one from (needed with ``workers`` other
    than 1: 0 means one per core); detections scoring below ``min_score`` are ignored. ``quality``: drop faces
    below a quality threshold (listed in the report with their scores).
    """
    src, out = Path(images_dir), Path(out_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"images directory not found: {src}")
    if select not in SELECT_POLICIES:
        raise ValueError(f"unknown --select {select!r}; choose one of {', '.join(SELECT_POLICIES)}")
    if out_format not in OUT_FORMATS:
        raise ValueError(f"unknown output format {out_format!r}; choose one of {', '.join(OUT_FORMATS)}")
    template_for_size(size)  # fail early on a size the template cannot take
    if quality is not None and quality.input_size is not None and quality.input_size != size:
        raise ValueError(
            f"the quality model takes {quality.input_size} px faces but --size is {size}: prepare at "
            f"--size {quality.input_size}, or give a quality model for {size} px faces"
        )
    faces_root = out / REC_STAGING if out_format == "rec" else out
    base = src.resolve()
    # an output folder inside the input tree is not input
    files = list_images(
        base, exclude=out.resolve() if out.resolve().is_relative_to(base) else None, allow_empty=True
    )
    if not files:
        raise ValueError(f"no image files found below {src}")
    if out_format == "rec":
        loose = [str(p.relative_to(base)) for p in files if len(p.relative_to(base).parts) < 2]
        if loose:
            raise ValueError(
                f"--format rec needs an ImageFolder tree ({src}/<identity>/<photo>) to take labels from, "
                f"but {len(loose)} photo(s) sit directly in {src}, e.g. {loose[0]}"
            )
    spec_name = detector.name if isinstance(detector, DetectorSpec) else None
    name = detector_name or spec_name or getattr(detector, "name", None) or type(detector).__name__
    report = PrepareReport(str(src), str(out), name, select, size, out_format, float(min_score))
    report.images = len(files)
    if quality is not None:
        report.min_quality, report.quality_model = float(quality.min_quality), quality.description
    kept_scores: dict[Path, float] = {}  # written face -> its quality score (with a quality gate)
    names = output_names([p.relative_to(base) for p in files], ".jpg")
    report.renamed, report.name_taken = names.renamed, names.refused
    previous = _previous_several(out)
    written: dict[str, list[Path]] = {}  # relative photo path -> its aligned face files

    # which photos already have their outputs (kept: resume) and which go to detection, in file order
    plan: list[tuple[Path, str, Path, list[Path] | None]] = []
    for path in files:
        key = path.relative_to(base).as_posix()
        if key not in names.outputs:
            continue  # output name taken: listed in name_taken
        single = faces_root / names.outputs[key]
        existing: list[Path] | None = None
        if not overwrite:
            if select == "all":
                have = _existing_multi(single.parent, single.stem)
            else:
                have = [single] if single.exists() else []
            # with "all", faces are written last-to-first, so face 0 existing means the photo is complete
            if have and (select != "all" or have[0].name == f"{single.stem}_0.jpg"):
                existing = have
        plan.append((path, key, single, existing))
    todo = [(str(path), str(single)) for path, _, single, existing in plan if existing is None]
    # without a quality gate to score the faces first, each worker writes its faces itself
    targets = [t for _, t in todo] if quality is None else None
    found = found_in_order([p for p, _ in todo], detector, select, size, float(min_score), workers, targets)

    with closing(found), tqdm(total=len(files), desc="prepare", unit="img", disable=not progress) as bar:
        for _path, key, single, existing in plan:
            bar.update(1)
            if existing is not None:
                report.kept_existing += 1
                if quality is not None:
                    existing = _gate_existing(existing, key, select, quality, faces_root, report, kept_scores)
                written[key] = existing
                if key in previous:
                    report.several_faces.append(previous[key])
                continue
            got = next(found)
            if got.status != "aligned":
                _report_failure(report, key, got)
                continue
            faces = got.faces
            if select != "all" and got.detections > 1:
                report.several_faces.append({"file": key, "faces": got.detections, "chosen": got.chosen})
            targets = face_targets(single, select, got.count)
            if quality is not None:
                scores = quality.scores(faces)
                for k, (target, q) in enumerate(zip(targets, scores.tolist(), strict=True)):
                    if not quality.keeps(q):
                        report.low_quality.append(_low(key, k, select, target, faces_root, q))
                keep = [quality.keeps(q) for q in scores.tolist()]
                kept_scores.update(
                    {t: q for t, q, ok in zip(targets, scores.tolist(), keep, strict=True) if ok}
                )
                targets = [t for t, ok in zip(targets, keep, strict=True) if ok]
                faces = [f for f, ok in zip(faces, keep, strict=True) if ok]
                if not targets:
                    report.dropped_photos += 1
                    continue
            if not got.written:
                write_faces(targets, faces)
            report.aligned_images += 1
            report.faces_written += len(targets)
            written[key] = targets

    out.mkdir(parents=True, exist_ok=True)
    if quality is not None:
        report.quality_csv = str(_write_quality_csv(out / QUALITY_CSV, faces_root, kept_scores))
    if out_format == "rec":
        _write_rec(report, out, written)
    (out / REPORT_NAME).write_text(json.dumps(report.to_dict(), indent=2))
    return report


def _report_failure(report: PrepareReport, key: str, got: Found) -> None:
    """List a photo that gave no face in the report, under its reason."""
    if got.status == "no_face":
        report.no_face.append(key)
    else:
        getattr(report, got.status).append({"file": key, "reason": got.reason})


def _low(key: str, k: int, select: str, target: Path, root: Path, q: float, existing: bool = False) -> dict:
    entry: dict[str, Any] = {
        "file": key,
        "face": k if select == "all" else None,
        "output": target.relative_to(root).as_posix(),
        "quality": q if math.isfinite(q) else None,
        "reason": f"quality {q:.4g} below the minimum" if math.isfinite(q) else "no finite quality score",
    }
    if existing:
        entry["removed_existing"] = True
    return entry


def _gate_existing(
    existing: list[Path],
    key: str,
    select: str,
    quality: QualityGate,
    root: Path,
    report: PrepareReport,
    kept_scores: dict[Path, float],
) -> list[Path]:
    """Score faces an earlier run wrote; remove and list those below the threshold; return the rest."""
    pattern = re.compile(r"_(\d+)\.jpg$")
    faces, readable = [], []
    for p in existing:
        try:
            faces.append(read_image_rgb(p))
            readable.append(True)
        except (UnreadableImageError, OSError):  # a damaged output: no score, so it is removed and listed
            readable.append(False)
    got = iter(quality.scores(faces).tolist() if faces else [])
    scores = np.array([next(got) if ok else float("nan") for ok in readable])
    keep: list[Path] = []
    for path, q in zip(existing, scores.tolist(), strict=True):
        if quality.keeps(q):
            keep.append(path)
            kept_scores[path] = q
            continue
        m = pattern.search(path.name) if select == "all" else None
        report.low_quality.append(
            _low(key, int(m.group(1)) if m else 0, select, path, root, q, existing=True)
        )
        path.unlink()
    return keep


def _write_quality_csv(path: Path, root: Path, scores: dict[Path, float]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["path", "quality"])
        w.writerows([p.relative_to(root).as_posix(), format(q, ".9g")] for p, q in sorted(scores.items()))
    return path


def _write_rec(report: PrepareReport, out: Path, written: dict[str, list[Path]]) -> None:
    from faceforge.data.recordio import write_face_rec

    by_identity: dict[str, list[str]] = {}
    for key in sorted(written):
        by_identity.setdefault(key.split("/", 1)[0], []).extend(str(p) for p in written[key])
    identities = sorted(i for i, paths in by_identity.items() if paths)
    if not identities:
        raise ValueError(
            f"no face was aligned below {report.images_dir}, so there is nothing to pack into .rec"
        )
    paths: list[str] = []
    labels: list[int] = []
    for label, ident in enumerate(identities):
        paths.extend(by_identity[ident])
        labels.extend([label] * len(by_identity[ident]))
    rec, idx = write_face_rec((paths, np.asarray(labels)), out / REC_PREFIX)
    (out / "labels.txt").write_text("".join(f"{i}\t{name}\n" for i, name in enumerate(identities)))
    report.rec, report.idx = str(rec), str(idx)
    report.rec_images = len(paths)
    report.num_classes = len(identities)
