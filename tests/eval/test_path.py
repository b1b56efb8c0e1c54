"""One evaluation path on real aligned LFW faces: ``faceforge embed`` writes the embeddings ``faceforge eval``
scores (same flip, normalisation and cache), and :func:`evaluate_checkpoint` (the training hook) gives the
numbers of the pairs protocol computed by hand from those embeddings, without touching the cache.

The model is a small untrained MobileFaceNet whose BatchNorm statistics are set from real faces (forward
passes in train mode, no gradient step), so its embeddings differ from face to face and mirror to mirror.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from faceforge.cli.main import main
from faceforge.core.checkpoint import FORMAT, VERSION, atomic_torch_save
from faceforge.data.image_io import read_image_rgb
from faceforge.data.preprocess import Preprocess
from faceforge.embedders.cache import EmbeddingStore, embedding_settings, model_key, settings_key, sha1_bytes
from faceforge.embedders.checkpoint import CheckpointEmbedder
from faceforge.eval.allpairs import allpairs_verification
from faceforge.eval.benchmarks import evaluate_checkpoint, lfw_spec, run_benchmarks
from faceforge.eval.roc import summarize_verification
from faceforge.eval.verification import kfold_accuracy
from faceforge.models.backbones import build_backbone

BACKBONE = {"name": "mobilefacenet", "kwargs": {"embedding_size": 32, "scale": 1}}


def _subset(root: Path, out: Path, people: int = 4, per_person: int = 5) -> Path:
    """The first ``per_person`` images of the first ``people`` identities of ``root`` (symlinks)."""
    for person in sorted(p for p in root.iterdir() if p.is_dir())[:people]:
        (out / person.name).mkdir(parents=True)
        for f in sorted(person.glob("*.jpg"))[:per_person]:
            (out / person.name / f.name).symlink_to(f)
    return out


@pytest.fixture(scope="module")
def faces_dir(lfw_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _subset(lfw_small, tmp_path_factory.mktemp("eval_path") / "faces")


@pytest.fixture(scope="module")
def checkpoint(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_backbone(BACKBONE["name"], **BACKBONE["kwargs"])
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    pre = Preprocess()
    faces = np.stack([read_image_rgb(f) for f in sorted(faces_dir.rglob("*.jpg"))])
    with torch.no_grad():
        model(pre(torch.from_numpy(faces)))
    model.eval()
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "meta": {"backbone": BACKBONE, "embedding_size": 32, "preprocess": pre.to_dict()},
        "backbone": model.state_dict(),
    }
    return atomic_torch_save(ckpt, tmp_path_factory.mktemp("eval_path_model") / "model.pt")


def _by_hand(ckpt: Path, files: list[Path], flip: bool) -> np.ndarray:
    """``e = f(x) + f(mirror x)`` (or ``f(x)``), then ``e / ||e||``: the documented embedding of eval."""
    emb = CheckpointEmbedder(ckpt, device="cpu")
    x = np.stack([read_image_rgb(f) for f in files])
    e = emb.embed(x).astype(np.float64)
    if flip:
        e = e + emb.embed(np.ascontiguousarray(x[:, :, ::-1])).astype(np.float64)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _load_npz(path: Path) -> tuple[np.ndarray, list[str], dict]:
    with np.load(path, allow_pickle=False) as z:
        return z["embeddings"], z["names"].tolist(), json.loads(str(z["meta"]))


@pytest.mark.parametrize("flip", [True, False])
def test_embed_writes_the_embeddings_eval_scores(
    checkpoint: Path, faces_dir: Path, tmp_path: Path, capsys, flip: bool
) -> None:
    cache = tmp_path / "cache"
    flag = [] if flip else ["--no-flip"]
    out_eval = tmp_path / "eval"
    argv = [
        "eval",
        "--model",
        str(checkpoint),
        "--benchmark",
        f"allpairs:{faces_dir}",
        "--out-dir",
        str(out_eval),
    ]
    assert main([*argv, "--cache-dir", str(cache), "--no-progress", "--device", "cpu", *flag]) == 0
    result = json.loads((out_eval / "result.json").read_text())

    # embed, without the cache: the rows equal the raw embeddings eval stored in its cache, normalised
    out = tmp_path / "emb.npz"
    argv = ["embed", "--model", str(checkpoint), "--images", str(faces_dir), "--out", str(out)]
    assert main([*argv, "--no-cache", "--no-progress", "--device", "cpu", *flag]) == 0
    emb, names, meta = _load_npz(out)
    files = sorted(faces_dir.rglob("*.jpg"))
    assert names == [f.relative_to(faces_dir).as_posix() for f in files] and emb.shape == (20, 32)
    embedder = CheckpointEmbedder(checkpoint, device="cpu")
    store = EmbeddingStore(
        cache / model_key(embedder.describe()) / f"{settings_key(embedding_settings(embedder, flip))}.npz", 32
    )
    assert len(store) == 20
    raw = np.stack([store.get(sha1_bytes(f.read_bytes())) for f in files])
    np.testing.assert_array_equal(emb, raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12))
    np.testing.assert_allclose(emb, _by_hand(checkpoint, files, flip), atol=2e-6)
    # the settings that change the numbers are those of the eval result
    assert meta["settings"] == {k: result["settings"][k] for k in ("flip", "normalisation", "precision")} | {
        "cache_dir": None
    }
    assert (
        meta["flip"] is flip
        and meta["skipped"] == []
        and meta["model"]["sha256"] == result["model"]["sha256"]
    )
    # and eval's all-pairs numbers follow from these embeddings
    labels = [n.split("/")[0] for n in names]
    rec = result["benchmarks"]["allpairs:faces"]["summary"]
    by_npz = allpairs_verification(emb, labels, mode="exact")
    assert by_npz["auc"] == pytest.approx(rec["auc"], abs=1e-12) and by_npz["eer"] == pytest.approx(
        rec["eer"]
    )
    # embed through eval's cache: nothing is embedded again, the same file comes out
    out2 = tmp_path / "emb_cached.npz"
    argv = ["embed", "--model", str(checkpoint), "--images", str(faces_dir), "--out", str(out2)]
    assert main([*argv, "--cache-dir", str(cache), "--no-progress", "--device", "cpu", *flag]) == 0
    assert "20 from cache" in capsys.readouterr().out
    emb2, _, meta2 = _load_npz(out2)
    np.testing.assert_array_equal(emb2, emb)
    assert meta2["settings"]["cache_dir"] == str(cache)


def test_flip_is_the_default_and_changes_the_embeddings(
    checkpoint: Path, faces_dir: Path, tmp_path: Path
) -> None:
    runs = {"default": [], "flip": ["--flip"], "no-flip": ["--no-flip"]}
    got = {}
    for name, flag in runs.items():
        out = tmp_path / f"{name}.npz"
        argv = ["embed", "--model", str(checkpoint), "--images", str(faces_dir), "--out", str(out)]
        assert main([*argv, "--no-cache", "--no-progress", "--device", "cpu", *flag]) == 0
        got[name] = _load_npz(out)
    np.testing.assert_array_equal(got["default"][0], got["flip"][0])
    assert got["default"][2]["settings"]["flip"].startswith("sum of original")
    assert got["no-flip"][2]["settings"]["flip"] == "none" and got["no-flip"][2]["flip"] is False
    # a mirrored face is a different input for this network: the flip sum is not the plain embedding
    assert np.abs(got["default"][0] - got["no-flip"][0]).max() > 1e-3
    with pytest.raises(SystemExit):  # both at once is a usage error
        main(
            [
                "embed",
                "--model",
                str(checkpoint),
                "--images",
                str(faces_dir),
                "--out",
                "x",
                "--flip",
                "--no-flip",
            ]
        )


def test_embed_out_path_list_file_model_option_and_bad_images(
    checkpoint: Path, faces_dir: Path, tmp_path: Path, capsys
) -> None:
    files = sorted(faces_dir.rglob("*.jpg"))
    bad = tmp_path / "list" / "broken.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"not a jpeg")
    listing = tmp_path / "list" / "faces.txt"
    lines = [
        "# two faces, a broken file and one face twice",
        str(files[3]),
        "broken.jpg 7",
        "",
        str(files[0]),
    ]
    listing.write_text("\n".join([*lines, str(files[3])]) + "\n")
    out = tmp_path / "out" / "emb"  # no suffix: the file written is emb.npz, and that is what is printed
    argv = ["embed", "--model", str(checkpoint), "--images", str(listing), "--out", str(out)]
    # --model-option may not repeat --precision/--device/--batch-size (issue 30): one line says which flag
    assert main([*argv, "--no-cache", "--no-progress", "--model-option", "precision=fp32"]) == 2
    assert "give it as --precision instead" in capsys.readouterr().err
    assert main([*argv, "--no-cache", "--no-progress", "--device", "cpu", "--precision", "fp32"]) == 0
    printed = capsys.readouterr().out
    real = out.with_name("emb.npz")
    assert f"to {real} " in printed and not out.exists() and real.is_file()
    assert "skipped 1 unreadable" in printed and "broken.jpg" in printed
    emb, names, meta = _load_npz(real)
    assert names == [str(files[3]), str(files[0]), str(files[3])]  # list order, absolute paths kept
    np.testing.assert_allclose(emb, _by_hand(checkpoint, [files[3], files[0], files[3]], True), atol=2e-6)
    assert len(meta["skipped"]) == 1 and "broken.jpg" in meta["skipped"][0] and meta["n_images"] == 4
    assert meta["model"]["precision"] == "fp32"

    listing.write_text("missing.jpg\n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "line 1" in err and "missing.jpg" in err and "do not exist" in err
    assert (
        main(["embed", "--model", str(checkpoint), "--images", str(tmp_path / "nowhere"), "--out", "x"]) == 2
    )
    assert "no folder or list file at" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["embed", "--model", str(checkpoint), "--images", str(tmp_path / "empty"), "--out", "x"]) == 2
    assert "no image files below" in capsys.readouterr().err


def _ring_pairs(root: Path, out: Path) -> tuple[Path, list[Path], list[Path], np.ndarray]:
    """Two sets (one per fold): images 1-2 (set 1) or 3-4 (set 2) of each person, matched, then image 1
    (set 1) or 2 (set 2) of each person against image 3 or 4 of the next person, mismatched."""
    people = sorted(p.name for p in root.iterdir() if p.is_dir())
    rows = []
    for s in (0, 1):
        rows += [(p, 1 + 2 * s, p, 2 + 2 * s) for p in people]
        rows += [(a, 1 + s, b, 3 + s) for a, b in itertools.pairwise([*people, people[0]])]
    lines = ["2 4"] + [f"{a}\t{i}\t{j}" if a == b else f"{a}\t{i}\t{b}\t{j}" for a, i, b, j in rows]
    out.write_text("\n".join(lines) + "\n")
    p1 = [root / a / f"{a}_{i:04d}.jpg" for a, i, _, _ in rows]
    p2 = [root / b / f"{b}_{j:04d}.jpg" for _, _, b, j in rows]
    return out, p1, p2, np.array([a == b for a, _, b, _ in rows])


def test_evaluate_checkpoint_is_the_pairs_protocol_without_cache(
    checkpoint: Path, faces_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    pairs, p1, p2, issame = _ring_pairs(faces_dir, tmp_path / "pairs.txt")
    assert all(p.is_file() for p in p1 + p2) and issame.sum() == 8 and (~issame).sum() == 8
    monkeypatch.setenv("FACEFORGE_CACHE", str(tmp_path / "user_cache"))
    res = evaluate_checkpoint(
        checkpoint,
        [lfw_spec(pairs, faces_dir), f"allpairs:{faces_dir}"],
        tmp_path / "eval",
        flip=True,
        batch_size=7,  # chunks and forward passes of 7 faces: the numbers do not depend on it
        device="cpu",
        progress=False,
        n_folds=2,
    )
    assert list(res.summaries) == ["lfw:pairs", "allpairs:faces"]
    assert res.summaries["lfw:pairs"] == res.record["benchmarks"]["lfw:pairs"]["summary"]
    assert not (tmp_path / "user_cache").exists() and res.record["settings"]["cache_dir"] is None
    assert res.record["embedding"] == {
        **res.record["embedding"],
        "images_embedded": 20,
        "images_from_cache": 0,
    }
    # by hand: flip-summed, normalised embeddings -> squared L2 distances -> 2-fold accuracy; cosine ROC
    e1, e2 = _by_hand(checkpoint, p1, True), _by_hand(checkpoint, p2, True)
    kfold = kfold_accuracy(np.sum((e1 - e2) ** 2, axis=1), issame, n_folds=2)
    roc = summarize_verification(np.sum(e1 * e2, axis=1), issame)
    v = res.record["verification"]  # the first benchmark stands at the top level, as evaluate_pairs had it
    assert v["accuracy_mean"] == pytest.approx(kfold.mean, abs=1e-12) and v["n_folds"] == 2
    assert v["pairs_with_unreadable_image"] == 0 and res.record["benchmark"]["unreadable_images"] == []
    assert res.record["roc"]["auc"] == pytest.approx(roc["auc"]) and res.record["roc"][
        "eer"
    ] == pytest.approx(roc["eer"])
    assert res.summaries["lfw:pairs"]["accuracy"] == v["accuracy_mean"]
    assert Path(res.record["plots"]["roc"]).is_file()
    saved = json.loads((tmp_path / "eval" / "result.json").read_text())
    assert saved["benchmarks"]["lfw:pairs"]["summary"] == res.summaries["lfw:pairs"]
    # the pairs alone through run_benchmarks: the same numbers (chunks now hold other faces, which moves
    # the last bits of some embeddings: scores agree to float32 precision, not bit for bit)
    again = run_benchmarks(
        CheckpointEmbedder(checkpoint, device="cpu", batch_size=7), [lfw_spec(pairs, faces_dir)], None,
        n_folds=2, batch_size=7, progress=False,
    )  # fmt: skip
    assert again["verification"]["accuracy_mean"] == v["accuracy_mean"]
    for key in ("auc", "eer", "eer_threshold"):
        assert again["roc"][key] == pytest.approx(res.record["roc"][key], abs=1e-6)


def test_lfw_spec_keeps_colons_in_paths(tmp_path: Path) -> None:
    spec = lfw_spec(tmp_path / "a:b" / "pairs.txt", tmp_path / "c:d")
    assert (
        spec.paths == (str(tmp_path / "a:b" / "pairs.txt"), str(tmp_path / "c:d"))
        and spec.name == "lfw:pairs"
    )
