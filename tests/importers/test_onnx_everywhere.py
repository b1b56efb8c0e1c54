"""An imported ONNX graph goes wherever a faceforge model goes: ``faceforge import`` itself, ``eval``, ``embed``,
``export-onnx`` (whose parity check passes, and whose file imports again), and ``run.init`` for training with
``model.name=onnx_graph``. The model is a small hand-made recognition graph at 112 px (fast); SFace itself is in
test_onnx_sface.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from faceforge.cli.main import main
from faceforge.config import compose_config
from faceforge.core.checkpoint import load_checkpoint
from faceforge.data.image_io import read_image_rgb
from faceforge.embedders.checkpoint import CheckpointEmbedder
from faceforge.engine.loop import Trainer
from faceforge.importers.onnx_net import import_onnx
from tests.importers.graphs import save, tiny_net


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("onnx_everywhere")
    path = save(tiny_net(), tmp / "tiny.onnx")
    out = tmp / "tiny.pt"
    assert main(["import", "onnx", str(path), "--out", str(out), "--option", "colour=BGR", "--option", "mean=[120, 115, 110]"]) == 0  # fmt: skip
    return {"onnx": path, "ckpt": out, "tmp": tmp}


def test_the_cli_writes_a_checkpoint_and_refuses_in_one_line(
    imported: dict[str, Path], tmp_path: Path, capsys
) -> None:
    meta = load_checkpoint(imported["ckpt"])["meta"]
    assert meta["backbone"]["name"] == "onnx_graph" and meta["embedding_size"] == 32
    pre = meta["preprocess"]
    assert (
        pre["colour"] == "BGR"
        and pre["mean"] == [120 / 255, 115 / 255, 110 / 255]
        and pre["std"] == [0.5, 0.5, 0.5]
    )
    src = meta["source"]
    assert (
        src["file"] == "tiny.onnx" and len(src["sha256"]) == 64 and src["pixel_mean"] == [120.0, 115.0, 110.0]
    )
    assert src["preprocess_source"] == "options" and src["verified"]["max_abs_diff"] < 1e-4
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage" * 50)
    assert main(["import", "onnx", str(tmp_path / "bad.onnx"), "--out", str(tmp_path / "bad.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("faceforge import: error:") and "bad.onnx" in err
    assert not (tmp_path / "bad.pt").exists()
    assert main(["import", "onnx", str(imported["onnx"]), "--out", str(tmp_path / "x.pt"), "--option", "colour=XYZ"]) == 2  # fmt: skip
    assert "colour" in capsys.readouterr().err


def _faces(root: Path, people: int, per_person: int) -> Path:
    out = root / "faces"
    for person in sorted(p for p in (root / "src").iterdir() if p.is_dir())[:people]:
        (out / person.name).mkdir(parents=True)
        for f in sorted(person.glob("*.jpg"))[:per_person]:
            shutil.copy(f, out / person.name / f.name)
    return out


def test_eval_embed_and_export(imported: dict[str, Path], lfw_small: Path, tmp_path: Path) -> None:
    (tmp_path / "src").symlink_to(lfw_small)
    faces = _faces(tmp_path, people=4, per_person=3)
    people = sorted(p.name for p in faces.iterdir())
    same = [f"{n}\t{i}\t{j}" for n in people for i, j in ((1, 2), (1, 3), (2, 3))]
    diff = [
        f"{a}\t{i}\t{b}\t{i}" for i in (1, 2, 3) for a, b in zip(people, people[1:] + people[:1], strict=True)
    ]
    (tmp_path / "pairs.txt").write_text("\n".join(["12", *same, *diff]) + "\n")
    ckpt = str(imported["ckpt"])
    assert main(["eval", "--model", ckpt, "--pairs", str(tmp_path / "pairs.txt"), "--images", str(faces),
                 "--out-dir", str(tmp_path / "ev"), "--no-progress", "--no-cache"]) == 0  # fmt: skip
    result = json.loads((tmp_path / "ev" / "result.json").read_text())
    assert (
        result["model"]["backbone"]["name"] == "onnx_graph"
        and 0 <= result["verification"]["accuracy_mean"] <= 1
    )
    assert main(["embed", "--model", ckpt, "--images", str(faces), "--out", str(tmp_path / "emb.npz"), "--no-progress",
                 "--no-cache"]) == 0  # fmt: skip
    assert np.load(tmp_path / "emb.npz")["embeddings"].shape == (12, 32)

    # export-onnx (its parity check against PyTorch passes) and the export imports again as the same network
    out = tmp_path / "re.onnx"
    assert main(["export-onnx", ckpt, str(out), "--exporter", "torchscript"]) == 0
    again = import_onnx(out)
    assert again.backbone["name"] == "onnx_graph" and again.preprocess["colour"] == "BGR"
    x = torch.randn(2, 3, 112, 112)
    first = CheckpointEmbedder(imported["ckpt"]).model
    with torch.no_grad():
        torch.testing.assert_close(again.build()(x), first(x), rtol=1e-5, atol=1e-5)

    # bf16 autocast, as 'faceforge eval --model-option precision=bf16' runs it
    chips = np.stack([read_image_rgb(f) for f in sorted(faces.rglob("*.jpg"))])
    fp32 = CheckpointEmbedder(imported["ckpt"], device="cpu").embed(chips)
    bf16 = CheckpointEmbedder(imported["ckpt"], device="cpu", precision="bf16").embed(chips)
    cos = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert bf16.dtype == np.float32 and cos.min() > 0.99


def test_run_init_trains_the_imported_backbone(imported: dict[str, Path], lfw_small: Path, tmp_path: Path, list_file) -> None:  # fmt: skip
    """model.name=onnx_graph with the checkpoint's own kwargs builds the backbone; run.init loads it; steps move
    the weights and the BatchNorm statistics."""
    meta = load_checkpoint(imported["ckpt"])["meta"]
    graph = meta["backbone"]["kwargs"]["graph"]
    lf = list_file(lfw_small, tmp_path / "train.txt", per_person=4, people=8)
    cfg = compose_config(
        "lfw_mobilefacenet_arcface",
        [f"data.root={lfw_small}", f"data.list_file={lf}", f"run.dir={tmp_path / 'run'}", "run.progress=false",
         "eval.pairs=null", "data.exclude_pairs=[]", "data.preload=false", "data.num_workers=0", "data.batch_size=8",
         "run.max_steps=2", "run.precision=bf16", "model=iresnet18", "model.name=onnx_graph", f"model.graph='{graph}'",
         "model.embedding_size=32", f"run.init={imported['ckpt']}", "run.init_head=false"],
    )  # fmt: skip
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.backbone.state_dict().items()}
    trainer.fit()
    after = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert after["meta"]["backbone"] == {"name": "onnx_graph", "kwargs": {"embedding_size": 32, "dropout": 0.0, "graph": graph}}  # fmt: skip
    assert after["progress"]["global_step"] == 2
    moved = [k for k, v in before.items() if not torch.equal(v, after["backbone"][k])]
    assert (
        "layers.conv0.weight" in moved and "layers.fc0.weight" in moved and "layers.bn0.running_mean" in moved
    )
    assert torch.equal(before["layers.conv0.weight"], load_checkpoint(imported["ckpt"])["backbone"]["layers.conv0.weight"])  # fmt: skip
