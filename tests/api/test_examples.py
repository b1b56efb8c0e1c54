"""The API's examples run as tests on real data: every ``pycon`` block of ``docs/api.md`` (in order, in a folder
laid out as the page says) and the docstring examples of :mod:`faceforge.api`."""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

from tests.api.user_folder import make_user_folder

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
BLOCK = re.compile(r"^```pycon\n(.*?)^```", re.S | re.M)
MODULES = (
    "faceforge.api.images",
    "faceforge.api.detection",
    "faceforge.api.model",
    "faceforge.api.compare",
    "faceforge.api.gallery",
    "faceforge.api.evaluation",
    "faceforge.api.training",
)


def _run(tests: list[doctest.DocTest], shared: dict | None = None) -> tuple[int, int, str]:
    """Run doctests; with ``shared``, all of them in that one namespace (a page read top to bottom)."""
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    for t in tests:
        if shared is not None:
            t.globs = shared  # DocTest copies the globals it is given
        runner.run(t, out=report.append, clear_globs=False)
    res = runner.summarize(verbose=False)
    return res.attempted, res.failed, "".join(report)


@pytest.mark.slow
def test_docs_page_examples(data_dir: Path, sface, tmp_path: Path, monkeypatch) -> None:
    """docs/api.md from top to bottom (about 40 s here: SFace, a gallery, an evaluation, one training step)."""
    make_user_folder(data_dir, tmp_path)
    monkeypatch.chdir(tmp_path)
    text = DOCS.read_text()
    parser = doctest.DocTestParser()
    globs: dict = {}
    tests = []
    for m in BLOCK.finditer(text):
        line = text[: m.start()].count("\n") + 1
        tests.append(parser.get_doctest(m.group(1), globs, f"docs/api.md:{line}", str(DOCS), line))
    assert len(tests) >= 7, "the page lost its examples"
    attempted, failed, report = _run(tests, shared=globs)
    assert attempted >= 40 and failed == 0, report


@pytest.mark.slow
def test_docstring_examples(data_dir: Path, sface, aligned_people: Path, tmp_path: Path) -> None:
    """The ``>>>`` examples in faceforge.api's docstrings (names they use: photos, people, aligned, pairs, tmp,
    sface)."""
    globs = {
        "photos": data_dir / "photos",
        "people": data_dir / "lfw" / "images",
        "aligned": aligned_people / "aligned",
        "pairs": aligned_people / "pairs.txt",
        "tmp": tmp_path,
        "sface": sface,
    }
    finder = doctest.DocTestFinder()
    tests = []
    for name in MODULES:
        module = importlib.import_module(name)
        tests += [t for t in finder.find(module, name, extraglobs=globs) if t.examples]
    covered = {t.name.split(".")[2] for t in tests}
    assert covered == {n.split(".")[2] for n in MODULES}, f"modules without examples: {covered}"
    _, failed, report = _run(tests)
    assert failed == 0, report
