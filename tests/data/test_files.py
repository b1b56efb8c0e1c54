"""list_images: the one rule for "every image file of a folder or list file", on a hand-made tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from faceforge.data.files import list_images


def _touch(root: Path, *names: str) -> None:
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"x")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "faces"
    _touch(
        root,
        "b.PNG",
        "a/2.jpg",
        "a/10.jpeg",
        "a-b/1.jpg",
        "a/deep/x.webp",
        "notes.txt",
        "a/.keep",
        "out/o.jpg",
    )
    return root


def test_folder_listing_is_recursive_sorted_by_component_and_filtered(tree: Path) -> None:
    got = [p.relative_to(tree).as_posix() for p in list_images(tree)]
    # component order: all of a/ (with a/deep/) before a-b/, although '-' < '/' as characters
    assert got == ["a/10.jpeg", "a/2.jpg", "a/deep/x.webp", "a-b/1.jpg", "b.PNG", "out/o.jpg"]
    assert sorted(str(tree / g) for g in got) != [str(tree / g) for g in got]  # string order differs
    assert [p.name for p in list_images(tree, recursive=False)] == ["b.PNG"]
    assert [p.relative_to(tree).as_posix() for p in list_images(tree, exclude=tree / "out")][-1] == "b.PNG"
    assert all(isinstance(p, Path) for p in list_images(tree))


def test_list_file_keeps_order_resolves_relative_paths_and_names_missing_lines(
    tree: Path, tmp_path: Path
) -> None:
    listing = tree / "list.txt"
    listing.write_text(f"# faces\nb.PNG 3\n\n  a/2.jpg\n{tree / 'a-b' / '1.jpg'}\nnotes.txt\n")
    assert list_images(listing) == [tree / "b.PNG", tree / "a/2.jpg", tree / "a-b/1.jpg", tree / "notes.txt"]
    listing.write_text("b.PNG\nnope.jpg\na/2.jpg\ngone/x.jpg\n")
    with pytest.raises(
        FileNotFoundError, match=r"--images: 2 image\(s\) listed in .*list\.txt do not exist"
    ) as e:
        list_images(listing, what="--images")
    assert "line 2: " in str(e.value) and "nope.jpg" in str(e.value) and "line 4: " in str(e.value)


def test_errors_name_the_source(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"distill\.unlabelled_root: no folder or list file at .*nowhere"
    ):
        list_images(tmp_path / "nowhere", what="distill.unlabelled_root")
    _touch(tmp_path / "empty", "readme.txt")
    with pytest.raises(ValueError, match=r"images: no image files below .*empty \(image files end in \.jpg"):
        list_images(tmp_path / "empty")
    with pytest.raises(ValueError, match="no image files in"):
        list_images(tmp_path / "empty", recursive=False)
    assert list_images(tmp_path / "empty", allow_empty=True) == []
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no image files listed in"):
        list_images(tmp_path / "empty.txt")
    assert "symbolic link" not in _error(tmp_path / "empty")  # (no links: no hint)


def _error(src: Path) -> str:
    with pytest.raises(ValueError) as e:
        list_images(src)
    return str(e.value)


def test_a_folder_of_linked_folders_says_links_are_not_followed(tmp_path: Path) -> None:
    _touch(tmp_path / "real" / "alice", "a.jpg")
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "alice").symlink_to(tmp_path / "real" / "alice")
    msg = _error(tmp_path / "links")
    assert (
        "1 symbolic link(s) to folders below it are not followed" in msg
        and "list the images in a file" in msg
    )
