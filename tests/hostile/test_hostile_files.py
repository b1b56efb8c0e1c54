"""Issue 17, item 5: memory bombs. Tiny hostile .bin, RecordIO, TFRecord and checkpoint files are refused
from their declared sizes before anything is allocated, with a message naming the file.

Every load runs in a child process whose address space is capped (RLIMIT_AS): a loader that believed
the declared sizes would die there with MemoryError instead of taking the test machine's memory.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hostile_files import (
    bin_bytes8_bomb,
    bin_ndarray_bomb,
    bin_of,
    checkpoint_dict,
    child_env,
    encode,
    hostile_checkpoints,
    ir_header,
    random_image,
    rec_record,
    write_rec,
)


def run_capped(code: str, limit_gb: float = 2.0) -> dict:
    """Run ``code`` (which sets ``result``) in a child capped at ``limit_gb`` of address space; returns
    ``{"error": type name, "message": str}`` of the exception it raised, or ``{"result": ...}``."""
    limit = int(limit_gb * 2**30)
    body = textwrap.indent(textwrap.dedent(code).strip(), "    ")
    script = "\n".join(
        [
            "import json, resource",
            f"resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))",
            "try:",
            body,
            "    out = {'result': result}",
            "except BaseException as exc:",
            "    out = {'error': type(exc).__name__, 'message': str(exc)[:500],",
            "           'mro': [c.__name__ for c in type(exc).__mro__]}",
            "print('RESULT' + json.dumps(out, default=str))",
        ]
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
        check=False,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line is not None, proc.stderr[-2000:]
    return json.loads(line[len("RESULT") :])


# ---------------------------------------------------------------------------------------------- .bin


@pytest.mark.parametrize(
    "name, data",
    [("ndarray_bomb.bin", bin_ndarray_bomb()), ("bytes8_bomb.bin", bin_bytes8_bomb())],
)
def test_tiny_bin_cannot_allocate_gigabytes(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    assert len(data) < 64
    out = run_capped(f"from faceforge.data.binset import load_bin\nresult = load_bin({str(path)!r})")
    assert out.get("error") in ("BinFormatError", "UnsafeBinError"), out
    assert name in out["message"] and "FaceforgeError" in out["mro"]


def test_bin_with_numpy_bool_arrays_still_loads(tmp_path: Path) -> None:
    import numpy as np

    from faceforge.data.binset import loads_bin

    imgs = [encode(random_image(8, 8, i)) for i in range(4)]
    for issame in (np.array([True, False]), [np.bool_(True), np.bool_(False)]):
        for protocol in (2, 4):
            import pickle

            bins, same = loads_bin(pickle.dumps((imgs, issame), protocol=protocol))
            assert bins == imgs and same.tolist() == [True, False]
    as_arrays = [np.frombuffer(b, np.uint8) for b in imgs]
    bins, _ = loads_bin(pickle.dumps((as_arrays, [True, False]), protocol=2))
    assert bins == imgs


# ---------------------------------------------------------------------------------------------- RecordIO


def _image_record(key: int, label: float) -> bytes:
    return rec_record(ir_header(0, label, key) + encode(random_image(8, 8, key)))


REC_CASES = {  # case -> a word the error must contain
    "range_1e12": "announces",
    "range_1e9": "announces",
    "label_1e12": "label",
    "label_nan": "label",
    "flag_1e9": "labels",
    "length_2e29": "truncated",
    "negative_offset": "offset",
    "offset_past_end": "offset",
}


def _hostile_rec(tmp_path: Path, case: str) -> Path:
    images = [_image_record(k, 0.0) for k in (1, 2)]
    ident = rec_record(ir_header(2, 0.0, 3, [1, 3]))
    if case.startswith("range_"):
        end = 10**12 if case == "range_1e12" else 10**9
        records = [rec_record(ir_header(2, 0.0, 0, [end, end + 1])), *images, ident]
    else:
        records = [rec_record(ir_header(2, 0.0, 0, [3, 4])), *images, ident]
    if case == "label_1e12":
        records[2] = _image_record(2, 1e12)
    if case == "label_nan":
        records[2] = _image_record(2, float("nan"))
    if case == "flag_1e9":
        records[1] = rec_record(ir_header(10**9, 0.0, 1) + b"\0" * 16)
    if case == "length_2e29":
        records[1] = struct.pack("<II", 0xCED7230A, (1 << 29) - 1) + ir_header(0, 0.0, 1)
    rec, idx = write_rec(tmp_path / case, records)
    if case in ("negative_offset", "offset_past_end"):
        lines = idx.read_text().splitlines()
        lines[1] = "1\t-8" if case == "negative_offset" else "1\t999999999"
        idx.write_text("\n".join(lines) + "\n")
    return rec


def test_hostile_rec_is_refused_naming_the_file(tmp_path: Path) -> None:
    recs = {case: str(_hostile_rec(tmp_path, case)) for case in REC_CASES}
    code = f"""
        from omegaconf import OmegaConf
        from faceforge.core.schema import DataConfig
        from faceforge.data.build import build_dataset
        result = {{}}
        for case, rec in {recs!r}.items():
            try:
                cfg = OmegaConf.structured(DataConfig(root="/", format="rec", rec=rec, preload=False, augment={{}}))
                ds = build_dataset(cfg, progress=False).dataset
                bad = [it[1] for it in (ds[i] for i in range(len(ds))) if it[0] is None]
                result[case] = ["skipped", bad[0]] if bad else "loaded"
            except Exception as exc:
                result[case] = [type(exc).__name__, str(exc)]
    """
    out = run_capped(code)
    assert "result" in out, out
    for case, word in REC_CASES.items():
        got = out["result"][case]
        assert got != "loaded" and got[0] in ("RecordIOError", "skipped"), (case, got)
        assert f"{case}.rec" in got[1] or f"{case}.idx" in got[1], (case, got)
        assert word in got[1], (case, got)


def test_valid_rec_still_reads(tmp_path: Path) -> None:
    from faceforge.data.recordio import read_face_rec

    images = [_image_record(k, float(k - 1)) for k in (1, 2)]
    ids = [rec_record(ir_header(2, 0.0, 3 + c, [1 + c, 2 + c])) for c in range(2)]
    rec, _ = write_rec(tmp_path / "ok", [rec_record(ir_header(2, 0.0, 0, [3, 5])), *images, *ids])
    reader, keys, labels = read_face_rec(rec)
    assert keys.tolist() == [1, 2] and labels.tolist() == [0, 1]
    reader.close()


def test_tfrecord_length_of_a_terabyte_is_refused(tmp_path: Path) -> None:
    from faceforge.data.index_files import frame_tfrecord, masked_crc32c

    shard = tmp_path / "huge.tfrecord"
    length = struct.pack("<Q", 10**12)
    shard.write_bytes(frame_tfrecord(b"ok") + length + struct.pack("<I", masked_crc32c(length)) + b"abc")
    out = run_capped(
        f"""
        from faceforge.data.index_files import read_tfrecord_at
        assert read_tfrecord_at({str(shard)!r}, 0) == b"ok"
        result = read_tfrecord_at({str(shard)!r}, {len(frame_tfrecord(b"ok"))})
        """
    )
    assert out.get("error") == "TFRecordError" and "huge.tfrecord" in out["message"], out


def test_index_label_beyond_any_face_set_is_refused(tmp_path: Path) -> None:
    from faceforge.data.index_files import read_index_file

    index = tmp_path / "train.index"
    index.write_text("shard\t0\t0\t0\nshard\t0\t16\t1000000000000\n")
    with pytest.raises(ValueError, match=r"train\.index:2: label 1000000000000"):
        read_index_file(index)


# ---------------------------------------------------------------------------------------------- checkpoints


def test_hostile_checkpoint_metadata_is_refused_before_allocating(tmp_path: Path) -> None:
    import torch

    cases = hostile_checkpoints(checkpoint_dict(16))
    for name, ckpt in cases.items():
        torch.save(ckpt, tmp_path / f"{name}.pt")
    paths = {name: str(tmp_path / f"{name}.pt") for name in cases}
    out = run_capped(
        f"""
        from faceforge.embedders.checkpoint import CheckpointEmbedder
        result = {{}}
        for name, path in {paths!r}.items():
            try:
                CheckpointEmbedder(path, device="cpu")
                result[name] = "loaded"
            except Exception as exc:
                result[name] = [type(exc).__name__, str(exc)]
        """,
        limit_gb=3.0,
    )
    assert "result" in out, out
    for name, got in out["result"].items():
        assert got != "loaded" and got[0] == "CheckpointError", (name, got)
        assert f"{name}.pt" in got[1], (name, got)


def test_valid_checkpoint_still_loads(tmp_path: Path) -> None:
    import numpy as np
    import torch

    from faceforge.core.checkpoint import load_checkpoint
    from faceforge.embedders.checkpoint import CheckpointEmbedder, backbone_from_checkpoint

    ckpt = checkpoint_dict(16)
    torch.save(ckpt, tmp_path / "ok.pt")
    emb = CheckpointEmbedder(tmp_path / "ok.pt", device="cpu")
    out = emb.embed(np.zeros((2, 112, 112, 3), np.uint8))
    assert out.shape == (2, 16) and emb.embedding_size == 16
    # the trainer's checkpoints hold more metadata (head, config, versions): still accepted by the checks
    # (the metadata checks and the meta-device comparison; the network itself is the one loaded above)
    ckpt["meta"].update(head={"name": "arcface", "num_classes": 7}, train_config={}, faceforge_version="0")
    torch.save(ckpt, tmp_path / "full.pt")
    net = backbone_from_checkpoint(load_checkpoint(tmp_path / "full.pt"), tmp_path / "full.pt")
    assert net.embedding_size == 16


def test_bin_files_written_by_us_do_not_trip_the_checks(tmp_path: Path) -> None:
    from faceforge.data.binset import load_bin

    imgs = [encode(random_image(16, 16, i)) for i in range(6)]
    (tmp_path / "ok.bin").write_bytes(bin_of(imgs, [True, False, True]))
    bins, same = load_bin(tmp_path / "ok.bin")
    assert bins == imgs and same.tolist() == [True, False, True]
