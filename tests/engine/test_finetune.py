"""Fine-tuning: run.init of an imported checkpoint (its architecture and preprocessing), and every finetune option.

The pretrained network here is a small random conv net (:class:`TinyNet`, registered for these tests) written
through the importer contract (:func:`faceforge.importers.save_imported`), as ``faceforge import`` writes dlib's
ResNet or SFace: weights, ``meta.preprocess`` and an import record, no head. Training runs on 32 real aligned LFW
faces of 8 people; the packaged recipe itself runs once on a MobileFaceNet through ``faceforge train`` (slow).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from faceforge.config import ConfigError, compose_config
from faceforge.core.checkpoint import atomic_torch_save, load_checkpoint
from faceforge.core.hashing import file_sha256
from faceforge.data.image_io import UnreadableImageError
from faceforge.data.preprocess import Preprocess
from faceforge.engine.head_init import class_mean_directions, imprint_head
from faceforge.engine.loop import Trainer
from faceforge.engine.schedule import learning_rate
from faceforge.importers import ImportedModel, save_imported
from faceforge.models.backbones import BACKBONES, build_backbone
from faceforge.objectives import ObjectiveContext
from faceforge.objectives.margin import MarginObjective

SFACE_LIKE = {"colour": "BGR", "mean": (0.0, 0.0, 0.0), "std": (1 / 255, 1 / 255, 1 / 255)}
TINY = "test_finetune_tiny"
KWARGS = {"embedding_size": 16}


class TinyNet(nn.Module):
    """A small face network (two strided conv + BN + PReLU blocks, pooled, Linear + BN1d): real training steps
    in milliseconds, with the layer kinds the options act on."""

    def __init__(self, embedding_size: int = 16, input_size: int = 112) -> None:
        super().__init__()
        self.embedding_size, self.input_size = embedding_size, input_size
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 4, 1, bias=False), nn.BatchNorm2d(8), nn.PReLU(8))
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, 4, 1, bias=False), nn.BatchNorm2d(16), nn.PReLU(16))
        self.fc = nn.Linear(16, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(self.block(self.stem(x)).mean((2, 3))))


@pytest.fixture(scope="module", autouse=True)
def _tiny_backbone():
    BACKBONES.register(TINY)(TinyNet)
    yield
    BACKBONES.unregister(TINY)


def _import(path: Path, seed: int = 0, name: str = TINY, kwargs: dict | None = None, **preprocess) -> Path:
    """A 'pretrained' network written as ``faceforge import`` writes one (BN statistics made non-trivial)."""
    kwargs = dict(KWARGS if kwargs is None else kwargs)
    torch.manual_seed(seed)
    net = build_backbone(name, **kwargs)
    net.train()
    with torch.no_grad():
        net(torch.randn(16, 3, 112, 112) * 0.5)  # running statistics that a few steps would visibly move
    model = ImportedModel(
        backbone={"name": name, "kwargs": kwargs},
        weights=net.state_dict(),
        embedding_size=int(net.embedding_size),
        preprocess=Preprocess(input_size=preprocess.pop("input_size", 112), **preprocess).to_dict(),
        source={"path": "hand-made", "licence": "test", "network": f"random {name}"},
    )
    return save_imported(model, path)


@pytest.fixture(scope="module")
def setup(
    lfw_small: Path, tmp_path_factory: pytest.TempPathFactory, list_file, _tiny_backbone
) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("finetune")
    return {
        "root": lfw_small,
        "list": list_file(lfw_small, tmp / "train.txt", per_person=4, people=8),  # 32 images, 8 people
        "rgb": _import(tmp / "rgb.pt"),
        "bgr": _import(tmp / "bgr.pt", seed=1, **SFACE_LIKE),
    }


def _cfg(s: dict[str, Path], run: Path, *overrides: str, init: str = "rgb"):
    """The packaged finetune recipe on 32 faces, batch 8 (4 steps per epoch), 2 epochs."""
    return compose_config(
        "finetune",
        [
            f"data.root={s['root']}",
            f"data.list_file={s['list']}",
            f"run.init={s[init]}",
            f"run.dir={run}",
            "run.progress=false",
            "run.threads=2",
            "data.preload=false",
            "data.batch_size=8",
            "optim.epochs=2",
            "run.log_every=1",
            *overrides,
        ],
    )


def _one_line(exc: pytest.ExceptionInfo) -> None:
    assert "\n" not in str(exc.value), str(exc.value)


# --------------------------------------------------------------------------------- class-mean head, by hand
class _Tiny(nn.Module):
    """2x2 faces -> 3-d: Linear then BatchNorm1d with set running statistics (eval mode must use them)."""

    embedding_size = 3

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.bn = nn.Linear(12, 3), nn.BatchNorm1d(3)
        with torch.no_grad():
            self.bn.running_mean.copy_(torch.tensor([0.3, -0.2, 0.1]))
            self.bn.running_var.copy_(torch.tensor([2.0, 0.5, 1.5]))
            self.bn.weight.copy_(torch.tensor([1.5, 0.7, -1.0]))
            self.bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.lin(x.flatten(1)))


def _by_hand(net: _Tiny, images: list, labels: list[int], classes: int, bgr: bool) -> np.ndarray:
    W, b = net.lin.weight.detach().double().numpy(), net.lin.bias.detach().double().numpy()
    rm, rv = net.bn.running_mean.double().numpy(), net.bn.running_var.double().numpy()
    g, beta = net.bn.weight.detach().double().numpy(), net.bn.bias.detach().double().numpy()
    sums = np.zeros((classes, 3))
    for img, y in zip(images, labels, strict=True):
        if y < 0 or img is None:
            continue
        px = img[..., ::-1] if bgr else img
        x = ((px.astype(np.float64) / 255 - 0.5) / 0.5).transpose(2, 0, 1).reshape(-1)  # CHW, flattened
        e = (W @ x + b - rm) / np.sqrt(rv + net.bn.eps) * g + beta
        sums[y] += e / np.linalg.norm(e)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)


@pytest.mark.parametrize("bgr", [False, True])
def test_class_mean_directions_by_hand(bgr: bool) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (2, 2, 3), dtype=np.uint8) for _ in range(8)]
    images[5] = None  # unreadable
    labels = [0, 1, 0, 2, 1, 0, -1, 2]  # class 3 has no image; row 6 has no identity

    def read(i: int) -> np.ndarray:
        if images[i] is None:
            raise UnreadableImageError(f"img{i}.jpg", "broken")
        return images[i]

    net = _Tiny().train()
    pre = Preprocess(input_size=2, colour="BGR" if bgr else "RGB")
    dirs, counts, skipped = class_mean_directions(
        net, read, labels, 4, pre, torch.device("cpu"), batch_size=3
    )
    assert net.training  # put back in the mode it had
    np.testing.assert_allclose(dirs.numpy(), _by_hand(net, images, labels, 4, bgr), atol=1e-6)
    assert counts.tolist() == [2, 2, 2, 0] and skipped == ["img5.jpg: broken"]


@pytest.mark.parametrize("layout", [{}, {"sample_rate": 0.5}])
def test_imprint_writes_scaled_directions_into_local_and_partial_fc_heads(layout: dict) -> None:
    ctx = ObjectiveContext(
        embedding_size=3, num_classes=4, labels=np.array([0, 1, 2, 3]), classes=list("abcd"), dataset=None,
        head_config={"name": "cosface", **layout},
    )  # fmt: skip
    margin = MarginObjective(ctx)
    assert margin.sharded == bool(layout)
    before = margin.head.weight.detach().clone()
    dirs = torch.nn.functional.normalize(torch.randn(4, 3), dim=1)
    counts = torch.tensor([3, 1, 0, 2])
    radius = imprint_head(margin, dirs, counts)
    assert radius == pytest.approx(float(before.norm(dim=1).mean()), rel=1e-6)
    after = margin.head.weight.detach()
    torch.testing.assert_close(after[[0, 1, 3]], radius * dirs[[0, 1, 3]])
    assert torch.equal(after[2], before[2])  # no image: the random row stays
    # finetune.head_row_norm: the imprinted rows get exactly that norm; the un-imprinted row still stays
    assert imprint_head(margin, dirs, counts, row_norm=1.0) == 1.0
    after = margin.head.weight.detach()
    torch.testing.assert_close(after[[0, 1, 3]].norm(dim=1), torch.ones(3))
    torch.testing.assert_close(after[[0, 1, 3]], dirs[[0, 1, 3]])
    assert torch.equal(after[2], before[2])


@pytest.mark.slow
def test_class_means_on_two_ranks_fill_a_sharded_head(tmp_path: Path) -> None:
    """2 gloo ranks, each embedding half the rows, imprint a sharded head (and Partial FC): the gathered head
    is the one-process result (tests/dist/class_mean_worker.py)."""
    from tests.dist.class_mean_worker import tiny_setup
    from tests.engine.test_distributed import WORKERS, torchrun

    net, images, labels, classes = tiny_setup()
    one, counts, _ = class_mean_directions(
        net, images.__getitem__, labels, classes, Preprocess(input_size=2), torch.device("cpu")
    )
    torchrun(2, str(WORKERS / "class_mean_worker.py"), str(tmp_path / "out.pt"))
    for rate, got in torch.load(tmp_path / "out.pt", weights_only=True).items():
        assert got["counts"].tolist() == counts.tolist() == [3, 3, 2, 0], rate
        assert got["radius"] == pytest.approx(float(got["before"].norm(dim=1).mean()), rel=1e-6)
        torch.testing.assert_close(got["after"][:3], got["radius"] * one[:3])
        assert torch.equal(got["after"][3], got["before"][3])


# -------------------------------------------------------------------------- preprocessing and architecture
def test_architecture_and_preprocessing_come_from_run_init(setup: dict[str, Path], tmp_path: Path) -> None:
    """model=from_init builds the import's network; a BGR 0-255 checkpoint (SFace's input) trains on BGR 0-255
    input, and the fine-tuned model.pt says so and keeps the import record."""
    t = Trainer(_cfg(setup, tmp_path / "run", "optim.epochs=1", "finetune.head_only_epochs=0.5", init="bgr"))
    assert t.backbone_meta == {"name": TINY, "kwargs": KWARGS}
    assert t.preprocess == Preprocess(input_size=112, **SFACE_LIKE)
    seen: list[torch.Tensor] = []
    t.backbone.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    t._set_epoch(0, 0)
    batch = next(iter(t._loader()))
    t.train_step(batch)
    bgr_pixels = batch.images.flip(-1).permute(0, 3, 1, 2).float()  # what SFace takes: BGR, 0..255
    torch.testing.assert_close(seen[-1], bgr_pixels, atol=1e-4, rtol=0)
    report = t.fit()
    meta = load_checkpoint(report["model"])["meta"]
    assert Preprocess.from_dict(meta["preprocess"]) == t.preprocess
    assert meta["preprocess"]["origin"] == f"run.init={setup['bgr']}"
    assert meta["init"]["source"]["network"] == f"random {TINY}"
    assert meta["init"]["sha256"] == file_sha256(setup["bgr"]) and meta["init"]["head"] is False
    assert meta["finetune"]["head_init"]["name"] == "class_mean" and report["finetune"] == meta["finetune"]


def test_preprocessing_mismatches_stop_in_one_line(setup: dict[str, Path], tmp_path: Path) -> None:
    # an explicit model that is not the checkpoint's
    with pytest.raises(ValueError, match=rf"holds a {TINY} backbone .* set model= and its options") as e:
        Trainer(_cfg(setup, tmp_path / "a", f"model.name={TINY}", "model.embedding_size=32"))
    _one_line(e)
    # a network that takes other faces than the training images
    other = _import(tmp_path / "96.pt", input_size=96)
    with pytest.raises(ValueError, match=r"takes 96x96 faces .* data\.image_size=112") as e:
        Trainer(_cfg({**setup, "rgb": other}, tmp_path / "b"))
    _one_line(e)


def test_a_backbone_declares_its_own_preprocessing(setup: dict[str, Path], tmp_path: Path) -> None:
    """Without run.init, a backbone's ``preprocess_meta`` attribute is the run's preprocessing."""

    class BGRNet(TinyNet):
        preprocess_meta: ClassVar[dict] = {"colour": "BGR", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}

    BACKBONES.register("test_finetune_bgr")(BGRNet)
    try:
        t = Trainer(_cfg(setup, tmp_path / "run", "run.init=null", "model.name=test_finetune_bgr"))
    finally:
        BACKBONES.unregister("test_finetune_bgr")
    assert t.preprocess == Preprocess(input_size=112, colour="BGR", mean=(0, 0, 0), std=(1, 1, 1))
    assert "backbone" in t.preprocess_origin and t.meta()["preprocess"]["colour"] == "BGR"


# ------------------------------------------------------------------------------------------ the options
def _changed(a: dict, b: dict, keys: list[str]) -> list[str]:
    return [k for k in keys if not torch.equal(a[k], b[k])]


def test_frozen_layers_and_bn_statistics_stay_bit_identical(setup: dict[str, Path], tmp_path: Path) -> None:
    src = load_checkpoint(setup["rgb"])["backbone"]
    bn_buffers = [k for k in src if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    # a layer frozen by name: its weights and its BN statistics stay, the rest moves
    full_rate = ["finetune.head_only_epochs=0", "finetune.backbone_lr_mult=1", "optim.epochs=1"]
    t = Trainer(
        _cfg(setup, tmp_path / "a", "finetune.freeze=[stem.*]", "finetune.freeze_bn=none", *full_rate)
    )
    in_optimiser = {id(p) for g in t.optimizers["main"].param_groups for p in g["params"]}
    params = dict(t.backbone.named_parameters())
    assert t.finetune.frozen == [k for k in params if k.startswith("stem.")]
    assert all(id(params[k]) not in in_optimiser and not params[k].requires_grad for k in t.finetune.frozen)
    out = load_checkpoint(t.fit()["model"])["backbone"]
    frozen = [k for k in src if k.startswith("stem.")]
    assert not _changed(src, out, frozen)  # parameters and the frozen BN layers' statistics
    others = [k for k in params if k not in frozen]
    assert len(_changed(src, out, others)) == len(others)
    assert _changed(src, out, [k for k in bn_buffers if k not in frozen])  # unfrozen BN statistics moved
    # freeze_bn=stats: every BN layer keeps its statistics, its affine parameters still learn
    t = Trainer(_cfg(setup, tmp_path / "b", "finetune.freeze_bn=stats", *full_rate))
    out = load_checkpoint(t.fit()["model"])["backbone"]
    bn_affine = [
        k[: -len("running_mean")] + w
        for k in bn_buffers
        if k.endswith("running_mean")
        for w in ("weight", "bias")
    ]
    assert not _changed(src, out, bn_buffers)
    assert len(_changed(src, out, bn_affine)) == len(bn_affine)
    assert load_checkpoint(tmp_path / "b/checkpoints/model.pt")["meta"]["finetune"][
        "bn_layers_fixed_statistics"
    ] == sum(1 for m in t.backbone.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d))


def test_lr_multiplier_head_only_phase_and_ramp(setup: dict[str, Path], tmp_path: Path) -> None:
    """Backbone groups carry the multiplier; their rate is 0 for the head-only steps (backbone and its BN
    affine weights, frozen by freeze_bn=all, unchanged), then ramps to mult x the schedule's."""
    over = ["finetune.backbone_lr_mult=0.25", "finetune.head_only_epochs=0.5", "finetune.backbone_warmup_epochs=0.75",
            "finetune.freeze_bn=all", "optim.lr=0.05"]  # fmt: skip
    t = Trainer(_cfg(setup, tmp_path / "run", *over, "run.max_steps=2"))
    groups = t.optimizers["main"].param_groups
    backbone_ids = {id(p) for p in t.finetune.trainable}
    mine = [g for g in groups if g.get("backbone")]
    assert {id(p) for g in mine for p in g["params"]} == backbone_ids
    assert all(g["lr_mult"] == 0.25 for g in mine)
    assert not any(id(p) in backbone_ids for g in groups if not g.get("backbone") for p in g["params"])
    assert (t.finetune.head_only_steps, t.finetune.ramp_steps) == (2, 3)
    src = load_checkpoint(setup["rgb"])["backbone"]
    report = t.fit()  # the two head-only steps
    mid = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert not _changed(src, mid["backbone"], list(src))  # the whole backbone, statistics included
    report = Trainer(_cfg(setup, tmp_path / "run", *over, "run.resume=auto")).fit()
    spec = t.schedules["main"]
    hist = {h["step"]: h for h in report["history"]}
    for step in range(2, 8):
        ramp = min(1.0, (step - 2 + 1) / 3)
        assert hist[step + 1]["lr_backbone"] == pytest.approx(learning_rate(step, spec) * 0.25 * ramp)
        assert hist[step + 1]["lr"] == pytest.approx(learning_rate(step, spec))
    out = load_checkpoint(report["model"])["backbone"]
    bn_affine = [
        k for k in src if k.rsplit(".", 1)[0] + ".running_mean" in src and k.endswith(("weight", "bias"))
    ]
    assert not _changed(src, out, bn_affine)
    assert len(_changed(src, out, [k for k in dict(t.backbone.named_parameters()) if k not in bn_affine])) > 0


