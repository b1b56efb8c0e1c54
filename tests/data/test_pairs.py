"""Tests for faceforge.data.pairs: LFW pairs files (both header forms), paths, and the real file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from faceforge.data.pairs import (
    Pair,
    lfw_image_path,
    pairs_people,
    read_lfw_pairs,
    resolve_pairs,
    write_lfw_pairs,
)


def _data_root() -> Path:
    env = os.environ.get("FACEFORGE_DATA")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _write(tmp_path: Path, text: str, name: str = "pairs.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


DEV_STYLE = "2\nAlice\t1\t2\nBob 3 4\nAlice\t1\tBob\t2\nCarol 2 Dave 1\n"

# two sets of one matched + one mismatched pair, "10 300" style header
VIEW2_STYLE = "2 1\nAlice 1 2\nAlice 1 Bob 1\nBob\t1\t2\nCarol\t1\tDave\t1\n"


def test_read_single_count_header(tmp_path: Path) -> None:
    pairs = read_lfw_pairs(_write(tmp_path, DEV_STYLE))
    assert pairs == [
        Pair("Alice", 1, "Alice", 2, True),
        Pair("Bob", 3, "Bob", 4, True),
        Pair("Alice", 1, "Bob", 2, False),
        Pair("Carol", 2, "Dave", 1, False),
    ]


def test_read_sets_header(tmp_path: Path) -> None:
    pairs = read_lfw_pairs(_write(tmp_path, VIEW2_STYLE + "\n\n"))  # trailing blank lines are fine
    assert [p.same for p in pairs] == [True, False, True, False]
    assert pairs[2] == Pair("Bob", 1, "Bob", 2, True)
    assert pairs[3] == Pair("Carol", 1, "Dave", 1, False)


def test_pair_is_frozen() -> None:
    p = Pair("A", 1, "A", 2, True)
    with pytest.raises(AttributeError):
        p.idx1 = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("2\nAlice 1 2\nBob 3\nAlice 1 Bob 2\nCarol 2 Dave 1\n", 3, "matched pair"),  # 2 fields
        ("2\nAlice 1 2\nBob 3 4\nAlice 1 Bob\nCarol 2 Dave 1\n", 4, "mismatched pair"),  # 3 fields
        ("2\nAlice 1 2\nBob 3 x\nAlice 1 Bob 2\nCarol 2 Dave 1\n", 3, "not an integer"),
        ("2\nAlice 1 0\nBob 3 4\nAlice 1 Bob 2\nCarol 2 Dave 1\n", 2, ">= 1"),
        ("2 1\nAlice 1 2\nAlice 1 Bob 1\nBob 1 Carol 1\nCarol 1 Dave 1\n", 4, "matched pair"),
        ("two\nAlice 1 2\n", 1, "header"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, text: str, line: int, what: str) -> None:
    path = _write(tmp_path, text, "bad_pairs.txt")
    with pytest.raises(ValueError, match=what) as err:
        read_lfw_pairs(path)
    assert f"bad_pairs.txt:{line}:" in str(err.value)


def test_wrong_number_of_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "3\nAlice 1 2\nBob 3 4\nAlice 1 Bob 2\n", "short.txt")
    with pytest.raises(ValueError, match=r"short\.txt.*6 pairs but the file has 3"):
        read_lfw_pairs(path)


def test_lfw_image_path() -> None:
    p = lfw_image_path("/data/lfw/images", "Aaron_Peirsol", 1)
    assert p == Path("/data/lfw/images/Aaron_Peirsol/Aaron_Peirsol_0001.jpg")
    assert lfw_image_path(Path("x"), "A_B", 123, ".png") == Path("x/A_B/A_B_0123.png")


def test_resolve_pairs(tmp_path: Path) -> None:
    images = tmp_path / "images"
    for name, idx in [("Alice", 1), ("Alice", 2), ("Bob", 3), ("Bob", 4), ("Bob", 2), ("Carol", 2)]:
        f = lfw_image_path(images, name, idx)
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    pairs = read_lfw_pairs(_write(tmp_path, DEV_STYLE))
    # Dave_0001 is missing
    with pytest.raises(FileNotFoundError, match=r"1 of 7 distinct image files are missing") as err:
        resolve_pairs(pairs, images)
    assert "Dave_0001.jpg" in str(err.value)
    f = lfw_image_path(images, "Dave", 1)
    f.parent.mkdir(parents=True)
    f.write_bytes(b"x")
    p1, p2, same = resolve_pairs(pairs, images)
    assert p1[2] == images / "Alice" / "Alice_0001.jpg"
    assert p2[2] == images / "Bob" / "Bob_0002.jpg"
    assert same.tolist() == [True, True, False, False]


def test_resolve_pairs_lists_first_few_and_total(tmp_path: Path) -> None:
    pairs = [Pair(f"P{i}", 1, f"P{i}", 2, True) for i in range(10)]
    with pytest.raises(FileNotFoundError) as err:
        resolve_pairs(pairs, tmp_path, max_listed=3)
    msg = str(err.value)
    assert "20 of 20 distinct image files are missing" in msg
    assert "(and 17 more)" in msg
    assert msg.count(".jpg") == 3


def test_real_lfw_dev_test_pairs() -> None:
    lfw = _data_root() / "lfw"
    pairs_file = lfw / "pairsDevTest.txt"
    if not pairs_file.is_file():
        pytest.skip(f"real LFW pairs not found at {pairs_file} (set FACEFORGE_DATA to the data root)")
    pairs = read_lfw_pairs(pairs_file)
    assert len(pairs) == 1000
    assert sum(p.same for p in pairs) == 500
    assert all(p.same for p in pairs[:500]) and not any(p.same for p in pairs[500:])
    assert pairs[0] == Pair("Abdullah_Gul", 13, "Abdullah_Gul", 14, True)
    p1, p2, same = resolve_pairs(pairs, lfw / "images")  # raises if any image is missing
    assert len(p1) == len(p2) == 1000 and int(same.sum()) == 500
    assert all(p.is_file() for p in p1 + p2)


def test_pairs_people_and_write_lfw_pairs_round_trip(tmp_path: Path) -> None:
    pairs = [
        Pair("Ann", 1, "Ann", 2, True),
        Pair("Bob", 1, "Bob", 3, True),
        Pair("Ann", 1, "Cid", 1, False),
        Pair("Bob", 2, "Dee", 4, False),
    ]
    path = write_lfw_pairs(pairs, tmp_path / "pairs.txt")
    assert path.read_text().splitlines()[:2] == ["2", "Ann\t1\t2"]
    assert read_lfw_pairs(path) == pairs
    assert pairs_people(path, path) == {"Ann", "Bob", "Cid", "Dee"}
    with pytest.raises(ValueError, match="View 1"):
        write_lfw_pairs(pairs[1:], tmp_path / "bad.txt")
