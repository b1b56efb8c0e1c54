"""Reading the user's text files (pairs, lists, landmark and attribute tables, result JSON) with errors that
name the file.

Every text file faceforge reads is UTF-8 (a leading byte-order mark is allowed). Bytes that are not UTF-8,
a binary file given as a pairs or list file, JSON that is not JSON or nests deeper than Python's parser goes:
each is an :class:`TextFileError` (an :class:`~faceforge.core.errors.InputError`) naming the file and where
in it, never a ``UnicodeDecodeError`` or ``RecursionError`` from inside a library.
"""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path
from typing import Any

from faceforge.core.errors import InputError

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_TEXT_BYTES",
    "TextFileError",
    "decode_text",
    "load_json",
    "open_text",
    "read_bytes",
    "read_text",
]

#: result and calibration files are kilobytes; a file larger than this is not one of them
MAX_JSON_BYTES = 256 << 20
#: the largest text table read whole (LFW's landmark table is 1.7 MB, IJB-C's metadata tens of MB)
MAX_TEXT_BYTES = 1 << 30
#: deeper nesting than any faceforge record has (a result file is about 6 levels deep)
MAX_JSON_DEPTH = 200


class TextFileError(InputError):
    """A text file that is not UTF-8, or not the JSON it should be; the message names it."""


def decode_text(data: bytes, source: str | Path) -> str:
    """``data`` as text (UTF-8, an optional byte-order mark dropped), else :class:`TextFileError`."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        binary = b"\0" in data[:4096]
        raise TextFileError(
            f"{source}: {'a binary file, ' if binary else ''}not UTF-8 text (byte {data[exc.start]:#04x} at offset "
            f"{exc.start}, line {line}): give a UTF-8 text file"
        ) from None


def read_bytes(path: str | Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (a FIFO would block, a device never end)."""
    p = Path(path)
    # stat before open: opening a FIFO for reading waits for a writer; O_NONBLOCK and fstat cover a swap
    if not stat.S_ISREG(p.stat().st_mode):
        raise TextFileError(f"{p}: not a regular file (a FIFO, socket, device or folder)")
    fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise TextFileError(f"{p}: not a regular file (a FIFO, socket, device or folder)")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise TextFileError(f"{p}: larger than {limit >> 20} MiB, not a text file faceforge reads")
    return data


def read_text(path: str | Path) -> str:
    """The text of a UTF-8 file (``OSError`` for a missing or unreadable one, :class:`TextFileError` for a file
    that is not a regular file, larger than :data:`MAX_TEXT_BYTES` or not UTF-8)."""
    return decode_text(read_bytes(path, MAX_TEXT_BYTES), Path(path))


def open_text(path: str | Path) -> io.StringIO:
    """:func:`read_text` as a file object to iterate or hand to :mod:`csv` (line endings kept, as
    ``open(path, newline="")`` keeps them)."""
    return io.StringIO(read_text(path), newline="")


def _depth(text: str) -> int:
    """The deepest bracket nesting of JSON text, outside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def load_json(path: str | Path, what: str = "JSON") -> Any:
    """Parse a JSON file with bounds on its size and nesting; failures name the file and the problem."""
    p = Path(path)
    text = decode_text(read_bytes(p, MAX_JSON_BYTES), p)
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _depth(text) > MAX_JSON_DEPTH:
        raise TextFileError(f"{p}: JSON nested deeper than {MAX_JSON_DEPTH} levels, not a {what} file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TextFileError(
            f"{p} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise TextFileError(f"{p}: JSON nested too deeply, not a {what} file") from None
