"""The README stays short and the documentation's links lead somewhere: every relative link (and image) in
README.md and the pages under docs/ names a file that exists, and the pages link only inside docs/ (the site
is built from that folder alone). The site itself is built by ``make docs`` (``mkdocs build --strict``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README_MAX_LINES = 260

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def pages() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


def relative_links(page: Path) -> list[str]:
    """Link targets outside code blocks and code spans, without web addresses and in-page anchors."""
    text = CODE_SPAN.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    out = []
    for target in LINK.findall(text):
        if SCHEME.match(target) or target.startswith("#"):
            continue
        out.append(target)
    return out


def test_readme_is_short() -> None:
    n = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, (
        f"README.md has {n} lines (at most {README_MAX_LINES}): move the detail to a page under docs/"
    )


def test_link_parser_sees_links_and_skips_code(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        '[a](a.md) ![img](i.png "title") [web](https://x.org) [anchor](#here) [b](b.md#part)\n'
        "`[not](code.md)` and\n```\n[not](fenced.md)\n```\n"
    )
    assert relative_links(page) == ["a.md", "i.png", "b.md#part"]


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_exist(page: Path) -> None:
    missing, outside = [], []
    for target in relative_links(page):
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not path:
            continue
        resolved = (page.parent / path).resolve()
        if not resolved.exists():
            missing.append(target)
        elif page.parent != REPO and DOCS not in (resolved, *resolved.parents):
            outside.append(target)
    assert not missing, f"{page.relative_to(REPO)}: links to files that do not exist: {missing}"
    assert not outside, (
        f"{page.relative_to(REPO)}: links outside docs/, which the site cannot serve: {outside}"
    )


def test_every_page_in_the_nav_exists() -> None:
    nav = re.findall(r":\s*([\w./-]+\.md)\s*$", (REPO / "mkdocs.yml").read_text(encoding="utf-8"), re.M)
    assert nav, "mkdocs.yml lists no pages"
    assert [p for p in nav if not (DOCS / p).is_file()] == []
    listed = set(nav)
    assert [
        str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if str(p.relative_to(DOCS)) not in listed
    ] == []


def test_docs_cite_nothing_outside_the_repository() -> None:
    """Papers and public code are cited by name; data is found through FACEFORGE_DATA, not a sibling folder."""
    bad = re.compile(r"methods\.md|anchors\.md|\.\./shared")
    hits = [
        f"{page.relative_to(REPO)}:{i}"
        for page in pages()
        for i, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if bad.search(line)
    ]
    assert hits == []


def test_the_papers_table_names_files_that_exist() -> None:
    """docs/papers.md answers "where is paper X?" with paths in code spans, which the link check does not see:
    every ``faceforge/...``, ``tests/...`` and ``benchmarks/...`` path there must exist (configs are named
    relative to faceforge/configs/)."""
    text = (DOCS / "papers.md").read_text(encoding="utf-8")
    spans = re.findall(r"`([^`\s]+)`", text)
    paths = [s for s in spans if s.startswith(("faceforge/", "tests/", "benchmarks/"))]
    configs = [s for s in spans if s.endswith(".yaml") and not s.startswith(("faceforge/", "tests/"))]
    configs = [
        c for c in configs if "X" not in c.replace(".yaml", "")
    ]  # the rule's own placeholders: method/X.yaml
    assert len(paths) > 30 and len(configs) > 10
    missing = [p for p in paths if not any(REPO.glob(p.rstrip("/")))]  # a pattern matches at least one file
    missing += [c for c in configs if not (REPO / "faceforge" / "configs" / c).exists()]
    assert not missing, f"docs/papers.md names files that do not exist: {missing}"
