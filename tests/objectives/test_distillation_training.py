"""Distillation in the training loop on real aligned LFW faces with dlib's ResNet as the teacher.

Short smoke runs of every method from its packaged config (``method=<name>``), the teacher cache, the
batches each objective brings, faces without identities (``data.sources``), exact resume with EKD's buffers,
and clear errors.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from faceforge.config import ConfigError, compose_config
from faceforge.core.checkpoint import load_checkpoint
from faceforge.engine.loop import Trainer
from faceforge.objectives.ddl_objective import complete_pairs

pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def small(lfw_small: Path, tmp_path_factory: pytest.TempPathFactory, list_file) -> dict[str, Path]:
    """32 labelled faces (8 people x 4), 8 faces of 2 other people as an unlabelled flat folder, and a
    teacher cache shared by the module's runs."""
    tmp = tmp_path_factory.mktemp("distill")
    people = sorted(p for p in lfw_small.iterdir() if p.is_dir())
    unl = tmp / "unlabelled"
    unl.mkdir()
    for person in people[8:10]:
        for f in sorted(person.glob("*.jpg"))[:4]:
            shutil.copy(f, unl / f.name)
    return {
        "root": lfw_small,
        "list": list_file(lfw_small, tmp / "train.txt", per_person=4, people=8),
        "unlabelled": unl,
        "cache": tmp / "teacher_cache",
    }


def _cfg(small: dict[str, Path], run_dir: Path, *overrides: str):
    return compose_config(
        "lfw_mobilefacenet_arcface",
        [
            f"data.root={small['root']}",
            f"data.list_file={small['list']}",
            f"run.dir={run_dir}",
            f"run.cache_dir={small['cache']}",
            "run.progress=false",
            "eval.pairs=null",
            "model.embedding_size=64",
            "data.exclude_pairs=[]",
            "data.num_workers=0",
            "data.batch_size=16",
            "run.threads=2",
            "run.precision=fp32",
            *overrides,
        ],
    )


@pytest.mark.slow
@pytest.mark.parametrize("method", ["feature_l2", "cosine", "rkd", "sp", "ekd", "ddl"])
def test_each_method_trains_from_its_config(small: dict[str, Path], tmp_path: Path, method: str) -> None:
    trainer = Trainer(
        _cfg(small, tmp_path / method, f"method={method}", "run.max_steps=2", "run.log_every=1")
    )
    report = trainer.fit()
    hist = report["history"]
    assert len(hist) == 2
    for rec in hist:
        assert np.isfinite(rec["loss"]) and np.isfinite(rec[method]) and np.isfinite(rec["margin"])
        weight = report["objectives"][method]["weight"]
        extra = rec.get("margin/extra", 0.0)
        assert rec["loss"] == pytest.approx(rec["margin"] + extra + weight * rec[method], rel=1e-5)
    ckpt = load_checkpoint(tmp_path / method / "checkpoints" / "last.pt")
    meta = ckpt["meta"]
    assert meta["objectives"][method]["type"] == method
    if method == "ddl":
        assert meta["teachers"] == [] and "ddl/kl_neg" in hist[0] and "margin/extra" in hist[0]
        # P x 2 identity batches (8 identities of 2 images), as many steps as a pass over 32 images
        assert trainer.steps_per_epoch == 2
    else:
        (teacher,) = meta["teachers"]
        assert teacher["dim"] == 128 and teacher["model"]["kind"] == "dlib" and teacher["valid_rows"] == 32
    if method in ("feature_l2", "cosine"):
        # 64-d student, 128-d teacher: a learned projection, trained and saved with the student
        w = ckpt["objectives"][method]["projection.weight"]
        assert tuple(w.shape) == (128, 64)
        assert tuple(meta["objectives"][method]["projection"]) == (64, 128)
    if method == "ekd":
        # random half (margin loss) + identity-balanced half; EMA thresholds moved and were saved
        assert trainer.steps_per_epoch == 4 and trainer.branch_names == ("random", "balanced")
        assert meta["objectives"]["margin"]["branches"] == ["random"]
        assert float(ckpt["objectives"]["ekd"]["loss.s_anchor"].abs().sum()) > 0


