"""Issue 17, item 7: refusals and user mistakes give one line naming the file, the problem and the fix;
tracebacks only with ``--debug`` (or FACEFORGE_DEBUG); a real bug still shows its traceback."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from hostile_files import (
    bin_payload,
    checkpoint_dict,
    encode,
    hostile_checkpoints,
    ir_header,
    random_image,
    rec_record,
    write_rec,
)

from faceforge.cli.main import COMMANDS, Command, main


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_unsafe_bin_is_one_line_and_runs_nothing(
    tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.bin"
    evil.write_bytes(bin_payload(marker))
    rc = main(["eval", "--model", str(tiny_checkpoint), "--benchmark", f"bin:{evil}", "--no-progress"])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and str(evil) in line and "refusing to load global" in line
    assert not marker.exists()


@pytest.mark.parametrize("case", sorted(hostile_checkpoints(checkpoint_dict(16))))
def test_hostile_checkpoint_metadata_is_one_line(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"{case}.pt"
    torch.save(hostile_checkpoints(checkpoint_dict(16))[case], path)
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "a.png").write_bytes(encode(random_image(112, 112, 0)))
    argv = ["embed", "--model", str(path), "--images", str(tmp_path / "faces"), "--out", str(tmp_path / "e")]
    rc = main(argv)
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and str(path) in line


@pytest.fixture
def read_rec_command(monkeypatch: pytest.MonkeyPatch) -> str:
    """A command that only opens a face .rec, registered for this test (no public command reads .rec
    outside training)."""

    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("rec")

    def run(args: argparse.Namespace) -> int:
        from faceforge.data.recordio import read_face_rec

        read_face_rec(args.rec)[0].close()
        return 0

    monkeypatch.setitem(COMMANDS._items, "read-rec", lambda: Command(add, run, "open a .rec"))
    return "read-rec"


def test_negative_idx_offset_is_one_line(
    tmp_path: Path, read_rec_command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rec, idx = write_rec(
        tmp_path / "t", [rec_record(ir_header(0, 0.0, k) + b"\xff\xd8\xff") for k in range(3)]
    )
    idx.write_text("0\t0\n1\t-8\n2\t40\n")
    rc = main([read_rec_command, str(rec)])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and f"{idx}:2" in line and "negative" in line


def test_missing_and_unreadable_paths_are_one_line(
    tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["eval", "--model", str(tmp_path / "nope.pt"), "--pairs", "x", "--images", "y"])
    assert rc == 2 and "nope.pt" in _one_line(capsys.readouterr().err)
    folder_as_model = tmp_path / "dir.pt"
    folder_as_model.mkdir()
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "a.png").write_bytes(encode(random_image(112, 112, 0)))
    argv = ["embed", "--model", str(folder_as_model), "--images", str(tmp_path / "faces")]
    rc = main([*argv, "--out", str(tmp_path / "o")])
    assert rc == 2 and "dir.pt" in _one_line(capsys.readouterr().err)


@pytest.fixture
def crash_command(monkeypatch: pytest.MonkeyPatch) -> str:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("kind")

    def run(args: argparse.Namespace) -> int:
        from faceforge.data.binset import loads_bin

        if args.kind == "user":
            loads_bin(b"garbage", "given.bin")
        if args.kind == "bug":
            return {"a": 1}["b"]  # a KeyError no message was written for
        if args.kind == "worker":  # a faceforge error re-raised by a DataLoader worker wrapper
            import sys

            from torch._utils import ExceptionWrapper

            from faceforge.data.image_io import UnreadableImageError

            try:
                raise UnreadableImageError("w.jpg", "empty file (0 bytes)")
            except UnreadableImageError:
                ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 0").reraise()
        if args.kind == "torch":  # a library failing from inside: a bug, not a message for the user
            import torch

            torch.zeros(2, 3) @ torch.zeros(2, 3)
        return 1 // 0

    monkeypatch.setitem(COMMANDS._items, "crash", lambda: Command(add, run, "fail on purpose"))
    return "crash"


def test_bugs_keep_their_traceback_and_debug_shows_every_traceback(
    crash_command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main([crash_command, "user"]) == 2
    assert "given.bin" in _one_line(capsys.readouterr().err)
    assert main([crash_command, "worker"]) == 2
    assert _one_line(capsys.readouterr().err).endswith("error: w.jpg: empty file (0 bytes)")
    for kind in ("bug", "zero", "torch"):
        assert main([crash_command, kind]) == 1
        err = capsys.readouterr().err
        assert "Traceback" in err and "bug in faceforge" in err
    assert main(["-v", crash_command, "user"]) == 2  # -v is logging only
    assert "Traceback" not in capsys.readouterr().err
    from faceforge.data.binset import BinFormatError

    with pytest.raises(BinFormatError):
        main(["--debug", crash_command, "user"])
    monkeypatch.setenv("FACEFORGE_DEBUG", "1")
    with pytest.raises(BinFormatError):
        main([crash_command, "user"])
