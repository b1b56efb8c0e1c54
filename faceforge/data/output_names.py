"""Output file names for jobs that turn a tree of images into a tree of images (``prepare``, ``align``).

An output keeps its input's relative path with the output extension (``P/a.png`` -> ``P/a.jpg``), so
folder layouts, LFW-style names and pairs files keep working. Two inputs of one folder that differ only
in their extension (``P/a.jpg`` and ``P/a.png``) would then share an output; instead *both* get their
input extension in the name (``P/a_jpg.jpg``, ``P/a_png.jpg``), so neither is lost and neither name depends
on which file was processed first. The names are a function of the set of inputs alone: the same input
tree always gives the same names, which is what lets an interrupted job resume.

If a renamed output still meets another input's output (``P/a_png.png`` beside ``P/a.png`` and
``P/a.jpg``), the later input in sorted order is refused with the reason and never written.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath


@dataclass(frozen=True)
class OutputNames:
    """``outputs``: input -> output relative path; ``renamed``/``refused``: ``{"file", "output"/"reason"}``."""

    outputs: dict[str, PurePath]
    renamed: list[dict[str, str]]
    refused: list[dict[str, str]]


def output_names(inputs: Sequence[PurePath], ext: str) -> OutputNames:
    """Unique output paths (relative, with extension ``ext``) for the relative input paths ``inputs``."""
    natural: dict[PurePath, list[PurePath]] = defaultdict(list)
    for rel in inputs:
        natural[rel.with_suffix(ext)].append(rel)
    chosen: dict[PurePath, PurePath] = {}
    renamed: list[dict[str, str]] = []
    for out, members in natural.items():
        if len(members) == 1:
            chosen[members[0]] = out
            continue
        shared = ", ".join(sorted(m.as_posix() for m in members))
        for rel in members:
            new = rel.with_name(f"{rel.stem}_{rel.suffix.lstrip('.')}{ext}")
            chosen[rel] = new
            renamed.append(
                {
                    "file": rel.as_posix(),
                    "output": new.as_posix(),
                    "reason": f"{shared} would all be written as {out.as_posix()}",
                }
            )
    owner: dict[PurePath, PurePath] = {}
    outputs: dict[str, PurePath] = {}
    refused: list[dict[str, str]] = []
    for rel in sorted(chosen):
        out = chosen[rel]
        if out in owner:
            refused.append(
                {
                    "file": rel.as_posix(),
                    "reason": f"its output name {out.as_posix()} is taken by {owner[out].as_posix()}; rename one",
                }
            )
            continue
        owner[out] = rel
        outputs[rel.as_posix()] = out
    renamed = [r for r in renamed if r["file"] in outputs]
    return OutputNames(outputs, sorted(renamed, key=lambda r: r["file"]), refused)