@pytest.mark.slow
def test_ddl_with_hard_photos_from_a_list(small: dict[str, Path], tmp_path: Path) -> None:
    """Hard twins are real photos: other images of the same 8 people shrunk to 24 px, listed with
    their identities (the training labels); one person's only hard photo is unreadable."""
    root = small["root"]
    lines = []
    for label, person in enumerate(sorted(p for p in root.iterdir() if p.is_dir())[:8]):
        for f in sorted(person.glob("*.jpg"))[4:7]:  # not among the 4 training images per person
            low = cv2.resize(
                cv2.resize(cv2.imread(str(f)), (24, 24), interpolation=cv2.INTER_AREA), (112, 112)
            )
            out = tmp_path / "hard" / person.name / f.name
            out.parent.mkdir(parents=True, exist_ok=True)
            if label == 0:
                bad = out
                out.write_bytes(b"truncated")
                lines.append(f"hard/{person.name}/{f.name} 0")
                break
            cv2.imwrite(str(out), low)
            lines.append(f"hard/{person.name}/{f.name} {label}")
    lines.append("hard/nobody.jpg 99")  # an identity that is not in the training data
    (tmp_path / "hard.txt").write_text("\n".join(lines) + "\n")
    trainer = Trainer(
        _cfg(
            small,
            tmp_path / "run",
            "method=ddl",
            f"objectives.ddl.hard_images={tmp_path / 'hard.txt'}",
            "run.max_steps=2",
            "run.log_every=1",
        )
    )
    report = trainer.fit()
    assert all(np.isfinite(r["ddl"]) for r in report["history"])
    hard = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["meta"]["objectives"]["ddl"][
        "hard_images"
    ]
    assert hard["identities_covered"] == 8 and hard["images"] == 22 and hard["unknown_identities"] == 1
    # every P x 2 batch holds all 8 people: 14 rows of real hard photos, person 0's 2 rows degraded
    assert hard["drawn"] == 2 * 14 and hard["degraded"] == 2 * 2
    assert hard["skipped"] == [str(bad)]


def test_teacher_cache_is_reused(small: dict[str, Path], tmp_path: Path) -> None:
    a = Trainer(_cfg(small, tmp_path / "a", "method=cosine")).teachers.table()
    b = Trainer(_cfg(small, tmp_path / "b", "method=cosine")).teachers.table()
    assert b.computed == 0  # every image came from the cache
    assert torch.equal(a.embeddings, b.embeddings)
    norms = b.embeddings.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    # a teacher target is the teacher's embedding of that very image
    emb = b.embeddings
    same = (emb[0] @ emb[1]).item()  # two images of person 0
    other = (emb[0] @ emb[4]).item()  # person 0 vs person 1
    assert same > other


@pytest.mark.slow
def test_liaad_with_a_faceforge_teacher_and_unlabelled_faces(small: dict[str, Path], tmp_path: Path) -> None:
    first = Trainer(_cfg(small, tmp_path / "t2", "optim.epochs=1"))
    first.fit()
    teacher2 = tmp_path / "t2" / "checkpoints" / "model.pt"
    cfg = _cfg(
        small,
        tmp_path / "liaad",
        "method=liaad",
        f"teachers.1.model={teacher2}",
        f"data.sources=[{{root: {small['unlabelled']}}}]",
        "run.log_every=1",
    )
    trainer = Trainer(cfg)
    assert len(trainer.dataset) == 40 and int((trainer.data.labels < 0).sum()) == 8
    dims = [t.dim for t in trainer.objectives["liaad"].tables]
    assert dims == [128, 64]  # dlib and the 64-d faceforge teacher, one projection each
    report = trainer.fit()
    rec = report["history"][-1]
    # confidence attention over the two teachers: weights per teacher, summing to 1
    assert rec["liaad/attention_general"] + rec["liaad/attention_age_invariant"] == pytest.approx(
        1.0, abs=1e-5
    )
    assert np.isfinite(rec["liaad"])


def test_rows_without_identity_skip_the_margin_loss(small: dict[str, Path], tmp_path: Path) -> None:
    cfg = _cfg(small, tmp_path / "u", "method=cosine", f"data.sources=[{{root: {small['unlabelled']}}}]")
    trainer = Trainer(cfg)
    margin = trainer.objectives["margin"]
    seen: list[torch.Tensor] = []
    original = margin.criterion.forward
    margin.criterion.forward = lambda emb, labels: (seen.append(labels), original(emb, labels))[1]  # type: ignore[method-assign]
    from faceforge.data.dataset import Batch

    imgs = torch.from_numpy(np.stack([trainer.dataset.image(i) for i in (0, 1, 35, 36)]))
    logs = trainer.train_step(Batch(imgs, torch.tensor([0, 0, -1, -1]), torch.tensor([0, 1, 35, 36])))
    assert seen[0].tolist() == [0, 0]  # only the rows with an identity reached the head
    assert logs["cosine"] > 0  # every row (with or without identity) was distilled