def test_resume_with_every_option_is_exact(setup: dict[str, Path], tmp_path: Path) -> None:
    over = ["finetune.backbone_lr_mult=0.5", "finetune.freeze=[stem.*]", "finetune.freeze_bn=stats",
            "finetune.head_only_epochs=0.5", "finetune.backbone_warmup_epochs=0.5", "head=curricularface"]  # fmt: skip
    Trainer(_cfg(setup, tmp_path / "a", *over, "run.max_steps=6")).fit()
    Trainer(_cfg(setup, tmp_path / "b", *over, "run.max_steps=3")).fit()
    Trainer(_cfg(setup, tmp_path / "b", *over, "run.max_steps=3", "run.resume=auto")).fit()
    a = load_checkpoint(tmp_path / "a/checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "b/checkpoints/last.pt")
    assert a["progress"] == b["progress"] and a["progress"]["global_step"] == 6
    assert not _changed(a["backbone"], b["backbone"], list(a["backbone"]))
    assert not _changed(a["objectives"]["margin"], b["objectives"]["margin"], list(a["objectives"]["margin"]))
    sa, sb = a["optimizers"]["main"]["state"], b["optimizers"]["main"]["state"]
    assert sa.keys() == sb.keys() and all(
        torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa
    )
    assert (
        b["meta"]["finetune"] == a["meta"]["finetune"] and a["meta"]["finetune"]["head_init"]["images"] == 32
    )
    with pytest.raises(ValueError, match=r"cannot resume .*finetune\.backbone_lr_mult changed") as e:
        Trainer(_cfg(setup, tmp_path / "b", *over, "finetune.backbone_lr_mult=0.2", "run.resume=auto")).fit()
    _one_line(e)


# ------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("finetune.backbone_lr_mult=-0.1", r"backbone_lr_mult=-0\.1 must be a finite number > 0"),
        ("finetune.backbone_lr_mult=0", r"must be a finite number > 0 .* finetune\.freeze=\['\*'\]"),
        ("finetune.freeze_bn=maybe", r"finetune\.freeze_bn='maybe' is not one of \['none', 'stats', 'all'\]"),
        ("finetune.head_init=zeros", r"finetune\.head_init='zeros' is not one of"),
        ("finetune.head_only_epochs=2", r"head_only_epochs=2\.0 leaves no epoch of optim\.epochs=2"),
        (
            "finetune.backbone_warmup_epochs=-1",
            r"backbone_warmup_epochs=-1\.0 must be a finite number in \[0, 100000\] \(epochs\)",
        ),
        ("finetune.freeze=['']", r"finetune\.freeze: '' is not a name pattern"),
        (
            "finetune.head_row_norm=0",
            r"finetune\.head_row_norm=0\.0 must be a finite number in \(0, 1e\+06\] \(null: the mean row norm",
        ),
        ("run.init=null", r"model=from_init builds run\.init's architecture: set run\.init"),
        (
            "model.embedding_size=32",
            r"model=from_init takes the architecture .* remove model\.embedding_size",
        ),
    ],
)
def test_bad_values_stop_in_one_line(
    setup: dict[str, Path], tmp_path: Path, override: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        _cfg(setup, tmp_path, override)
    _one_line(e)


def test_bad_patterns_and_head_conflicts_stop_in_one_line(setup: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(
        ValueError,
        match=r"pattern 'layer1\.\*' matches no parameter .* under \['block', 'fc', 'features', 'stem'\]",
    ) as e:
        Trainer(_cfg(setup, tmp_path / "a", "finetune.freeze=[stem.*,layer1.*]"))
    _one_line(e)
    # a checkpoint with a head for these 8 people: copying it and imprinting it are two different starts
    ckpt = load_checkpoint(setup["rgb"])
    ckpt["meta"]["head"] = {"name": "arcface", "num_classes": 8}
    ckpt["objectives"] = {"margin": {"weight": torch.randn(8, 16)}}
    atomic_torch_save(ckpt, tmp_path / "with_head.pt")
    with pytest.raises(
        ValueError, match=r"head_init=class_mean would replace the head .* run\.init_head=false"
    ) as e:
        Trainer(_cfg({**setup, "rgb": tmp_path / "with_head.pt"}, tmp_path / "b", "run.init_head=true"))
    _one_line(e)
    t = Trainer(_cfg({**setup, "rgb": tmp_path / "with_head.pt"}, tmp_path / "c", "run.init_head=true",
                     "finetune.head_init=random"))  # fmt: skip
    assert torch.equal(t.objectives["margin"].head.weight.detach(), ckpt["objectives"]["margin"]["weight"])
    assert t.init_record["head"] is True


# ------------------------------------------------------------------------------ the recipe, end to end
@pytest.mark.slow
def test_the_packaged_recipe_through_faceforge_train(setup: dict[str, Path], tmp_path: Path, capsys) -> None:
    """CI smoke: ``faceforge train finetune`` on an imported MobileFaceNet (BGR, SFace's input) with the recipe's
    every option, evaluated by ``faceforge eval``'s code on 4 people it did not train on."""
    import shutil

    from faceforge.cli.main import main

    held_out = tmp_path / "held_out"
    for person in sorted(p for p in setup["root"].iterdir() if p.is_dir())[8:]:
        (held_out / person.name).mkdir(parents=True)
        for f in sorted(person.glob("*.jpg"))[:3]:
            shutil.copy(f, held_out / person.name / f.name)
    imported = _import(tmp_path / "mbf.pt", name="mobilefacenet", kwargs={"embedding_size": 64, "scale": 1},
                       **SFACE_LIKE)  # fmt: skip
    run = tmp_path / "run"
    code = main(["train", "finetune", f"run.init={imported}", f"data.root={setup['root']}",
                 f"data.list_file={setup['list']}", "data.batch_size=16", "optim.epochs=2", "run.progress=false",
                 f"run.dir={run}", f"eval.benchmarks=[allpairs:{held_out}]"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert '"global_step": 4' in out and "allpairs:held_out" in out
    meta = load_checkpoint(run / "checkpoints/model.pt")["meta"]
    assert meta["backbone"] == {"name": "mobilefacenet", "kwargs": {"embedding_size": 64, "scale": 1}}
    assert (
        meta["preprocess"]["colour"] == "BGR" and meta["init"]["source"]["network"] == "random mobilefacenet"
    )
    ft = meta["finetune"]
    assert (ft["head_init"]["name"], ft["backbone_lr_mult"], ft["freeze_bn"]) == ("class_mean", 0.03, "stats")
    assert ft["head_init"]["row_norm"] == 1.0 and ft["head_row_norm"] == 1.0
    assert (ft["head_only_steps"], ft["backbone_warmup_steps"]) == (2, 1)
