"""TFace-style sharded TFRecord index files, TFRecord framing with CRC32C, and a minimal tf.train.Example
reader/writer, with no TensorFlow and no protobuf dependency.

Index file: one sample per line, tab separated ``tfr_name  tfr_index  offset  label``. The shard holding the
sample is ``<root>/<tfr_name>/<tfr_name>-<tfr_index:05d>.tfrecord`` (TFace's layout; change it with
``path_template``) and ``offset`` is the byte offset of the record's length field in that shard. Cleaning a
dataset only rewrites the index, never the shards.

TFRecord framing (little endian)::

    uint64 length | uint32 masked_crc32c(length bytes) | data[length] | uint32 masked_crc32c(data)

with ``masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8`` (mod 2^32) and CRC32C = Castagnoli polynomial
(reflected 0x82f63b78), computed here with a 256-entry table.

Example protobuf subset (proto3 wire format: each field is ``varint(field_number << 3 | wire_type)``,
wire type 2 = varint length + bytes)::

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }     # entries: { string key = 1; Feature value = 2; }
    Feature   { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1; }             # packed (wire 2) or not (wire 5)
    Int64List { repeated int64 value = 1; }             # packed (wire 2) or not (wire 0)

Unknown fields are skipped. TFace stores the encoded face under a bytes feature; :func:`read_tfr_image`
takes ``feature="image"`` and, when that key is absent, the only bytes feature of the Example.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceforge.core.errors import InputError
from faceforge.data.limits import MAX_CLASSES

TFACE_SHARD_TEMPLATE = "{name}/{name}-{index:05d}.tfrecord"


class TFRecordError(InputError):
    """Malformed TFRecord data, CRC mismatch, or malformed Example; the message names file and offset."""


# --------------------------------------------------------------------------------------------- CRC32C


def _make_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _make_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``, continuing from ``crc``; ``crc32c(b"123456789") == 0xE3069283``."""
    table = _CRC_TABLE
    c = crc ^ 0xFFFFFFFF
    for b in bytes(data):
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------------------------- framing


