"""Fixtures of the method tests: a few real UTKFace faces prepared the way the README prepares them."""

from __future__ import annotations

from pathlib import Path

import pytest

from faceforge.data.attributes import utkface_fields


@pytest.fixture(scope="session")
def utk_small(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 UTKFace faces spread over the ages (every k-th file in age order), detected and aligned to 112x112 by
    ``faceforge prepare``'s code with YuNet (flat folder; file names keep the UTKFace age/gender/race fields)."""
    from faceforge.deploy.detect import build_detector
    from faceforge.deploy.prepare import prepare_folder

    src = data_dir / "utkface" / "images"
    if not src.is_dir():
        pytest.skip(f"UTKFace not found at {src}")
    files = sorted(
        (f for f in src.iterdir() if utkface_fields(f.name)), key=lambda f: (utkface_fields(f.name), f.name)
    )
    step = len(files) // 48
    picked = files[step // 2 :: step][:48]
    raw = tmp_path_factory.mktemp("utk_raw")
    for f in picked:
        (raw / f.name).symlink_to(f)
    out = tmp_path_factory.mktemp("utk_small")
    prepare_folder(raw, out, build_detector("yunet"), select="largest", progress=False)
    return out
