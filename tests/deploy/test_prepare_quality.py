"""``faceforge prepare --min-quality X --quality-model Q``: faces below X are not written and are listed in
prepare_report.json with their scores (never silently), faces of an earlier run are gated too, the kept faces'
scores form a path,quality sidecar, and mistakes get one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from faceforge.cli.main import main
from faceforge.core.checkpoint import FORMAT, VERSION, atomic_torch_save
from faceforge.data.attributes import read_sidecar
from faceforge.data.image_io import read_image_rgb
from faceforge.data.preprocess import Preprocess
from faceforge.deploy.prepare import QUALITY_CSV, REPORT_NAME
from faceforge.embedders import embedder_from_spec
from faceforge.models.backbones import build_backbone
from faceforge.models.backbones.quality import QUALITY_PREDICTS

YUNET = "face_detection_yunet_2026may.onnx"
PEOPLE = {"Al_Gore": 4, "Ana_Guevara": 4, "Serena_Williams": 4}


@pytest.fixture(scope="module")
def setup(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not (data_dir / "models" / YUNET).is_file():
        pytest.skip("YuNet model not in the data folder")
    tmp = tmp_path_factory.mktemp("prepare_quality")
    photos = tmp / "photos"
    for person, n in PEOPLE.items():
        (photos / person).mkdir(parents=True)
        for f in sorted((data_dir / "lfw" / "images" / person).glob("*.jpg"))[:n]:
            shutil.copy(f, photos / person / f.name)
    # a quality model: an (untrained, seeded) SDD-FIQA MobileFaceNet saved as a faceforge checkpoint; its
    # scores are arbitrary but fixed, which is all a gate needs
    torch.manual_seed(0)
    net = build_backbone("sddfiqa_mobilefacenet", scale=1).eval()
    meta = {
        "backbone": {"name": "sddfiqa_mobilefacenet", "kwargs": {"scale": 1}},
        "embedding_size": 1,
        "preprocess": Preprocess(input_size=112).to_dict(),
        "predicts": QUALITY_PREDICTS,
    }
    model = atomic_torch_save(
        {"format": FORMAT, "version": VERSION, "meta": meta, "backbone": net.state_dict()}, tmp / "q.pt"
    )
    return {"photos": photos, "model": model, "tmp": tmp, "yunet": data_dir / "models" / YUNET}


def _prepare(setup: dict[str, Path], out: Path, *more: str) -> int:
    argv = ["prepare", "--images", str(setup["photos"]), "--out", str(out), "--no-progress"]
    return main([*argv, "--detector-model", str(setup["yunet"]), *more])


def test_prepare_min_quality_drops_and_lists_faces(
    setup: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    plain = setup["tmp"] / "plain"
    assert _prepare(setup, plain) == 0
    faces = sorted(p.relative_to(plain).as_posix() for p in plain.rglob("*.jpg"))
    assert len(faces) == sum(PEOPLE.values())
    model = embedder_from_spec(str(setup["model"]))
    scores = dict(
        zip(faces, model.embed(np.stack([read_image_rgb(plain / f) for f in faces]))[:, 0], strict=True)
    )
    ranked = sorted(scores.values())
    x = float((ranked[4] + ranked[5]) / 2)  # between the 5th and 6th lowest: 5 faces fall below
    low = sorted(f for f, q in scores.items() if q < x)
    assert len(low) == 5

    capsys.readouterr()
    gated = setup["tmp"] / "gated"
    assert _prepare(setup, gated, "--min-quality", f"{x}", "--quality-model", str(setup["model"])) == 0
    printed = capsys.readouterr().out
    report = json.loads((gated / REPORT_NAME).read_text())
    listed = sorted(e["output"] for e in report["low_quality"])
    assert listed == low and f"5 face(s) below {x:g} dropped" in printed
    assert all(f"low quality: {f}" in printed for f in low)
    for e in report["low_quality"]:  # each with its score, below the threshold
        assert e["quality"] == pytest.approx(float(scores[e["output"]]), abs=1e-4) and e["quality"] < x
        assert e["file"] == e["output"] and e["face"] is None and "below the minimum" in e["reason"]
    kept = sorted(p.relative_to(gated).as_posix() for p in gated.rglob("*.jpg"))
    assert kept == sorted(set(faces) - set(low)) and report["faces_written"] == len(kept)
    assert report["min_quality"] == x and report["quality_model"]["predicts"] == QUALITY_PREDICTS
    assert report["dropped_photos"] == 5 and report["skipped"] == 0
    table, _ = read_sidecar(gated / QUALITY_CSV)  # the kept faces' scores: a training / eval sidecar
    assert sorted(table) == kept and all(table[k]["quality"] >= x for k in kept)

    # the gate also applies to faces an earlier run wrote: the low ones are removed and listed
    again = json.loads(
        (_prepare(setup, plain, "--min-quality", f"{x}", "--quality-model", str(setup["model"])) == 0)
        and (plain / REPORT_NAME).read_text()
    )
    assert again["kept_existing"] == len(faces)
    assert sorted(e["output"] for e in again["low_quality"]) == low
    assert all(e["removed_existing"] for e in again["low_quality"])
    assert sorted(p.relative_to(plain).as_posix() for p in plain.rglob("*.jpg")) == kept


def test_prepare_quality_mistakes_are_one_line(setup: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    out = setup["tmp"] / "bad"
    assert _prepare(setup, out, "--min-quality", "40") == 2
    assert "--min-quality and --quality-model go together" in capsys.readouterr().err
    recogniser = setup["tmp"] / "rec.pt"
    net = build_backbone("mobilefacenet", scale=1, embedding_size=8)
    meta = {
        "backbone": {"name": "mobilefacenet", "kwargs": {"scale": 1, "embedding_size": 8}},
        "embedding_size": 8,
        "preprocess": Preprocess(input_size=112).to_dict(),
    }
    atomic_torch_save(
        {"format": FORMAT, "version": VERSION, "meta": meta, "backbone": net.state_dict()}, recogniser
    )
    assert _prepare(setup, out, "--min-quality", "40", "--quality-model", str(recogniser)) == 2
    err = capsys.readouterr().err
    assert "gives 8 values per face; a quality model gives 1" in err and "Traceback" not in err
    assert (
        _prepare(setup, out, "--min-quality", "1", "--quality-model", str(setup["model"]), "--size", "224")
        == 2
    )
    assert "takes 112 px faces but --size is 224" in capsys.readouterr().err
