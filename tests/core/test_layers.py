"""Imports point down the layers: every ``faceforge.<pkg>`` import in the package goes to its own package or to a
lower layer (function-level imports included), so no package depends on one that depends on it; and no module
imports one that imports it back, directly or round a longer circle (a registry importing its plug-ins, say):
registration is one-way, the plug-ins import the registry and a loader (often the package ``__init__``) imports
the plug-ins."""

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


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines under ``if TYPE_CHECKING:`` (imports for annotations only, never executed)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``module -> the faceforge modules it imports`` (module-level and function-level, relative imports
    resolved; ``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``).
    Importing a module also runs its packages' ``__init__``; that is not counted as an edge, so a package's
    ``__init__`` may import its own modules (that is how plug-ins get registered)."""
    paths = {_module_name(p, package): p for p in package.rglob("*.py")}

    def known(name: str) -> str | None:
        while name not in paths and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in paths else None

    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = _type_checking_lines(tree)
        edges: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [known(a.name) for a in node.names if a.name.split(".")[0] == package.name]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".")[
                        : len(module.split(".")) - node.level + (path.stem == "__init__")
                    ]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] != package.name:
                    continue
                targets = [
                    f"{source}.{a.name}" if f"{source}.{a.name}" in paths else known(source)
                    for a in node.names
                ]
            else:
                continue
            edges.update(t for t in targets if t and t != module)
        graph[module] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), each as one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for group in groups:  # one concrete cycle: breadth-first from the group's first module back to itself
        start = min(group)
        came_from: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in came_from:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & group):
                    if w not in came_from:
                        came_from[w] = v
                        nxt.append(w)
            frontier = nxt
        path = [start]
        while came_from[path[-1]] != start:
            path.append(came_from[path[-1]])
        cycles.append([start, *reversed(path[1:]), start])
    return cycles


def test_no_import_cycles() -> None:
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_sees_a_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "faceforge"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from faceforge.sub import a  # loader: not a cycle\n")
    (pkg / "sub" / "a.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from faceforge.sub.c import g\n")
    (pkg / "sub" / "c.py").write_text("from faceforge.sub.a import x\n")
    (pkg / "sub" / "d.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import e\n"
    )
    (pkg / "sub" / "e.py").write_text("from faceforge.sub import d\n")
    graph = import_graph(pkg)
    assert graph["faceforge.sub"] == {"faceforge.sub.a"}
    assert graph["faceforge.sub.d"] == set()
    assert import_cycles(graph) == [
        ["faceforge.sub.a", "faceforge.sub.b", "faceforge.sub.c", "faceforge.sub.a"]
    ]
