"""RecordIO: byte layout checked against bytes assembled by hand, multi-part records, face .rec round trip."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from faceforge.data.recordio import (
    MAGIC,
    IndexedRecordReader,
    IRHeader,
    RecordIOError,
    RecordWriter,
    frame_record,
    header_label,
    pack,
    read_face_rec,
    unpack,
    write_face_rec,
)
from faceforge.data.samples import Samples

M = struct.pack("<I", MAGIC)


def _hand_built_two_records() -> tuple[bytes, bytes, bytes, bytes]:
    # record 0: scalar label 3.0, id 7, 5 image bytes -> 24 + 5 = 29 bytes, padded with 3 zeros
    p0 = struct.pack("<IfQQ", 0, 3.0, 7, 0) + b"abcde"
    # record 1: two labels -> flag 2, header label 0, labels as float32 after the header, 4 image bytes
    p1 = struct.pack("<IfQQ", 2, 0.0, 8, 0) + struct.pack("<2f", 1.0, 2.0) + b"xyzw"
    rec = (
        struct.pack("<II", 0xCED7230A, 29) + p0 + b"\0\0\0"
        + struct.pack("<II", 0xCED7230A, 36) + p1
    )  # fmt: skip
    idx = b"0\t0\n1\t40\n"
    return rec, idx, p0, p1


def test_writer_matches_hand_built_bytes(tmp_path: Path) -> None:
    rec, idx, p0, p1 = _hand_built_two_records()
    assert pack(IRHeader(0, 3.0, 7, 0), b"abcde") == p0
    assert pack(IRHeader(0, [1.0, 2.0], 8, 0), b"xyzw") == p1
    with RecordWriter(tmp_path / "a.rec", tmp_path / "a.idx") as w:
        w.write(0, p0)
        w.write(1, p1)
    assert (tmp_path / "a.rec").read_bytes() == rec
    assert (tmp_path / "a.idx").read_bytes() == idx
    assert not list(tmp_path.glob("*.part"))


def test_reader_parses_hand_built_bytes(tmp_path: Path) -> None:
    rec, idx, p0, p1 = _hand_built_two_records()
    (tmp_path / "b.rec").write_bytes(rec)
    (tmp_path / "b.idx").write_bytes(idx)
    with IndexedRecordReader(tmp_path / "b.rec") as r:
        assert r.keys == [0, 1] and len(r) == 2
        assert r.read(0) == p0 and r.read(1) == p1
        h0, img0 = unpack(r.read(0))
        assert h0 == IRHeader(0, 3.0, 7, 0) and img0 == b"abcde"
        h1, img1 = unpack(r.read(1))
        assert h1.flag == 2 and h1.id == 8 and img1 == b"xyzw"
        np.testing.assert_array_equal(h1.label, [1.0, 2.0])
        assert header_label(h0) == 3 and header_label(h1) == 1
        assert r.read_header(1).flag == 2
        with pytest.raises(KeyError, match="key 5"):
            r.read(5)
    # without an .idx the file is scanned and records get keys 0..n-1
    (tmp_path / "b.idx").unlink()
    assert IndexedRecordReader(tmp_path / "b.rec").read(1) == p1


def test_multipart_record_read_and_written_like_dmlc(tmp_path: Path) -> None:
    # payload with the magic at aligned offsets 4 and 16 (split there) and at unaligned offset 23 (kept)
    payload = b"AAAA" + M + b"BBBBCCCC" + M + b"DDD" + M + b"E"
    assert [payload.index(M, s) for s in (0, 5, 17)] == [4, 16, 23]
    hand = (
        struct.pack("<II", MAGIC, (1 << 29) | 4) + b"AAAA"
        + struct.pack("<II", MAGIC, (2 << 29) | 8) + b"BBBBCCCC"
        + struct.pack("<II", MAGIC, (3 << 29) | 8) + b"DDD" + M + b"E"
    )  # fmt: skip
    assert frame_record(payload) == hand
    tail = struct.pack("<II", MAGIC, 3) + b"xyz\0"
    (tmp_path / "m.rec").write_bytes(hand + tail)
    (tmp_path / "m.idx").write_text(f"10\t0\n11\t{len(hand)}\n")
    r = IndexedRecordReader(tmp_path / "m.rec")
    assert r.read(10) == payload
    assert r.read(11) == b"xyz"
    (tmp_path / "m.idx").unlink()
    assert IndexedRecordReader(tmp_path / "m.rec").keys == [0, 1]


def test_bad_magic_and_idx_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "x.rec").write_bytes(b"\0" * 16)
    (tmp_path / "x.idx").write_text("0\t0\nnot-a-line\n")
    with pytest.raises(RecordIOError, match=r"x\.idx:2"):
        IndexedRecordReader(tmp_path / "x.rec")
    (tmp_path / "x.idx").write_text("0\t0\n")
    with pytest.raises(RecordIOError, match="bad magic"):
        IndexedRecordReader(tmp_path / "x.rec").read(0)


def test_writer_is_atomic_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), RecordWriter(tmp_path / "c.rec") as w:
        w.write(0, b"1234")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def _lfw_subset(data_dir: Path) -> tuple[list[str], list[int]]:
    src = data_dir / "lfw" / "images"
    people = ["Aaron_Peirsol", "AJ_Cook", "Aaron_Eckhart"]
    paths, labels = [], []
    for lab, p in enumerate(people):
        for f in sorted((src / p).glob("*.jpg"))[:3]:
            paths.append(str(f))
            labels.append(lab)
    return paths, labels


def test_face_rec_round_trip_is_byte_identical(data_dir: Path, tmp_path: Path) -> None:
    paths, labels = _lfw_subset(data_dir)
    samples = Samples(paths, np.asarray(labels), ["a", "b", "c"])
    rec_path, _ = write_face_rec(samples, tmp_path / "train")
    reader, keys, got_labels = read_face_rec(rec_path)
    n = len(paths)
    np.testing.assert_array_equal(keys, np.arange(1, n + 1))
    np.testing.assert_array_equal(got_labels, labels)  # already grouped by label, so same order
    h0 = reader.read_header(0)
    assert h0.flag == 2 and list(h0.label) == [n + 1, n + 4]
    # identity records give each identity's [first, end) image key range
    first_id = unpack(reader.read(n + 1))[0]
    assert list(first_id.label) == [1, 1 + labels.count(0)]
    for key, (path, lab) in enumerate(zip(paths, labels, strict=True), start=1):
        header, payload = unpack(reader.read(key))
        assert header_label(header) == lab and payload == Path(path).read_bytes()
    # a plain file without the range record uses every key
    plain = tmp_path / "plain"
    with RecordWriter(plain.with_suffix(".rec")) as w:
        for k, (path, lab) in enumerate(zip(paths, labels, strict=True)):
            w.write(k, pack(IRHeader(0, float(lab), k, 0), Path(path).read_bytes()))
    _, keys2, labels2 = read_face_rec(plain.with_suffix(".rec"))
    np.testing.assert_array_equal(keys2, np.arange(n))
    np.testing.assert_array_equal(labels2, labels)
