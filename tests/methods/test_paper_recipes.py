"""The seed methods' paper recipes: DDL's separate negative and pair batches, EKD's teacher on the student's view,
TFace's weight-decay rule, SDD-FIQA's required recogniser, and every packaged paper recipe composing and training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from faceforge.config import ConfigError, compose_config
from faceforge.data.dataset import collate_faces
from faceforge.data.transforms import build_augmentations
from faceforge.distill.ddl import DDLBranch
from faceforge.distill.teachers import build_teacher_tables
from faceforge.objectives import OBJECTIVES, ObjectiveContext, SamplerRequest, StepBatch
from faceforge.objectives.distillation import _teacher_rows

PAPER_RECIPES = ("paper_ddl", "paper_ekd", "paper_cifp", "paper_mtlface", "paper_sddfiqa", "paper_liaad")


def _ddl(labels: np.ndarray, **options) -> object:
    ctx = ObjectiveContext(
        embedding_size=8, num_classes=int(labels.max()) + 1, labels=labels, classes=[], dataset=None
    )
    return OBJECTIVES.get("ddl")(ctx, sampling="paper", **options)


def test_ddl_paper_batches_hold_one_image_per_identity_then_pairs() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(40), rng.integers(1, 6, size=40))  # some identities have one image
    ddl = _ddl(labels, normal_batch=6)
    sampler = ddl.batch_sampler(SamplerRequest(labels, 6 + 2 * 5, seed=0, rank=0, world_size=1))
    assert sampler.branch_names == ("normal", "pairs")
    sampler.set_epoch(0)
    batches = list(sampler)
    assert len(batches) == len(labels) // 16
    singles = set(np.flatnonzero(np.bincount(labels) == 1))
    for batch in batches:
        rows, tags = np.array([i for i, _ in batch]), np.array([t for _, t in batch])
        normal, pairs = labels[rows[tags == 0]], labels[rows[tags == 1]]
        assert len(normal) == 6 and len(set(normal)) == 6  # every pair in the normal batch is a negative
        assert len(pairs) == 10 and np.array_equal(pairs[0::2], pairs[1::2])
        assert len(set(pairs[0::2])) == 5 and not singles & set(pairs)  # pairs need two images
        assert not np.array_equal(rows[tags == 1][0::2], rows[tags == 1][1::2])  # two different images
    with pytest.raises(ValueError, match="even rest"):
        ddl.batch_sampler(SamplerRequest(labels, 6 + 5, seed=0, rank=0, world_size=1))


def test_ddl_paper_branches_take_negatives_from_the_normal_rows_only() -> None:
    labels = np.array([0, 1, 2, 3, 4, 4, 5, 5])  # 4 normal rows, then two pairs
    ddl = _ddl(labels, normal_batch=4, hard_pairs="second")
    captured: dict[str, tuple[DDLBranch, DDLBranch]] = {}

    class Capture(torch.nn.Module):
        def forward(self, easy: DDLBranch, hard: DDLBranch) -> torch.Tensor:
            captured["b"] = (easy, hard)
            return torch.zeros(())

    ddl.loss = Capture()
    g = torch.Generator().manual_seed(0)
    emb, extra = torch.randn(8, 8, generator=g), torch.randn(8, 8, generator=g)
    branch = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    ddl(
        StepBatch(
            emb,
            torch.as_tensor(labels),
            torch.arange(8),
            branch=branch,
            branch_names=("normal", "pairs"),
            extra=extra,
        )
    )
    easy, hard = captured["b"]
    assert torch.equal(easy.normal, emb[:4]) and torch.equal(hard.normal, extra[:4])
    assert torch.equal(easy.pos_a, emb[[4, 6]]) and torch.equal(easy.pos_b, emb[[5, 7]])
    # hard_pairs=second: an easy image against a hard one
    assert torch.equal(hard.pos_a, emb[[4, 6]]) and torch.equal(hard.pos_b, extra[[5, 7]])


def test_margin_extra_branch_follows_the_branch_selection() -> None:
    ctx = ObjectiveContext(
        embedding_size=8,
        num_classes=4,
        labels=np.arange(4),
        classes=[],
        dataset=None,
        head_config={"name": "softmax"},
    )
    margin = OBJECTIVES.get("margin")(ctx, branches=["normal"], extra_branch=True)
    g = torch.Generator().manual_seed(1)
    emb, extra = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    labels, branch = torch.tensor([0, 1, 2, 3, 3, 3]), torch.tensor([0, 0, 0, 1, 1, 1])
    out = margin(
        StepBatch(emb, labels, torch.arange(6), branch=branch, branch_names=("normal", "pairs"), extra=extra)
    )
    want = margin.criterion(extra[:3], labels[:3]).loss
    torch.testing.assert_close(out.terms["extra"], want)


class _MeanLeftHalf:
    """A fake teacher whose embedding tells the two views apart: channel means of the left and right halves."""

    embedding_size, input_size = 6, 8

    def describe(self) -> dict:
        return {"kind": "fake-halves", "sha256": "1" * 64}

    def embed(self, faces: np.ndarray) -> np.ndarray:
        f = faces.astype(np.float32)
        return np.concatenate([f[:, :, :4].mean((1, 2)), f[:, :, 4:].mean((1, 2))], axis=1) + 1.0


def test_teacher_on_the_student_view_reads_the_mirrored_faces_embedding() -> None:
    faces = [np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8) for i in range(5)]
    (table,) = build_teacher_tables(
        [_MeanLeftHalf()], 5, faces.__getitem__, ["t"], [False], None, progress=False, views=["student"]
    )
    assert table.mirrored_embeddings is not None
    teacher = _MeanLeftHalf()
    for i, face in enumerate(faces):
        plain = torch.nn.functional.normalize(torch.from_numpy(teacher.embed(face[None])), dim=1)[0]
        flipped = torch.nn.functional.normalize(torch.from_numpy(teacher.embed(face[None, :, ::-1])), dim=1)[
            0
        ]
        torch.testing.assert_close(table.embeddings[i], plain)
        torch.testing.assert_close(table.mirrored_embeddings[i], flipped)
    mirrored = torch.tensor([True, False, True])
    rows = _teacher_rows(table, torch.tensor([0, 1, 2]), torch.device("cpu"), mirrored)
    torch.testing.assert_close(rows[0], table.mirrored_embeddings[0])
    torch.testing.assert_close(rows[1], table.embeddings[1])


def test_the_dataset_says_which_faces_the_augmentation_mirrored() -> None:
    img = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    always = build_augmentations({"flip": {"p": 1.0}})
    out, mirrored = always.apply(img, np.random.default_rng(0))
    assert mirrored and np.array_equal(out, img[:, ::-1])
    out, mirrored = build_augmentations({"flip": {"p": 0.0}}).apply(img, np.random.default_rng(0))
    assert not mirrored and out is img
    twice = build_augmentations({"flip": {"p": 1.0}, "lowres": {"p": 0.0}})
    assert twice.apply(img, np.random.default_rng(0))[1]
    batch = collate_faces([(img, 0, 0, True), (img, 1, 1, False), (None, "bad.jpg: unreadable", 2, False)])
    assert batch.mirrored.tolist() == [True, False] and batch.skipped == ["bad.jpg: unreadable"]


def test_tface_weight_decay_rule_exempts_names_with_bn_only() -> None:
    from faceforge.engine.optim import parameter_groups

    net = torch.nn.Sequential()
    net.add_module("conv", torch.nn.Conv2d(3, 4, 3, bias=True))
    net.add_module("bn1", torch.nn.BatchNorm2d(4))
    net.add_module("prelu", torch.nn.PReLU(4))
    decay, no_decay = parameter_groups([net], 5e-4, True, no_decay_names=["bn"])
    assert {id(p) for p in no_decay["params"]} == {id(net.bn1.weight), id(net.bn1.bias)}
    assert {id(p) for p in decay["params"]} == {id(net.conv.weight), id(net.conv.bias), id(net.prelu.weight)}
    ours = parameter_groups([net], 5e-4, True)  # faceforge's rule: BN, PReLU and biases undecayed
    assert {id(p) for p in ours[0]["params"]} == {id(net.conv.weight)}


def test_sddfiqa_requires_the_recogniser_to_start_from() -> None:
    with pytest.raises(ConfigError, match=r"run\.init"):
        compose_config(
            "lfw_mobilefacenet_arcface", ["method=sddfiqa", "model=sddfiqa_mobilefacenet", "data.root=x"]
        )
    cfg = compose_config(
        "lfw_mobilefacenet_arcface",
        ["method=sddfiqa", "model=sddfiqa_mobilefacenet", "data.root=x", "run.init=null"],
    )
    assert cfg.run.init is None  # from scratch only when asked for


@pytest.mark.parametrize("recipe", PAPER_RECIPES)
def test_paper_recipes_compose_with_the_papers_settings(recipe: str) -> None:
    required = {
        "paper_ddl": ["run.init=x.pt"],
        "paper_ekd": ["teachers.0.model=dlib"],
        "paper_mtlface": ["data.attributes=a.csv"],
        "paper_sddfiqa": ["run.init=x.pt", "data.attributes=a.csv"],
        "paper_liaad": ["teachers.0.model=a.pt", "teachers.1.model=b.pt"],
    }.get(recipe, [])
    with pytest.raises(ConfigError, match="must be set"):
        compose_config(recipe, [])
    cfg = compose_config(recipe, ["data.root=x", *required])
    if recipe != "paper_sddfiqa":
        assert cfg.optim.grad_clip == 0.0  # no reference clips
    settings = {
        "paper_ddl": lambda c: (
            (c.model.name, c.head.name, c.optim.lr, c.optim.epochs, c.objectives.ddl.sampling)
            == ("iresnet50", "curricularface", 0.001, 2, "paper")
        ),
        "paper_ekd": lambda c: (
            (c.head.scale, c.head.margin, list(c.optim.milestones), c.teachers[0].view)
            == (64.0, 0.4, [10, 18, 22], "student")
        ),
        "paper_cifp": lambda c: (
            (c.model.name, c.head.name, c.head.scale, c.head.margin) == ("iresnet34", "cosface", 64.0, 0.35)
        ),
        "paper_mtlface": lambda c: (
            (c.model.name, c.model.dropout, c.head.name) == ("aifr_iresnet50", 0.5, "cosface")
        ),
        "paper_sddfiqa": lambda c: (c.optim.name, c.optim.lr, c.run.init_partial) == ("adam", 1e-4, True),
        "paper_liaad": lambda c: c.objectives.liaad is not None,
    }[recipe]
    assert settings(cfg)


def _checkpoint(path: Path, name: str, **kwargs) -> Path:
    """A freshly initialised backbone saved as a faceforge checkpoint (a stand-in for a pretrained one)."""
    from faceforge.importers.base import ImportedModel, save_imported
    from faceforge.models.backbones import build_backbone

    torch.manual_seed(0)
    net = build_backbone(name, **kwargs)
    pre = {
        "input_size": 112,
        "colour": "RGB",
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "alignment": "arcface_112",
    }
    model = ImportedModel(
        {"name": name, "kwargs": kwargs}, net.state_dict(), net.embedding_size, pre, {"format": "test"}
    )
    return save_imported(model, path)


@pytest.mark.slow
def test_every_paper_recipe_trains_a_few_steps(lfw_small: Path, list_file, tmp_path: Path) -> None:
    from faceforge.engine.loop import Trainer

    # 6 images of each of the 12 people: the teachers embed every training image before step 1, so the list
    # keeps their pass (both flips) short
    listed = list_file(lfw_small, tmp_path / "train.txt", per_person=6, people=12)
    files = [line.split()[0] for line in listed.read_text().splitlines()]
    rng = np.random.default_rng(0)
    ages = tmp_path / "ages.csv"
    ages.write_text("path,age\n" + "".join(f"{f},{rng.integers(15, 80)}\n" for f in files))
    quality = tmp_path / "quality.csv"
    quality.write_text("path,quality\n" + "".join(f"{f},{rng.uniform(0, 100):.2f}\n" for f in files))
    r50 = _checkpoint(tmp_path / "r50.pt", "iresnet50")
    teacher = _checkpoint(tmp_path / "teacher.pt", "mobilefacenet", embedding_size=128)
    small = [
        "run.max_steps=2",
        "run.progress=false",
        "data.num_workers=0",
        "eval.pairs=null",
        "run.precision=fp32",
        f"data.list_file={listed}",
    ]
    runs = {
        "paper_ddl": [f"run.init={r50}", "data.batch_size=12", "objectives.ddl.normal_batch=4"],
        "paper_ekd": [f"teachers.0.model={teacher}", "data.batch_size=16", "run.cache_dir=none"],
        "paper_cifp": ["data.batch_size=8"],
        "paper_mtlface": [f"data.attributes={ages}", "data.batch_size=8"],
        "paper_sddfiqa": [f"run.init={r50}", f"data.attributes={quality}", "data.batch_size=8"],
        "paper_liaad": [
            f"teachers.0.model={teacher}",
            f"teachers.1.model={teacher}",
            "data.batch_size=8",
            "run.cache_dir=none",
        ],
    }
    for recipe, overrides in runs.items():
        cfg = compose_config(
            recipe, [f"data.root={lfw_small}", f"run.dir={tmp_path / recipe}", *small, *overrides]
        )
        report = Trainer(cfg).fit()
        assert report["progress"]["global_step"] == 2, recipe
        losses = [h["loss"] for h in report["history"]] if report.get("history") else [0.0]
        assert all(np.isfinite(losses)), (recipe, losses)