@pytest.mark.slow
def test_ekd_run_resumes_exactly(small: dict[str, Path], tmp_path: Path) -> None:
    common = ["method=ekd", "optim.epochs=2"]
    straight = Trainer(_cfg(small, tmp_path / "a", *common, "run.max_steps=5"))
    straight.fit()
    Trainer(_cfg(small, tmp_path / "b", *common, "run.max_steps=3")).fit()
    Trainer(_cfg(small, tmp_path / "b", *common, "run.max_steps=2", "run.resume=auto")).fit()
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert a["progress"]["global_step"] == b["progress"]["global_step"] == 5
    for k, v in a["backbone"].items():
        assert torch.equal(v, b["backbone"][k]), f"backbone.{k} differs after resume"
    for name in ("margin", "ekd"):
        for k, v in a["objectives"][name].items():
            assert torch.equal(v, b["objectives"][name][k]), f"{name}.{k} differs after resume"


def test_complete_pairs_by_hand() -> None:
    # rows: (7,7) ok, (3,4) broken, (5,5) ok, (7,7) repeats label 7 -> both 7-pairs dropped, (9) odd tail
    labels = torch.tensor([7, 7, 3, 4, 5, 5, 7, 7, 9])
    assert complete_pairs(labels).tolist() == [4, 5]
    assert complete_pairs(torch.tensor([1, 1, 2, 2])).tolist() == [0, 1, 2, 3]


def test_bad_distillation_configs_are_named(small: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"teachers\.1\.model"):
        _cfg(small, tmp_path / "x", "method=liaad")
    with pytest.raises(ValueError, match=r"objective rkd needs a teacher: add teachers="):
        Trainer(_cfg(small, tmp_path / "x", "method=rkd", "teachers=[]"))
    with pytest.raises(ValueError, match="projection=auto"):
        Trainer(_cfg(small, tmp_path / "x", "method=cosine", "objectives.cosine.projection=none"))
    with pytest.raises(ValueError, match="odd"):
        Trainer(_cfg(small, tmp_path / "x", "method=ddl", "data.batch_size=15"))
    with pytest.raises(ValueError, match="needs an identity on every training row"):
        Trainer(_cfg(small, tmp_path / "x", "method=ekd", f"data.sources=[{{root: {small['unlabelled']}}}]"))
    with pytest.raises(ValueError, match="two or more teachers"):
        Trainer(_cfg(small, tmp_path / "x", "method=liaad", "teachers=[{model: dlib, name: general}]"))
    with pytest.raises(ValueError, match="no teacher named 'other'"):
        Trainer(_cfg(small, tmp_path / "x", "method=rkd", "objectives.rkd.teacher=other"))
    with pytest.raises(ConfigError, match=r"objectives\.rkd: unknown key 'distance_wieght'"):
        _cfg(small, tmp_path / "x", "method=rkd", "objectives.rkd.distance_wieght=3")
    with pytest.raises(ConfigError, match=r"'distill' is gone: distillation is configured as objectives"):
        _cfg(small, tmp_path / "x", "distill.method=rkd")
    with pytest.raises(ValueError, match=r"\['ekd', 'ddl'\] each bring their own sampler"):
        Trainer(_cfg(small, tmp_path / "x", "method=ekd", "objectives.ddl={}"))


def test_class_centroids_by_hand() -> None:
    from faceforge.distill.teachers import TeacherTable, class_centroids, image_key

    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    table = TeacherTable("t", emb, torch.tensor([True, True, True, False]), {}, None, 0)
    # class 0: rows 0 and 1 -> mean (0.5, 0.5) -> (0.707, 0.707); class 1: row 2 only (row 3 invalid);
    # class 2: no row -> zero vector; label -1 (unlabelled) is ignored
    c = class_centroids(table, np.array([0, 0, 1, 1]), 3)
    assert torch.allclose(c, torch.tensor([[0.70710677, 0.70710677], [1.0, 0.0], [0.0, 0.0]]))
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 1
    assert image_key(a) == image_key(a.copy()) != image_key(b)
    assert image_key(a) != image_key(np.zeros((2, 8, 3), np.uint8))  # same bytes, other shape
