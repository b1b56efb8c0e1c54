"""Every recipe gives the numbers it gave before objectives became plug-ins (issue 16's regression pin).

``recipe_pins.json`` holds, per recipe, the logged numbers of each step of a short run (two or four steps on 32
real LFW faces, MobileFaceNet 64-d, fp32, one thread, seed 0) and the sum of |weights| of the backbone after it,
captured with the engine as it was before the refactor. The same recipes, written in today's config keys, must
give the same numbers: margin loss, top-1, every distillation term, DDL's parts, LIAAD's attention, the learning
rate, and the trained weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from faceforge.config import compose_config
from faceforge.core.checkpoint import FORMAT, atomic_torch_save
from faceforge.data.align_folder import align_folder
from faceforge.data.preprocess import Preprocess
from faceforge.engine.loop import Trainer
from faceforge.models.backbones import build_backbone

PINS = json.loads((Path(__file__).parent / "recipe_pins.json").read_text())
#: the same runs captured on CPUs whose fp32 kernels give other last bits (``torch.backends.cpu.get_cpu_capability()``
#: -> recipe -> pins), for the recipes whose relation losses turn those bits into other numbers: DDL drops positive
#: similarities <= 0 and takes hardest negatives (a cosine near 0 lands on the other side), EKD ranks pairs at
#: T = 0.01. ``recipe_pins.json`` was captured on AVX-512 (with the engine as it was before the refactor); the
#: AVX2 pins were captured with the engine of that same commit and of today, which gave identical numbers. On an
#: AVX-512 CPU with AMX tiles (key ``AVX512_AMX``) oneDNN picks other fp32 kernels again: its DDL and EKD pins were
#: captured with today's engine, which reproduces the AVX-512 and AVX2 pins on those CPUs.
PINS_BY_CPU = json.loads((Path(__file__).parent / "recipe_pins_cpu.json").read_text())
BASE = """
defaults:
  - model: mobilefacenet_paper
  - head: arcface
  - data: folder
  - optim: sgd
  - method: none
  - _self_
run: {seed: 0, log_every: 1, progress: false, threads: 1, precision: fp32}
data: {root: "???", num_workers: 0, batch_size: 16, preload: false}
optim: {lr: 0.1, epochs: 1, warmup_epochs: 0.0, schedule: poly}
"""


def _teacher(path: Path, dim: int, seed: int) -> Path:
    """A frozen random MobileFaceNet saved as a faceforge checkpoint (a teacher that needs no download)."""
    torch.manual_seed(seed)
    net = build_backbone("mobilefacenet", embedding_size=dim).eval()
    meta = {
        "backbone": {"name": "mobilefacenet", "kwargs": {"embedding_size": dim}},
        "embedding_size": dim,
        "preprocess": Preprocess(input_size=112).to_dict(),
    }
    atomic_torch_save({"format": FORMAT, "version": 1, "meta": meta, "backbone": net.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def setup(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("pins")
    src = data_dir / "lfw" / "images"
    counts = sorted(((len(list(p.glob("*.jpg"))), p.name) for p in src.iterdir() if p.is_dir()), reverse=True)
    people = sorted(name for _, name in counts[3:11])
    files = [f for p in people for f in sorted((src / p).glob("*.jpg"))[:4]]
    root = tmp / "aligned"
    align_folder(src, data_dir / "lfw" / "landmarks_mtcnn_5pts_250px.csv", root, landmark_offset=(-48, -48),
                 images=files, progress=False)  # fmt: skip
    (tmp / "base.yaml").write_text(BASE)
    return {
        "tmp": tmp,
        "root": root,
        "t1": _teacher(tmp / "t1.pt", 32, 11),
        "t2": _teacher(tmp / "t2.pt", 48, 12),
    }


def _recipes(t1: Path, t2: Path) -> dict[str, list[str]]:
    # teachers embed in fp32 as when the pins were captured (``auto`` would pick bf16 on a CPU with native bf16)
    fp32 = "options: {precision: fp32}"
    one = f"teachers=[{{model: {t1}, {fp32}}}]"
    return {
        "softmax": ["head=softmax"],
        "normface": ["head=normface"],
        "cosface": ["head=cosface"],
        "arcface": ["head=arcface"],
        "curricularface": ["head=curricularface"],
        "arcface_sharded": ["head=arcface", "head.sharded=true"],
        "cosface_partial_fc": ["head=cosface", "head.sample_rate=0.5"],
        "rkd": ["method=rkd", one],
        "feature_l2": ["method=feature_l2", one],
        "sp": ["method=sp", one],
        "ekd": ["method=ekd", one],
        "liaad": [
            "method=liaad",
            f"teachers=[{{model: {t1}, name: general, {fp32}}},{{model: {t2}, name: age_invariant, {fp32}}}]",
        ],
        "ddl": ["method=ddl"],
    }


#: old log name -> today's (the distillation term is logged under its objective's name, unweighted)
def _renamed(old: dict[str, float], recipe: str) -> dict[str, float]:
    kd = {"rkd", "feature_l2", "sp", "ekd", "liaad", "ddl"}
    out = {"margin": old["loss"], "margin/top1": old["train_top1"], "lr": old["lr"]}
    if recipe in kd:
        out[recipe] = old["distill_raw"]
    for k, v in old.items():
        if k.startswith("ddl_"):
            out[f"ddl/{k[4:]}"] = v
        elif k.startswith("attention_"):
            out[f"liaad/{k}"] = v
        elif k == "hard_margin_loss":
            out["margin/extra"] = v
    return out


def _cpu_key() -> str:
    """The pins' key for this CPU: torch's capability (``AVX2``, ``AVX512``), ``_AMX`` appended where AMX tiles
    exist."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return torch.backends.cpu.get_cpu_capability() + ("_AMX" if amx else "")


