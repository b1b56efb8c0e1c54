"""MTLFace face age synthesis: the identity conditional module, generator, discriminator, the FAS losses against a
hand computation, a few FAS steps through ``faceforge train`` on real faces, and exact resume of GAN training."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from faceforge.cli.main import main
from faceforge.core.checkpoint import load_checkpoint
from faceforge.data.dataset import Batch
from faceforge.methods.mtlface.discriminator import PatchDiscriminator, tile_groups
from faceforge.methods.mtlface.fas import (
    FASLossWeights,
    age_to_group,
    discriminator_loss,
    generator_losses,
    held_bn_statistics,
)
from faceforge.methods.mtlface.generator import AgeGenerator, to_uint8
from faceforge.methods.mtlface.router import TaskRouter, routed_width, unit_starts
from tests.methods import fas_plugins  # noqa: F401  (the tiny AIFR backbone must be registered before config checks)

PLUGIN = "tests.methods.fas_plugins"
TINY_G = [
    "method.units=8",
    "method.decoder_channels=[8,8,8]",
    "method.final_channels=8",
    "method.disc_width=8",
]


# ------------------------------------------------------------------------------------------- routing
def test_task_router_masks_cvpr_defaults() -> None:
    r = TaskRouter(7, 128, 0.1)
    assert r.width == routed_width(7, 128, 0.1) == 819
    assert unit_starts(7, 128, 0.1) == [0, 115, 230, 345, 460, 575, 690]  # int() truncation: steps of 115
    m = r.mask
    assert m.shape == (7, 819) and set(m.unique().tolist()) == {0.0, 1.0}
    assert m.sum(1).tolist() == [128.0] * 7  # u ones per group
    for i in range(6):
        assert float((m[i] * m[i + 1]).sum()) == 13.0  # adjacent overlap: exactly 13 channels, not 12.8
    for i in range(7):
        for j in range(i + 2, 7):
            assert float((m[i] * m[j]).sum()) == 0.0  # non-adjacent groups are disjoint
    # the last group ends at 690 + 128 = 818: with the code's truncation channel 818 of D = 819 is never used
    assert float(m.max(0).values.sum()) == 818.0 and float(m[:, 818].sum()) == 0.0
    # the forward multiplies each sample by its group's mask
    x = torch.randn(3, 819, 2, 2)
    y = r(x, torch.tensor([0, 3, 6]))
    for n, g in enumerate([0, 3, 6]):
        assert torch.equal(y[n], x[n] * m[g][:, None, None])


def test_task_router_tpami_sigma() -> None:
    r = TaskRouter(7, 128, 0.125)
    assert r.width == 800 and unit_starts(7, 128, 0.125)[1] == 112  # D = 6.25 * 128; 16 shared
    assert float((r.mask[0] * r.mask[1]).sum()) == 16.0
    with pytest.raises(ValueError, match="sigma"):
        TaskRouter(7, 128, 1.0)


def test_age_groups_boundaries() -> None:
    ages = np.array([0, 10, 11, 20, 21, 60, 61, 116])
    assert age_to_group(ages, 7).tolist() == [0, 0, 1, 1, 2, 5, 6, 6]
    assert age_to_group(np.array([12, 13, 66]), 8).tolist() == [0, 1, 7]


# ----------------------------------------------------------------------------------------- generator
def _maps(n: int = 2) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(0)
    img = torch.randn(n, 3, 112, 112)
    return (
        img,
        torch.randn(n, 32, 7, 7),
        [torch.randn(n, 16, 14, 14), torch.randn(n, 16, 28, 28), torch.randn(n, 8, 56, 56)],
    )


def test_generator_is_input_plus_residual() -> None:
    g = AgeGenerator(32, (16, 16, 8), groups=7, units=8, sigma=0.1, blocks=2, final_channels=8).eval()
    img, x_id, skips = _maps()
    group = torch.tensor([1, 5])
    out = g(img, x_id, skips, group)
    assert out.shape == img.shape
    res = g.residual(img, x_id, skips, group)
    assert torch.allclose(out, img + res, atol=1e-6)
    assert 0 < float(res.detach().abs().max()) < 0.5  # N(0, 0.01) init: a small residual at first
    # not clamped: an input beyond [-1, 1] stays beyond it
    big = img * 10
    assert float(g(big, x_id, skips, group).detach().abs().max()) > 5
    # the target group matters (routing): with larger weights, group 0 and group 1/5 give other residuals
    with torch.no_grad():
        for p in g.parameters():
            if p.dim() == 4:
                p.normal_(0.0, 0.2)
        res = g.residual(img, x_id, skips, group)
        other = g.residual(img, x_id, skips, torch.tensor([0, 0]))
    assert float((other - res).abs().mean()) > 1e-2 * float(res.abs().mean())
    # uint8 conversion clamps (only there)
    pix = to_uint8(torch.tensor([-3.0, 0.0, 3.0]).view(1, 3, 1, 1))
    assert pix.flatten().tolist() == [0, 128, 255]
    with pytest.raises(ValueError, match="skip maps"):
        g(img, x_id, skips[:2], group)


def test_generator_cvpr_widths() -> None:
    g = AgeGenerator()  # 512 -> D = 819, skips 256/128/64, 4 ICBs, 32 at the image
    assert g.width == 819 and len(g.icbs) == 4
    assert g.conv_in[0].weight.shape == (819, 512, 1, 1) and g.conv_out[0].weight.shape == (512, 819, 1, 1)
    assert [u.shortcut.out_channels for u in g.ups] == [256, 128, 64, 32]
    assert g.ups[0].conv[2].in_channels == 512 + 256 and g.ups[-1].conv[2].in_channels == 64 + 3


def test_held_bn_statistics_repeat_forward() -> None:
    g = AgeGenerator(32, (16, 16, 8), units=8, blocks=1, final_channels=8).train()
    img, x_id, skips = _maps()
    group = torch.tensor([2, 3])
    a = g(img, x_id, skips, group)
    before = {k: v.clone() for k, v in g.state_dict().items()}
    with held_bn_statistics(g):
        b = g(img, x_id, skips, group)
    assert torch.equal(a, b)  # the same batch statistics: the same output
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())  # running stats untouched


# ------------------------------------------------------------------------------------- discriminator
def test_discriminator_conditioning() -> None:
    torch.manual_seed(0)
    d = PatchDiscriminator(groups=7, width=8, layers=4).eval()
    x = torch.randn(2, 3, 112, 112)
    out = d(x, torch.tensor([0, 6]))
    assert out.shape == (2, 1, 5, 5)  # 112 -> 56 -> 28 -> 14 -> 7 -> 6 -> 5 patch scores
    # conditioning = the one-hot group tiled over space and concatenated after the first conv
    h = F.leaky_relu(d.conv1(x), 0.2)
    cond = tile_groups(torch.tensor([0, 6]), 7, (56, 56), h.dtype)
    assert cond.shape == (2, 7, 56, 56) and torch.equal(
        cond[1, :, 10, 20], F.one_hot(torch.tensor(6), 7).float()
    )
    assert torch.allclose(d.main(torch.cat([h, cond], 1)), out, atol=1e-6)
    assert d.main[0].in_channels == 8 + 7
    assert not torch.allclose(d(x, torch.tensor([1, 6]))[0], out[0])  # another group, another score
    assert hasattr(d.main[0], "parametrizations")  # spectral norm on the inner convs
    assert not hasattr(d.conv1, "parametrizations")  # as the code: not on the first conv


# ------------------------------------------------------------------------------------------- losses
def test_fas_losses_by_hand() -> None:
    d_real = torch.full((2, 1, 5, 5), 0.8)
    d_fake = torch.full((2, 1, 5, 5), 0.3)
    assert float(discriminator_loss(d_real, d_fake)) == pytest.approx(0.5 * (0.2**2 + 0.3**2))
    d_gen = torch.tensor([0.5, -0.5]).view(2, 1, 1, 1).expand(2, 1, 5, 5)
    id_src = torch.zeros(2, 4, 7, 7)
    id_syn = torch.full((2, 4, 7, 7), 2.0)
    logits = torch.zeros(2, 7)
    logits[0, 3] = math.log(6.0)  # softmax(row 0)[3] = 6/12
    target = torch.tensor([3, 1])
    t = generator_losses(d_gen, id_src, id_syn, logits, target)
    gan = 0.5 * ((0.5 - 1) ** 2 + (-0.5 - 1) ** 2) / 2  # = 0.625
    ce = (-math.log(6 / 12) - math.log(1 / 7)) / 2
    assert float(t["gan"]) == pytest.approx(gan) and float(t["identity"]) == pytest.approx(4.0)
    assert float(t["age"]) == pytest.approx(ce, rel=1e-6)
    assert float(t["total"]) == pytest.approx(75 * gan + 0.002 * 4.0 + 10 * ce, rel=1e-6)
    w = FASLossWeights(1.0, 0.0, 0.0)
    assert float(generator_losses(d_gen, id_src, id_syn, logits, target, w)["total"]) == pytest.approx(gan)


# ------------------------------------------------------------------------------ training on real faces
@pytest.fixture(scope="module")
def fas_data(lfw_small: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """24 LFW faces of 6 people (no ages) + 14 UTKFace faces, two per age group (real ages, 112 px)."""
    tmp = tmp_path_factory.mktemp("fas")
    people = sorted(p for p in lfw_small.iterdir() if p.is_dir())[:6]
    lines = [
        f"{f.relative_to(lfw_small).as_posix()} {label}"
        for label, person in enumerate(people)
        for f in sorted(person.glob("*.jpg"))[:4]
    ]
    (tmp / "train.txt").write_text("\n".join(lines) + "\n")
    utk = tmp / "utk"
    utk.mkdir()
    files = sorted((data_dir / "utkface" / "images").glob("*.jpg"))
    by_group: dict[int, list[Path]] = {}
    for f in files:
        g = int(age_to_group(np.array([int(f.name.split("_")[0])]), 7)[0])
        if len(by_group.setdefault(g, [])) < 2:
            by_group[g].append(f)
    for fs in by_group.values():
        for f in fs:  # UTKFace chips are aligned and cropped faces; resized to the 112 px input here
            Image.open(f).convert("RGB").resize((112, 112), Image.BILINEAR).save(
                utk / f.name.replace(".chip", "")
            )
    return {"root": lfw_small, "list": tmp / "train.txt", "utk": utk, "tmp": tmp}


def _train(d: dict[str, Path], run: Path, *more: str) -> int:
    return main(
        ["train", "lfw_mobilefacenet_arcface", f"data.root={d['root']}", f"data.list_file={d['list']}",
         "data.exclude_pairs=[]", "data.preload=true", "data.num_workers=0", "data.batch_size=6",
         "model=mobilefacenet", "model.name=test_tiny_aifr", "model.embedding_size=16", "run.log_every=1", "run.progress=false",
         "run.threads=2", "run.precision=fp32", "run.channels_last=false", "eval.pairs=null", f"run.dir={run}",
         f"run.plugins=[{PLUGIN}]", f"data.sources=[{{root: {d['utk']}, labeller: utkface}}]", *more]
    )  # fmt: skip


@pytest.fixture(scope="module")
def aifr_ckpt(fas_data: dict[str, Path]) -> Path:
    """A tiny 'AIFR' run: margin head + an age objective on X_age, 2 steps."""
    run = fas_data["tmp"] / "aifr"
    assert _train(fas_data, run, "objectives.age.weight=0.1", "objectives.age.channels=32",
                  "optim.epochs=1", "run.max_steps=2") == 0  # fmt: skip
    return run / "checkpoints" / "last.pt"


def _fas(d: dict[str, Path], ckpt: Path, run: Path, *more: str) -> int:
    return _train(d, run, "method=mtlface_fas", f"run.init={ckpt}", "optim.epochs=1", *TINY_G, *more)


@pytest.fixture(scope="module")
def fas_run(fas_data: dict[str, Path], aifr_ckpt: Path) -> Path:
    """4 FAS steps through faceforge train (stopped by run.max_steps: last.pt, no model.pt)."""
    straight = fas_data["tmp"] / "fas_straight"
    assert _fas(fas_data, aifr_ckpt, straight, "run.max_steps=4") == 0
    return straight


def test_fas_trains_through_faceforge_train_and_resumes_exactly(
    fas_data: dict[str, Path], aifr_ckpt: Path, fas_run: Path
) -> None:
    straight, broken = fas_run, fas_data["tmp"] / "fas_broken"
    report = json.loads((straight / "report.json").read_text())
    hist = report["history"]
    assert len(hist) == 4 and report["progress"]["global_step"] == 4
    for rec in hist:
        for key in ("fas/d_loss", "fas/gan", "fas/identity", "fas/age", "fas/age_hit"):
            assert math.isfinite(rec[key])
        assert rec["loss"] == pytest.approx(
            75 * rec["fas/gan"] + 0.002 * rec["fas/identity"] + 10 * rec["fas/age"], rel=1e-5
        )
    ckpt = load_checkpoint(straight / "checkpoints" / "last.pt")
    aifr = load_checkpoint(aifr_ckpt)
    # the encoder and the estimator are frozen: exactly the AIFR checkpoint's weights after 4 steps
    for k, v in aifr["backbone"].items():
        assert torch.equal(v, ckpt["backbone"][k]), k
    est = {k.removeprefix("estimator."): v for k, v in aifr["objectives"]["age"].items()}
    for k, v in est.items():
        assert torch.equal(v, ckpt["method"][f"group_head.estimator.{k}"]), k
    assert set(ckpt["optimizers"]) == {"generator", "discriminator"}  # no main optimiser: nothing else trains
    for name in ("generator", "discriminator"):
        opt = ckpt["optimizers"][name]
        assert opt["param_groups"][0]["betas"] == (0.5, 0.99) and opt["param_groups"][0]["lr"] == 1e-4
        assert all(float(s["step"]) == 4 for s in opt["state"].values())
    meta = ckpt["meta"]["method"]
    assert meta["skips"] == ["x3", "x2", "x1"] and meta["target_faces_per_group"] == [2] * 7

    # stop after 2 steps, resume: the same G and D weights (and BN / spectral-norm buffers) and Adam states
    assert _fas(fas_data, aifr_ckpt, broken, "run.max_steps=2") == 0
    assert _fas(fas_data, aifr_ckpt, broken, "run.max_steps=2", "run.resume=auto") == 0
    resumed = load_checkpoint(broken / "checkpoints" / "last.pt")
    assert resumed["progress"]["global_step"] == 4
    for k, v in ckpt["method"].items():
        assert torch.equal(v, resumed["method"][k]), k
    for name in ("generator", "discriminator"):
        a, b = ckpt["optimizers"][name]["state"], resumed["optimizers"][name]["state"]
        assert a.keys() == b.keys()
        for i in a:
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(a[i][key], b[i][key]), (name, i, key)


def test_fas_step_matches_a_hand_computation(fas_data: dict[str, Path], aifr_ckpt: Path) -> None:
    """One step of the method on a fixed batch: the logged terms and the updated weights are what the formulas
    give when computed here by hand from the same modules."""
    from faceforge.config import compose_config
    from faceforge.engine.loop import Trainer

    cfg = compose_config(
        "lfw_mobilefacenet_arcface",
        [f"data.root={fas_data['root']}", f"data.list_file={fas_data['list']}", "data.exclude_pairs=[]",
         "data.preload=true", "data.num_workers=0", "data.batch_size=6", "model=mobilefacenet", "model.name=test_tiny_aifr",
         "model.embedding_size=16", "run.progress=false", "run.precision=fp32", "run.channels_last=false",
         "eval.pairs=null", f"run.dir={fas_data['tmp'] / 'hand'}", f"run.plugins=[{PLUGIN}]",
         f"data.sources=[{{root: {fas_data['utk']}, labeller: utkface}}]", "method=mtlface_fas",
         f"run.init={aifr_ckpt}", "optim.epochs=1", *TINY_G],
    )  # fmt: skip
    t = Trainer(cfg)
    m = t.method
    idx = torch.arange(6)
    images = torch.from_numpy(np.stack([t.dataset.image(i) for i in range(6)]))
    batch = Batch(images, torch.zeros(6, dtype=torch.long), idx)

    G, Dn = copy.deepcopy(m.generator), copy.deepcopy(m.discriminator)
    groups, faces, _ = m.targets.sample(0, 6)
    assert len(set(groups.tolist())) > 1  # the step's targets are a pure function of (seed, step, rank)
    g2, f2, _ = m.targets.sample(0, 6)
    assert torch.equal(groups, g2) and torch.equal(faces, f2)
    logs = t.train_step(batch)

    # by hand: D step with Adam(1e-4, (0.5, 0.99)) on L_D, then the G loss against the updated D
    enc = t.backbone.eval()
    x, xt = t.preprocess(images), t.preprocess(faces)
    with torch.no_grad():
        _, f = enc(x, return_features=True)
    G.train(), Dn.train()
    fake = G(x, f["x_id"], [f["x3"], f["x2"], f["x1"]], groups)
    l_d = 0.5 * ((Dn(xt, groups) - 1).pow(2).mean() + Dn(fake.detach(), groups).pow(2).mean())
    assert logs["fas/d_loss"] == pytest.approx(float(l_d.detach()), rel=1e-5)
    opt_d = torch.optim.Adam(Dn.parameters(), lr=1e-4, betas=(0.5, 0.99))
    l_d.backward()
    opt_d.step()
    _, fs = enc(fake, return_features=True)
    gan = 0.5 * (Dn(fake, groups) - 1).pow(2).mean()
    ident = (fs["x_id"] - f["x_id"]).pow(2).mean()
    age = F.cross_entropy(m.group_head(fs["x_age"]), groups)
    total = 75 * gan + 0.002 * ident + 10 * age
    assert logs["fas/gan"] == pytest.approx(float(gan.detach()), rel=1e-5)
    assert logs["fas/identity"] == pytest.approx(float(ident.detach()), rel=1e-5)
    assert logs["fas/age"] == pytest.approx(float(age.detach()), rel=1e-5)
    assert logs["loss"] == pytest.approx(float(total.detach()), rel=1e-5)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-4, betas=(0.5, 0.99))
    total.backward()
    opt_g.step()
    for (k, a), b in zip(G.state_dict().items(), m.generator.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), k
    for (k, a), b in zip(Dn.state_dict().items(), m.discriminator.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), k


def test_fas_refuses_missing_pieces(
    fas_data: dict[str, Path], aifr_ckpt: Path, capsys: pytest.CaptureFixture
) -> None:
    run = fas_data["tmp"] / "bad"
    assert _train(fas_data, run, "method=mtlface_fas", "optim.epochs=1") == 2
    assert "run.init" in capsys.readouterr().err
    # an encoder without X_id / X_age
    assert (
        _train(fas_data, run, "method=mtlface_fas", f"run.init={aifr_ckpt}", "model.name=mobilefacenet") == 2
    )
    assert "needs an AIFR encoder" in capsys.readouterr().err
    # no ages at all: the UTKFace source removed
    assert _fas(fas_data, aifr_ckpt, run, "data.sources=[]") == 2
    assert "age" in capsys.readouterr().err


def test_synthesize_on_real_lfw_faces(
    fas_data: dict[str, Path], fas_run: Path, lfw_small: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """faceforge synthesize: faces of LFW people not in the FAS training, at three groups, a grid, bad files listed."""
    from faceforge.data.image_io import read_image_rgb
    from faceforge.methods.mtlface.synthesis import Synthesizer

    images = tmp_path / "in"
    people = sorted(p for p in lfw_small.iterdir() if p.is_dir())[6:9]  # the training list holds the first 6
    for person in people:
        f = sorted(person.glob("*.jpg"))[0]
        (images / person.name).mkdir(parents=True)
        (images / person.name / f.name).write_bytes(f.read_bytes())
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (160, 160)).save(images / "raw_photo.png")
    model = fas_run / "checkpoints" / "last.pt"
    out = tmp_path / "out"
    assert main(["synthesize", "--model", str(model), "--images", str(images), "--age-groups", "0,3,6",
                 "--out", str(out), "--device", "cpu"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "wrote 9 faces (3 faces x 3 groups)" in printed and "skipped 2 images" in printed
    report = json.loads((out / "synthesize_report.json").read_text())
    assert report["faces"] == 3 and report["target_ranges"] == ["0-10", "31-40", "61+"]
    assert sorted(Path(s.split(":")[0]).name for s in report["skipped"]) == ["broken.jpg", "raw_photo.png"]
    assert "not an aligned 112x112 face" in " ".join(report["skipped"])
    grid = read_image_rgb(out / "grid.png")
    assert grid.shape == (3 * 114 + 2, 4 * 114 + 2, 3)  # 3 faces x (source + 3 groups), 2 px padding
    synth = Synthesizer(model, device="cpu")
    src = np.stack([read_image_rgb(f) for f in sorted(images.rglob("*.jpg")) if f.name != "broken.jpg"])
    for g in (0, 3, 6):
        written = np.stack(
            [read_image_rgb(out / f"group{g}" / p.name / next((images / p.name).glob("*.jpg")).with_suffix(".png").name)
             for p in people]
        )  # fmt: skip
        assert np.array_equal(written, synth(src, g))  # the files are the generator's faces (lossless PNG)
        # 4 steps at lr 1e-4 from the N(0, 0.01) init: the residual is below one grey level, the faces stay put
        assert np.abs(written.astype(int) - src.astype(int)).max() <= 1
    assert np.array_equal(grid[2:114, 2:114], src[0])  # first column: the source face
    # user mistakes: one line each
    assert main(["synthesize", "--model", str(model), "--images", str(images), "--age-groups", "0,9",
                 "--out", str(out)]) == 2  # fmt: skip
    assert "the model has groups 0..6" in capsys.readouterr().err
    assert main(["synthesize", "--model", str(fas_data["tmp"] / "aifr" / "checkpoints" / "last.pt"),
                 "--images", str(images), "--age-groups", "1", "--out", str(out)]) == 2  # fmt: skip
    assert "not a face age synthesis model" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ selective fine-tuning
def test_age_consistency_rule_by_hand() -> None:
    from faceforge.methods.mtlface.selection import age_consistent, group_bounds

    assert (
        group_bounds(0, 7) == (0.0, 10.0)
        and group_bounds(3, 7) == (31.0, 40.0)
        and group_bounds(6, 7) == (61.0, 100.0)
    )
    ages = np.array([25.0, 27.0, 44.9, 46.0, 35.0])
    pred = np.array([3, 3, 3, 3, 2])
    # group 3 = 31-40, margin 5: 26..45 allowed, and the estimator's group must be 3
    assert age_consistent(ages, pred, 3, 7, 5.0).tolist() == [False, True, True, False, False]


def test_select_synthetic_writes_a_trainable_list(
    fas_data: dict[str, Path], fas_run: Path, aifr_ckpt: Path, capsys: pytest.CaptureFixture
) -> None:
    out = fas_data["tmp"] / "select"
    common = [f"data.root={fas_data['root']}", f"data.list_file={fas_data['list']}", "data.exclude_pairs=[]",
              "model=mobilefacenet", "model.name=test_tiny_aifr", f"run.plugins=[{PLUGIN}]"]  # fmt: skip
    args = ["select-synthetic", "lfw_mobilefacenet_arcface", *common, "--fas", str(fas_run / "checkpoints" / "last.pt"),
            "--aifr", str(aifr_ckpt), "--age-groups", "0,6", "--per-identity", "1", "--device", "cpu"]  # fmt: skip
    # a cosine threshold must lie in [-1, 1] (the option's rule refuses 1.01): 1 keeps nothing (no synthesised
    # face is its source), -1 keeps whatever passes the age check
    assert main([*args, "--out", str(out / "none"), "--id-threshold", "1"]) == 0
    sel = json.loads((out / "none" / "selection.json").read_text())
    assert sel["candidates"] == 12 and sel["kept"] == 0  # 6 people x 1 face x 2 groups
    assert (out / "none" / "selected.txt").read_text().count("\n") == 24  # the training rows only
    assert main([*args, "--out", str(out / "all"), "--id-threshold", "-1", "--age-margin", "200"]) == 0
    sel = json.loads((out / "all" / "selection.json").read_text())
    assert all(s["identity_ok"] == 6 for s in sel["per_group"].values())
    kept = sel["kept"]
    assert kept == sum(
        s["age_ok"] for s in sel["per_group"].values()
    )  # only the estimator's group decides now
    lines = (out / "all" / "selected.txt").read_text().splitlines()
    assert len(lines) == 24 + kept and len(list((out / "all" / "faces").glob("*.png"))) == kept
    from faceforge.data.samples import read_list_file

    listed = read_list_file(
        out / "all" / "selected.txt", "/nonexistent"
    )  # absolute paths: the root is not used
    assert listed.num_classes == 6 and all(Path(p).is_file() for p in listed.paths)
    capsys.readouterr()
    # the identity cosine of a barely trained generator: its faces are almost the sources
    assert all(v > 0.99 for v in sel["identity_cosine_mean"].values())


def test_target_sampler_draws_real_faces_of_the_target_group() -> None:
    from faceforge.data.image_io import UnreadableImageError
    from faceforge.methods.mtlface.fas import TargetSampler

    class Faces:
        def __init__(self, bad: set[int]) -> None:
            self.bad = bad

        def image(self, i: int) -> np.ndarray:
            if i in self.bad:
                raise UnreadableImageError(f"img{i}.jpg", "truncated")
            face = np.zeros((4, 4, 3), np.uint8)
            face[:, 0] = i + 1  # the row number + 1 in the left column (the right one after a mirror)
            return face

    ages = np.array([5, 15, 25, 35, 45, 55, 65, 8, 0, 70])
    mask = np.ones(10, bool)
    mask[8] = False  # row 8 has no age: never a target
    s = TargetSampler(Faces({7}), ages, mask, groups=7, seed=3, flip=0.5)
    assert s.counts() == [2, 1, 1, 1, 1, 1, 2]
    groups, faces, rows = s.sample(step=5, n=64)
    assert torch.equal(groups, s.sample(5, 64)[0]) and not torch.equal(groups, s.sample(6, 64)[0])
    assert not torch.equal(groups, s.sample(5, 64, rank=1)[0])  # another rank draws other targets
    assert set(groups.tolist()) == set(range(7))
    mirrored = 0
    for g, face, row in zip(groups.tolist(), faces.numpy(), rows, strict=True):
        assert int(age_to_group(ages[[row]], 7)[0]) == g and row not in (7, 8)
        left, right = int(face[0, 0, 0]) - 1, int(face[0, -1, 0]) - 1
        assert row in (left, right)
        mirrored += int(right == row)
    assert 0 < mirrored < 64
    assert s.skipped and all(x == "img7.jpg: truncated" for x in s.skipped)  # unreadable: drawn again, listed
    with pytest.raises(ValueError, match="20 unreadable real faces in a row for age group 3"):
        TargetSampler(Faces({3}), ages, mask, groups=7, seed=3).sample(step=5, n=64)
    with pytest.raises(ValueError, match=r"group\(s\) \[1, 3, 4, 5, 6\]"):
        TargetSampler(Faces(set()), np.array([5, 25]), np.ones(2, bool), groups=7, seed=0)
