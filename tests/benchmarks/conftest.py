"""The benchmark scripts import their shared helpers as ``common`` (benchmarks/common.py), as they do when run as
``python benchmarks/NAME.py``: put that folder on the path for the tests that load them."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = str(Path(__file__).resolve().parents[2] / "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)
