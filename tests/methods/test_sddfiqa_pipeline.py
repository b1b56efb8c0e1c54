"""SDD-FIQA end to end on a few real LFW identities, through the command line: a recogniser, its pseudo-labels
(``faceforge quality-labels``), the quality regressor trained through ``faceforge train lfw_sddfiqa`` (encoder
initialised from the recogniser with run.init_partial), and ``faceforge quality --model`` scoring the faces,
with a broken file skipped and listed. The numbers that can fail: the loss falls, and the regressor's scores on
its training images correlate with the pseudo-labels it was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from faceforge.cli.main import main
from faceforge.core.checkpoint import load_checkpoint
from faceforge.data.attributes import read_sidecar
from faceforge.models.backbones.quality import QUALITY_PREDICTS

PEOPLE = ["Al_Gore", "Al_Sharpton", "Ali_Naimi", "Amelia_Vega", "Ana_Guevara"]  # 7-8 images each
COMMON = ["data.exclude_pairs=[]", "data.preload=false", "data.num_workers=0"]
COMMON += ["run.precision=fp32", "run.threads=2", "run.progress=false", "run.log_every=1"]


@pytest.fixture(scope="module")
def faces(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from faceforge.data.align_folder import align_folder

    src = data_dir / "lfw" / "images"
    out = tmp_path_factory.mktemp("sddfiqa_faces")
    files = [f for p in PEOPLE for f in sorted((src / p).glob("*.jpg"))]
    lmk = data_dir / "lfw" / "landmarks_mtcnn_5pts_250px.csv"
    align_folder(src, lmk, out, landmark_offset=(-48, -48), images=files, progress=False)
    return out


def test_pseudo_labels_regressor_and_quality_scores(faces: Path, tmp_path: Path, capsys) -> None:
    n_faces = len(list(faces.rglob("*.jpg")))
    # 1. a recogniser with the regressor's encoder (MobileFaceNet, paper widths): the demo recipe, one epoch
    rec = tmp_path / "rec"
    argv = ["train", "lfw_mobilefacenet_arcface", f"data.root={faces}", *COMMON, "model.embedding_size=32"]
    argv += ["data.batch_size=8"]
    assert main([*argv, "optim.epochs=1", "eval.pairs=null", f"run.dir={rec}"]) == 0
    rec_model = rec / "checkpoints" / "model.pt"
    assert load_checkpoint(rec_model)["meta"]["predicts"].startswith("identity embedding")

    # 2. its SDD-FIQA pseudo-labels
    labels = tmp_path / "labels.csv"
    argv = ["quality-labels", "--model", str(rec_model), "--images", str(faces), "--out", str(labels)]
    assert main([*argv, "--m", "6", "--rounds", "4", "--no-progress"]) == 0
    table, _ = read_sidecar(labels)
    assert len(table) == n_faces

    # 3. the regressor through faceforge train: the recipe's lr 1e-4, batches of 4, 10 epochs (90 steps). With a
    # higher lr (3e-4 for 45 steps, measured) the encoder drifts faster than BatchNorm's running statistics
    # follow and the eval-mode scores collapse to one value (std 0.35 against the labels' 18)
    run = tmp_path / "sdd"
    argv = [
        "train",
        "lfw_sddfiqa",
        f"data.root={faces}",
        f"data.attributes={labels}",
        f"run.init={rec_model}",
    ]
    argv += [*COMMON, "data.batch_size=4", "optim.epochs=10", "optim.milestones=[8]", "optim.lr=1e-4"]
    assert main([*argv, f"run.dir={run}"]) == 0
    report = json.loads((run / "report.json").read_text())
    hist = [h["quality"] for h in report["history"]]
    assert len(hist) == 10 * (n_faces // 4) and all(h["quality/used"] == 4 for h in report["history"])
    assert np.mean(hist[-9:]) < 0.5 * np.mean(hist[:2])  # the loss falls (it starts near the label mean)
    ckpt = load_checkpoint(run / "checkpoints" / "model.pt")
    meta = ckpt["meta"]
    assert meta["predicts"] == QUALITY_PREDICTS and meta["embedding_size"] == 1 and meta["head"] is None
    assert meta["init"]["partial"] and meta["init"]["path"] == str(rec_model)
    assert meta["init"]["new"] == ["quality.prelu.weight", "quality.linear.weight", "quality.linear.bias"]
    assert meta["objectives"]["quality"]["labels"]["rows_with_label"] == n_faces
    assert meta["objectives"]["quality"]["loss"] == "smooth_l1"

    # 4. faceforge quality --model: one score per readable face; the broken file is skipped and listed
    (faces / "Al_Gore" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    scores = tmp_path / "scores.csv"
    capsys.readouterr()
    argv = ["quality", "--model", str(run / "checkpoints" / "model.pt"), "--images", str(faces)]
    assert main([*argv, "--out", str(scores), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Al_Gore/broken.jpg" in printed and f"predicts: {QUALITY_PREDICTS}" in printed
    q_report = json.loads((tmp_path / "scores_report.json").read_text())
    assert len(q_report["skipped"]) == 1 and "broken.jpg" in q_report["skipped"][0]
    assert q_report["predicts"] == QUALITY_PREDICTS and q_report["n_scored"] == n_faces
    pred, _ = read_sidecar(scores)
    keys = sorted(table)
    lab, got = np.array([table[k]["quality"] for k in keys]), np.array([pred[k]["quality"] for k in keys])
    rho = spearmanr(lab, got).statistic
    # the regressor learnt its training labels: on 37 faces a Spearman rho of 0.4 has p ~ 0.007 (an untrained head
    # gives ~0); measured 0.50-0.6 here and 0.497 on a CI machine with other float kernels, so the bar is 0.4
    assert rho > 0.4, rho
    # on their scale: centred on the labels, not collapsed to one value (90 steps at lr 1e-4 leave the spread
    # compressed: 0.18-0.3 of the labels' std measured across machines, so the bar is 0.1)
    assert abs(got.mean() - lab.mean()) < 0.5 * lab.std() and got.std() > 0.1 * lab.std()
