"""Reading and writing MXNet RecordIO files (``.rec`` + ``.idx``) by key: :class:`IndexedRecordReader` (thread- and
fork-safe positional reads), :class:`RecordWriter` (byte-compatible with ``MXIndexedRecordIO``), and the index
(:func:`read_idx`, or :func:`scan_offsets` to rebuild it). The layout is described in
:mod:`faceforge.data.recordio_format`.

Nothing read from a file sizes an allocation before it is checked against the file: ``.idx`` offsets
must lie inside the ``.rec`` (a negative or past-the-end offset names ``file:line``), a record's length
must fit in the bytes left after it. Every error names the file.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from pathlib import Path

from faceforge.data.recordio_format import (
    _FRAME,
    _LEN_MASK,
    _MAGIC_BYTES,
    IR_SIZE,
    MAGIC,
    IRHeader,
    RecordIOError,
    _pad4,
    frame_record,
    unpack,
)


def scan_offsets(rec_path: str | Path) -> list[int]:
    """Offsets of every (joined) record in a ``.rec`` file, read sequentially; for files without ``.idx``."""
    offsets = []
    with open(rec_path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        pos = 0
        start_of_record = True
        while pos < size:
            head = f.read(8)
            if len(head) < 8:
                raise RecordIOError(f"{rec_path}: truncated record header at offset {pos}")
            magic, lrec = _FRAME.unpack(head)
            if magic != MAGIC:
                raise RecordIOError(f"{rec_path}: bad magic 0x{magic:08x} at offset {pos}")
            if start_of_record:
                offsets.append(pos)
            cflag = lrec >> 29
            start_of_record = cflag in (0, 3)
            step = _pad4(lrec & _LEN_MASK)
            f.seek(step, os.SEEK_CUR)
            pos += 8 + step
    return offsets


# --------------------------------------------------------------------------------------------- reader


def read_idx(idx_path: str | Path, rec_size: int | None = None) -> dict[int, int]:
    """``key<TAB>offset`` lines -> {key: offset} in file order; errors name file:line.

    Keys and offsets must be non-negative integers; with ``rec_size`` (bytes of the ``.rec``) every offset
    must leave room for a record header inside it.
    """
    index: dict[int, int] = {}
    with open(idx_path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) < 2:
                parts = line.split()
            try:
                key, offset = int(parts[0]), int(parts[1])
            except (ValueError, IndexError):
                raise RecordIOError(
                    f"{idx_path}:{line_no}: expected 'key<TAB>offset', got {line[:80]!r}"
                ) from None
            if key < 0 or offset < 0:
                raise RecordIOError(f"{idx_path}:{line_no}: negative key or offset in {line[:80]!r}")
            if rec_size is not None and offset + _FRAME.size > rec_size:
                raise RecordIOError(
                    f"{idx_path}:{line_no}: offset {offset} is past the end of the record file "
                    f"({rec_size} bytes): the .idx does not belong to this .rec (rebuild it)"
                )
            index[key] = offset
    return index


class IndexedRecordReader:
    """Random access to the records of a ``.rec`` file by key.

    ``idx_path`` defaults to the ``.rec`` path with suffix ``.idx``; when that file does not exist the
    ``.rec`` is scanned once and records get keys 0, 1, 2, ... in file order.

    Reads use ``os.pread`` on a descriptor opened lazily per process (the pid is remembered and the file
    reopened after a fork), so one reader can be shared by threads and by DataLoader workers.
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = str(rec_path)
        if not Path(self.rec_path).is_file():
            raise FileNotFoundError(f"record file not found: {self.rec_path}")
        self.size = os.path.getsize(self.rec_path)
        idx = Path(idx_path) if idx_path is not None else Path(self.rec_path).with_suffix(".idx")
        if idx.is_file():
            self.idx_path: str | None = str(idx)
            self.index = read_idx(idx, self.size)
        elif idx_path is not None:
            raise FileNotFoundError(f"index file not found: {idx}")
        else:
            self.idx_path = None
            self.index = {k: off for k, off in enumerate(scan_offsets(self.rec_path))}
        self.keys: list[int] = list(self.index)
        self._fd: int | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self.index

    def _file(self) -> int:
        pid = os.getpid()
        if self._fd is None or self._pid != pid:
            with self._lock:
                if self._fd is None or self._pid != pid:
                    # After a fork the inherited descriptor is shared with the parent: open our own.
                    self._fd = os.open(self.rec_path, os.O_RDONLY)
                    self._pid = pid
        return self._fd

    def _pread(self, n: int, offset: int) -> bytes:
        if offset < 0 or offset + n > self.size:  # checked before os.pread allocates n bytes
            raise RecordIOError(
                f"{self.rec_path}: truncated record at offset {offset} (wanted {n} bytes, the file has "
                f"{self.size})"
            )
        data = os.pread(self._file(), n, offset)
        if len(data) != n:
            raise RecordIOError(f"{self.rec_path}: truncated record at offset {offset} (wanted {n} bytes)")
        return data

    def read_at(self, offset: int) -> bytes:
        """The joined payload of the record that starts at byte ``offset``."""
        parts: list[bytes] = []
        pos = offset
        while True:
            magic, lrec = _FRAME.unpack(self._pread(8, pos))
            if magic != MAGIC:
                raise RecordIOError(f"{self.rec_path}: bad magic 0x{magic:08x} at offset {pos}")
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            if cflag not in (0, 1, 2, 3) or (pos == offset and cflag not in (0, 1)):
                raise RecordIOError(f"{self.rec_path}: unexpected continuation flag {cflag} at offset {pos}")
            parts.append(self._pread(length, pos + 8) if length else b"")
            pos += 8 + _pad4(length)
            if cflag in (0, 3):
                break
        return _MAGIC_BYTES.join(parts)

    def read(self, key: int) -> bytes:
        try:
            offset = self.index[key]
        except KeyError:
            raise KeyError(f"{self.rec_path}: no record with key {key}") from None
        return self.read_at(offset)

    def read_header(self, key: int) -> IRHeader:
        """The IRHeader of a record, reading only its first bytes when the record is not split."""
        offset = self.index[key]
        magic, lrec = _FRAME.unpack(self._pread(8, offset))
        length = lrec & _LEN_MASK
        if magic == MAGIC and lrec >> 29 == 0 and length >= IR_SIZE:
            head = self._pread(min(length, IR_SIZE + 4 * 8), offset + 8)
            flag = struct.unpack_from("<I", head)[0]
            if IR_SIZE + 4 * flag <= len(head):
                return unpack(head)[0]
        return unpack(self.read(key))[0]

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None
        self._pid = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fd"] = None
        state["_pid"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __enter__(self) -> IndexedRecordReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()


# --------------------------------------------------------------------------------------------- writer


class RecordWriter:
    """Write ``.rec`` + ``.idx`` files; both appear under their final names only when :meth:`close` runs
    without an error (they are written as ``<name>.part`` and renamed)."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        self.rec_path.parent.mkdir(parents=True, exist_ok=True)
        self.idx_path.parent.mkdir(parents=True, exist_ok=True)
        self._rec_tmp = self.rec_path.with_name(self.rec_path.name + ".part")
        self._idx_tmp = self.idx_path.with_name(self.idx_path.name + ".part")
        self._rec = open(self._rec_tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._idx = open(self._idx_tmp, "w")  # noqa: SIM115
        self._keys: set[int] = set()
        self.closed = False

    def write(self, key: int, payload: bytes) -> int:
        """Append one record under ``key``; returns its offset."""
        key = int(key)
        if key in self._keys:
            raise ValueError(f"{self.rec_path}: key {key} written twice")
        self._keys.add(key)
        offset = self._rec.tell()
        self._rec.write(frame_record(payload))
        self._idx.write(f"{key}\t{offset}\n")
        return offset

    def close(self) -> None:
        if self.closed:
            return
        self._rec.close()
        self._idx.close()
        self._rec_tmp.replace(self.rec_path)
        self._idx_tmp.replace(self.idx_path)
        self.closed = True

    def abort(self) -> None:
        """Drop everything written so far (no file appears under the final names)."""
        if self.closed:
            return
        self._rec.close()
        self._idx.close()
        self._rec_tmp.unlink(missing_ok=True)
        self._idx_tmp.unlink(missing_ok=True)
        self.closed = True

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------------------------- face .rec
