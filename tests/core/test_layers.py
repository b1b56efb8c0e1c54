"""Imports point down the layers: every ``faceforge.<pkg>`` import in the package goes to its own package or to a
lower layer (function-level imports included), so no package depends on one that depends on it."""

from __future__ import annotations

import ast
from pathlib import Path

import faceforge

PACKAGE = Path(faceforge.__file__).resolve().parent

#: lowest first; packages on one line are peers and may not import each other
LAYERS: list[set[str]] = [
    {"core"},
    {"data", "models"},
    {"embedders", "importers"},
    {"deploy", "eval", "distill"},
    {"objectives"},
    {"engine"},
    {"methods"},
    {"config"},
    {"serve"},
    {"api"},
    {"cli"},
    {"__main__"},
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [
                f"{node.module}.{a.name}" for a in node.names if node.module == "faceforge"
            ]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.startswith("faceforge.")]
    return found


def test_every_package_has_a_layer() -> None:
    tops = {p.name if p.is_dir() else p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    tops -= {"__init__", "__pycache__", "configs"}
    assert tops <= set(LEVEL), f"put {sorted(tops - set(LEVEL))} in LAYERS"


def test_imports_point_down() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        own = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if own == "__init__":
            continue
        for line, name in _imports(path):
            target = name.split(".")[1]
            if target == own or target not in LEVEL:
                continue
            if LEVEL[target] >= LEVEL[own]:
                upward.append(f"{rel}:{line} {own} imports {name}")
    assert not upward, "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    fake = tmp_path / "x.py"
    fake.write_text("def f():\n    from faceforge.engine.loop import Trainer\n")
    assert _imports(fake) == [(2, "faceforge.engine.loop")]
