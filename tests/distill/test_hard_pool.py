"""DDL hard twins from real hard photos (``distill.hard_images``): drawing, determinism, fallbacks, errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from faceforge.distill.hard_pool import HardPool, read_hard_source


def _write(path: Path, value: int, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size, 3), value, np.uint8))  # PNG: lossless


@pytest.fixture()
def hard_folder(tmp_path: Path) -> Path:
    root = tmp_path / "hard"
    for v in (10, 20, 30):
        _write(root / "alice" / f"a{v}.png", v)
    _write(root / "bob" / "b40.png", 40)
    _write(root / "zed" / "z50.png", 50)  # not a training identity
    return root


def _batch(labels: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images = np.full((len(labels), 8, 8, 3), 200, np.uint8)
    return images, np.array(labels), np.arange(len(labels)) + 100


def _halve(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return img // 2


def test_twins_come_from_the_identity_pool_distinct_in_a_pair_and_reproducible(hard_folder: Path) -> None:
    pool = HardPool(hard_folder, ["alice", "bob", "carol"], fallback=_halve)
    assert pool.identities_covered == 2 and pool.images == 4 and pool.unknown_identities == ["zed"]
    images, labels, idx = _batch([0, 0, 1, 1, 2, 2])
    out = pool.twins(images, labels, idx, seed=0, step=3)
    values = out[:, 0, 0, 0].tolist()
    assert set(values[:2]) <= {10, 20, 30} and values[0] != values[1]  # two different photos of alice
    assert values[2:4] == [40, 40]  # bob has one hard photo: both rows get it
    assert values[4:] == [100, 100]  # carol has none: the degradation of her own image
    assert pool.drawn == 4 and pool.degraded == 2
    again = HardPool(hard_folder, ["alice", "bob", "carol"], fallback=_halve)
    assert np.array_equal(again.twins(images, labels, idx, seed=0, step=3), out)
    # alice's draw is a permutation seeded by (seed, step, label): the same numpy rule by hand
    order = np.random.default_rng((0, 3, 0)).permutation(3)
    assert values[:2] == [(10, 20, 30)[order[0]], (10, 20, 30)[order[1]]]


def test_a_list_file_with_identities_and_comments(tmp_path: Path, hard_folder: Path) -> None:
    lst = tmp_path / "hard.txt"
    lst.write_text(
        f"# hard photos\nhard/alice/a10.png alice\n{hard_folder / 'bob' / 'b40.png'} bob  # absolute\n\n"
    )
    assert read_hard_source(lst) == [
        (str(tmp_path / "hard" / "alice" / "a10.png"), "alice"),
        (str(hard_folder / "bob" / "b40.png"), "bob"),
    ]
    pool = HardPool(lst, ["alice", "bob"], fallback=None)
    out = pool.twins(*_batch([1, 0]), seed=1, step=0)
    assert out[:, 0, 0, 0].tolist() == [40, 10]
    bad = tmp_path / "bad.txt"
    bad.write_text("only_a_path.png\n")
    with pytest.raises(ValueError, match=r"bad.txt:1: expected '<path> <identity>'"):
        read_hard_source(bad)


def test_unreadable_hard_photos_fall_back_and_are_counted(hard_folder: Path) -> None:
    (hard_folder / "bob" / "b40.png").write_bytes(b"not an image")
    pool = HardPool(hard_folder, ["alice", "bob"], fallback=_halve)
    out = pool.twins(*_batch([1, 1]), seed=0, step=0)
    assert out[:, 0, 0, 0].tolist() == [100, 100]
    assert pool.skipped == [str(hard_folder / "bob" / "b40.png")] and pool.degraded == 2


def test_clear_errors(tmp_path: Path, hard_folder: Path) -> None:
    with pytest.raises(ValueError, match="1 of 3 training identities have no hard image"):
        HardPool(hard_folder, ["alice", "bob", "carol"], fallback=None)
    with pytest.raises(ValueError, match="none of the 3 identities"):
        HardPool(hard_folder, ["x", "y"], fallback=_halve)
    with pytest.raises(FileNotFoundError, match="no folder or list file"):
        HardPool(tmp_path / "missing", ["alice"], fallback=_halve)
    _write(hard_folder / "bob" / "b40.png", 40, size=16)
    pool = HardPool(hard_folder, ["alice", "bob"], fallback=_halve)
    with pytest.raises(ValueError, match=r"b40\.png is 16x16 but the training faces are 8x8"):
        pool.twins(*_batch([1, 1]), seed=0, step=0)
