"""Where a face image's quality comes from: a registry of quality sources, each a small class.

A source maps image files (aligned faces under a root folder) to one number per image, higher = better,
NaN (with a reason) where it has none.  The ``quality`` benchmark kinds compare several sources on one
error-versus-reject plot, and ``faceforge quality`` writes any of them to a ``path,quality`` CSV.

Sources (spec ``NAME`` or ``NAME=ARG``; :func:`parse_quality_sources` reads a comma-separated list):

* ``norm`` - the L2 norm of the recogniser's raw embedding (flip sum when flip is on), as MagFace reads
  it; needs a recogniser.
* ``csv=PATH[#COLUMN]`` - numbers from a CSV/TSV attribute file keyed by the image path relative to the
  image folder (the format of :func:`faceforge.data.attributes.read_sidecar`, written by
  :func:`write_quality_csv`: SDD-FIQA pseudo-labels, ``faceforge quality`` output, any other tool's
  scores).  The column is ``COLUMN``, else ``quality``, else the file's only attribute column.
* ``sharpness`` - variance of the Laplacian (Pech-Pacheco et al., ICPR 2000) of the aligned crop:
  grey ``Y = 0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601, float, no rounding), 4-neighbour kernel
  ``[[0,1,0],[1,-4,1],[0,1,0]]`` (OpenCV ``Laplacian`` with ``ksize=1``), reflect-101 borders, the
  population variance over every pixel of the crop.  The whole crop is used (as classic FIQA
  baselines do), so sharp background texture counts too.
* ``facesize=LANDMARKS_CSV`` - inter-ocular distance ``||right eye - left eye||`` in pixels of the
  *source* photo, from the landmarks table the faces were aligned with (the ``faceforge align``
  format: a ``file`` column and ``leye_x, leye_y, reye_x, reye_y, ...``).
* ``facebox=BOXES_CSV`` - ``sqrt(width * height)`` of the detection box in the source photo (columns
  ``file, x1, y1, x2, y2``, e.g. LFW's ``landmarks_mtcnn_5pts_250px.csv``).

  Why face size needs the source geometry: alignment maps the eyes and mouth onto fixed template
  points, so every aligned 112x112 crop shows a face of the same size in pixels by construction; how
  many source pixels the face had is only in the landmarks or box of the source photo.  Rows are
  found by the image's path relative to the image folder, then by its file name, then by its file
  name without extension (aligned copies may change the extension); an offset applied to all
  coordinates does not change either size.
* ``random[=SEED]`` - a uniform number in ``[0, 1)`` per image from ``sha256("SEED:relative path")``:
  the random-rejection reference, independent of list order.
* ``model=SPEC`` - a quality model through the :class:`~faceforge.embedders.Embedder` contract: any
  embedder spec whose output has one value per face (a quality regressor checkpoint or ONNX file);
  its output is the score, single forward pass, no flip (SDD-FIQA's inference), through the
  embedding cache.  A recognition model (many outputs) is refused.

A new source is a :class:`QualitySource` subclass registered with ``@QUALITY_SOURCES.register(name)``.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from faceforge.core.registry import Registry
from faceforge.core.text_files import open_text
from faceforge.data.attributes import AttributeFileError, read_sidecar
from faceforge.data.image_io import UnreadableImageError, declared_size, read_image_bytes, read_image_rgb
from faceforge.eval.quality import laplacian_variance

__all__ = [
    "QUALITY_SOURCES",
    "QualityInputs",
    "QualityScores",
    "QualitySource",
    "QualitySourceError",
    "parse_quality_sources",
    "read_quality_csv",
    "relative_key",
    "score_images",
    "write_quality_csv",
]


class QualitySourceError(ValueError):
    """A source spec or its file that cannot be used; the message names it and the fix."""


@dataclass
class QualityInputs:
    """The images to score and what sources may need besides the files."""

    paths: Sequence[str]  # image files
    root: Path  # CSV / landmark keys are paths relative to this folder
    norms: Callable[[Sequence[str]], np.ndarray] | None = None  # raw-embedding norms (NaN: unreadable)
    embed_options: dict[str, Any] = field(default_factory=dict)  # cache_dir, batch_size, device, progress


@dataclass
class QualityScores:
    """One value per input image (float64, NaN = no quality) and ``"path: reason"`` for each NaN."""

    values: np.ndarray
    missing: list[str]


def relative_key(path: str | Path, root: Path) -> str:
    """``path`` relative to ``root`` as a posix string (the path itself when it is not below ``root``)."""
    p = Path(path)
    return (p.relative_to(root) if p.is_relative_to(root) else p).as_posix()


class QualitySource:
    """Base class: ``score(inputs) -> QualityScores``; subclasses set ``name``, ``usage``, ``arg_rule``."""

    name: ClassVar[str] = ""
    usage: ClassVar[str] = ""
    definition: ClassVar[str] = ""
    arg_rule: ClassVar[Literal["none", "optional", "required"]] = "none"

    def __init__(self, arg: str | None = None) -> None:
        if self.arg_rule == "none" and arg is not None:
            raise QualitySourceError(f"quality source '{self.name}' takes no argument (usage: {self.usage})")
        if self.arg_rule == "required" and not arg:
            raise QualitySourceError(f"quality source '{self.name}' needs an argument (usage: {self.usage})")
        self.arg = arg

    @property
    def label(self) -> str:
        return self.name if self.arg is None else f"{self.name}={self.arg}"

    def check(self) -> None:
        """Raise ``FileNotFoundError`` naming a missing file before any image is read."""

    def settings(self) -> dict[str, Any]:
        return {"source": self.name, "arg": self.arg, "definition": self.definition, "higher_is_better": True}

    def score(self, inputs: QualityInputs) -> QualityScores:
        raise NotImplementedError  # every registered source overrides this


QUALITY_SOURCES: Registry[QualitySource] = Registry("quality source")


def parse_quality_sources(text: str) -> list[QualitySource]:
    """``"norm,sharpness,csv=labels.csv"`` -> source objects (names checked, files not yet)."""
    out: list[QualitySource] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, sep, arg = item.partition("=")
        if name not in QUALITY_SOURCES:
            raise QualitySourceError(
                f"unknown quality source {name!r}; available: "
                + ", ".join(QUALITY_SOURCES.get(n).usage for n in QUALITY_SOURCES.ordered_names())
            )
        out.append(QUALITY_SOURCES.build(name, arg=arg if sep else None))
    if not out:
        raise QualitySourceError("no quality source given")
    labels = [s.label for s in out]
    if len(set(labels)) != len(labels):
        raise QualitySourceError(f"a quality source is listed twice: {labels}")
    return out


def _require(path: str | None, what: str, source: str) -> Path:
    p = Path(path or "")
    if not p.is_file():
        raise FileNotFoundError(f"quality source '{source}': {what} not found: {p}")
    return p


# --------------------------------------------------------------------------------------------
# the path,quality CSV (an attribute sidecar)
# --------------------------------------------------------------------------------------------
def write_quality_csv(
    out: str | Path, keys: Sequence[str], values: Sequence[float] | np.ndarray, column: str = "quality"
) -> Path:
    """Write ``path,<column>`` rows (keys relative to the image folder; NaN values are left out).

    Readable by :func:`faceforge.data.attributes.read_sidecar` (hence by training and evaluation).
    """
    if column.lower() in ("path", "file", "image"):
        raise ValueError(f"column name {column!r} is reserved for the path column")
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    delimiter = "\t" if p.suffix.lower() == ".tsv" else ","
    with p.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=delimiter, lineterminator="\n")
        w.writerow(["path", column])
        for k, v in zip(keys, np.asarray(values, dtype=np.float64).tolist(), strict=True):
            if math.isfinite(v):
                w.writerow([k, format(v, ".9g")])
    return p


def read_quality_csv(path: str | Path, column: str | None = None) -> tuple[dict[str, float | None], str]:
    """``{relative path: value or None}`` and the column used (see the module docstring for the choice)."""
    try:
        table, names = read_sidecar(path)
    except AttributeFileError as exc:
        raise QualitySourceError(str(exc)) from None
    if column is None:
        column = "quality" if "quality" in names else (names[0] if len(names) == 1 else None)
        if column is None:
            raise QualitySourceError(
                f"{path}: several columns {names} and none is 'quality'; pick one with csv=PATH#COLUMN"
            )
    elif column not in names:
        raise QualitySourceError(f"{path}: no column {column!r} (columns: {names})")
    out: dict[str, float | None] = {}
    for key, row in table.items():
        v = row.get(column)
        out[key] = float(v) if isinstance(v, float) else None
    return out, column


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------
@QUALITY_SOURCES.register("norm")
class NormSource(QualitySource):
    name = "norm"
    usage = "norm"
    definition = "L2 norm of the raw embedding (flip sum when flip is on)"

    def score(self, inputs: QualityInputs) -> QualityScores:
        if inputs.norms is None:
            raise QualitySourceError("quality source 'norm' needs a recognition model (--model)")
        v = np.asarray(inputs.norms(list(inputs.paths)), dtype=np.float64)
        return QualityScores(
            v, [f"{p}: unreadable image" for p, x in zip(inputs.paths, v, strict=True) if np.isnan(x)]
        )


@QUALITY_SOURCES.register("csv")
class CsvSource(QualitySource):
    name = "csv"
    usage = "csv=PATH[#COLUMN]"
    definition = "values of a path,quality attribute file keyed by the path relative to the image folder"
    arg_rule = "required"

    def __init__(self, arg: str | None = None) -> None:
        super().__init__(arg)
        path, _, col = (arg or "").partition("#")
        self.path, self.column = path, (col or None)

    def check(self) -> None:
        _require(self.path, "CSV file", self.label)

    def settings(self) -> dict[str, Any]:
        from faceforge.core.hashing import file_sha256

        s = super().settings()
        s.update(file=self.path, sha256=file_sha256(self.path) if Path(self.path).is_file() else None)
        return s

    def score(self, inputs: QualityInputs) -> QualityScores:
        table, column = read_quality_csv(self.path, self.column)
        self.column = column
        vals = np.full(len(inputs.paths), np.nan)
        missing: list[str] = []
        for i, p in enumerate(inputs.paths):
            key = relative_key(p, inputs.root)
            if key not in table:
                missing.append(f"{p}: not in {self.path}")
            elif table[key] is None:
                missing.append(f"{p}: no number in column {column!r} of {self.path}")
            else:
                vals[i] = table[key]
        return QualityScores(vals, missing)


@QUALITY_SOURCES.register("sharpness")
class SharpnessSource(QualitySource):
    name = "sharpness"
    usage = "sharpness"
    definition = (
        "variance of the Laplacian of the aligned crop: BT.601 grey (float), kernel [[0,1,0],[1,-4,1],[0,1,0]], "
        "reflect-101 borders, population variance over all pixels"
    )

    def score(self, inputs: QualityInputs) -> QualityScores:
        vals = np.full(len(inputs.paths), np.nan)
        missing: list[str] = []
        for i, p in enumerate(inputs.paths):
            try:
                vals[i] = laplacian_variance(read_image_rgb(p))
            except (UnreadableImageError, FileNotFoundError) as exc:
                missing.append(
                    f"{p}: {exc.reason if isinstance(exc, UnreadableImageError) else 'file not found'}"
                )
        return QualityScores(vals, missing)


def read_columns(path: Path, columns: Sequence[str], source: str) -> dict[str, np.ndarray]:
    """``file -> float values of columns`` from a CSV with a ``file`` column; errors name file and line."""
    table: dict[str, np.ndarray] = {}
    with open_text(path) as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("file", *columns) if c not in (reader.fieldnames or [])]
        if missing:
            raise QualitySourceError(
                f"quality source '{source}': {path} lacks column(s) {missing}; it needs 'file' and {list(columns)}"
            )
        for line_no, row in enumerate(reader, start=2):
            try:
                table[Path(row["file"]).as_posix()] = np.array([float(row[c]) for c in columns])
            except (TypeError, ValueError):
                raise QualitySourceError(
                    f"{path}:{line_no}: a value of {list(columns)} is not a number"
                ) from None
    return table


def lookup_row(table: dict[str, np.ndarray], by_stem: dict[str, str | None], key: str) -> np.ndarray | None:
    """Row of ``key`` (relative path), else of its file name, else of its name without extension."""
    p = Path(key)
    for k in (p.as_posix(), p.name):
        if k in table:
            return table[k]
    k = by_stem.get(p.stem)
    return table[k] if k is not None else None


class _GeometrySource(QualitySource):
    """Face size from the source photo's geometry table (see the module docstring)."""

    arg_rule = "required"
    columns: ClassVar[tuple[str, ...]] = ()
    what: ClassVar[str] = ""

    def check(self) -> None:
        _require(self.arg, self.what, self.label)

    def size(self, row: np.ndarray) -> float:
        raise NotImplementedError  # subclasses

    def settings(self) -> dict[str, Any]:
        from faceforge.core.hashing import file_sha256

        s = super().settings()
        s.update(file=self.arg, sha256=file_sha256(self.arg) if Path(self.arg or "").is_file() else None)
        s["lookup"] = "relative path, then file name, then file name without extension"
        return s

    def score(self, inputs: QualityInputs) -> QualityScores:
        table = read_columns(_require(self.arg, self.what, self.label), self.columns, self.label)
        by_stem: dict[str, str | None] = {}
        for k in table:
            stem = Path(k).stem
            by_stem[stem] = None if stem in by_stem else k  # ambiguous stems match nothing
        vals = np.full(len(inputs.paths), np.nan)
        missing: list[str] = []
        for i, p in enumerate(inputs.paths):
            row = lookup_row(table, by_stem, relative_key(p, inputs.root))
            if row is None:
                missing.append(f"{p}: no row in {self.arg}")
                continue
            try:  # a size is only given to a file that is an image (header read, pixels not decoded)
                declared_size(read_image_bytes(p), p)
            except UnreadableImageError as exc:
                missing.append(f"{p}: {exc.reason}")
                continue
            except FileNotFoundError:
                missing.append(f"{p}: file not found")
                continue
            size = self.size(row)
            if not math.isfinite(size):
                missing.append(f"{p}: its row in {self.arg} has a non-finite value ({size})")
                continue
            vals[i] = size
        return QualityScores(vals, missing)