def _record(path: Path, recipe: str, report: dict, run: Path) -> None:
    """Write this run's numbers in the pin format (the old log names) to ``path[<cpu capability>][recipe]``."""
    old = {
        "margin": "loss",
        "margin/top1": "train_top1",
        "lr": "lr",
        "margin/extra": "hard_margin_loss",
        recipe: "distill_raw",
    }
    history = []
    for new in report["history"]:
        row = {o: new[n] for n, o in old.items() if n in new}
        row.update({f"ddl_{k[4:]}": v for k, v in new.items() if k.startswith("ddl/")})
        row.update({k.split("/", 1)[1]: v for k, v in new.items() if k.startswith("liaad/attention_")})
        history.append(row)
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    abs_sum = float(sum(v.double().abs().sum() for v in ckpt["backbone"].values() if v.is_floating_point()))
    pins = json.loads(path.read_text()) if path.is_file() else {}
    pins.setdefault(_cpu_key(), {})[recipe] = {
        "history": history,
        "backbone_abs_sum": abs_sum,
    }
    path.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n")


@pytest.mark.parametrize("recipe", sorted(PINS))
def test_recipe_gives_its_pinned_numbers(setup: dict[str, Path], recipe: str) -> None:
    overrides = _recipes(setup["t1"], setup["t2"])[recipe]
    run = setup["tmp"] / "runs" / recipe
    cfg = compose_config(
        str(setup["tmp"] / "base.yaml"),
        [f"data.root={setup['root']}", f"run.dir={run}", "model.embedding_size=64",
         f"run.cache_dir={setup['tmp'] / 'cache'}", *overrides],
    )  # fmt: skip
    report = Trainer(cfg).fit()
    if os.environ.get("FACEFORGE_RECORD_PINS"):  # capture this CPU's pins (see PINS_BY_CPU)
        _record(Path(os.environ["FACEFORGE_RECORD_PINS"]), recipe, report, run)
    pinned = PINS_BY_CPU.get(_cpu_key(), {}).get(recipe, PINS[recipe])
    assert len(report["history"]) == len(pinned["history"])
    for step, (old, new) in enumerate(zip(pinned["history"], report["history"], strict=True)):
        for key, value in _renamed(old, recipe).items():
            assert new[key] == pytest.approx(value, rel=1e-4, abs=1e-6), f"{recipe} step {step}: {key}"
        weight = {n: o["weight"] for n, o in report["objectives"].items()}
        total = sum(weight[n] * new[n] for n in weight) + new.get("margin/extra", 0.0)
        assert new["loss"] == pytest.approx(total, rel=1e-5)
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    abs_sum = float(sum(v.double().abs().sum() for v in ckpt["backbone"].values() if v.is_floating_point()))
    assert abs_sum == pytest.approx(pinned["backbone_abs_sum"], rel=1e-6)
