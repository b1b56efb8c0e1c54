"""Benchmark specs, the embedding cache, multi-benchmark runs and the HTML report, with a fake embedder."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from faceforge.cli.main import main
from faceforge.data.binset import write_bin
from faceforge.embedders.cache import cached_embed_paths, model_key
from faceforge.eval.benchmarks import BenchmarkSpecError, parse_benchmark_spec, run_benchmarks
from faceforge.eval.report_html import write_html_report
from tests.eval.plot_checks import assert_drawn_png


class ColourEmbedder:
    """Deterministic 16-d features: mean RGB of a 4x4 grid region set (no learning), counts its calls."""

    embedding_size = 16
    input_size = 112

    def __init__(self) -> None:
        self.calls = 0
        self.images = 0

    def embed(self, faces: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.images += len(faces)
        x = faces.astype(np.float32) / 255.0
        n = len(x)
        grey = x.mean(axis=3).reshape(n, 4, 28, 4, 28).mean(axis=(2, 4)).reshape(n, 16)
        return (grey - grey.mean(axis=1, keepdims=True) + 1e-3).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "fake-colour",
            "version": "1",
            "preprocess": {"alignment": "arcface_112", "colour": "RGB"},
        }


def _ring_pairs(root: Path, out: Path, n: int) -> tuple[Path, list[str]]:
    """An LFW pairs file over the first ``n`` people of ``root``: image 1 vs 2 of each person (matched),
    then each person's image 1 vs the next person's image 2 (mismatched, wrapping round)."""
    people = sorted(p.name for p in root.iterdir() if p.is_dir())[:n]
    lines = [str(n)]
    lines += [f"{p}\t1\t2" for p in people]
    lines += [f"{a}\t1\t{b}\t2" for a, b in itertools.pairwise([*people, people[0]])]
    out.write_text("\n".join(lines) + "\n")
    return out, people


def _face(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (112, 112, 3), dtype=np.uint8)


def _write(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return path


# ---------------------------------------------------------------------------------------------
# specs
# ---------------------------------------------------------------------------------------------
def test_spec_parsing() -> None:
    s = parse_benchmark_spec("lfw:a/pairs.txt:b/images")
    assert (s.kind, s.paths, s.name) == ("lfw", ("a/pairs.txt", "b/images"), "lfw:pairs")
    assert parse_benchmark_spec("bin:x/agedb_30.bin").name == "bin:agedb_30"
    a = parse_benchmark_spec("allpairs:data/faces:3")
    assert (a.paths, a.min_images) == (("data/faces",), 3)
    assert parse_benchmark_spec("allpairs:data/faces").min_images == 1
    i = parse_benchmark_spec("ident:data/faces:2:5")
    assert (i.paths, i.k, i.min_images) == (("data/faces",), 2, 5)
    assert parse_benchmark_spec("ident:data/faces").k == 1


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("nope:x", "unknown kind"),
        ("lfw:pairs.txt", "lfw:PAIRS:IMAGES"),
        ("bin:", "missing arguments"),
        ("ident:faces:0", ">= 1"),
        ("allpairs", "missing arguments"),
    ],
)
def test_spec_errors_are_clear(spec: str, words: str) -> None:
    with pytest.raises(BenchmarkSpecError, match="accepted: lfw:PAIRS:IMAGES") as err:
        parse_benchmark_spec(spec)
    assert words in str(err.value) and repr(spec) in str(err.value)


def test_missing_data_fails_before_embedding(tmp_path: Path) -> None:
    emb = ColourEmbedder()
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        run_benchmarks(emb, ["allpairs:" + str(tmp_path / "nowhere")], tmp_path / "out")
    assert emb.calls == 0


# ---------------------------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------------------------
def test_cache_reuses_and_invalidates(tmp_path: Path) -> None:
    paths = [_write(tmp_path / "img" / f"{i}.png", _face(i)) for i in range(5)]
    cache = tmp_path / "cache"
    emb = ColourEmbedder()
    first, failed = cached_embed_paths(emb, paths, flip=True, cache_dir=cache, progress=False)
    assert not failed and first.shape == (5, 16) and emb.images == 10  # original + flipped
    again, _ = cached_embed_paths(emb, paths, flip=True, cache_dir=cache, progress=False)
    assert emb.images == 10 and np.array_equal(first, again)  # nothing embedded the second time

    _write(paths[2], _face(99))  # changed content -> re-embedded, the rest from the cache
    stats: dict[str, int] = {}
    changed, _ = cached_embed_paths(emb, paths, flip=True, cache_dir=cache, progress=False, stats=stats)
    assert stats == {"cached": 4, "computed": 1} and emb.images == 12
    assert not np.allclose(changed[2], first[2]) and np.allclose(changed[[0, 1, 3, 4]], first[[0, 1, 3, 4]])

    cached_embed_paths(emb, paths, flip=False, cache_dir=cache, progress=False)  # other settings entry
    assert emb.images == 17
    stores = sorted(p.name for p in (cache / model_key(emb.describe())).glob("*.npz"))
    assert (
        len(stores) == 2
        and stores[0].startswith("flip0_112px_RGB")
        and stores[1].startswith("flip1_112px_RGB")
    )


def test_cache_marks_unreadable_files(tmp_path: Path) -> None:
    good = _write(tmp_path / "a.png", _face(1))
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"not an image")
    out, failed = cached_embed_paths(ColourEmbedder(), [good, bad], cache_dir=tmp_path / "c", progress=False)
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all() and len(failed) == 1 and "b.jpg" in failed[0]


# ---------------------------------------------------------------------------------------------
# runs on real aligned LFW faces
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_bin(lfw_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    people = sorted(p for p in lfw_small.iterdir() if p.is_dir())[:4]
    imgs: list[bytes] = []
    same: list[bool] = []
    files = {p.name: sorted(p.glob("*.jpg")) for p in people}
    for p in people:  # 2 matched pairs per person
        f = files[p.name]
        for a, b in ((0, 1), (2, 3)):
            imgs += [f[a].read_bytes(), f[b].read_bytes()]
            same.append(True)
    for (a, b), j in itertools.product(itertools.pairwise(people), range(2)):  # mismatched pairs
        imgs += [files[a.name][j].read_bytes(), files[b.name][j + 1].read_bytes()]
        same.append(False)
    out = tmp_path_factory.mktemp("bin") / "tiny.bin"
    write_bin(out, imgs, same)
    return out


def test_run_benchmarks_structure_cache_and_html(lfw_small: Path, small_bin: Path, tmp_path: Path) -> None:
    emb = ColourEmbedder()
    specs = [f"allpairs:{lfw_small}", f"ident:{lfw_small}:2", f"bin:{small_bin}"]
    cache = tmp_path / "cache"
    res = run_benchmarks(emb, specs, tmp_path / "run1", cache_dir=cache, n_folds=2, progress=False)
    n_files = sum(1 for _ in lfw_small.rglob("*.jpg"))
    n_bin = 2 * res["benchmarks"]["bin:tiny"]["benchmark"]["n_pairs"]
    # one embedding pass: allpairs and ident share the folder
    assert res["embedding"]["images_embedded"] == n_files + n_bin and emb.images == 2 * (n_files + n_bin)
    saved = json.loads((tmp_path / "run1" / "result.json").read_text())
    assert saved["format"] == "faceforge-eval/1" and list(saved["benchmarks"]) == [
        f"allpairs:{lfw_small.name}",
        f"ident:{lfw_small.name}",
        "bin:tiny",
    ]

    ap = saved["benchmarks"][f"allpairs:{lfw_small.name}"]
    assert ap["allpairs"]["n_images"] == n_files and set(ap["allpairs"]["tar_at_far"]) == {
        "nearest",
        "conservative",
    }
    assert set(ap["allpairs"]["tar_at_far"]["conservative"]) == {"1e-05", "0.0001", "0.001", "0.01", "0.1"}
    assert len(ap["benchmark"]["images_sha256"]) == 64 and ap["model"]["kind"] == "fake-colour"
    for key in ("protocol", "flip", "normalisation", "threshold_rule"):
        assert key in ap["settings"]
    assert 0.5 < ap["summary"]["auc"] <= 1.0  # even colour statistics beat chance on real faces

    idr = saved["benchmarks"][f"ident:{lfw_small.name}"]
    rank = idr["identification"]["closed_set"]["rank_k"]
    assert set(rank) == {"1", "5", "10"} and rank["1"] <= rank["5"] <= rank["10"] <= 1.0
    assert idr["split"]["k"] == 2 and idr["split"]["n_gallery"] == 2 * idr["benchmark"]["n_identities"]
    assert rank["1"] > 1.0 / idr["benchmark"]["n_identities"]
    assert {"protocol", "gallery", "threshold_rule", "flip"} <= set(idr["settings"])

    bn = saved["benchmarks"]["bin:tiny"]
    assert bn["verification"]["n_folds"] == 2 and len(bn["benchmark"]["bin_sha256"]) == 64
    assert bn["settings"]["protocol"] == "insightface-10fold" and "threshold_grid" in bn["settings"]
    for rec in saved["benchmarks"].values():
        for p in rec["plots"].values():
            assert_drawn_png(p)
    assert set(idr["plots"]) == {"cmc", "scores"} and set(ap["plots"]) == {"roc", "scores"}
    # the ROC behind each ROC plot, bounded, for eval --compare's overlay; none where there is no ROC
    for rec in (ap, bn):
        pts = rec["curves"]["roc"]
        assert 2 <= len(pts["fpr"]) == len(pts["tpr"]) <= 200 and pts["fpr"] == sorted(pts["fpr"])
    assert "curves" not in idr and "curves" not in saved  # not mirrored at the top level

    # second run: everything from the cache, same numbers
    res2 = run_benchmarks(emb, specs, tmp_path / "run2", cache_dir=cache, n_folds=2, progress=False)
    assert (
        res2["embedding"]["images_embedded"] == 0
        and res2["embedding"]["images_from_cache"] == n_files + n_bin
    )
    assert emb.images == 2 * (n_files + n_bin)
    assert res2["benchmarks"]["bin:tiny"]["summary"] == saved["benchmarks"]["bin:tiny"]["summary"]

    page = write_html_report([saved, res2], tmp_path / "report.html")
    text = page.read_text()
    for name in saved["benchmarks"]:
        assert name in text
    assert text.count("data:image/png;base64,") >= 12 and "threshold_rule" in text


def test_cli_benchmarks_html_and_compare(lfw_small: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from faceforge.embedders.base import EMBEDDERS

    # registered for this test only
    monkeypatch.setitem(EMBEDDERS._items, "fake-colour", lambda source=None, **kw: ColourEmbedder())
    pairs, _ = _ring_pairs(lfw_small, tmp_path / "pairs.txt", 4)
    monkeypatch.setenv("FACEFORGE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "cli"
    argv = ["eval", "--model", "fake-colour", "--pairs", str(pairs), "--images", str(lfw_small)]
    argv += [
        "--benchmark",
        f"ident:{lfw_small}:1:3",
        "--out-dir",
        str(out),
        "--folds",
        "2",
        "--no-progress",
        "--html",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "insightface-10fold" in printed and "rank-1" in printed
    res = json.loads((out / "result.json").read_text())
    assert list(res["benchmarks"]) == ["lfw:pairs", f"ident:{lfw_small.name}"]
    # the first benchmark is mirrored at the top level, as single-benchmark result files had it
    assert res["verification"]["n_folds"] == 2 and len(res["benchmark"]["pairs_sha256"]) == 64
    assert res["settings"]["alignment"] == "arcface_112" and (out / "report.html").is_file()
    assert any((tmp_path / "cache").rglob("*.npz"))

    html_out = tmp_path / "cmp.html"
    assert (
        main(
            ["eval", "--compare", str(out / "result.json"), str(out / "result.json"), "--html", str(html_out)]
        )
        == 0
    )
    text = html_out.read_text()
    assert "lfw:pairs" in text and f"ident:{lfw_small.name}" in text and "#2 fake-colour" in text

    assert main(["eval", "--model", "fake-colour", "--benchmark", "bogus:x"]) == 2
    assert "unknown kind" in capsys.readouterr().err


def test_quality_benchmark_uses_embedding_norms(lfw_small: Path, tmp_path: Path) -> None:
    from faceforge.eval.allpairs import threshold_at_rate

    pairs, people = _ring_pairs(lfw_small, tmp_path / "pairs.txt", 6)
    emb = ColourEmbedder()
    # the old spec (no sources) still means the embedding norm; fmr=0.1 because 6 impostor pairs resolve no less
    res = run_benchmarks(
        emb, [f"quality:{pairs}:{lfw_small}:fmr=0.1"], tmp_path / "out", flip=False, progress=False
    )
    rec = res["benchmarks"]["quality:pairs"]
    assert (
        rec["settings"]["quality_sources"]["norm"]["definition"].startswith("L2 norm")
        and rec["settings"]["pair_quality"] == "min of the two images"
    )
    fixed, recomputed = (
        rec["quality"]["sources"]["norm"]["fixed"],
        rec["quality"]["sources"]["norm"]["recomputed"],
    )
    # by hand: cosine scores and min-norm pair qualities from the same (unflipped) embeddings
    p1 = [lfw_small / n / f"{n}_0001.jpg" for n in people] + [lfw_small / a / f"{a}_0001.jpg" for a in people]
    p2 = [lfw_small / n / f"{n}_0002.jpg" for n in people] + [
        lfw_small / b / f"{b}_0002.jpg" for b in [*people[1:], people[0]]
    ]
    from faceforge.data.image_io import read_image_rgb

    r1 = ColourEmbedder().embed(np.stack([read_image_rgb(p) for p in p1])).astype(np.float64)
    r2 = ColourEmbedder().embed(np.stack([read_image_rgb(p) for p in p2])).astype(np.float64)
    n1, n2 = np.linalg.norm(r1, axis=1), np.linalg.norm(r2, axis=1)
    cos = np.sum(r1 / n1[:, None] * r2 / n2[:, None], axis=1)
    y = np.array([True] * 6 + [False] * 6)
    thr, _ = threshold_at_rate(cos[~y], 0.1)
    assert fixed["curves"]["0.1"]["fnmr"][0] == pytest.approx(np.mean(cos[y] < thr))
    # rejecting 15 % of the 12 pairs drops floor(1.8) = 1 pair, the lowest min-norm one; threshold kept
    i = fixed["reject_fractions"].index(0.15)
    keep = np.argsort(np.minimum(n1, n2), kind="stable")[1:]
    gen = cos[keep][y[keep]]
    assert fixed["curves"]["0.1"]["fnmr"][i] == pytest.approx(np.mean(gen < thr))
    assert recomputed["curves"]["0.1"]["fnmr"][0] == fixed["curves"]["0.1"]["fnmr"][0]
    assert Path(rec["plots"]["erc_fixed"]).is_file()
    assert "aoc@fmr=0.1 [norm]" in rec["summary"] and "aoc mean [norm] (recomputed)" in rec["summary"]
