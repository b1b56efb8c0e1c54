"""AFA and PGD adversarial training through ``faceforge train`` (CI smoke runs on real faces), the λ targets, and
the one-line refusal of AFA on a network without dual BN."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from faceforge.cli.main import main
from faceforge.core.checkpoint import load_checkpoint
from faceforge.embedders.checkpoint import CheckpointEmbedder
from faceforge.methods.afa import lambda_targets


@pytest.fixture(scope="module")
def faces(lfw_small: Path, tmp_path_factory: pytest.TempPathFactory, list_file) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("afa")
    return {
        "root": lfw_small,
        "list": list_file(lfw_small, tmp / "train.txt", per_person=4, people=4),
        "tmp": tmp,
    }


def _train(d: dict[str, Path], run: Path, *more: str) -> int:
    return main(
        ["train", "lfw_mobilefacenet_arcface", f"data.root={d['root']}", f"data.list_file={d['list']}",
         "data.exclude_pairs=[]", "data.preload=true", "data.num_workers=0", "data.batch_size=8",
         "model.embedding_size=16", "optim.epochs=1", "run.progress=false", "run.precision=fp32",
         "run.channels_last=false", "run.log_every=1", "eval.pairs=null", f"run.dir={run}", *more]
    )  # fmt: skip


def test_lambda_targets() -> None:
    eps = torch.tensor([0.0, 2 / 255, 4 / 255, 8 / 255, 9 / 255])
    assert torch.allclose(lambda_targets(eps, 8 / 255), torch.tensor([0.0, 0.25, 0.5, 1.0, 1.0]))
    assert torch.allclose(lambda_targets(eps, 8 / 255, 0.5)[2], torch.tensor(0.5**0.5))


def test_afa_and_pgd_at_train_through_faceforge_train(faces: dict[str, Path]) -> None:
    afa = faces["tmp"] / "afa"
    assert _train(faces, afa, "method=afa", "method.steps=1", "method.adv_fraction=0.5") == 0
    report = json.loads((afa / "report.json").read_text())
    hist = report["history"]
    assert len(hist) == 2
    for rec in hist:
        for key in ("afa/lambda_loss", "afa/lambda_clean", "afa/lambda_adv", "at/clean_loss", "at/adv_loss",
                    "at/cos_clean_adv"):  # fmt: skip
            assert torch.isfinite(torch.tensor(rec[key])), key
        assert 0.0 < rec["at/eps_x255"] < 8.0  # U(0, 8/255) per face
    ckpt = load_checkpoint(afa / "checkpoints" / "model.pt")
    assert ckpt["meta"]["backbone"]["name"] == "dual_bn" and ckpt["meta"]["method"]["name"] == "afa"
    assert any(".adv." in k for k in ckpt["backbone"]) and any(
        k.startswith("predictor.") for k in ckpt["backbone"]
    )
    emb = CheckpointEmbedder(afa / "checkpoints" / "model.pt", device="cpu")
    out = emb.embed(torch.randint(0, 255, (2, 112, 112, 3), dtype=torch.uint8).numpy())
    assert out.shape == (2, 16) and torch.isfinite(torch.from_numpy(out)).all()

    pgd = faces["tmp"] / "pgd_at"
    assert _train(faces, pgd, "method=pgd_at", "method.steps=1", "method.clean_weight=0.0",
                  "method.adv_weight=1.0", "run.max_steps=1") == 0  # fmt: skip
    hist = json.loads((pgd / "report.json").read_text())["history"]
    assert len(hist) == 1 and hist[0]["at/eps_x255"] == pytest.approx(4.0)
    assert (
        "at/clean_loss" not in hist[0] and "at/cos_clean_adv" not in hist[0]
    )  # adversarial only: no clean pass


def test_afa_refuses_a_network_without_dual_bn(faces: dict[str, Path], capsys) -> None:
    assert _train(faces, faces["tmp"] / "bad", "method.name=afa") == 2  # the plain model of the experiment
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.name=dual_bn" in err[0]
