"""LFW pair lists (``pairs.txt``, ``pairsDevTrain.txt``, ``pairsDevTest.txt``) and image paths.

File format (LFW README, "View 1" / "View 2"):

* header: either one number ``N`` (View 1 files: ``N`` matched pairs followed by ``N`` mismatched
  pairs) or two numbers ``S N`` (View 2 ``pairs.txt``, ``10 300``: ``S`` sets, each ``N``
  matched pairs followed by ``N`` mismatched pairs);
* matched pair: ``name n1 n2`` -> ``<name>/<name>_<n1:04d>.jpg`` vs ``<name>/<name>_<n2:04d>.jpg``;
* mismatched pair: ``name1 n1 name2 n2``.

Fields are separated by tabs or spaces.  Blank lines are ignored.

:func:`read_lfw_pairs` is the one parser of this format in faceforge (the ``lfw``, ``bias``, ``robust`` and
``quality`` benchmark kinds, ``data.exclude_pairs``, ``faceforge serve calibrate --people-from`` and the
benchmark scripts all go through it); :func:`pairs_people` gives the people a list names and
:func:`write_lfw_pairs` writes a list back (a View 1 file).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from faceforge.core.text_files import read_text

__all__ = ["Pair", "lfw_image_path", "pairs_people", "read_lfw_pairs", "resolve_pairs", "write_lfw_pairs"]

StrPath = str | os.PathLike[str]


@dataclass(frozen=True)
class Pair:
    """One verification pair: image ``idx1`` of ``name1`` against image ``idx2`` of ``name2``."""

    name1: str
    idx1: int
    name2: str
    idx2: int
    same: bool


def _parse_index(token: str, where: str) -> int:
    try:
        value = int(token)
    except ValueError:
        raise ValueError(f"{where}: image number {token!r} is not an integer") from None
    if value < 1:
        raise ValueError(f"{where}: image number {value} must be >= 1")
    return value


def _parse_header(fields: list[str], where: str) -> tuple[int, int]:
    try:
        numbers = [int(f) for f in fields]
    except ValueError:
        numbers = []
    if len(numbers) == 1 and numbers[0] > 0:
        return 1, numbers[0]
    if len(numbers) == 2 and numbers[0] > 0 and numbers[1] > 0:
        return numbers[0], numbers[1]
    raise ValueError(
        f"{where}: expected a header 'N' or 'SETS N' of positive integers, got {' '.join(fields)!r}"
    )


def read_lfw_pairs(path: StrPath) -> list[Pair]:
    """Parse an LFW pairs file into a list of :class:`Pair`, in file order.

    Accepts both header forms (``"500"`` and ``"10 300"``, see the module docstring) and checks
    that every block has the expected kind of line (3 fields for matched, 4 for mismatched) and
    that the number of pair lines equals ``2 * SETS * N``.

    Raises:
        ValueError: malformed header or pair line, or a wrong number of pair lines; the message
            names the file and the 1-based line number.
    """
    path = Path(path)
    lines = [
        (lineno, raw.split())
        for lineno, raw in enumerate(read_text(path).splitlines(), start=1)
        if raw.strip()
    ]
    if not lines:
        raise ValueError(f"{path}: empty pairs file")
    header_line, header = lines[0]
    n_sets, n_per_kind = _parse_header(header, f"{path}:{header_line}")
    body = lines[1:]
    expected = 2 * n_sets * n_per_kind
    if len(body) != expected:
        raise ValueError(
            f"{path}: header line {header_line} announces {n_sets} set(s) x 2 x {n_per_kind} = "
            f"{expected} pairs but the file has {len(body)} pair lines"
        )

    pairs: list[Pair] = []
    for k, (lineno, fields) in enumerate(body):
        where = f"{path}:{lineno}"
        matched = (k % (2 * n_per_kind)) < n_per_kind
        if matched:
            if len(fields) != 3:
                raise ValueError(
                    f"{where}: expected a matched pair 'name n1 n2' (3 fields), got {len(fields)} "
                    f"fields: {' '.join(fields)!r}"
                )
            name, a, b = fields
            pairs.append(Pair(name, _parse_index(a, where), name, _parse_index(b, where), True))
        else:
            if len(fields) != 4:
                raise ValueError(
                    f"{where}: expected a mismatched pair 'name1 n1 name2 n2' (4 fields), got "
                    f"{len(fields)} fields: {' '.join(fields)!r}"
                )
            name1, a, name2, b = fields
            pairs.append(Pair(name1, _parse_index(a, where), name2, _parse_index(b, where), False))
    return pairs


def pairs_people(*pairs_files: StrPath) -> set[str]:
    """Every person named in the given LFW pairs files (both sides of every pair)."""
    return {n for f in pairs_files for p in read_lfw_pairs(f) for n in (p.name1, p.name2)}


def write_lfw_pairs(pairs: Sequence[Pair], path: StrPath) -> Path:
    """Write ``pairs`` as a View 1 file: header ``N``, then ``N`` matched and ``N`` mismatched lines.

    Raises:
        ValueError: when the matched pairs do not come first or the two counts differ (View 1's layout).
    """
    n = sum(p.same for p in pairs)
    if 2 * n != len(pairs) or not all(p.same for p in pairs[:n]):
        raise ValueError("a View 1 pairs file needs N matched pairs followed by N mismatched pairs")
    lines = [str(n)] + [
        f"{p.name1}\t{p.idx1}\t{p.idx2}" if p.same else f"{p.name1}\t{p.idx1}\t{p.name2}\t{p.idx2}"
        for p in pairs
    ]
    out = Path(path)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def lfw_image_path(images_dir: StrPath, name: str, idx: int, ext: str = ".jpg") -> Path:
    """``<images_dir>/<name>/<name>_<idx:04d><ext>``, e.g. ``Aaron_Peirsol/Aaron_Peirsol_0001.jpg``."""
    return Path(images_dir) / name / f"{name}_{idx:04d}{ext}"


def resolve_pairs(
    pairs: Iterable[Pair], images_dir: StrPath, ext: str = ".jpg", max_listed: int = 5
) -> tuple[list[Path], list[Path], NDArray[np.bool_]]:
    """Image paths of both sides of every pair plus the ``issame`` labels, in pair order.

    Raises:
        FileNotFoundError: if any image is missing (no directory entry at all); the message gives how
            many distinct files are missing in total and lists the first ``max_listed`` of them. An entry
            that exists but cannot be read (a FIFO, a symbolic link loop, a folder) is not missing: the
            reader lists it as unreadable and the pair is left out, as a corrupt image's pair is.
    """
    paths1: list[Path] = []
    paths2: list[Path] = []
    same: list[bool] = []
    for p in pairs:
        paths1.append(lfw_image_path(images_dir, p.name1, p.idx1, ext))
        paths2.append(lfw_image_path(images_dir, p.name2, p.idx2, ext))
        same.append(p.same)

    missing: list[Path] = []
    seen: set[Path] = set()
    for q in (q for pair in zip(paths1, paths2, strict=True) for q in pair):
        if q not in seen:
            seen.add(q)
            if not os.path.lexists(q):
                missing.append(q)
    if missing:
        listed = ", ".join(str(m) for m in missing[:max_listed])
        more = f" (and {len(missing) - max_listed} more)" if len(missing) > max_listed else ""
        raise FileNotFoundError(
            f"{len(missing)} of {len(seen)} distinct image files are missing under {images_dir}: "
            f"{listed}{more}"
        )
    return paths1, paths2, np.asarray(same, dtype=bool)
