"""ONNX export (``faceforge export-onnx``) and the ONNX embedder, on a small untrained-but-calibrated checkpoint.

The checkpoint is a MobileFaceNet (scale 1, 64-d) whose BatchNorm statistics are set from real aligned LFW
faces (forward passes in train mode, no gradient step), so its embeddings are of order 1 and the
ONNX-vs-PyTorch comparisons are not vacuous.  Its preprocessing is deliberately not the default (BGR,
odd mean/std): an ONNX embedder that ignored the exported metadata would not match it.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from faceforge.cli.main import main
from faceforge.core.checkpoint import FORMAT, VERSION, atomic_torch_save
from faceforge.core.hashing import file_sha256
from faceforge.data.image_io import read_image_rgb
from faceforge.data.preprocess import Preprocess
from faceforge.embedders import embedder_from_spec
from faceforge.embedders.checkpoint import CheckpointEmbedder
from faceforge.embedders.onnx_model import OnnxEmbedder
from faceforge.models.backbones import build_backbone

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

PREPROCESS = Preprocess(colour="BGR", mean=(0.45, 0.5, 0.55), std=(0.2, 0.25, 0.3))
BACKBONE = {"name": "mobilefacenet", "kwargs": {"embedding_size": 64, "scale": 1}}
N_FACES = 48


@dataclass
class Exported:
    checkpoint: Path
    onnx: Path
    printed: str


def _faces(root: Path, n: int = N_FACES) -> np.ndarray:
    files = sorted(root.rglob("*.jpg"))
    step = max(1, len(files) // n)
    return np.stack([read_image_rgb(f) for f in files[::step][:n]])


@pytest.fixture(scope="module")
def lfw_faces(lfw_small: Path) -> np.ndarray:
    faces = _faces(lfw_small)
    assert faces.shape == (N_FACES, 112, 112, 3) and faces.dtype == np.uint8
    return faces


@pytest.fixture(scope="module")
def exported(lfw_faces: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """A faceforge checkpoint (no training: BatchNorm calibrated on LFW) exported through the CLI."""
    torch.manual_seed(0)
    model = build_backbone(BACKBONE["name"], **BACKBONE["kwargs"])
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    with torch.no_grad():
        model(PREPROCESS(torch.from_numpy(lfw_faces)))
    model.eval()
    folder = tmp_path_factory.mktemp("onnx_export")
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "meta": {"backbone": BACKBONE, "embedding_size": 64, "preprocess": PREPROCESS.to_dict()},
        "backbone": model.state_dict(),
    }
    ckpt_path = atomic_torch_save(ckpt, folder / "run" / "model.pt")
    out = folder / "out" / "model.onnx"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["export-onnx", str(ckpt_path), str(out), "--opset", "18", "--batch", "dynamic"]) == 0
    return Exported(ckpt_path, out, buf.getvalue())


def test_export_cli_writes_verified_onnx_with_metadata(exported: Exported) -> None:
    printed = exported.printed
    m = re.search(r"max abs diff ([0-9.eE+-]+)", printed)
    assert m, printed
    assert float(m.group(1)) < 1e-4  # fp32 vs fp32: rounding only
    assert f"sha256 {file_sha256(exported.onnx)}" in printed
    # written atomically: only the final file is left in the output folder
    assert sorted(p.name for p in exported.onnx.parent.iterdir()) == ["model.onnx"]

    proto = onnx.load(str(exported.onnx))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["embedding"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 112, 112]
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 18
    props = {p.key: p.value for p in proto.metadata_props}
    meta = json.loads(props["faceforge"])
    assert meta["format"] == "faceforge-onnx" and meta["embedding_size"] == 64
    assert meta["preprocess"] == PREPROCESS.to_dict()
    assert meta["preprocess"]["colour"] == "BGR" and meta["preprocess"]["std"] == [0.2, 0.25, 0.3]
    assert meta["backbone"] == BACKBONE
    assert meta["checkpoint"]["sha256"] == file_sha256(exported.checkpoint)

    # the batch axis really is dynamic
    sess = ort.InferenceSession(str(exported.onnx), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        out = sess.run(["embedding"], {"input": np.zeros((n, 3, 112, 112), np.float32)})[0]
        assert out.shape == (n, 64) and out.dtype == np.float32


def test_onnx_embedder_matches_checkpoint_on_lfw(exported: Exported, lfw_faces: np.ndarray) -> None:
    ref = CheckpointEmbedder(exported.checkpoint, device="cpu", precision="fp32", batch_size=32).embed(
        lfw_faces
    )
    emb = OnnxEmbedder(exported.onnx, device="cpu", batch_size=20)  # 48 = 20 + 20 + 8: chunking
    got = emb.embed(lfw_faces)
    assert got.shape == (N_FACES, 64) and got.dtype == np.float32
    assert np.abs(ref).max() > 0.5  # the comparison below is not vacuous
    assert np.abs(got - ref).max() < 1e-4
    assert emb.embedding_size == 64 and emb.input_size == 112
    assert emb.embed(lfw_faces[:0]).shape == (0, 64)

    desc = emb.describe()
    assert desc["kind"] == "onnx" and desc["sha256"] == file_sha256(exported.onnx)
    assert desc["preprocess"] == PREPROCESS.to_dict()
    assert desc["preprocess"]["alignment"] == "arcface_112" and desc["preprocess"]["colour"] == "BGR"
    assert (desc["input_name"], desc["output_name"], desc["embedding_size"]) == ("input", "embedding", 64)
    assert desc["preprocess_source"] == "faceforge metadata"
    assert desc["export"]["checkpoint"]["sha256"] == file_sha256(exported.checkpoint)

    # a bare .onnx path and onnx:PATH both resolve to this embedder
    for spec in (str(exported.onnx), f"onnx:{exported.onnx}"):
        e = embedder_from_spec(spec, device="cpu", batch_size=8)
        assert isinstance(e, OnnxEmbedder) and e.batch_size == 8
        assert np.abs(e.embed(lfw_faces[:3]) - ref[:3]).max() < 1e-4


def test_onnx_embedder_rejects_bad_input(exported: Exported, tmp_path: Path) -> None:
    emb = OnnxEmbedder(exported.onnx, device="cpu")
    for bad in (
        np.zeros((2, 96, 96, 3), np.uint8),
        np.zeros((2, 112, 112), np.uint8),
        np.zeros((2, 112, 112, 3), np.float32),
    ):
        with pytest.raises(ValueError, match=re.escape("[N, 112, 112, 3]")):
            emb.embed(bad)
    garbage = tmp_path / "broken.onnx"
    garbage.write_bytes(b"\x00not an onnx model" * 10)
    with pytest.raises(ValueError, match="could not be loaded as an ONNX model"):
        embedder_from_spec(str(garbage))
    with pytest.raises(FileNotFoundError):
        OnnxEmbedder(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="cannot tell which embedder"):
        embedder_from_spec(str(tmp_path / "model.bin"))


class _PoolLinear(torch.nn.Module):
    """4x4 average pooling then a linear map: simple enough to recompute in numpy."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3 * 4 * 4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def _numpy_reference(faces: np.ndarray, w: np.ndarray, b: np.ndarray, mean, std, bgr: bool) -> np.ndarray:
    x = faces.astype(np.float64)
    if bgr:
        x = x[..., ::-1]
    x = (x - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)  # pixel units, channels last
    x = x.transpose(0, 3, 1, 2)  # NCHW
    n = len(x)
    pooled = x.reshape(n, 3, 4, 28, 4, 28).mean(axis=(3, 5)).reshape(n, 48)
    return pooled @ w.T + b


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_foreign_onnx_uses_insightface_preprocessing(tmp_path: Path, lfw_faces: np.ndarray) -> None:
    torch.manual_seed(1)
    net = _PoolLinear().eval()
    path = tmp_path / "w600k_like.onnx"
    # like insightface's files: fixed batch 1, its own tensor names, no faceforge metadata
    with torch.no_grad():
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, 112, 112),),
            str(path),
            input_names=["input.1"],
            output_names=["fc1"],
            opset_version=17,
            dynamo=False,
        )
    w, b = net.fc.weight.detach().double().numpy(), net.fc.bias.detach().double().numpy()
    faces = lfw_faces[:5]

    emb = embedder_from_spec(str(path), device="cpu")
    assert isinstance(emb, OnnxEmbedder) and emb.fixed_batch == 1
    got = emb.embed(faces)  # 5 faces through a batch-1 model
    ref = _numpy_reference(faces, w, b, (127.5,) * 3, (127.5,) * 3, bgr=False)
    assert got.shape == (5, 8) and np.abs(ref).max() > 0.05
    assert np.abs(got - ref).max() < 1e-5
    # not the checkpoint-style [0, 1] scaling, and colour order matters
    assert np.abs(got - _numpy_reference(faces, w, b, (0.5,) * 3, (0.5,) * 3, bgr=False)).max() > 1.0
    desc = emb.describe()
    assert desc["kind"] == "onnx" and desc["sha256"] == file_sha256(path)
    assert desc["preprocess_source"].startswith("options")
    pre = desc["preprocess"]
    assert (pre["alignment"], pre["colour"], pre["input_size"]) == ("arcface_112", "RGB", 112)
    assert pre["mean"] == pytest.approx([0.5] * 3) and pre["std"] == pytest.approx([0.5] * 3)
    assert pre["pixel_mean"] == [127.5] * 3 and desc["input_shape"] == [1, 3, 112, 112]
    assert (desc["input_name"], desc["output_name"], desc["embedding_size"]) == ("input.1", "fc1", 8)

    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    bgr = OnnxEmbedder(path, mean=mean, std=std, colour="BGR")
    ref_bgr = _numpy_reference(faces, w, b, mean, std, bgr=True)
    assert np.abs(bgr.embed(faces) - ref_bgr).max() < 1e-5
    assert np.abs(ref_bgr - _numpy_reference(faces, w, b, mean, std, bgr=False)).max() > 1e-2

    with pytest.raises(ValueError, match="input_size=96"):
        OnnxEmbedder(path, input_size=96)
    with pytest.raises(ValueError, match="colour must be"):
        OnnxEmbedder(path, colour="RGBA")


