"""Docstrings and comments cite papers (authors, venue, year) and public code (repository and path), never files
a user of faceforge does not have: the development notes beside the checkout (``methods.md``, ``anchors.md``,
``ARCHITECTURE.md``) or its ``shared/`` folder."""

from __future__ import annotations

import re
from pathlib import Path

import faceforge

ROOT = Path(faceforge.__file__).resolve().parents[1]
#: what the package, its configs and the benchmark scripts may not point to
OUTSIDE = re.compile(r"methods\.md|anchors\.md|ARCHITECTURE\.md|(?<![\w-])shared/")
SUFFIXES = {".py", ".yaml", ".yml", ".md", ".txt", ".cfg", ".toml"}


def outside_references(root: Path, *folders: Path) -> list[str]:
    found = []
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.suffix not in SUFFIXES or "__pycache__" in path.parts or not path.is_file():
                continue
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if OUTSIDE.search(line):
                    found.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    return found


def test_no_references_to_files_outside_the_repository() -> None:
    found = outside_references(ROOT, ROOT / "faceforge", ROOT / "benchmarks")
    assert not found, "cite the paper or the public code instead:\n" + "\n".join(found)


def test_the_check_sees_a_reference(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text('"""Loss (methods.md §2)."""\n')
    (tmp_path / "b.yaml").write_text("pairs: ../shared/data/lfw/pairs.txt\n")
    (tmp_path / "c.py").write_text(
        '"""Loss (Huang et al., ECCV 2020; TFace ``recognition/torchkit/loss/ddl.py``)."""\n'
    )
    found = outside_references(tmp_path, tmp_path)
    assert [f.split(":")[0] for f in found] == ["a.py", "b.yaml"]
