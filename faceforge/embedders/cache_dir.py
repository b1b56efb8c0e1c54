"""Where embeddings are cached: one place, read by the embedding cache (:mod:`faceforge.embedders.cache`) and by
the precision parity records kept beside it (:mod:`faceforge.embedders.parity`)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$FACEFORGE_CACHE`` if set, else ``~/.cache/faceforge/embeddings``."""
    env = os.environ.get("FACEFORGE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "faceforge" / "embeddings"