def frame_tfrecord(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def write_tfrecord(path: str | Path, records: Iterable[bytes]) -> list[int]:
    """Write records to a TFRecord file (via ``.part`` + rename); returns each record's offset."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".part")
    offsets = []
    with open(tmp, "wb") as f:
        for rec in records:
            offsets.append(f.tell())
            f.write(frame_tfrecord(rec))
    tmp.replace(p)
    return offsets


def _parse_frame(source: str, offset: int, head: bytes, verify: bool) -> int:
    if len(head) < 12:
        raise TFRecordError(f"{source}: truncated TFRecord header at offset {offset}")
    (length,) = struct.unpack_from("<Q", head)
    (len_crc,) = struct.unpack_from("<I", head, 8)
    if verify and masked_crc32c(head[:8]) != len_crc:
        raise TFRecordError(f"{source}: length CRC mismatch at offset {offset} (not a record start?)")
    return length


def _check_length(source: str, offset: int, length: int, size: int) -> None:
    """A record's declared length must fit in the file (checked before ``read`` allocates it)."""
    if offset + 12 + length + 4 > size:
        raise TFRecordError(
            f"{source}: the TFRecord at offset {offset} declares {length} bytes but the file has "
            f"{max(0, size - offset - 16)} left (truncated or not a TFRecord)"
        )


def read_tfrecord_at(shard_path: str | Path, offset: int, verify: bool = True) -> bytes:
    """The data of the TFRecord starting at byte ``offset`` of ``shard_path`` (CRCs checked if ``verify``)."""
    with open(shard_path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(offset)
        length = _parse_frame(str(shard_path), offset, f.read(12), verify)
        _check_length(str(shard_path), offset, length, size)
        body = f.read(length + 4)
    return _check_body(str(shard_path), offset, body, length, verify)


def _check_body(source: str, offset: int, body: bytes, length: int, verify: bool) -> bytes:
    if len(body) != length + 4:
        raise TFRecordError(f"{source}: truncated TFRecord at offset {offset} (length {length})")
    data = body[:length]
    if verify and masked_crc32c(data) != struct.unpack_from("<I", body, length)[0]:
        raise TFRecordError(f"{source}: data CRC mismatch in the record at offset {offset}")
    return data


# --------------------------------------------------------------------------------------------- protobuf


def _varint(buf: bytes, pos: int, source: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise TFRecordError(f"{source}: truncated varint in Example")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise TFRecordError(f"{source}: varint longer than 10 bytes in Example")


def _fields(buf: bytes, source: str) -> Iterable[tuple[int, int, object]]:
    """Yield ``(field_number, wire_type, value)``: int for wire 0/1/5, bytes for wire 2."""
    pos, n = 0, len(buf)
    while pos < n:
        tag, pos = _varint(buf, pos, source)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos, source)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        elif wire == 2:
            size, pos = _varint(buf, pos, source)
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise TFRecordError(f"{source}: unsupported protobuf wire type {wire} (field {field})")
        if pos > n:
            raise TFRecordError(f"{source}: truncated protobuf field {field}")
        yield field, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_feature(buf: bytes, source: str) -> tuple[str, list]:
    kind, values = "bytes", []  # an empty Feature reads as an empty bytes list
    for field, wire, value in _fields(buf, source):
        if wire != 2:
            continue
        if field == 1:
            kind, values = "bytes", [bytes(v) for f, w, v in _fields(value, source) if f == 1 and w == 2]
        elif field == 2:
            kind, values = "float", []
            for f, w, v in _fields(value, source):
                if f == 1 and w == 2:
                    values.extend(np.frombuffer(v, "<f4").tolist())
                elif f == 1 and w == 5:
                    values.append(struct.unpack("<f", v)[0])
        elif field == 3:
            kind, values = "int64", []
            for f, w, v in _fields(value, source):
                if f == 1 and w == 2:
                    p = 0
                    while p < len(v):
                        x, p = _varint(v, p, source)
                        values.append(_signed64(x))
                elif f == 1 and w == 0:
                    values.append(_signed64(v))
    return kind, values


def parse_example(data: bytes, source: str = "<example>") -> dict[str, tuple[str, list]]:
    """Serialized tf.train.Example -> ``{name: (kind, values)}``, kind in ``bytes``/``float``/``int64``."""
    out: dict[str, tuple[str, list]] = {}
    for field, wire, features in _fields(data, source):
        if field != 1 or wire != 2:
            continue
        for f, w, entry in _fields(features, source):
            if f != 1 or w != 2:
                continue
            key, feature = "", b""
            for ef, ew, ev in _fields(entry, source):
                if ef == 1 and ew == 2:
                    key = bytes(ev).decode("utf-8")
                elif ef == 2 and ew == 2:
                    feature = ev
            out[key] = _parse_feature(feature, source)
    return out


def _key(field: int, wire: int) -> bytes:
    return _enc_varint(field << 3 | wire)


def _enc_varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _enc_varint(len(payload)) + payload


def encode_example(features: Mapping[str, bytes | int | float | list]) -> bytes:
    """Build a serialized tf.train.Example. Values: bytes (or list of bytes) -> BytesList, int (or list of
    int) -> Int64List (packed), float (or list of float) -> FloatList (packed)."""
    entries = b""
    for name, value in features.items():
        vals = value if isinstance(value, list | tuple) else [value]
        if all(isinstance(v, bytes | bytearray) for v in vals):
            feat = _ld(1, b"".join(_ld(1, bytes(v)) for v in vals))
        elif all(isinstance(v, int | np.integer) for v in vals):
            feat = _ld(3, _ld(1, b"".join(_enc_varint(int(v)) for v in vals)))
        elif all(isinstance(v, float | int | np.floating) for v in vals):
            feat = _ld(2, _ld(1, np.asarray(vals, dtype="<f4").tobytes()))
        else:
            raise TypeError(f"feature {name!r}: values must all be bytes, all int, or all float")
        entries += _ld(1, _ld(1, name.encode("utf-8")) + _ld(2, feat))
    return _ld(1, entries)


def example_image(
    example: Mapping[str, tuple[str, list]], feature: str = "image", source: str = "<example>"
) -> bytes:
    """The first value of bytes feature ``feature`` (or of the only bytes feature when it is absent)."""
    if feature in example:
        kind, values = example[feature]
        if kind != "bytes" or not values:
            raise TFRecordError(f"{source}: feature {feature!r} is not a non-empty bytes list")
        return values[0]
    byte_feats = [k for k, (kind, vals) in example.items() if kind == "bytes" and vals]
    if len(byte_feats) != 1:
        raise TFRecordError(
            f"{source}: no bytes feature {feature!r} in Example (bytes features: {byte_feats or 'none'})"
        )
    return example[byte_feats[0]][1][0]


def read_tfr_image(shard_path: str | Path, offset: int, feature: str = "image", verify: bool = True) -> bytes:
    """Encoded image bytes of the Example stored at ``offset`` in ``shard_path``."""
    source = f"{shard_path}@{offset}"
    return example_image(parse_example(read_tfrecord_at(shard_path, offset, verify), source), feature, source)


# --------------------------------------------------------------------------------------------- index


@dataclass
class RecordIndex:
    """A parsed index: per sample the shard (``shard_ids`` into ``shards``), byte offset and label."""

    shards: list[tuple[str, int]]  # (tfr_name, tfr_index) per distinct shard
    shard_ids: np.ndarray  # int32 [N]
    offsets: np.ndarray  # int64 [N]
    labels: np.ndarray  # int64 [N]
    source: str = "<index>"

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def shard_path(self, i: int, root: str | Path, template: str = TFACE_SHARD_TEMPLATE) -> Path:
        name, index = self.shards[int(self.shard_ids[i])]
        return Path(root) / template.format(name=name, index=index)

    def read_image(self, i: int, root: str | Path, feature: str = "image", verify: bool = True,
                   template: str = TFACE_SHARD_TEMPLATE) -> bytes:  # fmt: skip
        return read_tfr_image(self.shard_path(i, root, template), int(self.offsets[i]), feature, verify)


def read_index_file(path: str | Path) -> RecordIndex:
    """Parse ``tfr_name<TAB>tfr_index<TAB>offset<TAB>label`` lines; blank and ``#`` lines are skipped.
    Errors name ``file:line``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"index file not found: {p}")
    shard_of: dict[tuple[str, int], int] = {}
    shard_ids, offsets, labels = [], [], []
    with open(p) as f:
        for line_no, raw in enumerate(f, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split("\t")
            if len(parts) != 4:
                parts = line.split()
            if len(parts) != 4:
                raise ValueError(
                    f"{p}:{line_no}: expected 4 tab-separated fields 'tfr_name tfr_index offset label', "
                    f"got {len(parts)}: {line!r}"
                )
            name = parts[0]
            try:
                tfr_index, offset, label = (int(x) for x in parts[1:])
            except ValueError:
                raise ValueError(
                    f"{p}:{line_no}: tfr_index, offset and label must be integers: {line!r}"
                ) from None
            if tfr_index < 0 or offset < 0 or label < 0:
                raise ValueError(f"{p}:{line_no}: negative tfr_index, offset or label: {line!r}")
            if label >= MAX_CLASSES:
                raise ValueError(
                    f"{p}:{line_no}: label {label} is not below MAX_CLASSES={MAX_CLASSES} (more identities than "
                    "any face set; the index is damaged)"
                )
            sid = shard_of.setdefault((name, tfr_index), len(shard_of))
            shard_ids.append(sid)
            offsets.append(offset)
            labels.append(label)
    if not labels:
        raise ValueError(f"{p}: no samples")
    return RecordIndex(
        list(shard_of),
        np.asarray(shard_ids, dtype=np.int32),
        np.asarray(offsets, dtype=np.int64),
        np.asarray(labels, dtype=np.int64),
        str(p),
    )


def write_index_file(path: str | Path, rows: Iterable[tuple[str, int, int, int]]) -> None:
    """Write ``(tfr_name, tfr_index, offset, label)`` rows as a TFace index (via ``.part`` + rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".part")
    with open(tmp, "w") as f:
        for name, index, offset, label in rows:
            f.write(f"{name}\t{int(index)}\t{int(offset)}\t{int(label)}\n")
    tmp.replace(p)


def write_tfrecord_shard(
    root: str | Path,
    name: str,
    index: int,
    images: Iterable[tuple[bytes, int]],
    template: str = TFACE_SHARD_TEMPLATE,
) -> list[tuple[str, int, int, int]]:
    """Write ``(image bytes, label)`` pairs as Examples (``image`` bytes + ``label`` int64) into one shard;
    returns the index rows for them."""
    items = list(images)
    path = Path(root) / template.format(name=name, index=index)
    offsets = write_tfrecord(path, (encode_example({"image": img, "label": int(lab)}) for img, lab in items))
    return [(name, index, off, int(lab)) for off, (_, lab) in zip(offsets, items, strict=True)]


__all__ = [
    "TFACE_SHARD_TEMPLATE",
    "RecordIndex",
    "TFRecordError",
    "crc32c",
    "encode_example",
    "example_image",
    "frame_tfrecord",
    "masked_crc32c",
    "parse_example",
    "read_index_file",
    "read_tfr_image",
    "read_tfrecord_at",
    "write_index_file",
    "write_tfrecord",
    "write_tfrecord_shard",
]
