"""Atomic file writes: a temporary file in the target's folder, fsynced, then renamed over the target.

A crash (or ``kill -9``) during the write leaves either the old file or the new one, never half of one; the
temporary file is named ``.<target name>.<random>.tmp`` so :func:`faceforge.core.checkpoint.remove_stale_temporaries`
can find what a killed writer left behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """``with atomic_writer(p) as fh: fh.write(...)``: ``p`` appears (or is replaced) only if the block ends
    without an exception; otherwise the temporary file is removed and ``p`` is untouched."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
