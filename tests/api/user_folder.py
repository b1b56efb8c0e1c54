"""A user's folder of real photos for the API and installation tests, copied from the shared data."""

from __future__ import annotations

import shutil
from pathlib import Path

#: LFW people with 6 to 8 photos each (raw 160 px crops, as a user's own photos)
PEOPLE = ("Al_Gore", "Albert_Costa", "Ben_Affleck", "Bob_Hope", "Cameron_Diaz")


def write_pairs(path: Path, people: tuple[str, ...] = PEOPLE) -> Path:
    """An LFW-format pairs file: 2 same-person pairs per person, then as many different-person pairs."""
    same = [f"{p}\t{a}\t{a + 1}" for p in people for a in (1, 3)]
    diff = [
        f"{p}\t{a}\t{people[(i + step) % len(people)]}\t{a + 1}"
        for i, p in enumerate(people)
        for step, a in ((1, 1), (2, 3))
    ]
    path.write_text(f"{len(same)}\n" + "\n".join(same + diff) + "\n")
    return path


def make_user_folder(data_dir: Path, root: Path) -> Path:
    """``photos/group.jpg`` (6 faces), ``people/<Name>/*.jpg`` and ``pairs.txt``, copied from the real data."""
    (root / "photos").mkdir(parents=True)
    shutil.copy(data_dir / "photos" / "insightface_t1.jpg", root / "photos" / "group.jpg")
    for person in PEOPLE:
        shutil.copytree(data_dir / "lfw" / "images" / person, root / "people" / person)
    write_pairs(root / "pairs.txt")
    return root
