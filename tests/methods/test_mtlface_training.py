"""MTLFace through the engine on real faces: the packaged loss weights by hand on a fixed batch, the adversarial
estimator's weight decay, a mixture of LFW (identities, some ages) and UTKFace (ages, no identities) through
``faceforge train`` with masked labels, the numbers such a run must reach, exact resume, and
``faceforge attributes`` on the trained model."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from faceforge.cli.main import main
from faceforge.config import compose_config
from faceforge.core.checkpoint import load_checkpoint
from faceforge.data.attributes import utkface_fields
from faceforge.data.dataset import Batch, collate_faces
from faceforge.engine.loop import Trainer
from faceforge.methods.mtlface.age import age2group, load_age_estimator
from faceforge.methods.mtlface.predict import AttributePredictor

N_UTK = 16  # UTKFace faces in the mixture: 32 LFW + 16 = 48 rows = 6 batches of 8, every row once per epoch


@pytest.fixture(scope="module")
def data(lfw_small: Path, utk_small: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """8 LFW people x 4 images (a list file), an age sidecar for 3 of each 4 images (person-dependent ages), and
    a list of 16 prepared UTKFace faces (ages from their file names)."""
    tmp = tmp_path_factory.mktemp("mtlface")
    people = sorted(p for p in lfw_small.iterdir() if p.is_dir())[:8]
    lines, rows, ages = [], [], []
    for label, person in enumerate(people):
        for i, f in enumerate(sorted(person.glob("*.jpg"))[:4]):
            rel = f.relative_to(lfw_small).as_posix()
            lines.append(f"{rel} {label}")
            age = 25 + 6 * label + i if i < 3 else None
            rows.append([rel, "" if age is None else str(age)])
            if age is not None:
                ages.append(age)
    (tmp / "train.txt").write_text("\n".join(lines) + "\n")
    with (tmp / "ages.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["path", "age"], *rows])
    utk = sorted(f for f in utk_small.glob("*.jpg"))[:: max(1, len(list(utk_small.glob("*.jpg"))) // N_UTK)][
        :N_UTK
    ]
    assert len(utk) == N_UTK, f"only {len(utk)} UTKFace faces were prepared"
    (utk_small / "mix.txt").write_text("".join(f"{f.name}\n" for f in utk))
    utk_ages = [utkface_fields(f.name)[0] for f in utk]
    return {
        "root": lfw_small,
        "list": tmp / "train.txt",
        "ages": tmp / "ages.csv",
        "utk_list": utk_small / "mix.txt",
        "all_ages": np.array(ages + utk_ages, dtype=np.float64),
        "tmp": tmp,
    }


def _overrides(data: dict[str, Any], run: Path, *more: str) -> list[str]:
    return [
        "method=mtlface", f"data.root={data['root']}", f"data.list_file={data['list']}",
        f"data.attributes={data['ages']}", "data.exclude_pairs=[]", "data.preload=false", "data.num_workers=0",
        "data.batch_size=8", "model.embedding_size=32", "run.log_every=1", "run.progress=false", "run.threads=2",
        "run.precision=fp32", "run.channels_last=false", "eval.pairs=null", f"run.dir={run}", *more,
    ]  # fmt: skip


MIXTURE = "data.sources=[{{root: {}, identities: false, labeller: utkface}}]"


# ------------------------------------------------------------------------------------ the loss on a batch
def test_packaged_weights_on_a_fixed_batch_by_hand(data: dict[str, Any]) -> None:
    """loss = CosFace + 0.001 L_age(X_age) + 0.002 L_age(D(GRL(X_id))), every term written out by hand; the
    gradient reaching X_id from the adversarial term is reversed."""
    torch.manual_seed(0)
    cfg = compose_config("lfw_mobilefacenet_arcface", _overrides(data, data["tmp"] / "hand"))
    trainer = Trainer(cfg)
    assert dict(trainer.objective_weights) == {"margin": 1.0, "age": 0.001, "age_adversarial": 0.002}
    trainer.backbone.eval()
    trainer.objectives.eval()  # BN layers of the estimators on their (fresh) running statistics
    batch = collate_faces([trainer.dataset[i] for i in range(8)])
    x = trainer.preprocess(batch.images, trainer.device)
    emb, feats = trainer.backbone(x, return_features=True)
    x_id = feats["x_id"].detach().requires_grad_(True)
    x_age = feats["x_age"].detach()
    emb = trainer.backbone.encoder.embed_map(x_id)
    sb = trainer.engine.step_batch(
        Batch(x, batch.labels, batch.indices), emb, None, {"x_id": x_id, "x_age": x_age}
    )
    total = trainer.engine.objectives_loss(sb)

    # CosFace s=32, m=0.3 (the experiment's small-data head over the mtlface config's cosface)
    head = trainer.objectives["margin"].head
    s, m = head.scale, head.margin
    assert (type(head).__name__, s, m) == ("CosFace", 32.0, 0.3)
    cos = F.normalize(emb, dim=1) @ F.normalize(head.weight, dim=1).T
    y = batch.labels
    logits = s * (cos - m * F.one_hot(y, cos.shape[1]))
    margin = (torch.logsumexp(logits, 1) - logits[torch.arange(8), y]).mean()

    ages, mask = sb.attribute("age")
    assert mask.tolist() == [True, True, True, False] * 2  # the sidecar leaves every 4th image without an age

    def age_term(est: torch.nn.Module, fmap: torch.Tensor) -> torch.Tensor:
        bn = est.norm
        z = (fmap[mask] - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var + bn.eps)[
            None, :, None, None
        ] * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
        h = torch.clamp(z.flatten(1) @ est.fc1.weight.T + est.fc1.bias, min=0)
        a = h @ est.fc2.weight.T + est.fc2.bias
        g = a @ est.group.weight.T + est.group.bias
        expected = (torch.softmax(a, 1) * torch.arange(101.0)).sum(1)
        t = ages[mask]
        ce = (torch.logsumexp(g, 1) - g[torch.arange(len(t)), age2group(t)]).mean()
        return ((expected - t) ** 2).mean() + ce

    age = age_term(trainer.objectives["age"].estimator, x_age)
    adv = age_term(trainer.objectives["age_adversarial"].estimator, x_id)
    hand = margin + 0.001 * age + 0.002 * adv
    assert float(total.detach()) == pytest.approx(float(hand.detach()), rel=1e-5)
    logs = trainer.engine.finish_logs()
    assert logs["age"] == pytest.approx(float(age.detach()), rel=1e-5) and logs["age/used"] == 6

    # gradient at X_id: the adversarial objective's is the hand term's, reversed; the total's is the margin's
    # plus 0.002 times that
    (g_total,) = torch.autograd.grad(total, x_id, retain_graph=True)
    (g_obj,) = torch.autograd.grad(trainer.objectives["age_adversarial"](sb).terms["loss"], x_id)
    g_margin, g_adv = (
        torch.autograd.grad(margin, x_id, retain_graph=True)[0],
        torch.autograd.grad(adv, x_id)[0],
    )
    assert float(g_adv.abs().max()) > 0
    torch.testing.assert_close(g_obj, -g_adv, atol=1e-6 * float(g_adv.abs().max()), rtol=1e-4)
    rel = float((g_total - (g_margin - 0.002 * g_adv)).norm() / g_total.norm())
    assert rel < 1e-5

    # weight decay: the main estimator's weights decay with the run's 5e-4, the adversarial estimator's not at all
    groups = trainer.optimizers["main"].param_groups

    def decay_of(p: torch.nn.Parameter) -> float:
        return next(g["weight_decay"] for g in groups if any(q is p for q in g["params"]))

    assert decay_of(trainer.objectives["age"].estimator.fc1.weight) == 5e-4
    for p in trainer.objectives["age_adversarial"].parameters():
        assert decay_of(p) == 0.0


# ------------------------------------------------------------------------------- runs through faceforge train
#: the smoke runs: 6 epochs of 6 steps; the age term weighted up (0.1) so that 36 steps show it learning; estimators
#: with a 64-wide hidden layer (MTLFace's 512 puts 12.8M weights in each one's first Linear: slow checkpoints)
SMOKE = ["optim.epochs=6", "objectives.age.weight=0.1", "objectives.age_adversarial.weight=0.02", "optim.lr=0.05",
         "objectives.age.hidden=64", "objectives.age_adversarial.hidden=64"]  # fmt: skip


@pytest.fixture(scope="module")
def straight(data: dict[str, Any]) -> Path:
    """AIFR on the LFW + UTKFace mixture through ``faceforge train``."""
    run = data["tmp"] / "straight"
    assert (
        main(
            [
                "train",
                "lfw_mobilefacenet_arcface",
                *_overrides(data, run, MIXTURE.format(data["utk_list"]), *SMOKE),
            ]
        )
        == 0
    )
    return run


@torch.no_grad()
def _ages_of_every_row(run: Path, dataset_rows: list[np.ndarray]) -> np.ndarray:
    """The trained age head's expected ages of the given un-augmented faces, in one batch with batch statistics
    (36 steps leave AFD's momentum-0.01 running statistics far from the data, so eval mode would test those)."""
    from faceforge.embedders.checkpoint import backbone_from_checkpoint
    from faceforge.methods.mtlface.age import dex_expectation

    ckpt = load_checkpoint(run / "checkpoints" / "model.pt")
    model = backbone_from_checkpoint(ckpt).train()
    est = load_age_estimator(ckpt).train()
    from faceforge.data.preprocess import Preprocess

    x = Preprocess()(torch.from_numpy(np.stack(dataset_rows)))
    _, feats = model(x, return_features=True)
    return dex_expectation(est(feats["x_age"])[0]).numpy()


def test_mixture_with_masked_labels_trains_and_learns(straight: Path, data: dict[str, Any]) -> None:
    report = json.loads((straight / "report.json").read_text())
    hist = report["history"]
    assert report["completed"] and len(hist) == 36 and report["num_images"] == 48
    assert report["num_identities"] == 8  # UTKFace adds rows, not classes
    # every epoch sees each of the 24 LFW faces with an age and the 16 UTKFace faces exactly once
    for epoch in range(6):
        assert sum(r["age/used"] for r in hist[epoch * 6 : (epoch + 1) * 6]) == 24 + N_UTK
        assert sum(r["age_adversarial/used"] for r in hist[epoch * 6 : (epoch + 1) * 6]) == 24 + N_UTK
    mean = lambda rows, k: float(np.mean([r[k] for r in rows]))  # noqa: E731
    # the identity loss and the age loss fall over 36 steps
    assert mean(hist[-6:], "margin") < 0.8 * mean(hist[:6], "margin")
    assert mean(hist[-12:], "age/mse") < 0.8 * mean(hist[:12], "age/mse")
    # the trained age head beats predicting the faces' mean age for everyone (it starts at 50 for every face)
    cfg = compose_config(
        "lfw_mobilefacenet_arcface", _overrides(data, data["tmp"] / "rows", MIXTURE.format(data["utk_list"]))
    )
    from faceforge.data.sources import build_training_data

    td = build_training_data(cfg.data, progress=False)
    values, mask = td.attributes.numeric("age")
    rows = np.flatnonzero(mask)
    predicted = _ages_of_every_row(straight, [td.dataset.image(int(i)) for i in rows])
    ages = values[rows]
    assert np.array_equal(np.sort(ages), np.sort(data["all_ages"]))
    baseline = float(np.abs(ages - ages.mean()).mean())
    mae = float(np.abs(predicted - ages).mean())
    assert mae < 0.9 * baseline, (mae, baseline)


def test_aifr_run_resumes_exactly(data: dict[str, Any]) -> None:
    """2 epochs straight, and 5 steps + a resume: the same weights, estimators, head and optimiser state."""
    more = [MIXTURE.format(data["utk_list"]), *SMOKE, "optim.epochs=2"]
    a_run, b_run = data["tmp"] / "resume_a", data["tmp"] / "resume_b"
    assert main(["train", "lfw_mobilefacenet_arcface", *_overrides(data, a_run, *more)]) == 0
    assert (
        main(["train", "lfw_mobilefacenet_arcface", *_overrides(data, b_run, *more, "run.max_steps=5")]) == 0
    )
    assert (
        main(["train", "lfw_mobilefacenet_arcface", *_overrides(data, b_run, *more, "run.resume=auto")]) == 0
    )
    a = load_checkpoint(a_run / "checkpoints" / "last.pt")
    b = load_checkpoint(b_run / "checkpoints" / "last.pt")
    assert a["progress"]["global_step"] == b["progress"]["global_step"] == 12
    assert set(a["objectives"]) == {"margin", "age", "age_adversarial"}
    for k, v in a["backbone"].items():
        assert torch.equal(v, b["backbone"][k]), k
    for name, state in a["objectives"].items():
        for k, v in state.items():
            assert torch.equal(v, b["objectives"][name][k]), f"{name}.{k}"
    sa, sb = a["optimizers"]["main"]["state"], b["optimizers"]["main"]["state"]
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)


