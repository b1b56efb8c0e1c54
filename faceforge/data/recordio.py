"""MXNet RecordIO (``train.rec`` + ``train.idx``) without mxnet, byte-compatible with ``MXIndexedRecordIO``.

File layout (dmlc-core RecordIO, little endian):

* every record starts with ``uint32 magic = 0xced7230a`` and ``uint32 lrecord``; the upper 3 bits of
  ``lrecord`` are a continuation flag (``cflag``), the lower 29 bits the length of the bytes that follow;
* the bytes are zero-padded to a multiple of 4;
* ``cflag`` 0 is a whole record. dmlc's writer splits a payload wherever the magic number occurs at a
  4-byte aligned position inside it: the parts are written with cflag 1 (first), 2 (middle), 3 (last), the
  magic itself is dropped, and the reader joins the parts with the magic put back. :class:`RecordWriter`
  does the same split, so its output matches MXNet's byte for byte even for such payloads.

The ``.idx`` file is text, one ``key<TAB>offset`` line per record (offset of the record's magic).

A record's payload is an IRHeader, ``struct "IfQQ"`` = ``flag`` (uint32), ``label`` (float32), ``id``
(uint64), ``id2`` (uint64), 24 bytes; when ``flag > 0`` it is followed by ``flag`` float32 labels (the
header's label is then that array) and then the encoded image.

insightface ``train.rec`` files (what arcface_torch's ``MXFaceDataset`` reads) put a header-only record at
key 0 whose label is ``[a, b]``: images are keys ``1 .. a-1`` and keys ``a .. b-1`` are one record per
identity whose label is the ``[first, last+1)`` image-key range of that identity. Files without that record
(plain ``im2rec`` output) use every key of the ``.idx``.

Nothing read from a file sizes an allocation before it is checked against the file: ``.idx`` offsets
must lie inside the ``.rec`` (a negative or past-the-end offset names ``file:line``), a record's length
must fit in the bytes left after it, record 0's ``a`` cannot announce more images than the index lists,
and image labels must be whole numbers below the identity count ``b - a`` (or
:data:`faceforge.data.limits.MAX_CLASSES` without a range record). Every error names the file.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from faceforge.core.errors import InputError
from faceforge.data.image_io import UnreadableImageError, decode_image_rgb
from faceforge.data.limits import MAX_CLASSES, checked_label
from faceforge.data.samples import Samples

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")
_IR = struct.Struct("<IfQQ")
IR_SIZE = _IR.size  # 24
_LEN_MASK = (1 << 29) - 1


class RecordIOError(InputError):
    """A malformed ``.rec``/``.idx`` file; the message names the file and the offset or line."""


class IRHeader(NamedTuple):
    """MXNet's image-record header. ``label`` is a float, or a float32 array when ``flag > 0``."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


# --------------------------------------------------------------------------------------------- payloads


def pack(header: IRHeader | Sequence, payload: bytes) -> bytes:
    """Header + payload -> record bytes, as ``mx.recordio.pack``.

    A scalar label gives ``flag = 0``; a sequence label gives ``flag = len(label)``, stores the labels as
    float32 after the fixed header, and writes 0 in the header's own label field.
    """
    _, label, id_, id2 = header
    if isinstance(label, numbers.Number):
        return _IR.pack(0, float(label), int(id_), int(id2)) + bytes(payload)
    arr = np.asarray(label, dtype="<f4").ravel()
    return _IR.pack(arr.size, 0.0, int(id_), int(id2)) + arr.tobytes() + bytes(payload)


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """Record bytes -> (header, payload), as ``mx.recordio.unpack``."""
    if len(record) < IR_SIZE:
        raise RecordIOError(f"record of {len(record)} bytes is shorter than the {IR_SIZE}-byte IRHeader")
    flag, label, id_, id2 = _IR.unpack_from(record, 0)
    rest = record[IR_SIZE:]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise RecordIOError(f"IRHeader announces {flag} labels but the record holds {len(rest)} bytes")
        label = np.frombuffer(rest, dtype="<f4", count=flag).astype(np.float32)
        rest = rest[4 * flag :]
    return IRHeader(flag, label, id_, id2), rest


def header_label(header: IRHeader) -> int:
    """The integer class of an image record: the scalar label, or the first element of the array."""
    lab = header.label
    return int(lab) if isinstance(lab, numbers.Number) else int(np.asarray(lab).ravel()[0])


