"""benchmarks/common.py: the training list the scripts write, and the mean ± std of their tables."""

from __future__ import annotations

from pathlib import Path

from common import lfw_photos, mean_std, pm, write_training_list


def _tree(root: Path, counts: dict[str, int]) -> None:
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"{name}_{i + 1:04d}.jpg").write_bytes(b"x")


def test_training_list_leaves_out_people_and_caps(tmp_path: Path) -> None:
    faces = tmp_path / "faces"
    _tree(faces, {"Ann": 5, "Bob": 1, "Cid": 3, "Dee": 4})
    path, images, people = write_training_list(faces, tmp_path / "t.txt", exclude={"Cid"}, per_person=2)
    assert (images, people) == (4, 2)
    assert path.read_text().splitlines() == ["Ann/Ann_0001.jpg 0", "Ann/Ann_0002.jpg 0", "Dee/Dee_0001.jpg 1",
                                             "Dee/Dee_0002.jpg 1"]  # fmt: skip
    _, images, people = write_training_list(
        faces, tmp_path / "s.txt", min_images=1, max_people=3, per_person=2, seed=0
    )
    assert people == 3 and images == 5
    assert lfw_photos(faces, 2) == [faces / "Ann" / "Ann_0001.jpg", faces / "Ann" / "Ann_0002.jpg"]


def test_mean_std_and_pm() -> None:
    m = mean_std([0.5, None, 0.7])
    assert m["n"] == 2 and abs(m["mean"] - 0.6) < 1e-12 and abs(m["std"] - 0.1414213562) < 1e-9
    assert pm(m, 100, 1, " %") == "60.0 ± 14.1 % (n=2)"
    assert pm(mean_std([None])) == "n/a" and pm(mean_std([0.25])) == "0.25"
