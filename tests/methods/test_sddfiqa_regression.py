"""SDD-FIQA's regressor parts by hand: the quality head and backbones, the quality_regression objective on a fixed
batch (SmoothL1 / L1 / L2 values, masked rows), the bin-balanced batch sampler, and run.init_partial."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from faceforge.core.checkpoint import FORMAT, VERSION, CheckpointError, atomic_torch_save
from faceforge.data.attributes import Attributes
from faceforge.engine.state import TrainingState
from faceforge.methods.sddfiqa import BinBalancedBatchSampler, QualityRegression, label_bins, regression_loss
from faceforge.models.backbones import build_backbone
from faceforge.models.backbones.quality import QUALITY_PREDICTS, QualityHead
from faceforge.objectives import ObjectiveContext, SamplerRequest, StepBatch


# ------------------------------------------------------------------------------------------------ head, backbone
def test_quality_head_by_hand() -> None:
    torch.manual_seed(0)
    head = QualityHead(channels=2, spatial=2, dropout=0.5).eval()  # 8 flattened values
    with torch.no_grad():
        head.prelu.weight.copy_(torch.linspace(0.1, 0.8, 8))
        head.linear.weight.copy_(torch.arange(8.0).view(1, 8) / 10)
        head.linear.bias.fill_(3.0)
    x = torch.tensor([[-1.0, 2.0, -3.0, 4.0, 0.5, -0.5, 1.0, -2.0]]).view(1, 2, 2, 2)
    flat = x.flatten(1)
    slopes = torch.linspace(0.1, 0.8, 8)
    act = torch.where(flat >= 0, flat, slopes * flat)
    want = float((act * torch.arange(8.0) / 10).sum() + 3.0)
    out = head(x).detach()
    assert out.shape == (1, 1) and float(out) == pytest.approx(want, abs=1e-6)
    head.train()  # dropout 0.5 is active in training: outputs vary with the mask
    torch.manual_seed(1)
    assert not torch.allclose(head(x.repeat(64, 1, 1, 1)), torch.full((64, 1), want))


@pytest.mark.parametrize(("name", "recognition", "kwargs"), [
    ("sddfiqa_mobilefacenet", "mobilefacenet", {"scale": 1}),
    ("sddfiqa_iresnet18", "iresnet18", {}),
])  # fmt: skip
def test_quality_backbones_share_the_encoder_names(name: str, recognition: str, kwargs: dict) -> None:
    net = build_backbone(name, **kwargs).eval()
    rec = build_backbone(recognition, **kwargs)
    assert net.embedding_size == 1 and net.predicts == QUALITY_PREDICTS
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 112, 112)).shape == (2, 1)
    ours, theirs = net.state_dict(), rec.state_dict()
    assert sorted(set(ours) - set(theirs)) == [
        "quality.linear.bias",
        "quality.linear.weight",
        "quality.prelu.weight",
    ]
    assert all(ours[k].shape == theirs[k].shape for k in set(ours) & set(theirs))
    assert ours["quality.prelu.weight"].shape == (512 * 7 * 7,) and ours["quality.linear.weight"].shape == (
        1,
        25088,
    )
    with pytest.raises(ValueError, match="embedding_size must be 1"):
        build_backbone(name, embedding_size=512, **kwargs)


# --------------------------------------------------------------------------------------------------- objective
def _ctx(
    embedding_size: int = 1, values=(10.0, 50.0, 90.0, 0.0), mask=(True, True, True, False)
) -> ObjectiveContext:
    attrs = Attributes(len(values))
    attrs.set("quality", [v if m else None for v, m in zip(values, mask, strict=True)], "test")
    return ObjectiveContext(embedding_size, 2, np.zeros(len(values), int), ["a", "b"], None, attributes=attrs)


def _batch(pred: list[float], target: list[float], mask: list[bool]) -> StepBatch:
    emb = torch.tensor(pred).view(-1, 1).requires_grad_(True)
    n = len(pred)
    return StepBatch(
        emb, torch.zeros(n, dtype=torch.long), torch.arange(n),
        attributes={"quality": (torch.tensor(target, dtype=torch.float64), torch.tensor(mask))},
    )  # fmt: skip


def test_regression_objective_values_and_masked_rows() -> None:
    pred, target, mask = [10.5, 48.0, 92.0, 7.0], [10.0, 50.0, 90.0, 0.0], [True, True, True, False]
    # d = 0.5, -2, 2 on the labelled rows (row 3 has no label); SmoothL1 beta=1: 0.5*0.25, 2-0.5, 2-0.5
    smooth = (0.125 + 1.5 + 1.5) / 3
    obj = QualityRegression(_ctx())
    batch = _batch(pred, target, mask)
    out = obj(batch)
    assert float(out.terms["loss"].detach()) == pytest.approx(smooth)
    assert out.logs["used"] == 3 and out.logs["mae"] == pytest.approx(1.5)
    assert out.logs["label_mean"] == pytest.approx(50.0) and out.logs["pred_mean"] == pytest.approx(
        50.1666667
    )
    out.terms["loss"].backward()
    g = batch.embeddings.grad[:, 0]
    # d/dq SmoothL1 / 3: d/beta inside, sign(d) outside; the masked row gets no gradient
    assert torch.allclose(g, torch.tensor([0.5 / 3, -1 / 3, 1 / 3, 0.0]))
    # beta = 4: every |d| < 4, so 0.5 d^2 / 4
    b4 = QualityRegression(_ctx(), beta=4.0)(_batch(pred, target, mask))
    assert float(b4.terms["loss"].detach()) == pytest.approx((0.5 * 0.25 + 0.5 * 4 + 0.5 * 4) / 4 / 3)
    l1 = QualityRegression(_ctx(), loss="l1")(_batch(pred, target, mask))
    l2 = QualityRegression(_ctx(), loss="l2")(_batch(pred, target, mask))
    assert float(l1.terms["loss"].detach()) == pytest.approx(1.5) and float(
        l2.terms["loss"].detach()
    ) == pytest.approx(8.25 / 3)
    assert float(regression_loss(torch.tensor([3.0]), torch.tensor([0.0]))) == pytest.approx(2.5)


def test_a_batch_without_labels_gives_zero_loss_with_a_graph() -> None:
    batch = _batch([1.0, 2.0], [0.0, 0.0], [False, False])
    out = QualityRegression(_ctx())(batch)
    assert float(out.terms["loss"].detach()) == 0.0 and out.logs["used"] == 0
    out.terms["loss"].backward()
    assert torch.equal(batch.embeddings.grad, torch.zeros(2, 1))


def test_objective_refuses_wrong_backbone_and_options() -> None:
    with pytest.raises(ValueError, match="use a quality backbone"):
        QualityRegression(_ctx(embedding_size=512))
    with pytest.raises(ValueError, match="choose one of"):
        QualityRegression(_ctx(), loss="huber")
    with pytest.raises(ValueError, match="at least 2 bins"):
        QualityRegression(_ctx(), balanced_bins=1)
    obj = QualityRegression(_ctx())
    assert not obj.needs.sampler and obj.batch_sampler(SamplerRequest(np.zeros(4), 2, 0, 0, 1)) is None
    assert obj.describe()["labels"] == {
        "rows_with_label": 3, "rows": 4, "mean": 50.0, "std": pytest.approx(32.659863), "min": 10.0, "max": 90.0
    }  # fmt: skip
    assert QualityRegression(_ctx(), balanced_bins=4).needs.sampler  # this instance brings the sampler


# ----------------------------------------------------------------------------------------------------- sampler
def test_label_bins_by_hand() -> None:
    which, edges = label_bins(np.array([0.0, 24.9, 25.0, 99.0, 100.0, 50.0]), 4)
    assert which.tolist() == [0, 0, 1, 3, 3, 2] and edges.tolist() == [0, 25, 50, 75, 100]
    assert label_bins(np.array([5.0, 5.0]), 3)[0].tolist() == [0, 0]


def test_bin_balanced_sampler_structure_and_resume() -> None:
    rng = np.random.default_rng(0)
    n = 400
    values = np.clip(rng.beta(5, 5, n) * 100, 0, 100)  # Beta-shaped, as SDD-FIQA labels: few at the ends
    values[:4] = [0.0, 1.0, 99.0, 100.0]  # the end bins have a few rows each
    mask = np.ones(n, bool)
    mask[rng.choice(n, 40, replace=False)] = False
    mask[:4] = True
    s = BinBalancedBatchSampler(values, mask, bins=5, batch_size=12, seed=3)
    which, _ = label_bins(values[mask], 5)
    assert s.bin_counts.tolist() == np.bincount(which, minlength=5).tolist() and s.bin_counts.min() < 10
    assert len(s) == mask.sum() // 12
    bin_of = dict(zip(np.flatnonzero(mask).tolist(), which.tolist(), strict=True))
    batches = list(s)
    per_bin_total = np.zeros(5, int)
    for b in batches:
        assert len(b) == 12 and all(mask[i] for i in b)  # unlabelled rows are never drawn
        counts = np.bincount([bin_of[i] for i in b], minlength=5)
        assert counts.min() >= 2 and counts.max() <= 3  # 12 = 5 x 2 + 2 rotating extras
        per_bin_total += counts
    assert per_bin_total.max() - per_bin_total.min() <= 1  # the extras rotate over the bins
    shuffled = np.bincount([bin_of[i] for i in np.flatnonzero(mask)], minlength=5) / mask.sum()
    assert per_bin_total[0] / per_bin_total.sum() > 3 * shuffled[0]  # the rare low-quality bin is oversampled
    # a pure function of (seed, epoch, step, rank): resuming mid-epoch gives the tail; epochs and ranks differ
    s.set_epoch(0, start_batch=5)
    assert list(s) == batches[5:]
    s.set_epoch(1)
    assert list(s) != batches
    other = BinBalancedBatchSampler(values, mask, bins=5, batch_size=12, seed=3, rank=1, world_size=2)
    assert len(other) == mask.sum() // 24 and other.batch(0) != batches[0]
    with pytest.raises(ValueError, match="no row has a label"):
        BinBalancedBatchSampler(values, np.zeros(n, bool), 5, 12)


def test_objective_builds_the_sampler_from_the_attributes() -> None:
    values = np.linspace(0, 100, 40)
    ctx = _ctx(values=tuple(values), mask=tuple([True] * 40))
    obj = QualityRegression(ctx, balanced_bins=4)
    sampler = obj.batch_sampler(SamplerRequest(np.zeros(40, int), 8, 0, 0, 1, ctx.attributes))
    assert isinstance(sampler, BinBalancedBatchSampler) and len(sampler) == 5
    assert obj.describe()["sampler"]["rows_per_bin"] == [10, 10, 10, 10]


# ------------------------------------------------------------------------------------------------ partial init
def _save(path: Path, name: str, net: nn.Module, **kwargs) -> Path:
    meta = {"backbone": {"name": name, "kwargs": kwargs}, "embedding_size": int(net.embedding_size)}
    return atomic_torch_save(
        {"format": FORMAT, "version": VERSION, "meta": meta, "backbone": net.state_dict()}, path
    )


def _trainer(net: nn.Module, name: str, **kwargs) -> SimpleNamespace:
    meta = {"name": name, "kwargs": kwargs}
    return SimpleNamespace(
        backbone=net, backbone_meta=meta, device=torch.device("cpu"), objectives=nn.ModuleDict()
    )


def test_partial_init_copies_the_shared_encoder_and_keeps_the_head_fresh(tmp_path: Path) -> None:
    torch.manual_seed(0)
    rec = build_backbone("mobilefacenet", scale=1)
    with torch.no_grad():  # non-default values everywhere, buffers too
        for t in rec.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.rand_like(t))
    ckpt = _save(tmp_path / "rec.pt", "mobilefacenet", rec, scale=1)
    qual = build_backbone("sddfiqa_mobilefacenet", scale=1)
    fresh = {k: v.clone() for k, v in qual.state_dict().items()}
    t = _trainer(qual, "sddfiqa_mobilefacenet", scale=1)
    TrainingState(t).init_from(ckpt, partial=True)
    ours, theirs = qual.state_dict(), rec.state_dict()
    shared = [k for k in ours if k in theirs]
    assert len(shared) == len(ours) - 3 and all(torch.equal(ours[k], theirs[k]) for k in shared)
    assert all(
        torch.equal(ours[k], fresh[k]) for k in ours if k.startswith("quality.")
    )  # the new head: untouched
    rec_ = t.init_record
    assert rec_["partial"] and rec_["copied"] == len(shared) and rec_["head"] is False
    assert rec_["new"] == ["quality.prelu.weight", "quality.linear.weight", "quality.linear.bias"]
    assert rec_["left_out"] and all(k.startswith("features.") for k in rec_["left_out"])
    # the same checkpoint without init_partial: refused, and the message names the option
    with pytest.raises(CheckpointError, match=r"run\.init_partial=true"):
        TrainingState(
            _trainer(build_backbone("sddfiqa_mobilefacenet", scale=1), "sddfiqa_mobilefacenet")
        ).init_from(ckpt)


def test_partial_init_refuses_shape_mismatches_naming_them(tmp_path: Path) -> None:
    ckpt = _save(tmp_path / "rec.pt", "mobilefacenet", build_backbone("mobilefacenet", scale=1), scale=1)
    wide = build_backbone("sddfiqa_mobilefacenet", scale=2)
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    with pytest.raises(
        CheckpointError, match=r"layers\.0\.layers\.0\.weight \(\[64, 3, 3, 3\] saved, \[128, 3, 3, 3\]"
    ):
        TrainingState(_trainer(wide, "sddfiqa_mobilefacenet", scale=2)).init_from(ckpt, partial=True)
    assert all(torch.equal(v, before[k]) for k, v in wide.state_dict().items())  # nothing half-copied
    other = _save(
        tmp_path / "ir.pt", "iresnet18", build_backbone("iresnet18", embedding_size=8), embedding_size=8
    )
    with pytest.raises(CheckpointError, match="no weight name in common"):
        TrainingState(_trainer(build_backbone("sddfiqa_mobilefacenet"), "sddfiqa_mobilefacenet")).init_from(
            other, partial=True
        )


# ------------------------------------------------------------------------------------------- an ordinary model
def test_quality_checkpoint_exports_to_onnx_and_scores_as_a_quality_source(tmp_path: Path) -> None:
    """The regressor is an ordinary checkpoint: export-onnx, the ONNX embedder and the model= source take it, and
    what it predicts travels along."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from faceforge.data.image_io import write_image_rgb
    from faceforge.data.preprocess import Preprocess
    from faceforge.deploy.export_onnx import export_onnx
    from faceforge.embedders import embedder_from_spec
    from faceforge.eval.kinds.quality_sources import QualityInputs, parse_quality_sources, score_images

    torch.manual_seed(0)
    net = build_backbone("sddfiqa_mobilefacenet", scale=1).eval()
    meta = {
        "backbone": {"name": "sddfiqa_mobilefacenet", "kwargs": {"scale": 1}},
        "embedding_size": 1,
        "preprocess": Preprocess(input_size=112).to_dict(),
        "predicts": QUALITY_PREDICTS,
    }
    ckpt = atomic_torch_save(
        {"format": FORMAT, "version": VERSION, "meta": meta, "backbone": net.state_dict()}, tmp_path / "q.pt"
    )
    report = export_onnx(ckpt, tmp_path / "q.onnx", exporter="torchscript", opset=17)
    assert report.embedding_size == 1 and report.metadata["predicts"] == QUALITY_PREDICTS
    onnx_model = embedder_from_spec(str(tmp_path / "q.onnx"))
    assert onnx_model.embedding_size == 1 and onnx_model.describe()["predicts"] == QUALITY_PREDICTS
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    for i, f in enumerate(faces):
        write_image_rgb(tmp_path / "faces" / f"{i}.png", f)
    paths = [str(tmp_path / "faces" / f"{i}.png") for i in range(3)]
    got = {}
    for spec in (str(ckpt), str(tmp_path / "q.onnx")):
        src = parse_quality_sources(f"model={spec}")[0]
        got[spec] = score_images(src, QualityInputs(paths, tmp_path / "faces")).values
        assert src.settings()["model"]["predicts"] == QUALITY_PREDICTS
    with torch.no_grad():
        want = net(Preprocess(input_size=112)(torch.from_numpy(faces)))[:, 0].numpy()
    assert np.allclose(got[str(ckpt)], want, atol=1e-4) and np.allclose(
        got[str(tmp_path / "q.onnx")], want, atol=1e-3
    )
