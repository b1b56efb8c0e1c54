"""TFace index files, TFRecord framing + CRC32C and the minimal Example parser, on hand-built bytes."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from faceforge.config import compose_config
from faceforge.data.build import build_dataset
from faceforge.data.index_files import (
    TFRecordError,
    crc32c,
    encode_example,
    example_image,
    frame_tfrecord,
    masked_crc32c,
    parse_example,
    read_index_file,
    read_tfr_image,
    read_tfrecord_at,
    write_index_file,
    write_tfrecord,
    write_tfrecord_shard,
)
from faceforge.data.transforms import Compose

# Example{features{feature{"image": bytes_list{"IMG"}} feature{"label": int64_list{5}}}}, field by field
IMAGE_ENTRY = b"\x0a\x05image" + b"\x12\x07" + b"\x0a\x05" + b"\x0a\x03IMG"
LABEL_ENTRY = b"\x0a\x05label" + b"\x12\x05" + b"\x1a\x03" + b"\x0a\x01\x05"
FEATURES = (
    b"\x0a" + bytes([len(IMAGE_ENTRY)]) + IMAGE_ENTRY + b"\x0a" + bytes([len(LABEL_ENTRY)]) + LABEL_ENTRY
)
EXAMPLE = b"\x0a" + bytes([len(FEATURES)]) + FEATURES


def _mask(c: int) -> int:
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_crc32c_known_vectors() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283
    assert masked_crc32c(b"123456789") == _mask(0xE3069283)


def test_example_encode_and_parse_match_hand_built_bytes() -> None:
    assert encode_example({"image": b"IMG", "label": 5}) == EXAMPLE
    ex = parse_example(EXAMPLE)
    assert ex == {"image": ("bytes", [b"IMG"]), "label": ("int64", [5])}
    assert example_image(ex) == b"IMG"
    assert example_image({"jpeg": ("bytes", [b"J"]), "label": ("int64", [1])}, "image") == b"J"
    # unpacked int64 with a negative value (10-byte varint), packed floats, unknown field 7 skipped
    neg = b"\x08" + b"\xff" * 9 + b"\x01"  # field 1 varint -1
    feat = b"\x1a" + bytes([len(neg)]) + neg
    entry = b"\x0a\x01n" + b"\x12" + bytes([len(feat)]) + feat
    fl = b"\x0a\x08" + struct.pack("<2f", 0.5, -2.0)
    fentry = b"\x0a\x01f" + b"\x12" + bytes([len(fl) + 2]) + b"\x12" + bytes([len(fl)]) + fl
    feats = b"\x0a" + bytes([len(entry)]) + entry + b"\x0a" + bytes([len(fentry)]) + fentry
    ex2 = parse_example(b"\x38\x01" + b"\x0a" + bytes([len(feats)]) + feats)
    assert ex2 == {"n": ("int64", [-1]), "f": ("float", [0.5, -2.0])}
    assert encode_example({"n": -1, "f": [0.5, -2.0]}) and parse_example(encode_example({"n": [-1, 3]}))[
        "n"
    ] == (
        "int64",
        [-1, 3],
    )
    with pytest.raises(TFRecordError, match="no bytes feature 'image'"):
        example_image(ex2, source="s")
    with pytest.raises(TFRecordError, match="truncated"):
        parse_example(EXAMPLE[:-2])


def test_tfrecord_framing_by_hand_and_crc_checks(tmp_path: Path) -> None:
    length = struct.pack("<Q", len(EXAMPLE))
    hand = (
        length
        + struct.pack("<I", _mask(crc32c(length)))
        + EXAMPLE
        + struct.pack("<I", _mask(crc32c(EXAMPLE)))
    )
    assert frame_tfrecord(EXAMPLE) == hand
    shard = tmp_path / "s.tfrecord"
    shard.write_bytes(hand + frame_tfrecord(b"second"))
    assert read_tfrecord_at(shard, 0) == EXAMPLE
    assert read_tfrecord_at(shard, len(hand)) == b"second"
    assert read_tfr_image(shard, 0) == b"IMG"
    broken = bytearray(hand)
    broken[20] ^= 0xFF
    shard.write_bytes(bytes(broken))
    with pytest.raises(TFRecordError, match="data CRC mismatch"):
        read_tfrecord_at(shard, 0)
    assert read_tfrecord_at(shard, 0, verify=False) != EXAMPLE
    with pytest.raises(TFRecordError, match="length CRC mismatch"):
        read_tfrecord_at(shard, 4)
    assert write_tfrecord(tmp_path / "w.tfrecord", [b"a", b"bc"]) == [0, 17]


def test_index_parsing_and_errors_name_file_and_line(tmp_path: Path) -> None:
    idx = tmp_path / "train.txt"
    idx.write_text("ms1m\t0\t0\t3\n# comment\n\nms1m\t1\t128\t4\nms1m\t0\t64\t3\n")
    index = read_index_file(idx)
    assert len(index) == 3 and index.shards == [("ms1m", 0), ("ms1m", 1)]
    assert index.shard_ids.tolist() == [0, 1, 0] and index.offsets.tolist() == [0, 128, 64]
    assert index.labels.tolist() == [3, 4, 3] and index.num_classes == 5
    assert index.shard_path(1, "/r") == Path("/r/ms1m/ms1m-00001.tfrecord")
    for text, line, msg in [
        ("a\t0\t0\t1\nb\t0\t0\n", 2, "expected 4"),
        ("a\t0\t0\t1\n\na\tx\t0\t1\n", 3, "tfr_index, offset and label must be integers"),
        ("a\t0\t-5\t1\n", 1, "negative tfr_index"),
    ]:
        idx.write_text(text)
        with pytest.raises(ValueError, match=rf"train\.txt:{line}: {msg}"):
            read_index_file(idx)


def test_shards_index_and_dataset_end_to_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(3)]
    encoded = [cv2.imencode(".png", im)[1].tobytes() for im in imgs]
    rows = write_tfrecord_shard(tmp_path, "faces", 0, [(encoded[0], 0), (encoded[1], 1)])
    rows += write_tfrecord_shard(tmp_path, "faces", 1, [(encoded[2], 1)])
    write_index_file(tmp_path / "faces.txt", rows[::-1])  # index order is independent of shard order
    # read through the real path: data.format=tfr_index in a config, build_dataset
    overrides = [
        f"data.root={tmp_path}",
        f"data.index_file={tmp_path / 'faces.txt'}",
        "data.format=tfr_index",
    ]
    overrides += [
        "data.exclude_pairs=[]",
        "eval.pairs=null",
        "data.image_size=16",
        "data.min_images_per_identity=1",
        "data.preload=false",
    ]
    built = build_dataset(compose_config("lfw_mobilefacenet_arcface", overrides).data, augment=Compose([]))
    ds = built.dataset
    assert len(ds) == 3 and built.samples.labels.tolist() == [1, 1, 0] and built.num_classes == 2
    img, label, i, _ = ds[2]
    assert label == 0 and i == 2
    np.testing.assert_array_equal(img, cv2.cvtColor(imgs[0], cv2.COLOR_BGR2RGB))
    assert built.samples.paths[2] == f"{tmp_path / 'faces' / 'faces-00000.tfrecord'}@0"
    assert ds.read.index.read_image(0, tmp_path) == encoded[2]
    # a broken record is an unreadable image of that item, named by shard and offset, not a crash
    shard = tmp_path / "faces" / "faces-00001.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-3])
    img, reason, i, _ = ds[0]
    assert img is None and i == 0 and "faces-00001.tfrecord@0" in reason and "truncated" in reason
