"""``faceforge eval`` kinds on hand-made fixtures: fgnet, cacdvs, agegap and ijb, answers worked out here.

Each fixture image is a flat colour whose red value codes an index; :class:`AngleEmbedder` maps
that index to a unit vector at a chosen angle, so every cosine in these tests is ``cos(angle
difference)`` and the expected numbers follow on paper (worked out in each test's comments).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from faceforge.cli.main import main
from faceforge.data.align import ARCFACE_TEMPLATE_112
from faceforge.eval.benchmarks import BenchmarkSpecError, parse_benchmark_spec, run_benchmarks

STEP = 20  # red value of code k is STEP * (k + 1)


class AngleEmbedder:
    """2-d embedding ``(cos a, sin a)`` for the angle (degrees) of the image's code (centre pixel)."""

    embedding_size = 2
    input_size = 112

    def __init__(self, angles: dict[int, float]) -> None:
        self.angles = angles

    def embed(self, faces: np.ndarray) -> np.ndarray:
        codes = np.rint(faces[:, 56, 56, 0].astype(np.float64) / STEP).astype(int) - 1
        rad = np.deg2rad([self.angles[int(c)] for c in codes])
        return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"kind": "fake-angle", "preprocess": {"alignment": "arcface_112", "colour": "RGB"}}


