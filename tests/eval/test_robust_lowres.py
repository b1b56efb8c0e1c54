"""Verification under attack (``robust:``) and at a lower resolution (``lowres:``) on a real model and real faces,
their numpy protocol by hand, and the one-line refusals: ε outside [0, 1], a resolution above the face size, an
attack on a model without input gradients (dlib's C++ runtime, an ONNX file)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from faceforge.cli.main import main
from faceforge.data.image_io import read_image_rgb
from faceforge.data.preprocess import Preprocess
from faceforge.embedders.checkpoint import CheckpointEmbedder
from faceforge.embedders.degraded import LowResolutionEmbedder
from faceforge.embedders.differentiable import NotDifferentiableError, attack_pairs, embed_faces, face_network
from faceforge.embedders.dlib_resnet import DlibResNetEmbedder
from faceforge.embedders.onnx_model import OnnxEmbedder
from faceforge.eval.allpairs import allpairs_scores
from faceforge.eval.benchmarks import parse_benchmark_spec, run_benchmarks
from faceforge.eval.kinds import BenchmarkSpecError
from faceforge.eval.robustness import best_accuracy_threshold, fixed_threshold, rates_at
from faceforge.importers.base import ImportedModel, save_imported
from faceforge.models.attacks import AttackSettings
from faceforge.models.backbones import build_backbone


def _calibrated_model(faces: np.ndarray, out: Path) -> Path:
    """A MobileFaceNet (paper widths) whose BN statistics are those of real faces: a real network, untrained
    otherwise (a few training steps collapse every embedding onto one direction in eval mode, and the attack
    tests need input gradients, not accuracy), saved as an ordinary faceforge checkpoint."""
    torch.manual_seed(0)
    net = build_backbone("mobilefacenet", scale=1, embedding_size=32)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the calibration batches
    pre = Preprocess()
    with torch.no_grad():
        net.train()
        for i in range(0, len(faces), 16):
            net(pre(torch.from_numpy(faces[i : i + 16])))
    model = ImportedModel({"name": "mobilefacenet", "kwargs": {"scale": 1, "embedding_size": 32}},
                          net.state_dict(), 32, pre.to_dict(), {"network": "calibrated test network"})  # fmt: skip
    return save_imported(model, out)


@pytest.fixture(scope="module")
def setup(lfw_small: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real network calibrated on 8 people's faces, and a pairs file over 4 other people."""
    tmp = tmp_path_factory.mktemp("robust")
    held = tmp / "held_out"
    people = sorted(p for p in lfw_small.iterdir() if p.is_dir())
    for person in people[8:]:
        (held / person.name).mkdir(parents=True)
        for f in sorted(person.glob("*.jpg"))[:3]:
            shutil.copy(f, held / person.name / f.name)
    names = [p.name for p in people[8:]]
    same = [f"{n}\t{i}\t{j}" for n in names for i, j in ((1, 2), (1, 3), (2, 3))]
    diff = [
        f"{a}\t{i}\t{b}\t{i}" for i in (1, 2, 3) for a, b in zip(names, names[1:] + names[:1], strict=True)
    ]
    (tmp / "pairs.txt").write_text("\n".join(["12", *same, *diff]) + "\n")
    faces = np.stack([read_image_rgb(f) for p in people[:8] for f in sorted(p.glob("*.jpg"))[:6]])
    model = _calibrated_model(faces, tmp / "model.pt")
    return {"model": model, "pairs": tmp / "pairs.txt", "held": held, "tmp": tmp}


