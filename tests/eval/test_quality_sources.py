"""Quality sources (sharpness, face size, CSV, random, model), the path,quality CSV, several sources on one
set of pairs, all pairs of a folder, and the quality kinds with sources through run_benchmarks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from faceforge.data.attributes import attributes_for, read_sidecar
from faceforge.data.image_io import read_image_rgb, write_image_rgb
from faceforge.eval.kinds.quality_sources import (
    QualityInputs,
    QualitySourceError,
    parse_quality_sources,
    read_quality_csv,
    score_images,
    write_quality_csv,
)
from faceforge.eval.quality import all_pairs, compare_sources, erc, laplacian_variance


def test_laplacian_variance_by_hand_and_against_scipy() -> None:
    # one bright pixel v in the middle of a 5x5 black image: Laplacian -4v at the centre, v at its 4
    # neighbours, 0 elsewhere -> mean 0, variance (16 + 4) v^2 / 25
    img = np.zeros((5, 5, 3), np.uint8)
    img[2, 2] = 100
    assert laplacian_variance(img) == pytest.approx(20 * 100.0**2 / 25)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 30, 3)).astype(np.uint8)
    grey = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    kernel = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float64)
    ref = ndimage.convolve(grey, kernel, mode="mirror")  # mirror = OpenCV's reflect-101
    assert laplacian_variance(rgb) == pytest.approx(ref.var(), rel=1e-9)
    blurred = ndimage.uniform_filter(grey, 5)
    assert laplacian_variance(blurred) < laplacian_variance(grey) / 5


def test_quality_csv_round_trip_is_an_attribute_sidecar(tmp_path: Path) -> None:
    out = write_quality_csv(tmp_path / "q.csv", ["a/x.jpg", "b/y, z.jpg", "c/w.jpg"], [1.5, 2.25, np.nan])
    table, names = read_sidecar(out)
    assert names == ["quality"] and table == {"a/x.jpg": {"quality": 1.5}, "b/y, z.jpg": {"quality": 2.25}}
    attrs = attributes_for([str(tmp_path / "a/x.jpg"), str(tmp_path / "c/w.jpg")], tmp_path, sidecar=out)
    assert attrs.values["quality"][0] == 1.5 and attrs.mask["quality"].tolist() == [
        True,
        False,
    ]  # training's reader
    vals, col = read_quality_csv(out)
    assert col == "quality" and vals == {"a/x.jpg": 1.5, "b/y, z.jpg": 2.25}
    two = tmp_path / "two.tsv"
    two.write_text("path\tage\tscore\na.jpg\t3\t0.5\n")
    with pytest.raises(QualitySourceError, match="COLUMN"):
        read_quality_csv(two)
    assert read_quality_csv(two, "score")[0] == {"a.jpg": 0.5}


def _faces(root: Path) -> list[str]:
    rng = np.random.default_rng(1)
    paths = []
    for person in ("Ann", "Bob"):
        for i in (1, 2):
            p = root / person / f"{person}_{i:04d}.jpg"
            write_image_rgb(p, rng.integers(0, 256, (112, 112, 3)).astype(np.uint8))
            paths.append(str(p))
    return paths


def test_csv_facesize_facebox_random_sources(tmp_path: Path) -> None:
    root = tmp_path / "faces"
    paths = _faces(root)
    csv_file = write_quality_csv(tmp_path / "labels.csv", ["Ann/Ann_0001.jpg", "Bob/Bob_0002.jpg"], [10, 20])
    lmk = tmp_path / "lmk.csv"
    lmk.write_text(
        "file,x1,y1,x2,y2,leye_x,leye_y,reye_x,reye_y\n"
        "Ann/Ann_0001.jpg,0,0,30,120,10,10,13,14\n"  # by relative path: eyes 5 px apart, box sqrt(30*120) = 60
        "Ann_0002.jpg,0,0,10,10,0,0,6,8\n"  # by file name: 10 px, box 10
        "Bob_0001.png,5,5,25,25,0,0,0,20\n"  # by file name without extension: 20 px, box 20
    )
    inputs = QualityInputs(paths=paths, root=root)
    got = {
        s.label: score_images(s, inputs)
        for s in parse_quality_sources(f"csv={csv_file},facesize={lmk},facebox={lmk}")
    }
    c = got[f"csv={csv_file}"]
    assert np.allclose(c.values, [10, np.nan, np.nan, 20], equal_nan=True) and len(c.missing) == 2
    assert "Ann_0002.jpg: not in" in c.missing[0]
    assert np.allclose(got[f"facesize={lmk}"].values, [5, 10, 20, np.nan], equal_nan=True)
    assert np.allclose(got[f"facebox={lmk}"].values, [60, 10, 20, np.nan], equal_nan=True)
    assert got[f"facebox={lmk}"].missing == [f"{paths[3]}: no row in {lmk}"]
    r0 = score_images(parse_quality_sources("random=3")[0], inputs).values
    r1 = score_images(parse_quality_sources("random=3")[0], QualityInputs(paths[::-1], root)).values
    assert np.array_equal(r0, r1[::-1]) and ((r0 >= 0) & (r0 < 1)).all()
    assert not np.array_equal(r0, score_images(parse_quality_sources("random=4")[0], inputs).values)


def test_source_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(QualitySourceError, match="unknown quality source 'blur'"):
        parse_quality_sources("norm,blur")
    with pytest.raises(QualitySourceError, match="needs an argument"):
        parse_quality_sources("csv")
    with pytest.raises(QualitySourceError, match="takes no argument"):
        parse_quality_sources("sharpness=3")
    with pytest.raises(QualitySourceError, match="twice"):
        parse_quality_sources("norm,norm")
    with pytest.raises(FileNotFoundError, match=r"missing\.csv"):
        score_images(
            parse_quality_sources(f"facesize={tmp_path / 'missing.csv'}")[0], QualityInputs([], tmp_path)
        )
    with pytest.raises(QualitySourceError, match="recognition model"):
        score_images(parse_quality_sources("norm")[0], QualityInputs([], tmp_path))


def test_sharpness_skips_bad_images(tmp_path: Path) -> None:
    root = tmp_path / "faces"
    paths = _faces(root)
    bad = root / "Bob" / "Bob_0003.jpg"
    bad.write_bytes(b"not a jpeg")
    got = score_images(parse_quality_sources("sharpness")[0], QualityInputs([*paths, str(bad)], root))
    assert np.isfinite(got.values[:4]).all() and np.isnan(got.values[4])
    (missing,) = got.missing
    assert missing.startswith(f"{bad}: not a decodable image (")  # the name and the decoder's reason


class _GridEmbedder:
    """Deterministic 16-d features: mean grey level of a 4x4 grid (no learning)."""

    embedding_size = 16
    input_size = 112

    def embed(self, faces: np.ndarray) -> np.ndarray:
        x = faces.astype(np.float32).mean(axis=3) / 255.0
        g = x.reshape(len(x), 4, 28, 4, 28).mean(axis=(2, 4)).reshape(len(x), 16)
        return (g - g.mean(axis=1, keepdims=True) + 1e-3).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "fake-grid",
            "version": "1",
            "preprocess": {"alignment": "arcface_112", "colour": "RGB"},
        }


class _OneOutput:
    """A fake quality model: mean brightness / 255 (one value per face)."""

    embedding_size = 1
    input_size = 112

    def embed(self, faces: np.ndarray) -> np.ndarray:
        return faces.reshape(len(faces), -1).mean(1, keepdims=True).astype(np.float32) / 255

    def describe(self) -> dict[str, Any]:
        return {"kind": "fake-quality", "version": "1", "predicts": "brightness"}


class _Recogniser(_OneOutput):
    embedding_size = 8

    def embed(self, faces: np.ndarray) -> np.ndarray:
        return np.ones((len(faces), 8), np.float32)


def test_model_source_takes_a_one_output_embedder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from faceforge.embedders import EMBEDDERS

    monkeypatch.setitem(EMBEDDERS._items, "fake-quality", lambda source=None, **kw: _OneOutput())
    monkeypatch.setitem(EMBEDDERS._items, "fake-recogniser", lambda source=None, **kw: _Recogniser())
    root = tmp_path / "faces"
    paths = _faces(root)
    inputs = QualityInputs(paths, root, embed_options={"cache_dir": tmp_path / "cache"})
    src = parse_quality_sources("model=fake-quality")[0]
    got = score_images(src, inputs)
    want = [read_image_rgb(p).mean() / 255 for p in paths]
    assert np.allclose(got.values, want, atol=1e-6) and got.missing == []
    assert src.settings()["model"]["predicts"] == "brightness"
    with pytest.raises(QualitySourceError, match="gives 8 values per face"):
        score_images(parse_quality_sources("model=fake-recogniser")[0], inputs)


def test_compare_sources_uses_the_same_pairs_for_every_source() -> None:
    rng = np.random.default_rng(2)
    n_img, n_pairs = 60, 400
    ia, ib = rng.integers(0, n_img, n_pairs), rng.integers(0, n_img, n_pairs)
    y = rng.random(n_pairs) < 0.4
    s = np.where(y, rng.normal(0.5, 0.2, n_pairs), rng.normal(0, 0.2, n_pairs))
    qa, qb = rng.random(n_img), rng.random(n_img)
    qb[[3, 7]] = np.nan  # two images without a quality in source b
    res = compare_sources(s, y, ia, ib, {"a": qa, "b": qb}, fmrs=(0.05,))
    keep = ~(np.isin(ia, [3, 7]) | np.isin(ib, [3, 7]))
    assert res["n_pairs_used"] == keep.sum() and res["pairs_left_out"] == (~keep).sum()
    direct = erc(s[keep], y[keep], qa[ia[keep]], qa[ib[keep]], fmrs=(0.05,), mode="fixed")
    assert res["sources"]["a"]["fixed"]["curves"] == direct["curves"]
    assert res["aoc"]["a"]["fixed"]["0.05"] == direct["aoc_normalised"]["0.05"]
    json.dumps(res, allow_nan=False)
    with pytest.raises(ValueError, match="relative to the image folder"):
        compare_sources(s, y, ia, ib, {"a": qa, "none": np.full(n_img, np.nan)})


def test_all_pairs_full_and_sampled() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.array(["a", "a", "a", "b", "b", "c", "d"])
    ia, ib, cos, same, info = all_pairs(x, labels)
    assert ia.size == 21 and info["pairs"] == "all" and same.sum() == 3 + 1
    assert np.allclose(cos, np.sum(x[ia] * x[ib], 1)) and (ia < ib).all()
    ia, ib, cos, same, info = all_pairs(x, labels, max_pairs=10, seed=1)
    assert ia.size == 10 and same[:4].all() and not same[4:].any()  # 4 genuine + 6 sampled impostors
    assert (labels[ia[4:]] != labels[ib[4:]]).all() and "seed 1" in info["pairs"]


def test_quality_kinds_with_several_sources(lfw_small: Path, tmp_path: Path) -> None:
    """``qualityall`` on real aligned LFW faces: norm, sharpness, CSV and random on the same pairs."""
    from faceforge.eval.allpairs import threshold_at_rate
    from faceforge.eval.benchmarks import run_benchmarks

    # 4 identities of lfw_small, 12 images each
    sub = tmp_path / "sub"
    people = sorted(p for p in lfw_small.iterdir() if p.is_dir())[:4]
    files = []
    for p in people:
        for f in sorted(p.glob("*.jpg"))[:12]:
            (sub / p.name).mkdir(parents=True, exist_ok=True)
            (sub / p.name / f.name).write_bytes(f.read_bytes())
            files.append(sub / p.name / f.name)
    keys = [f.relative_to(sub).as_posix() for f in files]
    labels_csv = write_quality_csv(tmp_path / "q.csv", keys, np.arange(len(keys), dtype=float))
    spec = f"qualityall:{sub}:norm,sharpness,csv={labels_csv},random=1,fmr=0.1+0.01"
    res = run_benchmarks(_GridEmbedder(), [spec], tmp_path / "out", flip=False, progress=False)
    rec = res["benchmarks"][f"qualityall:{sub.name}"]
    q = rec["quality"]
    assert set(q["sources"]) == {"norm", "sharpness", f"csv={labels_csv}", "random=1"}
    assert q["n_pairs_used"] == 48 * 47 // 2 and q["n_genuine_used"] == 4 * 66
    # FNMR at reject 0, fixed threshold, by hand from the embeddings
    emb = _GridEmbedder().embed(np.stack([read_image_rgb(f) for f in files]))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ia, ib = np.triu_indices(48, 1)
    cos = np.sum(emb[ia] * emb[ib], 1)
    y = (ia // 12) == (ib // 12)
    thr, _ = threshold_at_rate(cos[~y], 0.1)
    for src in q["sources"].values():
        assert src["fixed"]["curves"]["0.1"]["fnmr"][0] == pytest.approx(np.mean(cos[y] < thr), abs=1e-6)
    # csv quality = file index, so pair quality = min index = ia (already ascending): rejecting 10 % of the
    # 1128 pairs drops the first floor(112.8) = 112
    kept = slice(112, None)
    csv_fixed = q["sources"][f"csv={labels_csv}"]["fixed"]
    assert csv_fixed["curves"]["0.1"]["fnmr"][2] == pytest.approx(np.mean(cos[kept][y[kept]] < thr), abs=1e-6)
    assert rec["settings"]["quality_sources"][f"csv={labels_csv}"]["sha256"]
    assert rec["settings"]["fmrs"] == [0.1, 0.01] and "AOC" in rec["settings"]["aoc"]
    assert Path(rec["plots"]["erc_fixed"]).is_file() and Path(rec["plots"]["erc_recomputed"]).is_file()
    assert "aoc mean [sharpness] (fixed)" in rec["summary"]
    json.dumps(res, allow_nan=False)