def _code_image(path: Path, code: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((112, 112, 3), STEP * (code + 1), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


def test_specs_parse_and_errors() -> None:
    assert parse_benchmark_spec("fgnet:a/fgnet").paths == ("a/fgnet",)
    c = parse_benchmark_spec("cacdvs:lists/cacd_vs.txt:faces")
    assert (c.kind, c.paths, c.name) == ("cacdvs", ("lists/cacd_vs.txt", "faces"), "cacdvs:cacd_vs")
    i = parse_benchmark_spec("ijb:data/IJBC:N1D0")
    assert (i.paths, i.option("norm", "?"), i.option("detector", "?")) == (("data/IJBC",), "N1", "D0")
    assert parse_benchmark_spec("ijb:data/IJBC").option("norm", "N0") == "N0"
    with pytest.raises(BenchmarkSpecError, match="N0D1"):
        parse_benchmark_spec("ijb:data/IJBC:F2")
    with pytest.raises(BenchmarkSpecError, match="cacdvs:PAIRS:IMAGES"):
        parse_benchmark_spec("cacdvs:only_a_list.txt")


def test_fgnet_leave_one_out_by_hand(tmp_path: Path) -> None:
    # angles: 001A02 0, 001A15 10, 002A05 30, 002A25 100, 003A30 95 (a single image: no mate)
    # 001A02: mate 10 deg away, nearest other 30  -> correct
    # 001A15: mate 10 deg away, nearest other 20  -> correct
    # 002A05: mate 70 deg away, 001A15 20 away     -> wrong
    # 002A25: mate 70 deg away, 003A30 5 away      -> wrong
    # rank-1 = 2/4; bands 0-10: {age 2 ok, age 5 wrong} 0.5; 10-20: 1.0; 20-30: 0.0; 30+: no probe
    names = ["001A02.JPG", "001A15.JPG", "002A05.JPG", "002A25.JPG", "003A30.JPG"]
    angles = dict(enumerate([0.0, 10.0, 30.0, 100.0, 95.0]))
    for k, n in enumerate(names):
        _code_image(tmp_path / "fgnet" / n, k)
    (tmp_path / "fgnet" / "readme.png").write_bytes((tmp_path / "fgnet" / names[0]).read_bytes())
    run = run_benchmarks(
        AngleEmbedder(angles), [f"fgnet:{tmp_path / 'fgnet'}"], tmp_path / "out", progress=False
    )
    rec = run["benchmarks"]["fgnet:fgnet"]
    assert rec["summary"]["rank-1"] == 0.5
    assert rec["fgnet"]["n_probes"] == 4 and rec["fgnet"]["n_excluded"] == 1
    assert [b["rank1"] for b in rec["fgnet"]["age_bands"]] == [0.5, 1.0, 0.0, None]
    assert rec["benchmark"]["files_without_fgnet_name"] == ["readme.png"]
    assert Path(rec["plots"]["rank1_by_age"]).is_file()


def _four_pairs(root: Path) -> tuple[dict[int, float], list[str]]:
    """Pairs with squared L2 distances 0.2 (same), 1.0 (diff), 0.6 (same), 0.8 (diff): d = 2 - 2 cos."""
    cosines = [0.9, 0.5, 0.7, 0.6]
    same = [1, 0, 1, 0]
    angles: dict[int, float] = {}
    lines = []
    for p, (c, s) in enumerate(zip(cosines, same, strict=True)):
        a, b = 2 * p, 2 * p + 1
        angles[a], angles[b] = 0.0, math.degrees(math.acos(c))
        _code_image(root / f"p{p}" / "a.png", a)
        _code_image(root / f"p{p}" / "b.png", b)
        lines.append(f"p{p}/a.png p{p}/b.png {s}")
    return angles, lines


def test_cacdvs_and_agegap_by_hand(tmp_path: Path) -> None:
    # 2 folds of 2 pairs, accept d < t, t from the grid 0:4:0.01, smallest best threshold on ties.
    # fold 1 is tested with the threshold of fold 2 (d 0.6 same, 0.8 diff -> t = 0.61): pair 0
    # (0.2 same) accepted, pair 1 (1.0 diff) rejected -> 1.0.  Fold 2 with fold 1's threshold
    # (0.2 same, 1.0 diff -> t = 0.21): pair 2 (0.6 same) rejected (error), pair 3 rejected -> 0.5.
    angles, lines = _four_pairs(tmp_path / "img")
    (tmp_path / "cacd.txt").write_text("\n".join(lines) + "\n")
    ages = ["20 22", "30 31", "10 40", "50 57"]  # gaps 2, 1, 30, 7
    (tmp_path / "gap.txt").write_text(
        "\n".join(f"{ln} {a}" for ln, a in zip(lines, ages, strict=True)) + "\n"
    )
    run = run_benchmarks(
        AngleEmbedder(angles),
        [
            f"cacdvs:{tmp_path / 'cacd.txt'}:{tmp_path / 'img'}",
            f"agegap:{tmp_path / 'gap.txt'}:{tmp_path / 'img'}",
        ],
        tmp_path / "out",
        n_folds=2,
        progress=False,
    )
    cacd = run["benchmarks"]["cacdvs:cacd"]
    assert cacd["summary"]["accuracy"] == pytest.approx(0.75)
    assert cacd["cacdvs"]["fold_thresholds"] == pytest.approx([0.61, 0.21])
    gap = run["benchmarks"]["agegap:gap"]
    assert gap["summary"]["accuracy"] == pytest.approx(0.75)
    # out-of-fold decisions: pair 0 accepted (right), 1 rejected (right), 2 rejected (wrong), 3 rejected (right)
    bands = {(b["lo"], b["hi"]): b for b in gap["agegap"]["bands"]}
    assert bands[(0.0, 5.0)]["accuracy"] == 1.0 and bands[(0.0, 5.0)]["tar"] == 1.0
    assert bands[(0.0, 5.0)]["far"] == 0.0
    assert bands[(5.0, 10.0)]["accuracy"] == 1.0 and bands[(5.0, 10.0)]["tar"] is None
    assert bands[(10.0, 20.0)]["accuracy"] is None
    assert bands[(20.0, None)]["accuracy"] == 0.0 and bands[(20.0, None)]["tar"] == 0.0
    assert gap["summary"]["accuracy gap 20+"] == 0.0


def test_pairs_list_names_missing_images(tmp_path: Path) -> None:
    _code_image(tmp_path / "img" / "a.png", 0)
    (tmp_path / "cacd.txt").write_text("a.png nowhere.png 1\n")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.png"):
        run_benchmarks(AngleEmbedder({0: 0.0}), [f"cacdvs:{tmp_path / 'cacd.txt'}:{tmp_path / 'img'}"], None)


# ---------------------------------------------------------------------------------------------
# IJB
# ---------------------------------------------------------------------------------------------
IJB_ANGLES = {0: 0.0, 1: 90.0, 2: 45.0, 3: 180.0, 4: 90.0, 5: 115.0, 6: 150.0}


def _ijb_fixture(root: Path) -> Path:
    """Templates (image code: angle, faceness, media):

    T1 = {0: 0 deg f1 m1, 1: 90 deg f1 m1}  -> one media, mean (0.5, 0.5)        -> 45 deg
    T2 = {2: 45 deg}                                                              -> 45 deg
    T3 = {3: 180 deg f1 m3, 4: 90 deg f3 m4} -> D1: (-1, 0) + (0, 3) -> 108.43 deg; D0: 135 deg
    T4 = {5: 115 deg}, T5 = {6: 150 deg}
    1:1 pairs (label): T1-T2 (1), T1-T3 (0), T3-T4 (1), T2-T4 (0), T3-T5 (0).
    """
    meta = root / "meta"
    meta.mkdir(parents=True)
    tid = [1, 1, 2, 3, 3, 4, 5]
    mid = [1, 1, 2, 3, 4, 5, 6]
    face = [1.0, 1.0, 1.0, 1.0, 3.0, 1.0, 1.0]
    lmk = " ".join(f"{v:.4f}" for v in ARCFACE_TEMPLATE_112.ravel())
    (meta / "toy_face_tid_mid.txt").write_text(
        "".join(f"{k}.jpg {t} {m}\n" for k, (t, m) in enumerate(zip(tid, mid, strict=True)))
    )
    (meta / "toy_name_5pts_score.txt").write_text("".join(f"{k}.jpg {lmk} {f}\n" for k, f in enumerate(face)))
    (meta / "toy_template_pair_label.txt").write_text("1 2 1\n1 3 0\n3 4 1\n2 4 0\n3 5 0\n")
    (meta / "toy_1N_gallery_G1.csv").write_text(
        "TEMPLATE_ID,SUBJECT_ID,FILENAME\n1,10,0.jpg\n1,10,1.jpg\n3,20,3.jpg\n"
    )
    (meta / "toy_1N_probe_mixed.csv").write_text(
        "TEMPLATE_ID,SUBJECT_ID,FILENAME\n2,10,2.jpg\n4,20,5.jpg\n5,30,6.jpg\n"
    )
    for k in range(len(tid)):
        _code_image(root / "loose_crop" / f"{k}.jpg", k)
    return root


def test_ijb_by_hand(tmp_path: Path) -> None:
    root = _ijb_fixture(tmp_path / "IJBT")
    emb = AngleEmbedder(IJB_ANGLES)
    run = run_benchmarks(emb, [f"ijb:{root}", f"ijb:{root}:N0D0"], tmp_path / "out", progress=False)
    d1, d0 = run["benchmarks"]["ijb:IJBT"], run["benchmarks"]["ijb:IJBT#2"]
    # D1: genuine cos 1.0 (T1-T2) and cos 6.57 deg = 0.993 (T3-T4); impostors cos 63.43 = 0.447,
    # cos 70 = 0.342, cos 41.57 = 0.748: separated, AUC 1, every TAR 1
    assert d1["settings"]["switches"]["code"] == "N0D1F1"
    assert d1["summary"]["auc"] == pytest.approx(1.0)
    assert d1["summary"]["tar@far=0.1"] == pytest.approx(1.0)
    # D0: T3 at 135 deg -> genuine T3-T4 cos 20 = 0.940 falls below impostor T3-T5 cos 15 = 0.966;
    # genuine 1.0 beats 3 impostors, 0.940 beats 2 of 3 -> AUC 5/6
    assert d0["settings"]["switches"]["code"] == "N0D0F1"
    assert d0["summary"]["auc"] == pytest.approx(5 / 6)
    # 1:N (D1): probe T2 (45) -> T1 (45) rank 1; T4 (115) -> T3 (108.43) rank 1; T5 is non-mated
    # (max 0.748), so at FPIR <= 0.1 the threshold is above 0.748 and both mated scores pass
    assert d1["summary"]["rank-1"] == 1.0
    assert d1["summary"]["tpir@fpir=0.1"] == 1.0
    assert d1["benchmark"]["galleries"] == ["G1"]
    assert d1["ijb_1to1"]["n_pairs"] == 5 and d1["benchmark"]["n_templates"] == 5
    assert all(Path(p).is_file() for p in d1["plots"].values())


def test_ijb_missing_files_are_named(tmp_path: Path) -> None:
    root = _ijb_fixture(tmp_path / "IJBT")
    (root / "meta" / "toy_name_5pts_score.txt").unlink()
    with pytest.raises(FileNotFoundError, match="5pts"):
        run_benchmarks(AngleEmbedder(IJB_ANGLES), [f"ijb:{root}"], None)
    (tmp_path / "meta_only" / "meta").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="loose_crop"):
        run_benchmarks(AngleEmbedder(IJB_ANGLES), [f"ijb:{tmp_path / 'meta_only'}"], None)


def test_eval_cli_runs_age_kinds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI path: ``faceforge eval --benchmark`` with a registered fake embedder kind."""
    from faceforge.embedders import base

    angles, lines = _four_pairs(tmp_path / "img")
    (tmp_path / "cacd.txt").write_text("\n".join(lines) + "\n")
    got: dict[str, Any] = {}

    def build(source: str | None = None, **kw: Any) -> AngleEmbedder:
        got.update(kw)
        return AngleEmbedder(angles)

    monkeypatch.setitem(base.EMBEDDERS._items, "fake-angle", build)
    out = tmp_path / "out"
    rc = main(
        [
            "eval",
            "--model",
            "fake-angle",
            "--benchmark",
            f"cacdvs:{tmp_path / 'cacd.txt'}:{tmp_path / 'img'}",
            "--out-dir",
            str(out),
            "--folds",
            "2",
            "--model-option",
            "box=fixed",
            "--model-option",
            "input_size=112",
            "--no-progress",
            "--html",
        ]
    )
    assert rc in (0, None)
    result = json.loads((out / "result.json").read_text())
    assert result["benchmarks"]["cacdvs:cacd"]["summary"]["accuracy"] == pytest.approx(0.75)
    assert (out / "report.html").is_file()
    assert got["box"] == "fixed" and got["input_size"] == 112  # --model-option values reach the embedder
