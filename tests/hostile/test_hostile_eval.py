"""Issue 17, item 4: results that lie. Pairs with an unreadable image are left out (never scored as
cosine 0), counted on screen and in the JSON; a benchmark with no, or too few, scorable pairs fails."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hostile_files import bin_of, encode, ppm_bomb, random_image

from faceforge.cli.main import main
from faceforge.eval.benchmarks import run_benchmarks
from faceforge.eval.verification import kfold_accuracy


class GreyGridEmbedder:
    """Deterministic 16-d features (mean grey of a 4x4 grid, centred): real faces score above chance."""

    embedding_size = 16
    input_size = 112

    def embed(self, faces: np.ndarray) -> np.ndarray:
        x = faces.astype(np.float32).mean(axis=3) / 255.0
        g = x.reshape(len(x), 4, 28, 4, 28).mean(axis=(2, 4)).reshape(len(x), 16)
        return (g - g.mean(axis=1, keepdims=True) + 1e-3).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"kind": "grey-grid", "preprocess": {"alignment": "arcface_112", "colour": "RGB"}}


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch) -> str:
    from faceforge.embedders.base import EMBEDDERS

    monkeypatch.setitem(EMBEDDERS._items, "grey-grid", lambda source=None, **kw: GreyGridEmbedder())
    return "grey-grid"


def _pairs_tree(lfw_small: Path, tmp_path: Path, n_people: int = 10) -> tuple[Path, Path, list[str]]:
    """A copy of the first ``n_people`` of lfw_small and a pairs file: image 1 vs 2 of each person, then
    person k image 3 vs person k+1 image 4 (2 x n_people pairs; each image is in one pair)."""
    people = sorted(p.name for p in lfw_small.iterdir() if p.is_dir())[:n_people]
    images = tmp_path / "images"
    for p in people:
        shutil.copytree(lfw_small / p, images / p)
    lines = [str(n_people)] + [f"{p}\t1\t2" for p in people]
    lines += [f"{a}\t3\t{b}\t4" for a, b in itertools.pairwise([*people, people[0]])]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    return images, pairs, people


def _break(images: Path, person: str, idx: int) -> Path:
    f = images / person / f"{person}_{idx:04d}.jpg"
    f.write_bytes(ppm_bomb())
    return f


def test_unreadable_pairs_are_left_out_not_scored_as_zero(lfw_small: Path, tmp_path: Path) -> None:
    images, pairs, people = _pairs_tree(lfw_small, tmp_path)
    _break(images, people[3], 2)  # breaks matched pair 3 only
    emb = GreyGridEmbedder()
    res = run_benchmarks(
        emb, [f"lfw:{pairs}:{images}"], None, n_folds=2, progress=False, min_valid_fraction=0.9
    )
    rec = res["benchmarks"]["lfw:pairs"]
    assert rec["validity"] == {
        "unit": "pairs",
        "total": 20,
        "scored": 19,
        "left_out": 1,
        "min_valid_fraction": 0.9,
        "rule": "pairs with an unreadable or wrong-size image are left out, never scored",
    }
    assert rec["settings"]["min_valid_fraction"] == 0.9 and res["settings"]["min_valid_fraction"] == 0.9
    assert rec["verification"]["pairs_scored"] == 19
    # the number is the protocol on the 19 readable pairs, computed here by hand
    from faceforge.data.image_io import read_image_rgb

    def e(person: str, i: int) -> np.ndarray:
        img = read_image_rgb(images / person / f"{person}_{i:04d}.jpg")[None]
        v = emb.embed(img) + emb.embed(img[:, :, ::-1].copy())
        return v[0] / np.linalg.norm(v[0])

    d, same = [], []
    for k, p in enumerate(people):
        if k != 3:
            d.append(np.sum((e(p, 1) - e(p, 2)) ** 2))
            same.append(True)
    for a, b in itertools.pairwise([*people, people[0]]):
        d.append(np.sum((e(a, 3) - e(b, 4)) ** 2))
        same.append(False)
    expected = kfold_accuracy(np.array(d), np.array(same), n_folds=2).mean
    assert rec["summary"]["accuracy"] == pytest.approx(expected, abs=1e-9)
    assert len(rec["benchmark"]["unreadable_images"]) == 1


def test_too_few_scorable_pairs_fail_with_a_clear_message(
    lfw_small: Path, tmp_path: Path, fake_model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    images, pairs, people = _pairs_tree(lfw_small, tmp_path)
    broken = _break(images, people[3], 2)
    base = ["eval", "--model", fake_model, "--pairs", str(pairs), "--images", str(images), "--no-cache"]
    base += ["--folds", "2", "--no-progress", "--out-dir", str(tmp_path / "out")]
    # 19 of 20 = 95 %: scored under the default, the left-out pair is counted on screen
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "left out 1 of 20 pairs" in out and str(broken) in out
    for k in (4, 5):
        _break(images, people[k], 2)
    assert main(base) == 2  # 17 of 20 = 85 % < 95 %
    err = capsys.readouterr().err
    assert "only 17 of 20 pairs (85.0 %)" in err and "--min-valid" in err and err.count("\n") == 1
    assert main([*base, "--min-valid", "0.8"]) == 0
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert saved["settings"]["min_valid_fraction"] == 0.8
    assert saved["benchmarks"]["lfw:pairs"]["validity"]["left_out"] == 3


def test_bin_of_undecodable_images_gives_no_accuracy(
    tmp_path: Path, fake_model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "undecodable.bin"
    bad.write_bytes(bin_of([b"not an image %d" % i for i in range(40)], [i % 2 == 0 for i in range(20)]))
    rc = main(["eval", "--model", fake_model, "--benchmark", f"bin:{bad}", "--no-cache", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 2 and "accuracy" not in captured.out
    assert "none of its 20 pairs can be scored" in captured.err and "undecodable.bin" in captured.err


def test_wrong_size_and_empty_images_are_left_out_too(tmp_path: Path) -> None:
    faces = [encode(random_image(112, 112, i)) for i in range(38)]
    faces += [encode(random_image(50, 50, 99)), b""]  # pair 19: a 50x50 image and an empty one
    binfile = tmp_path / "mixed.bin"
    binfile.write_bytes(bin_of(faces, [i % 2 == 0 for i in range(20)]))
    res = run_benchmarks(GreyGridEmbedder(), [f"bin:{binfile}"], None, n_folds=2, progress=False)
    rec = res["benchmarks"]["bin:mixed"]
    assert rec["validity"]["left_out"] == 1 and rec["validity"]["scored"] == 19
    reasons = " ".join(rec["benchmark"]["unreadable_images"])
    assert "50x50" in reasons and "empty" in reasons


def test_age_pair_lists_leave_unreadable_pairs_out(tmp_path: Path) -> None:
    root = tmp_path / "cacd"
    root.mkdir()
    names = [f"{i:02d}.png" for i in range(24)]
    for i, n in enumerate(names):
        (root / n).write_bytes(encode(random_image(112, 112, i)))
    (root / names[0]).write_bytes(b"broken")
    lines = [f"{names[2 * k]} {names[2 * k + 1]} {k % 2} 20 {30 + k}" for k in range(12)]
    (tmp_path / "agegap.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "cacd.txt").write_text("\n".join(ln.rsplit(" ", 2)[0] for ln in lines) + "\n")
    specs = [f"agegap:{tmp_path / 'agegap.txt'}:{root}", f"cacdvs:{tmp_path / 'cacd.txt'}:{root}"]
    res = run_benchmarks(GreyGridEmbedder(), specs, None, n_folds=2, progress=False, min_valid_fraction=0.9)
    for rec in res["benchmarks"].values():
        assert rec["validity"]["left_out"] == 1 and rec["validity"]["scored"] == 11
    assert len(res["benchmarks"]["agegap:agegap"]["agegap"]["overall"]["fold_accuracies"]) == 2
    assert (
        sum(b["n_genuine"] + b["n_impostor"] for b in res["benchmarks"]["agegap:agegap"]["agegap"]["bands"])
        == 11
    )
    assert res["benchmarks"]["cacdvs:cacd"]["cacdvs"]["n_pairs"] == 11
    from faceforge.eval.kinds.base import TooFewValidError

    with pytest.raises(TooFewValidError, match="only 11 of 12 pairs"):
        run_benchmarks(GreyGridEmbedder(), specs[:1], None, n_folds=2, progress=False)


def test_broken_links_and_fifos_in_a_folder_benchmark_are_listed_not_ignored(
    lfw_small: Path, tmp_path: Path
) -> None:
    import os

    people = sorted(p for p in lfw_small.iterdir() if p.is_dir())[:3]
    folder = tmp_path / "folder"
    for p in people:
        shutil.copytree(p, folder / p.name)
    os.symlink("nowhere.jpg", folder / people[0].name / "dangling.jpg")
    os.mkfifo(folder / people[1].name / "fifo.jpg")
    n = sum(1 for _ in folder.rglob("*.jpg"))
    res = run_benchmarks(
        GreyGridEmbedder(), [f"allpairs:{folder}"], None, progress=False, min_valid_fraction=0.5
    )
    rec = res["benchmarks"]["allpairs:folder"]
    assert rec["validity"]["total"] == n and rec["validity"]["left_out"] == 2
    reasons = " ".join(rec["benchmark"]["unreadable_images"])
    assert "dangling.jpg: broken symbolic link" in reasons and "fifo.jpg: not a regular file" in reasons