def pack_img(
    header: IRHeader | Sequence, img_rgb: np.ndarray, quality: int = 95, img_fmt: str = ".jpg"
) -> bytes:
    """Encode an RGB uint8 image and pack it (``mx.recordio.pack_img`` takes BGR; this takes RGB)."""
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if img_fmt.lower() in (".jpg", ".jpeg") else []
    ok, enc = cv2.imencode(img_fmt, cv2.cvtColor(np.asarray(img_rgb), cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"could not encode image as {img_fmt}")
    return pack(header, enc.tobytes())


# --------------------------------------------------------------------------------------------- framing


def frame_record(payload: bytes) -> bytes:
    """Payload -> framed RecordIO bytes exactly as dmlc's ``RecordIOWriter::WriteRecord`` writes them."""
    n = len(payload)
    if n >= 1 << 29:
        raise RecordIOError(f"RecordIO records must be shorter than 2^29 bytes, got {n}")
    buf = memoryview(payload)
    out = bytearray()
    start = 0
    # Aligned occurrences of the magic inside the payload split the record (the magic is not stored).
    pos = payload.find(_MAGIC_BYTES)
    while pos != -1 and pos + 4 <= (n & ~3):
        if pos % 4 == 0:
            out += _FRAME.pack(MAGIC, ((1 if start == 0 else 2) << 29) | (pos - start))
            out += buf[start:pos]
            start = pos + 4
            pos = payload.find(_MAGIC_BYTES, start)
        else:
            pos = payload.find(_MAGIC_BYTES, pos + 1)
    out += _FRAME.pack(MAGIC, ((3 if start else 0) << 29) | (n - start))
    out += buf[start:]
    out += b"\0" * (-n % 4)
    return bytes(out)


def _pad4(n: int) -> int:
    return (n + 3) & ~3


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


def read_face_rec(
    rec_path: str | Path, idx_path: str | Path | None = None
) -> tuple[IndexedRecordReader, np.ndarray, np.ndarray]:
    """Open an insightface-style face ``.rec`` -> (reader, image keys, int64 labels).

    With a range record at key 0 (``flag > 0``), image keys are ``1 .. label[0]-1`` as in arcface_torch's
    ``MXFaceDataset``; otherwise every key of the index is an image.
    """
    reader = IndexedRecordReader(rec_path, idx_path)
    keys: np.ndarray | None = None
    bound = MAX_CLASSES
    if 0 in reader:
        h0 = _header(reader, 0)
        if h0.flag > 0:
            rng = np.asarray(h0.label, dtype=np.float64).ravel()
            end = _whole(rng[0], rec_path, "record 0's image range end")
            if not 1 <= end <= len(reader) + 1:
                raise RecordIOError(
                    f"{rec_path}: record 0 announces images 1..{end - 1} but the index lists "
                    f"{len(reader)} records: the .rec is damaged or not an insightface face .rec"
                )
            keys = np.arange(1, end, dtype=np.int64)
            missing = sorted(set(range(1, end)) - set(reader.index))
            if missing:
                raise RecordIOError(
                    f"{rec_path}: record 0 announces images 1..{end - 1} but key {missing[0]} is not in the index"
                )
            if rng.size > 1:
                n_ids = _whole(rng[1], rec_path, "record 0's identity range end") - end
                if not 0 <= n_ids <= len(reader):
                    raise RecordIOError(
                        f"{rec_path}: record 0 announces {n_ids} identity records but the index lists "
                        f"{len(reader)} records"
                    )
                bound = n_ids or MAX_CLASSES
    if keys is None:
        keys = np.asarray(reader.keys, dtype=np.int64)
    labels = np.empty(len(keys), dtype=np.int64)
    for i, k in enumerate(keys.tolist()):
        h = _header(reader, k)
        try:
            labels[i] = checked_label(h.label if h.flag == 0 else np.asarray(h.label).ravel()[0], bound)
        except ValueError as exc:
            raise RecordIOError(f"{rec_path}: record key {k}: {exc}") from None
    return reader, keys, labels


def _header(reader: IndexedRecordReader, key: int) -> IRHeader:
    try:
        return reader.read_header(key)
    except RecordIOError as exc:
        msg = str(exc)
        raise RecordIOError(
            msg if reader.rec_path in msg else f"{reader.rec_path}[key {key}]: {msg}"
        ) from None


def _whole(value: float, rec_path: str | Path, what: str) -> int:
    if not np.isfinite(value) or value != int(value) or abs(value) > 2**53:
        raise RecordIOError(f"{rec_path}: {what} is {value!r}, not a whole number")
    return int(value)


def _image_ext(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    return None


def write_face_rec(
    samples: Samples | tuple[Sequence[str], Sequence[int]],
    out_prefix: str | Path,
    encode_quality: int = 95,
) -> tuple[Path, Path]:
    """Write ``<out_prefix>.rec`` / ``.idx`` in insightface's layout (range record, images, identity records).

    JPEG and PNG files are stored as their original bytes (so folder -> rec -> folder is byte-identical);
    other formats are decoded and re-encoded as JPEG at ``encode_quality``. Images are written grouped by
    label (stable within a label) so every identity owns a contiguous key range. Returns (rec, idx) paths.
    """
    import cv2

    if isinstance(samples, Samples):
        paths, labels = list(samples.paths), np.asarray(samples.labels, dtype=np.int64)
    else:
        paths, labels = list(samples[0]), np.asarray(samples[1], dtype=np.int64)
    if len(paths) != len(labels):
        raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
    if not paths:
        raise ValueError("no samples to write")
    order = np.argsort(labels, kind="stable")
    num_classes = int(labels.max()) + 1
    n = len(paths)
    prefix = Path(out_prefix)
    rec_path, idx_path = prefix.with_name(prefix.name + ".rec"), prefix.with_name(prefix.name + ".idx")
    first = np.full(num_classes, -1, dtype=np.int64)
    last = np.full(num_classes, -1, dtype=np.int64)
    with RecordWriter(rec_path, idx_path) as w:
        w.write(0, pack(IRHeader(0, [n + 1, n + 1 + num_classes], 0, 0), b""))
        for key, i in enumerate(order, start=1):
            path, lab = paths[i], int(labels[i])
            data = Path(path).read_bytes()
            if _image_ext(data) is None:
                img = decode_image_rgb(data, path)
                ok, enc = cv2.imencode(
                    ".jpg",
                    cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, int(encode_quality)],
                )
                if not ok:
                    raise UnreadableImageError(path, "could not re-encode as JPEG")
                data = enc.tobytes()
            w.write(key, pack(IRHeader(0, float(lab), key, 0), data))
            if first[lab] < 0:
                first[lab] = key
            last[lab] = key
        for c in range(num_classes):
            rng = [first[c], last[c] + 1] if first[c] >= 0 else [0, 0]
            w.write(n + 1 + c, pack(IRHeader(0, rng, n + 1 + c, 0), b""))
    return rec_path, idx_path