def test_export_failing_verification_leaves_no_file(
    exported: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Legacy exporter, fixed batch: the real comparison passes; an inflated one makes the export fail cleanly."""
    import faceforge.deploy.export_onnx as ex

    real = ex.verify_onnx
    seen: list[tuple[float, int]] = []

    def inflated(path, model, preprocess, batches, seed):
        diff, scale, n = real(path, model, preprocess, batches, seed)
        seen.append((diff, n))
        proto = onnx.load(str(path))
        dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
        seen.append((float(dims[0]), int(json.loads(proto.metadata_props[0].value)["input"]["shape"][0])))
        return 1.0, scale, n

    monkeypatch.setattr(ex, "verify_onnx", inflated)
    out = tmp_path / "b2.onnx"
    argv = ["export-onnx", str(exported.checkpoint), str(out), "--batch", "2", "--exporter", "torchscript"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "does not reproduce PyTorch" in err and "no file written" in err
    (diff, n), (batch_dim, meta_batch) = seen
    assert diff < 1e-4 and n == 2 and batch_dim == 2 and meta_batch == 2
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(SystemExit) as refused:  # argparse refuses it by the option's rule, exit status 2
        main(["export-onnx", str(exported.checkpoint), str(out), "--batch", "0"])
    assert refused.value.code == 2
    assert "--batch: 0 must be 'dynamic' or an integer in [1, 65536]" in capsys.readouterr().err


def _subset(root: Path, out: Path, people: int = 6, per_person: int = 8) -> Path:
    """The first ``per_person`` images of the first ``people`` identities of ``root`` (symlinks)."""
    for person in sorted(p for p in root.iterdir() if p.is_dir())[:people]:
        (out / person.name).mkdir(parents=True)
        for f in sorted(person.glob("*.jpg"))[:per_person]:
            (out / person.name / f.name).symlink_to(f)
    return out


def test_eval_cli_on_onnx_matches_checkpoint(exported: Exported, lfw_small: Path, tmp_path: Path) -> None:
    """``faceforge eval --model OUT.onnx --benchmark allpairs:...`` on part of lfw_small (about 800 faces in
    all, too slow twice over for this file), with the same numbers as the checkpoint."""
    images = _subset(lfw_small, tmp_path / "lfw_part")
    results = {}
    for name, model in (("onnx", exported.onnx), ("checkpoint", exported.checkpoint)):
        out = tmp_path / name
        argv = ["eval", "--model", str(model), "--benchmark", f"allpairs:{images}", "--out-dir", str(out)]
        argv += ["--no-cache", "--no-progress", "--no-flip", "--device", "cpu"]
        assert main(argv) == 0
        results[name] = json.loads((out / "result.json").read_text())
    res = results["onnx"]
    assert res["model"]["kind"] == "onnx" and res["model"]["sha256"] == file_sha256(exported.onnx)
    assert res["embedding"]["images_embedded"] == 48 and res["embedding"]["images_from_cache"] == 0
    rec = res["benchmarks"]["allpairs:lfw_part"]
    ck = results["checkpoint"]["benchmarks"]["allpairs:lfw_part"]
    assert rec["benchmark"]["n_images_used"] == ck["benchmark"]["n_images_used"] == 48
    assert rec["benchmark"]["n_identities"] == 6
    assert 0.5 < rec["summary"]["auc"] <= 1.0
    assert rec["summary"]["auc"] == pytest.approx(ck["summary"]["auc"], abs=1e-4)
    assert rec["summary"]["eer"] == pytest.approx(ck["summary"]["eer"], abs=1e-3)
    assert rec["settings"]["colour"] == "BGR"
