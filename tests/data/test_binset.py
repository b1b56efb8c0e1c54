""".bin verification sets: round trip on real LFW images and refusal of code-executing pickles."""

from __future__ import annotations

import os
import pathlib
import pickle
from pathlib import Path

import numpy as np
import pytest

from faceforge.data.binset import (
    BinFormatError,
    UnsafeBinError,
    decode_bin,
    iter_bin_pairs,
    load_bin,
    loads_bin,
    write_bin,
)
from faceforge.data.image_io import decode_image_rgb


def _lfw_jpegs(data_dir: Path, n: int = 4) -> list[bytes]:
    src = data_dir / "lfw" / "images"
    files = sorted((src / "Aaron_Peirsol").glob("*.jpg"))[:n]
    assert len(files) == n
    return [f.read_bytes() for f in files]


def test_round_trip_real_lfw_images(data_dir: Path, tmp_path: Path) -> None:
    imgs = _lfw_jpegs(data_dir)
    write_bin(tmp_path / "lfw.bin", imgs, [True, False])
    bins, issame = load_bin(tmp_path / "lfw.bin")
    assert bins == imgs
    assert issame.dtype == bool and issame.tolist() == [True, False]
    faces, _ = decode_bin(tmp_path / "lfw.bin")
    assert faces.dtype == np.uint8 and faces.shape[0] == 4 and faces.shape[-1] == 3
    np.testing.assert_array_equal(faces[3], decode_image_rgb(imgs[3]))
    pairs = list(iter_bin_pairs(tmp_path / "lfw.bin"))
    assert [p[2] for p in pairs] == [True, False]
    np.testing.assert_array_equal(pairs[1][0], faces[2])
    assert not list(tmp_path.glob("*.part"))


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Touch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize("payload_cls", [_System, _Touch])
@pytest.mark.parametrize("protocol", [2, 4])
def test_code_executing_payload_is_refused(tmp_path: Path, payload_cls: type, protocol: int) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps(([b"a", payload_cls(marker)], [True]), protocol=protocol))
    with pytest.raises(
        UnsafeBinError, match=r"evil\.bin: refusing to load global '(posix|os|pathlib|__builtin__|builtins)"
    ) as info:
        load_bin(evil)
    assert info.value.path == str(evil)
    assert not marker.exists()


def test_eval_and_codec_tricks_are_refused(tmp_path: Path) -> None:
    # builtins.eval via protocol-2 GLOBAL; _codecs.encode with another codec
    with pytest.raises(UnsafeBinError, match=r"builtins\.eval"):
        loads_bin(b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1\x85R.", "x.bin")
    bad_codec = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00utf-8\x86R]\x86."
    with pytest.raises(BinFormatError, match="latin1"):
        loads_bin(bad_codec, "y.bin")


def test_python2_and_protocol2_and_numpy_files_load(tmp_path: Path) -> None:
    # what python 2's pickle.dump((bins, issame), f, protocol=2) writes: py2 str -> SHORT_BINSTRING
    py2 = b"\x80\x02]q\x00(U\x02abU\x02cdU\x02efU\x00e]q\x01(\x88\x89e\x86q\x02."
    bins, issame = loads_bin(py2)
    assert bins == [b"ab", b"cd", b"ef", b""] and issame.tolist() == [True, False]
    # python 3 at protocol 2 (bytes via _codecs.encode / bytes()), bytearray, numpy bool issame
    for same in ([np.True_, np.False_], np.array([True, False])):
        data = pickle.dumps(([b"ab", bytearray(b"cd"), b"\xff\x00", b""], same), protocol=2)
        bins, issame = loads_bin(data)
        assert bins == [b"ab", b"cd", b"\xff\x00", b""] and issame.tolist() == [True, False]
    data = pickle.dumps(([b"ab", b"cd"], np.array([1], dtype=np.int64)), protocol=4)
    assert loads_bin(data)[1].tolist() == [True]
    # object arrays could carry arbitrary objects: refused
    with pytest.raises(BinFormatError, match="dtype"):
        loads_bin(pickle.dumps(([b"a", b"b"], np.array([True], dtype=object)), protocol=2))


def test_structure_errors(tmp_path: Path) -> None:
    with pytest.raises(BinFormatError, match="3 images for 1 pairs"):
        loads_bin(pickle.dumps(([b"a", b"b", b"c"], [True])), "z.bin")
    with pytest.raises(BinFormatError, match="image 1 is a int"):
        loads_bin(pickle.dumps(([b"a", 5], [True])), "z.bin")
    with pytest.raises(ValueError, match="expected 2 per pair"):
        write_bin(tmp_path / "w.bin", [b"a"], [True])
    with pytest.raises(FileNotFoundError):
        load_bin(tmp_path / "missing.bin")
