"""bf16 inference where it keeps the numbers: the parity record of a real checkpoint on real LFW faces, and
``auto`` falling back to fp32 with a message when the parity is below the bar.

The network is a faceforge MobileFaceNet checkpoint (the paper widths, scale 1, so that bf16,
which is emulated and slow on CPUs without native bf16, stays cheap here); ``auto`` is made to see a
bf16-capable device (``inference_candidate``) so the tests mean the same on every CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import faceforge
from faceforge.cli.main import main
from faceforge.core.checkpoint import FORMAT, VERSION, atomic_torch_save
from faceforge.data.image_io import read_image_rgb
from faceforge.data.preprocess import Preprocess
from faceforge.embedders import parity
from faceforge.embedders.checkpoint import CheckpointEmbedder
from faceforge.models.backbones import build_backbone

KWARGS = {"embedding_size": 64, "scale": 1}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = build_backbone("mobilefacenet", **KWARGS).eval()
    meta = {
        "backbone": {"name": "mobilefacenet", "kwargs": KWARGS},
        "embedding_size": KWARGS["embedding_size"],
        "preprocess": Preprocess().to_dict(),
        "faceforge_version": faceforge.__version__,
    }
    path = tmp_path_factory.mktemp("precision") / "model.pt"
    atomic_torch_save(
        {"format": FORMAT, "version": VERSION, "meta": meta, "backbone": net.state_dict()}, path
    )
    return path


@pytest.fixture
def bf16_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A device where auto tries bf16, 2 parity faces, and a parity folder of this test's own."""
    monkeypatch.setattr(parity, "inference_candidate", lambda device: "bf16")
    monkeypatch.setattr(parity, "PARITY_FACES", 2)
    monkeypatch.setenv("FACEFORGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "parity"


def _pairs_file(root: Path, out: Path) -> Path:
    """2 matched and 2 mismatched pairs over 5 faces (bf16 is slow where it is emulated)."""
    a, b = sorted(p.name for p in root.iterdir() if p.is_dir())[:2]
    lines = ["2", f"{a}\t1\t2", f"{b}\t1\t2", f"{a}\t1\t{b}\t1", f"{a}\t3\t{b}\t2"]
    out.write_text("\n".join(lines) + "\n")
    return out


def test_auto_stays_fp32_where_bf16_is_emulated(
    model_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(parity, "inference_candidate", lambda device: None)
    monkeypatch.setenv("FACEFORGE_CACHE", str(tmp_path))
    emb = CheckpointEmbedder(model_file)
    assert not emb.needs_parity_faces
    desc = emb.describe()
    assert desc["precision"] == "fp32" and "no native bf16" in desc["precision_choice"]["note"]
    assert not (tmp_path / "parity").exists()


def test_bf16_parity_is_recorded_and_reused(
    model_file: Path, lfw_small: Path, bf16_device: Path, tmp_path: Path, capsys
) -> None:
    pairs = _pairs_file(lfw_small, tmp_path / "pairs.txt")
    out = tmp_path / "eval" / "result.json"
    args = ["eval", "--model", str(model_file), "--pairs", str(pairs), "--images", str(lfw_small)]
    args += ["--no-flip", "--folds", "2", "--no-progress", "--json", str(out)]
    assert main(args) == 0
    res = json.loads(out.read_text())
    record = res["model"]["precision_choice"]["record"]
    assert record["faces"] == 2 and record["precision"] == "bf16" and record["device"] == "cpu"
    assert 0.9 < record["cosine_min"] <= record["cosine_mean"] <= 1.0 + 1e-9
    # the accuracy part came from this pairs evaluation: both accuracies and their difference
    acc = record["accuracy"]
    assert acc["pairs_scored"] == 4 and acc["n_folds"] == 2
    assert acc["delta_points"] == pytest.approx(100 * (acc["bf16"] - acc["fp32"]))
    used = "bf16" if record["passed"] else "fp32"
    assert res["model"]["precision"] == used and res["settings"]["precision"] == used
    assert f"precision: auto: {used}" in capsys.readouterr().out
    (stored,) = bf16_device.glob("*.json")
    assert json.loads(stored.read_text())["accuracy"]["fp32"] == acc["fp32"]
    # a second embedder reads the record: no new measurement
    again = CheckpointEmbedder(model_file)
    assert not again.needs_parity_faces and again.policy.record.created == record["created"]
    assert again.precision == used


def test_failing_parity_falls_back_to_fp32_with_a_message(
    model_file: Path,
    lfw_small: Path,
    bf16_device: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys,
) -> None:
    monkeypatch.setattr(parity, "COSINE_BAR", 1.5)  # no cosine reaches it: the parity must fail
    out = tmp_path / "emb.npz"
    person = next(p for p in sorted(lfw_small.iterdir()) if p.is_dir())
    files = sorted(person.glob("*.jpg"))[:4]
    listed = tmp_path / "faces.txt"
    listed.write_text("".join(f"{f}\n" for f in files))
    args = ["embed", "--model", str(model_file), "--images", str(listed), "--out", str(out)]
    assert main([*args, "--no-flip", "--no-cache", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "precision: auto: fp32, bf16 parity below the bar (min cosine to fp32" in printed
    with np.load(out) as z:
        meta = json.loads(str(z["meta"]))
        emb = z["embeddings"]
    assert meta["model"]["precision"] == "fp32" and meta["settings"]["precision"] == "fp32"
    assert meta["model"]["precision_choice"]["record"]["passed"] is False
    # the embeddings are the fp32 ones
    ref = CheckpointEmbedder(model_file, precision="fp32")
    faces = np.stack([read_image_rgb(p) for p in files])
    want = ref.embed(faces)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(emb, want, atol=1e-5)
    # forcing bf16 uses it anyway and says that the parity is below the bar
    forced = CheckpointEmbedder(model_file, precision="bf16")
    assert forced.precision == "bf16" and "below the bar" in forced.describe()["precision_choice"]["note"]


def test_the_service_model_id_has_the_precision_and_follows_its_gallery(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp32 is left out of the id (galleries enrolled before keep theirs), bf16 is in it; a service asked for
    another precision serves in the one its gallery holds, instead of refusing its own gallery."""
    pytest.importorskip("faiss")
    from faceforge.serve.gallery import model_id_of
    from faceforge.serve.service import Service, ServiceSettings

    monkeypatch.setenv("FACEFORGE_CACHE", str(tmp_path / "cache"))
    fp32 = CheckpointEmbedder(model_file, precision="fp32").describe()
    bf16 = CheckpointEmbedder(model_file, precision="bf16").describe()
    without = {k: v for k, v in fp32.items() if k != "precision"}
    assert model_id_of(fp32) == model_id_of(without) != model_id_of(bf16)

    def serve(precision: str) -> Service:
        emb = CheckpointEmbedder(model_file, precision=precision)
        return Service(
            ServiceSettings(db=str(tmp_path / "g.db"), threshold=0.5), embedder=emb, detector=object()
        )

    first = serve("fp32")
    first.close()
    again = serve("bf16")
    try:
        assert again.embedder.precision == "fp32" and again.describe()["model_id"] == model_id_of(fp32)
        assert again.describe()["model"]["precision_choice"]["note"] == "fp32 as requested"
    finally:
        again.close()


def test_one_pair_in_a_thousand_is_within_the_accuracy_bar() -> None:
    """0.1 point (one pair of pairsDevTest's 1,000) passes the "within 0.1 point" bar although float
    arithmetic gives 100 * (0.948 - 0.947) = 0.1000000000000009; 0.2 point does not."""
    from faceforge.embedders.parity import ParityRecord

    def record(fp32: float, bf16: float) -> ParityRecord:
        acc = {"benchmark": "lfw:pairs", "fp32": fp32, "bf16": bf16, "delta_points": 100 * (bf16 - fp32)}
        return ParityRecord("0" * 64, "cpu", "bf16", "test", "2", 32, "x", "test", 0.9999, 0.9999, acc)

    assert 100 * (0.948 - 0.947) > 0.1  # (the float fact the bar must absorb)
    assert record(0.947, 0.948).passed and record(0.948, 0.947).passed
    assert not record(0.947, 0.949).passed


def test_forward_batch_splits_the_passes_and_keeps_each_face_its_embedding(
    model_file: Path, data_dir: Path
) -> None:
    """On a CPU the network sees ``forward_batch`` faces a pass (32 by default, ``--model-option
    forward_batch=N``); each face's embedding is the one a single pass gives, up to float rounding."""
    from faceforge.core.rules import OptionError
    from faceforge.embedders import embedder_from_spec
    from faceforge.embedders.checkpoint import CPU_FORWARD_BATCH

    files = sorted((data_dir / "lfw" / "images").rglob("*.jpg"))[:10]
    import cv2

    faces = np.stack([cv2.resize(read_image_rgb(f)[69:181, 69:181], (112, 112)) for f in files])
    whole = CheckpointEmbedder(model_file, precision="fp32", forward_batch=128)
    split = embedder_from_spec(str(model_file), precision="fp32", forward_batch=3)
    assert CheckpointEmbedder(model_file, precision="fp32").forward_batch == CPU_FORWARD_BATCH
    assert (
        CheckpointEmbedder(model_file, precision="fp32", batch_size=8).forward_batch == 8
    )  # at most the batch
    assert whole.forward_batch == 128 and split.forward_batch == 3
    assert split.describe()["inference"]["forward_batch"] == 3
    a, b = whole.embed(faces), split.embed(faces)
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())
    with pytest.raises(ValueError, match="forward_batch must be a positive"):
        CheckpointEmbedder(model_file, forward_batch=0)
    with pytest.raises(OptionError):
        embedder_from_spec(str(model_file), forward_batch="many")


def test_forward_streams_give_each_face_its_embedding_and_keep_the_callers_threads(
    model_file: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two forward passes at once on one thread each (asked for, or the CPU default of a network that opts in)
    give the embeddings of one pass at a time, in order, with and without the flip sum; the caller's thread
    count and the default new threads start from are what they were; the plan follows the threads, the slices
    and the network's choice."""
    import threading

    import cv2

    from faceforge.embedders import embedder_from_spec
    from faceforge.embedders.checkpoint import stream_plan
    from faceforge.models.backbones import MobileFaceNet

    files = sorted((data_dir / "lfw" / "images").rglob("*.jpg"))[:11]
    faces = np.stack([cv2.resize(read_image_rgb(f)[69:181, 69:181], (112, 112)) for f in files])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one = CheckpointEmbedder(model_file, precision="fp32", forward_batch=3, streams=1)
        two = embedder_from_spec(str(model_file), precision="fp32", forward_batch=3, streams=2)
        assert one.streams == 1 and two.streams == 2 and two.stream_threads == 1
        assert two.describe()["inference"]["streams"] == 2
        for flip in (False, True):
            a = one.embed_flip_sum(faces) if flip else one.embed(faces)
            b = two.embed_flip_sum(faces) if flip else two.embed(faces)
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())
            assert (
                np.abs(a[:-1] - a[1:]).max() > 1e-3 * np.abs(a).max()
            )  # different faces: the order is checked
        assert torch.get_num_threads() == 2
        assert CheckpointEmbedder(model_file).streams == 1  # MobileFaceNet does not opt in
        monkeypatch.setattr(MobileFaceNet, "cpu_forward_streams", True, raising=False)
        assert CheckpointEmbedder(model_file).streams == 2  # one that does, on 2 threads
        monkeypatch.undo()
        seen: list[int] = []
        t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert seen == [2]  # a new thread still starts from the process default, not the workers' 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="streams must be a positive"):
        CheckpointEmbedder(model_file, streams=0)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert stream_plan(cpu, None, 4, False, threads=2) == (2, 1)
    assert stream_plan(cpu, None, 4, False, threads=16) == (4, 4)
    assert stream_plan(cpu, None, 1, False, threads=16) == (1, 16)
    assert stream_plan(cpu, 8, 4, False, threads=2) == (2, 1)
    assert stream_plan(cpu, None, 4, False, threads=2, network_opts_in=False) == (1, 2)
    assert stream_plan(cpu, 2, 4, False, threads=2, network_opts_in=False) == (2, 1)  # asked for
    assert stream_plan(cpu, None, 4, True, threads=2) == (1, 2)  # compiled
    assert stream_plan(cuda, None, 4, False, threads=2) == (1, 2)
