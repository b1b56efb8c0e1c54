"""Real data for the Python API's tests: a user's folder (a group photo, a few LFW people, their pairs) and SFace."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.user_folder import PEOPLE, write_pairs


@pytest.fixture(scope="session")
def sface():
    """SFace through the API, loaded once (skipped when `faceforge fetch sface` has not been run)."""
    import faceforge

    try:
        return faceforge.load_model("sface")
    except faceforge.ModelFileError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def aligned_people(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PEOPLE aligned from the landmarks that ship with LFW, ``<Name>/<Name>_NNNN.jpg``, with ``pairs.txt``."""
    from faceforge.data.align_folder import align_folder

    out = tmp_path_factory.mktemp("aligned_people")
    src = data_dir / "lfw" / "images"
    files = [f for p in PEOPLE for f in sorted((src / p).glob("*.jpg"))]
    align_folder(
        src,
        data_dir / "lfw" / "landmarks_mtcnn_5pts_250px.csv",
        out / "aligned",
        landmark_offset=(-48, -48),
        images=files,
        progress=False,
    )
    write_pairs(out / "pairs.txt")
    return out