# ---------------------------------------------------------------------------------------------- numpy protocol
def test_fixed_threshold_rules_and_rates_by_hand() -> None:
    s = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1])
    same = np.array([True, True, True, False, False, False])
    t = best_accuracy_threshold(s, same)  # accept >= t: 0.9, 0.8 and 0.6 -> 2 + 2 correct; (0.3 + 0.6)/2 ties
    assert t == pytest.approx(0.25)  # the smallest of the best: between 0.2 and 0.3 (5 of 6 correct)
    r = rates_at(s, same, t)
    assert r["accuracy"] == pytest.approx(5 / 6) and r["tar"] == 1.0 and r["far"] == pytest.approx(1 / 3)
    far = fixed_threshold(s, same, "far=0.34")
    assert far["threshold"] == pytest.approx(np.nextafter(0.2, 1)) and "FAR" in far["chosen"]
    with pytest.raises(ValueError, match="far=X"):
        fixed_threshold(s, same, "far=2")


def test_allpairs_probe_embeddings_by_hand() -> None:
    rng = np.random.default_rng(0)
    x, p = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    labels = np.array([0, 0, 1, 1, 2])
    s, same = allpairs_scores(x, labels, probe=p)
    xn, pn = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (x, p))
    want = [xn[i] @ pn[j] for i in range(5) for j in range(i + 1, 5)]
    assert np.allclose(s, want) and same.sum() == 2


# -------------------------------------------------------------------------------------------------- attacks
def test_an_attack_lowers_genuine_cosines_and_raises_impostor_ones(setup: dict[str, Path]) -> None:
    net = face_network(CheckpointEmbedder(setup["model"], device="cpu"))
    held = setup["held"]
    people = sorted(p for p in held.iterdir())
    a = np.stack([read_image_rgb(sorted(p.glob("*.jpg"))[0]) for p in people[:2]])
    b = np.stack(
        [
            read_image_rgb(sorted(people[0].glob("*.jpg"))[1]),
            read_image_rgb(sorted(people[2].glob("*.jpg"))[0]),
        ]
    )
    issame = np.array([True, False])
    ref = embed_faces(net, a, flip=True)
    clean = np.sum(ref * embed_faces(net, b, flip=True), axis=1)
    adv, linf = attack_pairs(net, ref, b, issame, 4 / 255, AttackSettings(steps=2), flip=True)
    attacked = np.sum(ref * adv, axis=1)
    assert attacked[0] < clean[0] - 0.01 and attacked[1] > clean[1] + 0.01
    assert np.all(linf <= 4 / 255 + 1e-6)


def test_robust_benchmark_on_a_real_model(setup: dict[str, Path], tmp_path: Path) -> None:
    spec = f"robust:{setup['pairs']}:{setup['held']}:0,8/255,steps=2,maxpairs=12"
    emb = CheckpointEmbedder(setup["model"], device="cpu")
    run = run_benchmarks(emb, [spec], tmp_path, cache_dir=None, progress=False, flip=False)
    rec = run["benchmarks"]["robust:pairs"]
    per = rec["per_eps"]
    assert [r["eps_label"] for r in per] == ["0/255", "8/255"] and rec["benchmark"]["n_pairs"] == 12
    assert per[0]["accuracy"] >= per[-1]["accuracy"] and per[-1]["mean_genuine"] < per[0]["mean_genuine"]
    assert all(r["max_linf_pixels"] <= r["eps"] + 1e-6 for r in per)
    assert rec["settings"]["threshold"]["rule"] == "accuracy" and Path(rec["plots"]["robustness"]).is_file()
    assert rec["summary"]["accuracy@eps=0/255"] == per[0]["accuracy"]


