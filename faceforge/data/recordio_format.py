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

The record framing and the IRHeader are here; reading and writing ``.rec`` / ``.idx`` files is
:mod:`faceforge.data.recordio_files`, face datasets in them :mod:`faceforge.data.recordio`.
"""

from __future__ import annotations

import numbers
import struct
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from faceforge.core.errors import InputError

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
