"""Which image files a folder or a list file names: the one listing rule of every command.

:func:`list_images` serves ``faceforge embed``, the folder-based benchmark kinds, ``faceforge align``
and ``faceforge prepare`` (and the trainer's unlabelled folder), so they all see the same files:

* a folder: every file whose name ends in one of :data:`~faceforge.data.image_io.IMAGE_EXTENSIONS`
  (case-insensitive), below it (``recursive=True``) or directly in it, sorted by path component by
  component (``Path`` order: every file of ``a/`` before those of ``a-b/``; plain string order would
  put ``a-b/...`` first because ``-`` sorts before ``/``), so the result never depends on the file
  system's listing order;
* a list file: one image path per line, relative to the list file's folder unless absolute; blank
  lines and lines starting with ``#`` are skipped, and anything after the first whitespace (a label,
  say) is ignored, so paths cannot contain whitespace.  Lines keep their order, and every listed
  file must exist (the first missing ones are named with their line numbers).

:func:`identity_folders` is the one reading of an identity tree, ``root/<identity>/<image>``: every
sub-folder in sorted order with its images by the folder rule above (training's ImageFolder, the benchmark
kinds' labelled folders, DDL's hard images).
"""

from __future__ import annotations

from pathlib import Path

from faceforge.core.text_files import read_text
from faceforge.data.image_io import IMAGE_EXTENSIONS, is_image_file

__all__ = ["identity_folders", "list_images"]

_SHOW_MISSING = 5


def _list_folder(root: Path, recursive: bool, exclude: Path | None) -> list[Path]:
    """Every non-folder entry with an image extension: broken and looping symbolic links, FIFOs and other
    non-regular entries are *included*, so the job that reads them lists them as unreadable with the reason
    (:func:`faceforge.data.image_io.read_image_bytes`) instead of dropping them without a word. Folders (also
    one named ``x.jpg``) are searched, never returned; symbolic links to folders are not followed."""
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(
        p
        for p in found
        if is_image_file(p) and not p.is_dir() and not (exclude is not None and p.is_relative_to(exclude))
    )


def _list_file(list_file: Path, what: str) -> list[Path]:
    files: list[Path] = []
    missing: list[str] = []
    for line_no, line in enumerate(read_text(list_file).splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        p = Path(line.split()[0])
        path = p if p.is_absolute() else list_file.parent / p
        if not path.is_file():
            missing.append(f"line {line_no}: {path}")
        files.append(path)
    if missing:
        raise FileNotFoundError(
            f"{what}: {len(missing)} image(s) listed in {list_file} do not exist ("
            + "; ".join(missing[:_SHOW_MISSING])
            + ("; ..." if len(missing) > _SHOW_MISSING else "")
            + "): fix the paths (relative to the list file's folder) or remove those lines"
        )
    return files


def list_images(
    source: str | Path,
    recursive: bool = True,
    *,
    exclude: str | Path | None = None,
    allow_empty: bool = False,
    what: str = "images",
) -> list[Path]:
    """Image files of a folder (sorted) or of a list file (in its order); see the module docstring.

    Args:
        source: a folder, or a text file with one image path per line.
        recursive: for a folder, look in its sub-folders too.
        exclude: for a folder, a folder below it to leave out (an output folder inside the input).
        allow_empty: return ``[]`` instead of raising when no image is found.
        what: how error messages name ``source`` (the option or config key it came from).

    Raises:
        FileNotFoundError: ``source`` is neither a folder nor a file, or a listed file is missing.
        ValueError: no image file was found (unless ``allow_empty``).
    """
    src = Path(source)
    if src.is_dir():
        files = _list_folder(src, recursive, None if exclude is None else Path(exclude))
        where = f"{'below' if recursive else 'in'} {src}"
    elif src.is_file():
        files = _list_file(src, what)
        where = f"listed in {src}"
    else:
        raise FileNotFoundError(f"{what}: no folder or list file at {src}")
    if not files and not allow_empty:
        raise ValueError(
            f"{what}: no image files {where} (image files end in {', '.join(IMAGE_EXTENSIONS)})"
            + (_linked_folders_hint(src, recursive) if src.is_dir() else "")
        )
    return files


def _linked_folders_hint(root: Path, recursive: bool) -> str:
    """Why a folder of symbolic links to folders lists nothing, and what to do instead."""
    entries = root.rglob("*") if recursive else root.iterdir()
    linked = sum(1 for p in entries if p.is_symlink() and p.is_dir())
    if not linked:
        return ""
    return (
        f"; {linked} symbolic link(s) to folders below it are not followed (a link loop would never end): "
        "list the images in a file (one path per line) or copy the folders"
    )


def identity_folders(root: str | Path, recursive: bool = False) -> list[tuple[Path, list[Path]]]:
    """``(identity folder, its images)`` for every sub-folder of ``root`` in sorted order (the identity is the
    folder's name); images by :func:`list_images`'s folder rule (directly in the folder unless ``recursive``),
    an empty list for a folder without images. Entries of ``root`` that are not folders are ignored."""
    base = Path(root)
    return [
        (d, list_images(d, recursive, allow_empty=True))
        for d in sorted(p for p in base.iterdir() if p.is_dir())
    ]