def test_robust_spec_forms_and_refusals(setup: dict[str, Path], capsys) -> None:
    b = parse_benchmark_spec(f"robust:{setup['pairs']}:{setup['held']}")
    assert len(b.option("eps", "").split(",")) == 5 and b.paths[1] == str(setup["held"])
    b = parse_benchmark_spec(f"robust:{setup['pairs']}:{setup['held']}:attack=fgsm,0.01,maxpairs=8")
    assert b.option("attack", "") == "fgsm" and b.option("maxpairs", "") == "8"
    with pytest.raises(BenchmarkSpecError, match="outside"):
        parse_benchmark_spec(f"robust:{setup['pairs']}:{setup['held']}:2")
    # ε outside [0, 1] through the command line: one line, status 2
    args = ["eval", "--model", str(setup["model"]), "--no-progress", "--out-dir", str(setup["tmp"] / "ev")]
    assert main([*args, "--benchmark", f"robust:{setup['pairs']}:{setup['held']}:0,300/255"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "8/255" in err[0]


@pytest.mark.parametrize(
    "cls,kind,words",
    [(OnnxEmbedder, "onnx", "onnxruntime.*faceforge import"), (DlibResNetEmbedder, "dlib", "C\\+\\+")],
)
def test_models_without_input_gradients_are_refused(cls: type, kind: str, words: str) -> None:
    stub = type("Stub", (cls,), {"__init__": lambda self: None, "describe": lambda self: {"kind": kind}})
    with pytest.raises(NotDifferentiableError, match=words):
        face_network(stub())


def test_attack_on_dlib_is_refused_in_one_line(setup: dict[str, Path], capsys) -> None:
    pytest.importorskip("dlib")
    assert (
        importlib.util.find_spec("face_recognition_models") is not None
    )  # installed by make (the dlib extra)
    out = setup["tmp"] / "ev_dlib"
    assert main(["eval", "--model", "dlib", "--no-progress", "--out-dir", str(out),
                 "--benchmark", f"robust:{setup['pairs']}:{setup['held']}"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "C++" in err[0] and "faceforge import dlib" in err[0]
    assert not (out / "result.json").exists()


# ----------------------------------------------------------------------------------------- low resolution
def test_lowres_pairs_and_allpairs_on_a_real_model(setup: dict[str, Path], tmp_path: Path) -> None:
    emb = CheckpointEmbedder(setup["model"], device="cpu")
    specs = [f"lfw:{setup['pairs']}:{setup['held']}", f"lowres:16:lfw:{setup['pairs']}:{setup['held']}",
             f"lowres:16:both:linear:lfw:{setup['pairs']}:{setup['held']}", f"lowres:24:allpairs:{setup['held']}"]  # fmt: skip
    run = run_benchmarks(
        emb, specs, tmp_path, cache_dir=tmp_path / "cache", progress=False, n_folds=2, flip=False
    )
    recs = run["benchmarks"]
    one, both = recs["lowres16one:lfw:pairs"], recs["lowres16both:lfw:pairs"]
    assert (
        one["settings"]["low_resolution"]["mode"] == "one"
        and both["settings"]["low_resolution"]["up"] == "linear"
    )
    full = recs["lfw:pairs"]["roc"]["auc"]
    assert one["roc"]["auc"] != full and both["roc"]["auc"] != one["roc"]["auc"]
    allp = recs["lowres24one:allpairs:held_out"]
    assert allp["allpairs"]["second_face"].startswith("row j") and 0 < allp["summary"]["auc"] <= 1
    # degraded embeddings are cached under a key of their own
    low = LowResolutionEmbedder(emb, 16)
    assert low.describe()["degradation"]["probe_size"] == 16 and low.describe() != emb.describe()


def test_lowres_refuses_a_size_above_the_face_and_bad_specs(setup: dict[str, Path], capsys) -> None:
    args = ["eval", "--model", str(setup["model"]), "--no-progress", "--out-dir", str(setup["tmp"] / "ev2")]
    assert main([*args, "--benchmark", f"lowres:200:lfw:{setup['pairs']}:{setup['held']}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "above" in err[0] and "112" in err[0]
    with pytest.raises(BenchmarkSpecError, match="supports only"):
        parse_benchmark_spec("lowres:16:one:bin:x.bin")
    with pytest.raises(BenchmarkSpecError, match="SIZE"):
        parse_benchmark_spec(f"lowres:big:lfw:{setup['pairs']}:{setup['held']}")