@QUALITY_SOURCES.register("facesize")
class FaceSizeSource(_GeometrySource):
    name = "facesize"
    usage = "facesize=LANDMARKS_CSV"
    definition = (
        "inter-ocular distance in source-photo pixels, from the landmarks the faces were aligned with"
    )
    columns = ("leye_x", "leye_y", "reye_x", "reye_y")
    what = "landmarks CSV"

    def size(self, row: np.ndarray) -> float:
        return float(math.hypot(row[2] - row[0], row[3] - row[1]))


@QUALITY_SOURCES.register("facebox")
class FaceBoxSource(_GeometrySource):
    name = "facebox"
    usage = "facebox=BOXES_CSV"
    definition = "sqrt(width * height) of the detection box in source-photo pixels"
    columns = ("x1", "y1", "x2", "y2")
    what = "boxes CSV"

    def size(self, row: np.ndarray) -> float:
        return float(math.sqrt(max(row[2] - row[0], 0.0) * max(row[3] - row[1], 0.0)))


@QUALITY_SOURCES.register("random")
class RandomSource(QualitySource):
    name = "random"
    usage = "random[=SEED]"
    definition = "uniform in [0, 1) from sha256('SEED:relative path'): the random-rejection reference"
    arg_rule = "optional"

    def __init__(self, arg: str | None = None) -> None:
        super().__init__(arg)
        try:
            self.seed = int(arg) if arg is not None else 0
        except ValueError:
            raise QualitySourceError(f"random={arg}: the seed must be an integer") from None

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "seed": self.seed}

    def score(self, inputs: QualityInputs) -> QualityScores:
        vals = np.array(
            [
                int.from_bytes(
                    hashlib.sha256(f"{self.seed}:{relative_key(p, inputs.root)}".encode()).digest()[:8], "big"
                )
                / 2.0**64
                for p in inputs.paths
            ],
            dtype=np.float64,
        )
        return QualityScores(vals, [])


