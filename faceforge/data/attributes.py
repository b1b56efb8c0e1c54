"""Labels beyond identity: named per-image attributes (age, gender, group, quality, ...).

Two sources, shared by training (objectives that need an attribute) and evaluation (the ``bias`` benchmark):

* a **sidecar** CSV or TSV file keyed by the image path relative to the data root: a header row with a
  ``path`` column (``file`` and ``image`` are accepted too) and one column per attribute; an empty cell
  (or ``NA``/``nan``) means "missing" for that image. Numbers become floats, anything else stays text.
  The delimiter is a tab for ``.tsv`` files and a comma otherwise.
* a **file-name labeller** registered in :data:`NAME_PARSERS`: ``file name -> {attribute: value}`` or None
  when the name does not follow the data set's convention. ``utkface`` reads UTKFace's
  ``<age>_<gender>_<race>_<timestamp>.jpg...`` into ``age`` (years), ``gender`` (``male``/``female``),
  ``race`` (``White``/``Black``/``Asian``/``Indian``/``Other``) and ``age_band`` (0-19, 20-39, 40-59, 60+).

:class:`Attributes` holds one column per attribute over the rows of a dataset with a boolean mask of the
rows that have a value, so a mixture of sources where only some carry a label trains with masked losses.
:data:`GROUP_LABELLERS` keeps the ``<dataset>-<attribute>`` names the ``bias`` benchmark takes
(``utkface-gender``, ``utkface-race``, ``utkface-age`` = the age band). :func:`group_source` gives the
``bias`` benchmarks one way to read a group per image from either a labeller name or a group file
(``identity_or_path,group``: a sidecar whose key column may also be ``identity``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from faceforge.core.hashing import file_sha256
from faceforge.core.registry import Registry

__all__ = [
    "GROUP_LABELLERS",
    "NAME_PARSERS",
    "AttributeFileError",
    "Attributes",
    "GroupSource",
    "group_source",
    "is_group_file",
    "read_sidecar",
    "utkface_fields",
]

NAME_PARSERS: Registry[Callable[[str], dict[str, Any] | None]] = Registry("file-name labeller")
"""``name -> (file name -> {attribute: value} or None)``."""

GROUP_LABELLERS: Registry[Callable[[str], Any]] = Registry("group labeller")
"""``name -> (file name -> group label or None)``: one attribute of a file-name labeller, for ``bias:``."""

UTKFACE_GENDER = {0: "male", 1: "female"}
UTKFACE_RACE = {0: "White", 1: "Black", 2: "Asian", 3: "Indian", 4: "Other"}
AGE_BANDS = ((0, 19, "0-19"), (20, 39, "20-39"), (40, 59, "40-59"), (60, 200, "60+"))
PATH_COLUMNS = ("path", "file", "image")
GROUP_KEY_COLUMNS = (*PATH_COLUMNS, "identity")
GROUP_FILE_SUFFIXES = (".csv", ".tsv")
MISSING = frozenset({"", "na", "nan", "none", "null"})


class AttributeFileError(ValueError):
    """A sidecar or labeller that cannot be used; the message names the file (and line) and the fix."""


def age_band(age: float) -> str:
    return next(label for lo, hi, label in AGE_BANDS if lo <= age <= hi)


def utkface_fields(name: str) -> tuple[int, int, int] | None:
    """``(age, gender, race)`` from a UTKFace file name, or None."""
    parts = Path(name).name.split("_")
    if len(parts) < 4 or not all(p.isdigit() for p in parts[:3]):
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])


@NAME_PARSERS.register("utkface")
def utkface(name: str) -> dict[str, Any] | None:
    """UTKFace ``<age>_<gender>_<race>_<timestamp>``: age in years, gender 0 male / 1 female, race 0 White,
    1 Black, 2 Asian, 3 Indian, 4 Other (UTKFace's README)."""
    f = utkface_fields(name)
    if f is None:
        return None
    age, gender, race = f
    out: dict[str, Any] = {"age": float(age), "age_band": age_band(age)}
    if gender in UTKFACE_GENDER:
        out["gender"] = UTKFACE_GENDER[gender]
    if race in UTKFACE_RACE:
        out["race"] = UTKFACE_RACE[race]
    return out


def _group_labeller(parser: str, attribute: str) -> Callable[[str], Any]:
    def label(name: str) -> Any:
        values = NAME_PARSERS.get(parser)(name)
        return None if values is None else values.get(attribute)

    label.__doc__ = f"The ``{attribute}`` attribute of the ``{parser}`` file-name labeller."
    return label


GROUP_LABELLERS.register("utkface-gender")(_group_labeller("utkface", "gender"))
GROUP_LABELLERS.register("utkface-race")(_group_labeller("utkface", "race"))
GROUP_LABELLERS.register("utkface-age")(_group_labeller("utkface", "age_band"))


def _value(text: str) -> Any:
    t = text.strip()
    if t.lower() in MISSING:
        return None
    try:
        v = float(t)
    except ValueError:
        return t
    return v if math.isfinite(v) else None


def read_sidecar(
    path: str | Path, key_columns: Sequence[str] = PATH_COLUMNS
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``{relative path: {attribute: value}}`` and the attribute names of a CSV/TSV sidecar.

    ``key_columns``: header names accepted for the key column (case-insensitive; the first column whose
    name is one of them is the key). Raises :class:`AttributeFileError` naming the file (and line) for a
    missing header, no key column, a row with the wrong number of cells, a key listed twice, or bytes that
    are not UTF-8.
    """
    p = Path(path)
    if not p.is_file():
        raise AttributeFileError(f"attribute file not found: {p}")
    delimiter = "\t" if p.suffix.lower() == ".tsv" else ","
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AttributeFileError(
            f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from None
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    if not rows:
        raise AttributeFileError(f"{p}: empty; expected a header row such as 'path{delimiter}age'")
    header = [h.strip() for h in rows[0]]
    key_col = next((i for i, h in enumerate(header) if h.lower() in key_columns), None)
    if key_col is None:
        names_ok = " or ".join(repr(k) for k in key_columns)
        raise AttributeFileError(f"{p}:1: no key column; name one column {names_ok} (header: {header})")
    names = [h for i, h in enumerate(header) if i != key_col]
    if not names:
        raise AttributeFileError(f"{p}:1: no attribute columns beside '{header[key_col]}'")
    table: dict[str, dict[str, Any]] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise AttributeFileError(f"{p}:{line_no}: {len(row)} cells, the header has {len(header)}")
        key = Path(row[key_col].strip()).as_posix()
        if key in table:
            raise AttributeFileError(f"{p}:{line_no}: path {key!r} is listed twice")
        table[key] = {h: _value(c) for i, (h, c) in enumerate(zip(header, row, strict=True)) if i != key_col}
    return table, names


@dataclass
class Attributes:
    """Per-row attribute columns of a dataset: ``values[name]`` (float64 for numbers, object for text) and
    ``mask[name]`` (True where the row has a value). ``sources`` says where each came from."""

    n: int
    values: dict[str, np.ndarray] = field(default_factory=dict)
    mask: dict[str, np.ndarray] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return sorted(self.values)

    def set(self, name: str, column: Sequence[Any], source: str) -> None:
        present = np.array([v is not None for v in column], dtype=bool)
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in column if v is not None)
        if numeric:
            arr = np.array([float(v) if v is not None else np.nan for v in column], dtype=np.float64)
        else:
            arr = np.array([v if v is not None else "" for v in column], dtype=object)
        if name in self.values:  # a second source fills the rows the first left missing
            fill = present & ~self.mask[name]
            merged = self.values[name].astype(arr.dtype if not numeric else np.float64, copy=True)
            merged[fill] = arr[fill]
            self.values[name], self.mask[name] = merged, self.mask[name] | present
            self.sources[name] += f" + {source}"
        else:
            self.values[name], self.mask[name], self.sources[name] = arr, present, source

    def extend(self, other: Attributes) -> Attributes:
        """Rows of ``self`` followed by the rows of ``other`` (attributes missing on one side are masked)."""
        out = Attributes(self.n + other.n)
        for name in sorted(set(self.values) | set(other.values)):
            cols = []
            for part in (self, other):
                if name in part.values:
                    col = part.values[name]
                    cols.append(
                        [v if m else None for v, m in zip(col.tolist(), part.mask[name], strict=True)]
                    )
                else:
                    cols.append([None] * part.n)
            out.set(
                name,
                cols[0] + cols[1],
                " | ".join(s for s in (self.sources.get(name), other.sources.get(name)) if s),
            )
        return out

    def categories(self, name: str) -> list[str] | None:
        """The sorted distinct values of a text attribute (their positions are its codes); None for numbers."""
        col = self.values[name]
        if col.dtype != object:
            return None
        return sorted({str(v) for v, m in zip(col.tolist(), self.mask[name], strict=True) if m})

    def numeric(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(values float64 [n], mask bool [n])``: numbers as they are, text as codes into
        :meth:`categories`; missing rows hold 0."""
        col, mask = self.values[name], self.mask[name]
        cats = self.categories(name)
        if cats is None:
            return np.where(mask, col, 0.0), mask
        code = {c: i for i, c in enumerate(cats)}
        return np.array(
            [code[str(v)] if m else 0 for v, m in zip(col.tolist(), mask, strict=True)], float
        ), mask

    def summary(self) -> dict[str, dict[str, Any]]:
        return {
            n: {"rows_with_value": int(self.mask[n].sum()), "rows": self.n, "source": self.sources[n]}
            for n in self.names
        }


def attributes_for(
    paths: Sequence[str],
    root: str | Path | None,
    sidecar: str | Path | None = None,
    labeller: str | None = None,
) -> Attributes:
    """The attributes of ``paths`` from a sidecar (keyed by path relative to ``root``) and/or a file-name
    labeller; paths the sidecar does not list (or names the labeller cannot read) are masked."""
    attrs = Attributes(len(paths))
    base = Path(root) if root is not None else None

    def rel(p: str) -> str:
        q = Path(p)
        if base is not None and q.is_relative_to(base):
            q = q.relative_to(base)
        return q.as_posix()

    if sidecar:
        table, names = read_sidecar(sidecar)
        keys = [rel(p) for p in paths]
        for name in names:
            attrs.set(name, [table.get(k, {}).get(name) for k in keys], f"sidecar {sidecar}")
    if labeller:
        parse = NAME_PARSERS.get(labeller)
        parsed = [parse(Path(p).name) or {} for p in paths]
        for name in sorted({k for d in parsed for k in d}):
            attrs.set(name, [d.get(name) for d in parsed], f"labeller {labeller}")
    return attrs


# ------------------------------------------------------------------------------------------------------
# one group per image, for the bias benchmarks
# ------------------------------------------------------------------------------------------------------
def is_group_file(spec: str) -> bool:
    """True when ``spec`` names a group file (``FILE.csv``, ``FILE.tsv``, optionally ``#column``)."""
    return Path(spec.partition("#")[0]).suffix.lower() in GROUP_FILE_SUFFIXES


def _group_text(v: Any) -> str | None:
    """Group values are names: 1.0 read from a file stays "1", text stays text, missing stays None."""
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


@dataclass
class GroupSource:
    """Where each image's group comes from: a registered labeller or an ``identity_or_path,group`` file.

    * labeller (a :data:`GROUP_LABELLERS` name): the group of the file name;
    * group file ``FILE.csv`` / ``FILE.tsv`` (``FILE.csv#column`` picks a column; default the ``group``
      column, or the only attribute column): a header row with a key column named ``path``, ``file``,
      ``image`` or ``identity`` and the group column. A key is an image path relative to the image folder
      (``Person/Person_0001.jpg``, or ``x.jpg`` in a flat folder) or an identity (the first folder of the
      relative path, ``Person``); an image takes its own path's row first, then its identity's row.
      Images in neither have no group (counted and left out by the caller).
    """

    spec: str
    labeller: Callable[[str], Any] | None = None
    table: dict[str, str | None] = field(default_factory=dict)
    file: str | None = None
    column: str | None = None

    def group_of(self, rel_path: str) -> str | None:
        """The group of an image given by its path relative to the image folder (None: no group)."""
        rel = Path(rel_path).as_posix()
        if self.labeller is not None:
            return _group_text(self.labeller(Path(rel).name))
        if rel in self.table:
            return self.table[rel]
        parts = Path(rel).parts
        return self.table.get(parts[0]) if len(parts) > 1 else None

    def describe(self) -> dict[str, Any]:
        if self.labeller is not None:
            return {"source": "file-name labeller", "labeller": self.spec}
        return {
            "source": "group file",
            "file": self.file,
            "file_sha256": file_sha256(self.file),
            "column": self.column,
            "keys": len(self.table),
            "key_rule": "image path relative to the image folder, else its identity (first folder)",
        }


def group_source(spec: str) -> GroupSource:
    """A :class:`GroupSource` from a labeller name or a group-file spec (``FILE.csv[#column]``)."""
    if not is_group_file(spec):
        if spec not in GROUP_LABELLERS:
            raise AttributeFileError(
                f"unknown group labeller {spec!r}: use one of {GROUP_LABELLERS.names()} or a group file "
                "FILE.csv / FILE.tsv (header: path or identity, group)"
            )
        return GroupSource(spec, labeller=GROUP_LABELLERS.get(spec))
    file, _, column = spec.partition("#")
    table, names = read_sidecar(file, key_columns=GROUP_KEY_COLUMNS)
    if column:
        if column not in names:
            raise AttributeFileError(f"{file}: no column {column!r} (columns: {names}); fix the #column")
    elif "group" in names:
        column = "group"
    elif len(names) == 1:
        column = names[0]
    else:
        raise AttributeFileError(
            f"{file}: several attribute columns {names} and none is named 'group'; pick one with {file}#COLUMN"
        )
    return GroupSource(
        spec, table={k: _group_text(v.get(column)) for k, v in table.items()}, file=file, column=column
    )
