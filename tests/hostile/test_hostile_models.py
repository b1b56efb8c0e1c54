"""Issue 30, class 5 (wrong success), in process and in seconds: a model whose weights are NaN is never used
as a training teacher nor exported, and ``export-onnx --tolerance nan`` (a check that could never fail) is
refused. Tiny untrained MobileFaceNets and a handful of real aligned LFW faces."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hostile_files import checkpoint_dict

from faceforge.cli.main import main

PEOPLE = ["George_W_Bush", "Serena_Williams", "Colin_Powell", "Tony_Blair"]


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``good``: an untrained 16-d MobileFaceNet checkpoint; ``nan``: the same with every float weight NaN."""
    tmp = tmp_path_factory.mktemp("nan_models")
    good = checkpoint_dict(16)
    nan = dict(good)
    nan["backbone"] = {
        k: v * float("nan") if v.is_floating_point() else v for k, v in good["backbone"].items()
    }
    torch.save(good, tmp / "good.pt")
    torch.save(nan, tmp / "nan_weights.pt")
    return {"good": tmp / "good.pt", "nan": tmp / "nan_weights.pt"}


@pytest.fixture(scope="module")
def faces(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Aligned 112x112 faces of 4 LFW people, 2 each (real faces: the teacher sees real input)."""
    from faceforge.data.align_folder import align_folder

    src = data_dir / "lfw" / "images"
    files = [f for p in PEOPLE for f in sorted((src / p).glob("*.jpg"))[:2]]
    out = tmp_path_factory.mktemp("nan_faces")
    align_folder(src, data_dir / "lfw" / "landmarks_mtcnn_5pts_250px.csv", out, landmark_offset=(-48, -48),
                 images=files, progress=False)  # fmt: skip
    assert len(list(out.rglob("*.jpg"))) == 8
    return out


def test_training_with_a_nan_teacher_stops_naming_the_teacher(
    models: dict[str, Path], faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    argv = [
        "train",
        "lfw_mobilefacenet_arcface",
        "method=cosine",
        f"teachers=[{{model: {models['nan']}, name: t}}]",
    ]
    argv += [f"data.root={faces}", f"run.dir={run}", "run.cache_dir=none", "data.exclude_pairs=[]"]
    argv += ["data.num_workers=0", "data.batch_size=8", "model.embedding_size=16", "optim.epochs=1"]
    argv += [
        "run.max_steps=2",
        "eval.pairs=null",
        "run.progress=false",
        "run.precision=fp32",
        "run.threads=1",
    ]
    rc = main(argv)
    line = _one_line(capsys.readouterr().err)
    assert rc == 2, line
    assert str(models["nan"]) in line and "NaN" in line, line
    assert not (run / "checkpoints" / "last.pt").exists() and not (run / "report.json").exists()


def test_export_onnx_refuses_a_nan_weight_checkpoint(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "nan.onnx"
    rc = main(["export-onnx", str(models["nan"]), str(out)])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and str(models["nan"]) in line and "NaN" in line, line
    assert "verified" not in line and not out.exists()
    assert list(tmp_path.iterdir()) == []  # no partial file either


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_export_onnx_refuses_a_tolerance_that_cannot_fail(
    models: dict[str, Path], tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "good.onnx"
    with pytest.raises(SystemExit) as exc:  # argparse's refusal, exit status 2 as a shell sees it
        main(["export-onnx", str(models["good"]), str(out), "--tolerance", value])
    line = _one_line(capsys.readouterr().err)
    assert exc.value.code == 2 and "--tolerance" in line and f" {value} " in line, line
    assert not out.exists()


def test_export_onnx_api_refuses_nan_tolerance(models: dict[str, Path], tmp_path: Path) -> None:
    from faceforge.deploy.export_onnx import export_onnx

    with pytest.raises(ValueError, match="tolerance"):
        export_onnx(models["good"], tmp_path / "good.onnx", tolerance=float("nan"))
    assert not (tmp_path / "good.onnx").exists()
