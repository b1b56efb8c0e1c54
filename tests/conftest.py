"""Shared fixtures: the real data root and small aligned subsets of real LFW built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("FACEFORGE_DATA", REPO.parent / "shared" / "data")).resolve()


# the package reads ${faceforge_data:} from $FACEFORGE_DATA only; tests (and the commands they start) find the
# checkout's data the way `make` does
if "FACEFORGE_DATA" not in os.environ and data_root().is_dir():
    os.environ["FACEFORGE_DATA"] = str(data_root())


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = data_root()
    if not (root / "lfw" / "images").is_dir():
        pytest.skip(f"real data not found at {root} (set FACEFORGE_DATA)")
    return root


def _align_people(data_dir: Path, out: Path, people: list[str]) -> Path:
    from faceforge.data.align_folder import align_folder

    src = data_dir / "lfw" / "images"
    files = [f for p in people for f in sorted((src / p).glob("*.jpg"))]
    align_folder(
        src,
        data_dir / "lfw" / "landmarks_mtcnn_5pts_250px.csv",
        out,
        landmark_offset=(-48, -48),
        images=files,
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def lfw_small(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Aligned 112x112 faces of the 12 LFW people with the most images after the top 3 (791 images)."""
    src = data_dir / "lfw" / "images"
    counts = sorted(((len(list(p.glob("*.jpg"))), p.name) for p in src.iterdir() if p.is_dir()), reverse=True)
    people = [name for _, name in counts[3:15]]
    return _align_people(data_dir, tmp_path_factory.mktemp("lfw_small"), people)


def _write_list_file(root: Path, out: Path, per_person: int, people: int) -> Path:
    lines = []
    for label, person in enumerate(sorted(p for p in root.iterdir() if p.is_dir())[:people]):
        for f in sorted(person.glob("*.jpg"))[:per_person]:
            lines.append(f"{f.relative_to(root)} {label}")
    out.write_text("\n".join(lines) + "\n")
    return out


@pytest.fixture(scope="session")
def list_file():
    """``list_file(root, out, per_person, people)``: a ``path label`` list of the first ``people`` identity
    folders of ``root``, ``per_person`` images each."""
    return _write_list_file


@pytest.fixture(scope="session")
def lfw_devtest_aligned(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Aligned faces of every person in pairsDevTest.txt."""
    from faceforge.data.pairs import read_lfw_pairs

    people = sorted(
        {n for p in read_lfw_pairs(data_dir / "lfw" / "pairsDevTest.txt") for n in (p.name1, p.name2)}
    )
    return _align_people(data_dir, tmp_path_factory.mktemp("lfw_devtest"), people)


@pytest.fixture(scope="session", autouse=True)
def _isolated_embedding_cache(tmp_path_factory: pytest.TempPathFactory):
    """Tests never write to the user's ~/.cache: the embedding cache lives in a session temp folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FACEFORGE_CACHE", str(tmp_path_factory.mktemp("embedding_cache")))
    yield
    mp.undo()
