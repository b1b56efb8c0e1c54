"""The command line end to end on real LFW faces: train -> eval -> embed, and clear errors for bad input."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from faceforge.cli.main import main
from tests.eval.plot_checks import assert_drawn_png


@pytest.fixture(scope="module")
def trained(lfw_small: Path, tmp_path_factory: pytest.TempPathFactory, list_file) -> Path:
    run = tmp_path_factory.mktemp("cli_run")
    rc = main(
        [
            "train",
            "lfw_mobilefacenet_arcface",
            f"data.root={lfw_small}",
            f"data.list_file={list_file(lfw_small, run / 'train.txt', per_person=4, people=8)}",
            f"run.dir={run}",
            "data.exclude_pairs=[]",
            "data.preload=false",
            "optim.epochs=1",
            "data.batch_size=16",
            "model.embedding_size=128",
            "run.progress=false",
            "eval.pairs=null",
            "head=cosface",
        ]
    )
    assert rc == 0
    return run / "checkpoints" / "model.pt"


def _pairs_file(root: Path, out: Path) -> Path:
    people = sorted(p.name for p in root.iterdir() if p.is_dir())[:6]
    lines = ["10"]
    for name in people[:5]:
        lines += [f"{name}\t1\t2", f"{name}\t3\t4"]
    for a, b in itertools.pairwise(people):
        lines += [f"{a}\t1\t{b}\t1", f"{a}\t2\t{b}\t3"]
    out.write_text("\n".join(lines) + "\n")
    return out


def test_eval_writes_json_with_settings_and_plots(
    trained: Path, lfw_small: Path, tmp_path: Path, capsys
) -> None:
    pairs = _pairs_file(lfw_small, tmp_path / "pairs.txt")
    out = tmp_path / "res" / "result.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(trained),
                "--pairs",
                str(pairs),
                "--images",
                str(lfw_small),
                "--json",
                str(out),
                "--folds",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "insightface-10fold" in printed
    res = json.loads(out.read_text())
    assert res["verification"]["n_folds"] == 2
    # the printed accuracy is the recorded one
    assert f"accuracy {res['verification']['accuracy_mean'] * 100:.2f}" in printed
    s = res["settings"]
    assert s["flip"].startswith("sum") and s["alignment"] == "arcface_112" and s["colour"] == "RGB"
    assert s["threshold_grid"]["step"] == pytest.approx(0.01)
    assert len(res["model"]["sha256"]) == 64 and len(res["benchmark"]["pairs_sha256"]) == 64
    assert set(res["roc"]["tar_at_far"]) == {"nearest", "conservative"}
    assert_drawn_png(res["plots"]["roc"])


def test_embed_writes_normalised_embeddings(trained: Path, lfw_small: Path, tmp_path: Path) -> None:
    person = sorted(p for p in lfw_small.iterdir() if p.is_dir())[0]
    (person / "zz_broken.jpg").write_bytes(b"garbage")
    try:
        out = tmp_path / "emb.npz"
        assert (
            main(
                [
                    "embed",
                    "--model",
                    str(trained),
                    "--images",
                    str(person),
                    "--out",
                    str(out),
                    "--no-progress",
                ]
            )
            == 0
        )
    finally:
        (person / "zz_broken.jpg").unlink()
    z = np.load(out)
    emb, names = z["embeddings"], z["names"]
    assert emb.dtype == np.float32 and emb.shape == (len(list(person.glob("*.jpg"))), 128)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert "zz_broken.jpg" not in set(names.tolist())
    assert "zz_broken.jpg" in json.loads(str(z["meta"]))["skipped"][0]


def test_clear_errors(tmp_path: Path, capsys, lfw_small: Path) -> None:
    fake = tmp_path / "model.pt"
    fake.write_text("not a checkpoint")
    assert main(["eval", "--model", str(fake), "--pairs", "x", "--images", "y"]) == 2
    err = capsys.readouterr().err
    assert f"{fake} could not be read as a faceforge checkpoint" in err and "Traceback" not in err
    assert main(["train", "lfw_mobilefacenet_arcface", "data.root=/x", "optim.lrr=1"]) == 2
    assert "lrr" in capsys.readouterr().err
    assert main(["train", "lfw_mobilefacenet_arcface", f"data.root={tmp_path / 'none'}"]) == 2
    assert "image folder not found" in capsys.readouterr().err
