"""A checkpoint writer killed with SIGKILL in the middle of a save leaves the previous checkpoint intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from faceforge.core.checkpoint import FORMAT, atomic_torch_save, load_checkpoint, remove_stale_temporaries

WRITER = textwrap.dedent(
    """
    import io, sys, time
    import torch
    from faceforge.core.checkpoint import FORMAT, atomic_torch_save

    real_save = torch.save

    def slow_save(obj, fh):  # the real bytes, written 256 KiB at a time so the kill lands mid-file
        buf = io.BytesIO()
        real_save(obj, buf)
        data = buf.getvalue()
        for i in range(0, len(data), 1 << 18):
            fh.write(data[i : i + (1 << 18)])
            fh.flush()
            time.sleep(0.02)

    torch.save = slow_save
    state = {"format": FORMAT, "version": 2, "meta": {"n": "new"}, "backbone": {"w": torch.ones(4_000_000)}}
    atomic_torch_save(state, sys.argv[1])
    """
)


def test_kill_during_save_keeps_the_old_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "ckpt" / "last.pt"
    old = {"format": FORMAT, "version": 2, "meta": {"n": "old"}, "backbone": {"w": torch.zeros(3)}}
    atomic_torch_save(old, target)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)])
    deadline, partial = time.time() + 120, None
    while time.time() < deadline and partial is None:
        tmp = [p for p in target.parent.glob(".last.pt.*.tmp") if p.stat().st_size > (1 << 20)]
        partial = tmp[0] if tmp else None
        time.sleep(0.01)
    assert partial is not None, "the writer never got half-way"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # the target is the old checkpoint, whole; the half-written temporary is left beside it ...
    assert load_checkpoint(target)["meta"] == {"n": "old"}
    assert partial.exists() and 0 < partial.stat().st_size < 16_000_000
    # ... until the next run starts and removes it (Trainer.fit does this first)
    assert remove_stale_temporaries(target.parent) == [partial]
    assert [p.name for p in target.parent.iterdir()] == ["last.pt"]