@QUALITY_SOURCES.register("model")
class ModelSource(QualitySource):
    name = "model"
    usage = "model=SPEC"
    definition = "output of a quality model (an embedder with one output per face), single pass, no flip"
    arg_rule = "required"

    def __init__(self, arg: str | None = None) -> None:
        super().__init__(arg)
        self._desc: dict[str, Any] | None = None

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "model": self._desc, "flip": "none"}

    def score(self, inputs: QualityInputs) -> QualityScores:
        from faceforge.embedders import embedder_from_spec
        from faceforge.embedders.cache import cached_embed_paths

        opts = dict(inputs.embed_options)
        model = embedder_from_spec(
            str(self.arg), device=opts.get("device", "auto"), batch_size=opts.get("batch_size", 128)
        )
        if int(model.embedding_size) != 1:
            raise QualitySourceError(
                f"quality source '{self.label}': the model gives {model.embedding_size} values per face, "
                "a quality model gives 1 (for a recogniser's embedding norm use the 'norm' source)"
            )
        self._desc = model.describe()
        out, failed = cached_embed_paths(
            model,
            list(inputs.paths),
            flip=False,
            cache_dir=opts.get("cache_dir"),
            batch_size=opts.get("batch_size", 128),
            normalize=False,
            progress=opts.get("progress", False),
        )
        return QualityScores(out[:, 0].astype(np.float64), list(failed))


def score_images(source: QualitySource, inputs: QualityInputs) -> QualityScores:
    """``source.check()`` then ``source.score(inputs)``, with the length checked."""
    source.check()
    res = source.score(inputs)
    if res.values.shape != (len(inputs.paths),):
        raise RuntimeError(f"quality source '{source.label}' returned {res.values.shape} values")
    return res