def test_attributes_cli_writes_ages_and_lists_bad_images(
    straight: Path, data: dict[str, Any], tmp_path: Path
) -> None:
    model = straight / "checkpoints" / "model.pt"
    faces = tmp_path / "faces"
    person = sorted(p for p in data["root"].iterdir() if p.is_dir())[0]
    (faces / person.name).mkdir(parents=True)
    good = sorted(person.glob("*.jpg"))[:3]
    for f in good:
        (faces / person.name / f.name).write_bytes(f.read_bytes())
    (faces / "broken.jpg").write_bytes(b"not a jpeg")
    import cv2

    cv2.imwrite(str(faces / "big.png"), np.zeros((200, 200, 3), np.uint8))
    out = tmp_path / "ages.csv"
    assert (
        main(
            ["attributes", "--model", str(model), "--images", str(faces), "--out", str(out), "--no-progress"]
        )
        == 0
    )
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == [f"{person.name}/{f.name}" for f in good]
    report = json.loads(out.with_name("ages.csv.json").read_text())
    assert report["written"] == 3 and report["skipped"]["count"] == 2
    reasons = {s["path"]: s["reason"] for s in report["skipped"]["images"]}
    assert "not a decodable image" in reasons["broken.jpg"] and "not an aligned 112x112" in reasons["big.png"]
    # the numbers are the trained estimator's on X_age of the backbone, eval mode
    predictor = AttributePredictor(model)
    est = load_age_estimator(model)
    imgs = np.stack([cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in good])
    with torch.no_grad():
        _, feats = predictor.model(predictor.preprocess(torch.from_numpy(imgs)), return_features=True)
        expected_age, expected_group = est.predict(feats["x_age"])
    got = np.array([float(r["age"]) for r in rows])
    np.testing.assert_allclose(got, expected_age.numpy(), atol=2e-3)
    assert [int(r["age_group"]) for r in rows] == expected_group.tolist()
    # the file is a sidecar data.attributes reads
    from faceforge.data.attributes import read_sidecar

    table, names = read_sidecar(out)
    assert names == ["age", "age_group"] and len(table) == 3
    # a checkpoint without an age head is refused in one line
    assert main(["attributes", "--model", str(model), "--images", str(faces), "--out", str(out),
                 "--objective", "margin"]) == 2  # fmt: skip
