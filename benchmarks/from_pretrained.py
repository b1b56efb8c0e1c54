"""The seed methods from a strong start: every row begins at the same pretrained import (``faceforge import dlib``),
trains on the same people for the same epochs and seeds, and is measured beside the plain fine-tune of that import.

Rows (:data:`ROWS`; trained rows run every ``--seeds`` seed, ``--epochs`` epochs, on the demo's training people:
the LFW people outside pairsDevTest with at least 2 images, 1,262 people, 6,968 images of ``--faces``):

* ``imported``: the import as it is, no training (a reference, evaluated once);
* ``plain``: the packaged ``finetune`` recipe from the import (class-mean ArcFace head s=32 m=0.3 with rows at norm
  1, backbone at 0.03x, frozen BN statistics, a head-only epoch, backbone ramp; benchmarks/finetune.py's
  ``finetune`` row);
* ``cifp``: the same + CIFP (``method=cifp`` on the recipe's head, as benchmarks/fairness.py turns it on);
* ``mtlface_age``: the same + MTLFace's attention-based feature decomposition on dlib's last map
  (``model=aifr_dlib_resnet``, encoder from the import with ``run.init_partial``), its age estimator on X_age and
  the GRL-adversarial one on X_id (``method=mtlface``'s weights 0.001 / 0.002), trained on the LFW ages estimated by a
  UTKFace age model (benchmarks/mtlface.py's pipeline); the head stays the recipe's ArcFace;
* ``ddl``: the same + DDL with the method settings of its paper recipe (``paper_ddl.yaml``'s ``objectives`` and batch
  size: TFace's normal batch of 32 + 32 pairs, margin loss on the normal batch, KL weights 0.1 / 0.02, order loss
  0.5; hard samples = the faces at a random low resolution, ``method=ddl``);
* ``sddfiqa``: SDD-FIQA's quality regressor (``sddfiqa_dlib_resnet``) started from the ``plain`` model of the same
  seed, trained on that model's pseudo-labels of the training faces (benchmarks/quality.py's pipeline);
* ``liaad_student``: MobileFaceNet (the demo recipe ``lfw_mobilefacenet_arcface``) distilled by LIAAD from two
  teachers: the ``plain`` model (general) and the ``mtlface_age`` model (age-invariant) of the same seed; both come
  from the one import, dlib (an SFace import is not part of this benchmark: every row starts from ``--model``);
* ``rkd_student``: the same student with one teacher (the ``plain`` model) and RKD.

Metrics, every row (benchmarks/finetune.py's ``evaluate``: flip-sum, fp32): pairsDevTest accuracy (insightface
10-fold) and all-pairs TAR@FAR=1e-3 over the images of pairsDevTest (the DevTest people, conservative rule). For
``sddfiqa`` these are its recogniser's (the ``plain`` model's). Per row also (``imported`` and ``plain`` get all of
them, so every row has its base beside it):

* ``cifp``: UTKFace race and gender FMR at one global threshold (FMR 1e-3 on all pairs pooled), worst/best FMR
  ratio (floored) and std of log10 FMR across groups (benchmarks/fairness.py's ``evaluate``);
* ``mtlface_age``: accuracy per age-gap band of the LFW age-gap list of the DevTest people (benchmarks/mtlface.py's
  ``evaluate``; gaps of estimated ages) and the age head's MAE on held-out UTKFace faces;
* ``ddl``: all-pairs TAR@FAR=1e-3 with the probe face at 32, 24 and 16 px (``lowres:SIZE:one:allpairs``,
  benchmarks/robustness.py's ``evaluate``);
* ``sddfiqa``: AOC of its scores against the embedding norm of the recogniser (and face size, sharpness, one random
  seed) on the pairs and on all pairs of the DevTest images, threshold fixed on all pairs (benchmarks/quality.py's
  ``evaluate``; no flip);
* students: their accuracy as a share of the general teacher's, embeddings/s of teacher and student (batch 32,
  precision auto, benchmarks/distill_lfw.py's speed code), the age-gap bands, and two teachers vs one.

Aggregation: mean and sample std (ddof 1) over seeds of every number, with the values; differences to ``plain``.

``--quick``: a CI-size smoke run of the same code: the first ``--quick-people`` (100) training people, 1 epoch
(the recipe's head-only and ramp phases scaled to the same share of the run), the first seed, the first
``--quick-pairs`` (100) matched and mismatched pairs of pairsDevTest, ``--quick-utk`` (600) UTKFace photos, an age
estimator of 1 epoch; its files go to ``<out>/quick/`` and ``<out>/from_pretrained_quick.{json,md}`` (never the full
names), and it prints an estimate of the full run's time from the speeds it measured.

    python benchmarks/from_pretrained.py [--model benchmarks_out/models/dlib.pt] [--faces demo_out/lfw_aligned]
        [--out benchmarks_out/from_pretrained] [--epochs 3] [--seeds 0,1,2] [--rows plain,cifp,...]
        [--age-epochs 2] [--age-model AGE.pt] [--quick] [--reuse] [--publish]

Writes ``<out>/from_pretrained[_quick].json`` and ``.md`` after every run (nothing is lost to an interruption);
``--reuse`` keeps the runs already in the JSON (trainings also resume inside their run folder); ``--publish`` copies
both files to benchmarks/results/. A run that fails is recorded with its error and the others go on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import distill_lfw
import fairness
import finetune
import mtlface
import numpy as np
import quality
import robustness
import torch
from common import (
    DATA,
    DEVTEST_PAIRS,
    REPO,
    align_lfw,
    machine_info,
    mean_std,
    pm,
    write_results,
    write_training_list,
)
from lfw_agegap_pairs import build_agegap_pairs
from omegaconf import OmegaConf

from faceforge.config import compose_config
from faceforge.core.hashing import file_sha256
from faceforge.data.pairs import pairs_people, read_lfw_pairs, resolve_pairs
from faceforge.embedders import embedder_from_spec

log = logging.getLogger("from_pretrained")

DEFAULT_MODEL = Path("benchmarks_out/models/dlib.pt")
DEFAULT_FACES = Path("demo_out/lfw_aligned")
STUDENT_RECIPE = "lfw_mobilefacenet_arcface"
#: dlib's last feature map is 256 x 2 x 2 (model/aifr_dlib_resnet.yaml): the age estimators' input
AGE_KEYS = [
    f"objectives.{o}.{k}={v}"
    for o in ("age", "age_adversarial")
    for k, v in (("channels", 256), ("spatial", 2))
]
#: the keys of paper_ddl.yaml that are DDL's method settings (the rest is its backbone, head and optimiser)
DDL_PAPER_KEYS = ("objectives", "data.batch_size")
FULL_COMMAND = (
    "python benchmarks/from_pretrained.py --model benchmarks_out/models/dlib.pt --faces demo_out/lfw_aligned "
    "--out benchmarks_out/from_pretrained --epochs 3 --seeds 0,1,2 --age-epochs 2 --publish"
)


# ------------------------------------------------------------------------------------------------------ rows
@dataclass
class Context:
    """What the rows share: the import, the data, the output folder and the models trained so far."""

    model: Path
    faces: Path
    work: Path
    list_file: Path
    pairs_file: Path
    images: Path  # the images of pairs_file (identity folders): the all-pairs set and SDD-FIQA's Test
    epochs: int
    rows: list[str]
    phase_keys: list[str]
    result: dict[str, Any]
    ages: Path | None = None
    agegap: Path | None = None
    utk_bias: Path | None = None
    utk_age: Path | None = None
    speed_faces: np.ndarray | None = None

    def model_of(self, row: str, seed: int) -> Path:
        rec = self.result["rows"].get(row, {}).get("runs", {}).get(str(seed))
        if not rec or "model" not in rec or not Path(rec["model"]).is_file():
            raise RuntimeError(f"needs the {row} model of seed {seed}, which this run has not got")
        return Path(rec["model"])


@dataclass(frozen=True)
class Row:
    label: str
    kind: str  # reference (no training) | finetune (the recipe from the import) | sddfiqa | student
    overrides: Callable[[Context, int], list[str]] = lambda ctx, seed: []
    extras: tuple[
        str, ...
    ] = ()  # more evaluations: bias, agegap, lowres, quality, distill (BASE_ROWS: see there)
    needs: tuple[str, ...] = ()  # rows whose model of the same seed this row uses
    age_head: bool = False


def paper_ddl_keys() -> list[str]:
    """``KEY=VALUE`` of DDL's method settings in its paper recipe (:data:`DDL_PAPER_KEYS` of paper_ddl.yaml)."""
    cfg = OmegaConf.load(REPO / "faceforge" / "configs" / "paper_ddl.yaml")
    out: list[str] = []

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}")
        else:
            out.append(f"{key}={json.dumps(node)}")

    for key in DDL_PAPER_KEYS:
        node = OmegaConf.select(cfg, key)
        walk(OmegaConf.to_container(node) if OmegaConf.is_config(node) else node, key)
    return out


#: the rows every other row is compared with; they get the evaluations of the other rows in the run among these
BASE_ROWS = ("imported", "plain")
BASE_EXTRAS = ("bias", "agegap", "lowres")

ROWS: dict[str, Row] = {
    "imported": Row("as imported (no training)", "reference", extras=BASE_EXTRAS),
    "plain": Row("finetune recipe", "finetune", extras=BASE_EXTRAS),
    "cifp": Row("+ CIFP", "finetune", lambda ctx, seed: list(fairness.CIFP_KEYS), extras=("bias",)),
    "mtlface_age": Row(
        "+ MTLFace age branches (AFD, age + GRL-adversarial age)",
        "finetune",
        lambda ctx, seed: [
            "method=mtlface",
            "model=aifr_dlib_resnet",
            "run.init_partial=true",
            "head=arcface",
            *AGE_KEYS,
            f"data.attributes={ctx.ages}",
        ],
        extras=("agegap",),
        age_head=True,
    ),
    "ddl": Row(
        "+ DDL (paper recipe's method settings)",
        "finetune",
        lambda ctx, seed: ["method=ddl", *paper_ddl_keys()],
        extras=("lowres",),
    ),
    "sddfiqa": Row(
        "SDD-FIQA regressor from the plain model", "sddfiqa", extras=("quality",), needs=("plain",)
    ),
    "liaad_student": Row(
        "MobileFaceNet, LIAAD from plain + mtlface_age",
        "student",
        lambda ctx, seed: [
            "method=liaad",
            f"teachers.0.model={ctx.model_of('plain', seed)}",
            f"teachers.1.model={ctx.model_of('mtlface_age', seed)}",
        ],
        extras=("agegap", "distill"),
        needs=("plain", "mtlface_age"),
    ),
    "rkd_student": Row(
        "MobileFaceNet, RKD from plain (one teacher)",
        "student",
        lambda ctx, seed: [
            "method=rkd",
            f"teachers.0.model={ctx.model_of('plain', seed)}",
            "teachers.0.name=general",
        ],
        extras=("agegap", "distill"),
        needs=("plain",),
    ),
}
#: rows that could not be built from the existing code, with the reason (none at present)
LEFT_OUT: dict[str, str] = {}


def plan_rows(wanted: list[str]) -> list[str]:
    """The rows to run, in :data:`ROWS` order: the wanted ones, every row they need, and ``plain`` (the base of
    every comparison) when any trained row is wanted."""
    unknown = [r for r in wanted if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}: rows are {list(ROWS)}")
    todo = set(wanted)
    for r in wanted:
        todo |= set(ROWS[r].needs)
    if any(ROWS[r].kind != "reference" for r in todo):
        todo.add("plain")
    return [r for r in ROWS if r in todo and r not in LEFT_OUT]


def row_extras(row: str, rows: list[str]) -> tuple[str, ...]:
    """The evaluations of ``row`` in a run of ``rows``: its own, and for :data:`BASE_ROWS` those of the other rows
    (so ``plain`` gets the UTKFace bias numbers when ``cifp`` runs, the low-resolution ones when ``ddl`` does...)."""
    if row not in BASE_ROWS:
        return ROWS[row].extras
    others = {e for r in rows if r not in BASE_ROWS for e in ROWS[r].extras}
    return tuple(e for e in ROWS[row].extras if e in others)


def recipe_phase_keys(epochs: int) -> list[str]:
    """The finetune recipe's head-only and backbone-ramp phases for a run of ``epochs`` epochs: none (the recipe's
    own) when the head-only phase fits in the run, else both scaled to the share of the run they have in the
    recipe (1.0 and 0.5 of 3 epochs)."""
    cfg = compose_config(finetune.RECIPE, ["run.init=x.pt", "data.root=."])
    head_only, ramp, total = (
        cfg.finetune.head_only_epochs,
        cfg.finetune.backbone_warmup_epochs,
        cfg.optim.epochs,
    )
    if epochs > head_only:
        return []
    share = epochs / total
    return [
        f"finetune.head_only_epochs={head_only * share:.4g}",
        f"finetune.backbone_warmup_epochs={ramp * share:.4g}",
    ]


# ------------------------------------------------------------------------------------------------------ data
def link_images(faces: Path, files: list[str], dest: Path) -> Path:
    """``dest/<person>/<file>`` for every ``files`` path (relative to ``faces``): hard links (copies across file
    systems), so a folder of some of the faces can be handed to code that writes beside its images."""
    for rel in files:
        target = dest / rel
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(faces / rel, target)
        except OSError:
            shutil.copyfile(faces / rel, target)
    return dest


def list_paths(list_file: Path) -> list[str]:
    return [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]


def people_images(faces: Path, people: set[str]) -> list[str]:
    return [
        f.relative_to(faces).as_posix() for p in sorted(people) for f in sorted((faces / p).glob("*.jpg"))
    ]


def utk_sample(work: Path, n: int | None) -> Path | None:
    """A folder of links to a seeded sample of ``n`` UTKFace photos (None: all of them, the data folder itself)."""
    if not n:
        return None
    dest = work / f"utk_sample{n}"
    if not (dest / ".done").is_file():
        files = sorted((DATA / "utkface" / "images").glob("*.jpg"))
        pick = np.random.default_rng(0).choice(len(files), min(n, len(files)), replace=False)
        dest.mkdir(parents=True, exist_ok=True)
        for i in sorted(pick):
            if not (dest / files[i].name).exists():
                (dest / files[i].name).symlink_to(files[i].resolve())
        (dest / ".done").write_text("ok")
    return dest


class Timer:
    """Seconds of named stages, with how each scales to the full run (see :func:`estimate_full`)."""

    def __init__(self, store: dict[str, Any]) -> None:
        self.store = store

    def run(self, name: str, scale: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, timed; a stage found done (``--reuse``: seconds) keeps the time it took when it ran."""
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        if seconds > self.store.get(name, {}).get("seconds", 0.0):
            self.store[name] = {"seconds": seconds, "scale": scale}
        return out


def prepare_shared(
    ctx: Context, rows: list[str], args: argparse.Namespace, age_epochs: int, timer: Timer
) -> None:
    """UTKFace for the bias numbers, and the age pipeline (UTKFace age estimator, LFW ages, age-gap list) when a
    row needs them; every stage is kept in ``<work>`` and not redone."""
    extras = {e for r in rows for e in row_extras(r, rows)}
    data = ctx.result.setdefault("data", {})
    sample = utk_sample(ctx.work, args.quick_utk if args.quick else None)
    if "bias" in extras:
        ctx.utk_bias = timer.run(
            "utk_prepare_bias", "utk", lambda: fairness.prepared_utkface(ctx.work, sample)
        )
    if "agegap" in extras or "mtlface_age" in rows:
        ctx.utk_age = timer.run("utk_prepare_age", "utk", lambda: mtlface.prepare_utk(ctx.work, sample))
        if args.age_model:
            age_model, info = Path(args.age_model), {"trained": "outside this script (--age-model)"}
        else:
            age_model, info = timer.run(
                "age_estimator",
                "utk_train",
                lambda: mtlface.train_age_estimator(ctx.utk_age, ctx.work, age_epochs),
            )
        if "age_estimator" not in data:
            data["age_estimator"] = {
                "model": str(age_model),
                "epochs": age_epochs,
                "training": info,
                "heldout": mtlface.age_mae(age_model, ctx.utk_age),
            }
        # LFW ages of the training faces and of the evaluation people: mtlface.lfw_ages writes its image list beside
        # the faces, so it gets a folder of links to those faces under <work>, not the shared aligned folder
        needed = list_paths(ctx.list_file) + people_images(ctx.faces, pairs_people(ctx.pairs_file))
        age_faces = link_images(ctx.faces, needed, ctx.work / "age_faces")
        ctx.ages = timer.run(
            "lfw_ages", "images", lambda: mtlface.lfw_ages(age_model, age_faces, ctx.list_file, ctx.work)
        )
        ctx.agegap = ctx.work / "lfw_agegap.txt"
        if not ctx.agegap.is_file() or "agegap_list" not in data:
            data["agegap_list"] = build_agegap_pairs(ctx.ages, ctx.faces, ctx.pairs_file, ctx.agegap)
    if "distill" in extras:
        files = sorted(ctx.images.rglob("*.jpg"))[: 64 if args.quick else 128]
        ctx.speed_faces = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in files])


# -------------------------------------------------------------------------------------------------- one run
def train(row: str, seed: int, ctx: Context, run_dir: Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """Train one (row, seed); returns the model, what the training did and its seconds by stage."""
    r = ROWS[row]
    if r.kind == "finetune":
        extra = [*ctx.phase_keys, *r.overrides(ctx, seed)]
        model, info = finetune.train(
            ctx.model, "finetune", seed, ctx.faces, ctx.list_file, ctx.epochs, run_dir, [], extra
        )
        return (
            model,
            info,
            {
                "setup": (info["setup_seconds_incl_class_means"], "images"),
                "train": (info["train_seconds"], "train"),
            },
        )
    if r.kind == "student":
        overrides = [
            f"data.root={ctx.faces}",
            f"data.list_file={ctx.list_file}",
            f"run.dir={run_dir}",
            f"run.seed={seed}",
            f"optim.epochs={ctx.epochs}",
            "eval.pairs=null",
            "run.progress=false",
            "run.resume=auto",
            f"run.cache_dir={ctx.work / 'teacher_cache'}",
            *r.overrides(ctx, seed),
        ]
        model, info = finetune.train_recipe(STUDENT_RECIPE, overrides)
        return (
            model,
            info,
            {
                "setup": (info["setup_seconds_incl_class_means"], "images"),
                "train": (info["train_seconds"], "train"),
            },
        )
    raise ValueError(f"row {row} ({r.kind}) is not trained here")


def sddfiqa_run(seed: int, ctx: Context) -> tuple[Path, dict[str, Any], dict[str, Any], dict[str, float]]:
    """The SDD-FIQA row of one seed: pseudo-labels of the training faces from the plain model, the regressor started
    from it, its scores of the DevTest images, and the AOC of every quality source with that recogniser."""
    plain = ctx.model_of("plain", seed)
    labeller = embedder_from_spec(str(plain), batch_size=64)
    train_folder = link_images(ctx.faces, list_paths(ctx.list_file), ctx.work / "train_faces")
    milestones = tuple(m for m in quality.SDD_MILESTONES if m < ctx.epochs)
    overrides = ["model=sddfiqa_dlib_resnet", f"data.list_file={ctx.list_file}", f"run.seed={seed}"]
    cache = ctx.work / "eval_cache"
    t0 = time.perf_counter()
    csv_path, info = quality.sddfiqa_test_scores(
        labeller,
        f"seed{seed}",
        train_folder,
        ctx.images,
        ctx.work,
        cache,
        ctx.faces,
        plain,
        ctx.epochs,
        milestones,
        overrides,
    )
    wall = time.perf_counter() - t0
    if csv_path is None:
        raise RuntimeError(f"SDD-FIQA regressor not trained: {info.get('status')}")
    t1 = time.perf_counter()
    recs = quality.evaluate(
        labeller,
        f"seed{seed}",
        ctx.images,
        {"SDD-FIQA": f"csv={csv_path}"},
        ctx.work / "quality",
        cache,
        pairs=ctx.pairs_file,
    )
    labels = {
        "SDD-FIQA": f"csv={csv_path}",
        "embedding norm": "norm",
        "random (seed 0)": "random=0",
        **quality.CLASSIC,
    }
    aoc = {s: quality.rows_of(recs[s], labels) for s in quality.FMRS}
    train_s = info.get("regressor", {}).get("train_seconds") or 0.0
    seconds = {
        "setup": (wall - train_s, "images"),
        "train": (train_s, "train"),
        "eval": (time.perf_counter() - t1, "eval"),
    }
    return (
        Path(info["regressor"]["model"]),
        {"sddfiqa": info, "aoc": aoc, "result_file": recs["result_file"]},
        seconds,
        quality_numbers(aoc),
    )


def quality_numbers(aoc: dict[str, dict[str, dict[str, dict[str, float | None]]]]) -> dict[str, float]:
    """``aoc[<set> @ <fmr>].<source>`` (threshold fixed on all pairs) and SDD-FIQA minus the embedding norm."""
    out: dict[str, float] = {}
    for set_name, rows in aoc.items():
        for fmr in (f"{f:g}" for f in quality.FMRS[set_name]):
            for source, modes in rows.items():
                v = modes["fixed"].get(fmr)
                if v is not None:
                    out[f"aoc[{set_name} @ {fmr}].{source}"] = v
            a, b = (rows.get(s, {}).get("fixed", {}).get(fmr) for s in ("SDD-FIQA", "embedding norm"))
            if a is not None and b is not None:
                out[f"aoc[{set_name} @ {fmr}].SDD-FIQA minus norm"] = a - b
    return out


def evaluate_extras(
    row: str, seed: int | str, model: Path, ctx: Context, where: Path, skip: tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    """The row's own evaluations (:func:`row_extras` but quality, less ``skip``): records, flat numbers, seconds
    by stage."""
    r = ROWS[row]
    records: dict[str, Any] = {}
    numbers: dict[str, float] = {}
    seconds: dict[str, Any] = {}
    cache = ctx.work / "eval_cache"
    for extra in row_extras(row, ctx.rows):
        if extra in skip:
            continue
        t0 = time.perf_counter()
        if extra == "bias":
            ev = fairness.evaluate(
                model, ctx.images, ctx.utk_bias, where / "bias", cache, pairs=ctx.pairs_file
            )
            records["bias"] = ev
            numbers.update(
                {
                    k: v
                    for k, v in fairness.flat_numbers(ev).items()
                    if k != "pairs_accuracy" and v is not None
                }
            )
            scale = "utk"
        elif extra == "agegap":
            mctx = {
                "devtest": ctx.images,
                "agegap": ctx.agegap,
                "faces": ctx.faces,
                "eval_cache": cache,
                "flip": True,
                "utk": ctx.utk_age,
                "pairs": ctx.pairs_file,
            }
            ev = mtlface.evaluate(model, mctx, where / "agegap", r.age_head)
            records["agegap"] = ev
            numbers["agegap_accuracy"] = ev["agegap_accuracy"]
            numbers.update({f"agegap.{b}": v for b, v in ev["agegap_bands"].items()})
            if "age" in ev:
                numbers["age_mae"] = ev["age"]["mae"]
            scale = "eval"
        elif extra == "lowres":
            data = {"pairs": ctx.pairs_file, "faces": ctx.images, "eval_folder": ctx.images}
            a = argparse.Namespace(precision="fp32", out=str(ctx.work), lowres_mode="one")
            ev = robustness.evaluate(str(model), {"lowres"}, data, where / "lowres", a)
            records["lowres"] = ev
            numbers.update({f"lowres.tar@far=1e-3.{s}px": v for s, v in ev["tar@far=1e-3"].items()})
            scale = "eval"
        elif extra == "distill":
            teacher = ctx.model_of("plain", int(seed))
            teacher_acc = ctx.result["rows"]["plain"]["runs"][str(seed)]["metrics"]["pairs_accuracy"]
            speed = distill_lfw.student_speed(model, ctx.speed_faces)
            t_emb = embedder_from_spec(str(teacher), batch_size=32, precision="auto")
            t_speed = distill_lfw.embed_speed(t_emb, ctx.speed_faces)
            records["distill"] = {
                **speed,
                "teacher": str(teacher),
                "teacher_embeddings_per_s": t_speed,
                "teacher_precision": t_emb.precision,
                "teacher_pairs_accuracy": teacher_acc,
                "student_params": sum(p.numel() for p in embedder_from_spec(str(model)).model.parameters()),
            }
            numbers["teacher_embeddings_per_s"] = t_speed
            numbers["student_embeddings_per_s"] = speed["embeddings_per_s"]
            numbers["speedup_vs_teacher"] = speed["embeddings_per_s"] / t_speed
            scale = "once"
        else:
            continue
        seconds[f"eval_{extra}"] = (time.perf_counter() - t0, scale)
    return records, numbers, seconds


def run_dir(row: str, seed: int | str, ctx: Context) -> Path:
    return ctx.work / "runs" / row / (f"seed{seed}" if ROWS[row].kind != "reference" else "")


def complete_extras(row: str, seed: str, ctx: Context) -> bool:
    """Add to a kept run (``--reuse``) the evaluations of :func:`row_extras` it has not got (a base row kept from
    a run without ``ddl`` gets the low-resolution numbers when ``ddl`` joins); returns whether it added any."""
    rec = ctx.result["rows"][row]["runs"][seed]
    have = tuple(rec.get("eval", {}))
    todo = [e for e in row_extras(row, ctx.rows) if e not in have and e != "quality"]
    if not todo or not Path(rec.get("model", "")).is_file():
        return False
    records, numbers, more = evaluate_extras(
        row, seed, Path(rec["model"]), ctx, run_dir(row, seed, ctx), have
    )
    rec["eval"].update(records)
    rec["metrics"].update(numbers)
    rec["seconds"].update({k: {"seconds": s, "scale": sc} for k, (s, sc) in more.items()})
    return True


def run_one(row: str, seed: int | str, ctx: Context) -> dict[str, Any]:
    """Train (unless the row is a reference) and evaluate one (row, seed); the record that goes to the JSON."""
    r = ROWS[row]
    where = run_dir(row, seed, ctx)
    seconds: dict[str, Any] = {}
    rec: dict[str, Any] = {}
    if r.kind == "sddfiqa":
        model, ev, seconds, numbers = sddfiqa_run(int(seed), ctx)
        plain = ctx.result["rows"]["plain"]["runs"][str(seed)]["metrics"]
        metrics = {k: plain[k] for k in finetune.METRICS} | numbers
        rec.update(
            model=str(model),
            eval={"quality": ev},
            metrics=metrics,
            note="pairs accuracy and TAR are those of its recogniser, the plain model of this seed",
        )
    else:
        if r.kind == "reference":
            model, info = ctx.model, {"trained": "no (the import as it is)"}
        else:
            model, info, seconds = train(row, int(seed), ctx, where)
        t0 = time.perf_counter()
        common_ev = finetune.evaluate(model, ctx.pairs_file, ctx.images, where / "eval")
        seconds["eval"] = (time.perf_counter() - t0, "eval")
        records, numbers, more = evaluate_extras(row, seed, model, ctx, where)
        seconds.update(more)
        metrics = {m: common_ev[m] for m in finetune.METRICS} | numbers
        if "distill" in records:
            metrics["accuracy_share_of_teacher"] = (
                metrics["pairs_accuracy"] / records["distill"]["teacher_pairs_accuracy"]
            )
        rec.update(model=str(model), training=info, eval={"common": common_ev, **records}, metrics=metrics)
    rec["seconds"] = {k: {"seconds": s, "scale": sc} for k, (s, sc) in seconds.items()}
    return rec


# ------------------------------------------------------------------------------------------------ summaries
def summarise(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every number of a row's runs: mean and sample std over seeds, with the values (:func:`common.mean_std`)."""
    done = [r["metrics"] for _, r in sorted(runs.items()) if "metrics" in r]
    keys = list(dict.fromkeys(k for m in done for k in m))
    return {k: mean_std([m.get(k) for m in done]) for k in keys}


def differences(summary: dict[str, dict[str, Any]], row: str, base: str) -> dict[str, float]:
    """``row`` minus ``base`` (means) of every number both have."""
    a, b = summary.get(row, {}), summary.get(base, {})
    return {
        k: a[k]["mean"] - b[k]["mean"]
        for k in a
        if k in b and a[k]["mean"] is not None and b[k]["mean"] is not None
    }


def comparisons(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for row in summary:
        if row not in ("plain", "sddfiqa"):
            out[f"{row} - plain"] = differences(summary, row, "plain")
    if {"liaad_student", "rkd_student"} <= summary.keys():
        out["two teachers (liaad_student) - one (rkd_student)"] = differences(
            summary, "liaad_student", "rkd_student"
        )
    if {"plain", "cifp"} <= summary.keys():  # fairness.py's verdict on the recipe's head (ArcFace)
        out["cifp target (fairness.py)"] = fairness.compare(
            {"arcface": summary["plain"], "arcface_cifp": summary["cifp"]}
        )["arcface"]
    return out


def _table(summary: dict[str, Any], rows: list[str], cols: list[tuple[str, str, float, int, str]]) -> str:
    lines = ["| row | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for row in rows:
        s = summary.get(row)
        if s and any(c[1] in s for c in cols):
            cells = [
                pm(s.get(key), scale, digits, unit) if key in s else "-"
                for _, key, scale, digits, unit in cols
            ]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(result: dict[str, Any]) -> str:
    summary = {r: v["summary"] for r, v in result["rows"].items() if v.get("summary")}
    st = result["settings"]
    order = [r for r in ROWS if r in summary]
    txt = [
        f"# Seed methods from the {st['model_name']} import{' (QUICK smoke run, not the benchmark)' if st['quick'] else ''}\n",
        f"{st['train_images']} training images of {st['train_people']} people, {st['epochs']} epochs, seeds "
        f"{','.join(map(str, st['seeds']))}; pairs: {st['pairs']} ({st['eval_images']} images); mean ± std over "
        "seeds.\n",
        "| row | what | seeds | pairsDevTest acc | all-pairs TAR@FAR=1e-3 |",
        "|---|---|---|---|---|",
    ]
    for row in order:
        s, n = summary[row], len(result["rows"][row]["runs"])
        txt.append(
            f"| {row} | {ROWS[row].label} | {n if ROWS[row].kind != 'reference' else '-'} | "
            f"{pm(s.get('pairs_accuracy'), 100, 2, ' %')} | {pm(s.get('allpairs_tar@far=1e-3'), 100, 2, ' %')} |"
        )
    if "sddfiqa" in summary:
        txt.append("\nsddfiqa: accuracy and TAR of its recogniser (the plain model of each seed).")
    races = sorted({k.split(".", 2)[2] for s in summary.values() for k in s if k.startswith("race.fmr.")})
    if races:
        txt.append("\n## Fairness (UTKFace, one threshold at FMR 1e-3 over all pairs)\n")
        cols = [
            ("race FMR worst/best (floored)", "race.fmr_ratio_floored", 1, 1, ""),
            ("race std log10 FMR", "race.log10_fmr_std", 1, 2, ""),
            ("gender worst/best (floored)", "gender.fmr_ratio_floored", 1, 2, ""),
            ("gender std log10 FMR", "gender.log10_fmr_std", 1, 2, ""),
        ]
        cols += [(f"FMR {g}", f"race.fmr.{g}", 100, 3, " %") for g in races]
        txt.append(_table(summary, order, cols))
    bands = list(
        dict.fromkeys(k.split(".", 1)[1] for s in summary.values() for k in s if k.startswith("agegap."))
    )
    if bands:
        txt.append("## Age gap (LFW age-gap list of the evaluation people; gaps of estimated ages)\n")
        cols = [
            ("age-gap acc", "agegap_accuracy", 100, 2, " %"),
            *[(f"gap {b}", f"agegap.{b}", 100, 2, " %") for b in bands],
            ("age MAE (UTKFace held-out)", "age_mae", 1, 2, " y"),
        ]
        txt.append(_table(summary, order, cols))
    sizes = [
        k.rsplit(".", 1)[1]
        for k in next((s for s in summary.values() if any(k.startswith("lowres.") for k in s)), {})
        if k.startswith("lowres.")
    ]
    if sizes:
        txt.append("## Low resolution (all-pairs TAR@FAR=1e-3, the second face of each pair at the size)\n")
        txt.append(
            _table(summary, order, [(f"probe {s}", f"lowres.tar@far=1e-3.{s}", 100, 2, " %") for s in sizes])
        )
    if "sddfiqa" in summary:
        txt.append("## Quality (SDD-FIQA; AOC, threshold fixed on all pairs, higher is better, 0 = random)\n")
        keys = [k for k in summary["sddfiqa"] if k.startswith("aoc[")]
        sources = list(dict.fromkeys(k.split("].", 1)[1] for k in keys))
        sets = list(dict.fromkeys(k[4:].split("]", 1)[0] for k in keys))
        lines = ["| source | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
        for src in sources:
            lines.append(
                f"| {src} | "
                + " | ".join(pm(summary["sddfiqa"].get(f"aoc[{s}].{src}"), 1, 3) for s in sets)
                + " |"
            )
        txt.append("\n".join(lines) + "\n")
    students = [r for r in order if "speedup_vs_teacher" in summary[r]]
    if students:
        txt.append("## Distillation into MobileFaceNet (teacher: the plain model of the same seed)\n")
        txt.append(
            _table(
                summary,
                students,
                [
                    ("acc share of teacher", "accuracy_share_of_teacher", 100, 1, " %"),
                    ("student emb/s", "student_embeddings_per_s", 1, 0, ""),
                    ("teacher emb/s", "teacher_embeddings_per_s", 1, 0, ""),
                    ("speed-up", "speedup_vs_teacher", 1, 1, "x"),
                ],
            )
        )
    comp = result.get("comparison", {})
    if comp:
        txt.append("## Differences of the means\n")
        headline = [
            "pairs_accuracy",
            "allpairs_tar@far=1e-3",
            "race.fmr_ratio_floored",
            "race.log10_fmr_std",
            "agegap_accuracy",
            *(f"agegap.{b}" for b in bands[-1:]),
            *(f"lowres.tar@far=1e-3.{s}" for s in sizes[-2:]),
        ]
        for name, d in comp.items():
            if "target" in d:
                verdict = {True: "met", False: "NOT met", None: "incomplete"}[d["target_met"]]
                txt.append(f"- {name}: {verdict} ({d['target']})")
                continue
            shown = [f"{k} {v:+.4f}" for k, v in d.items() if k in headline]
            if shown:
                txt.append(f"- {name}: " + ", ".join(shown))
    failed = result.get("failed", {})
    for row, seeds in failed.items():
        for seed, err in seeds.items():
            txt.append(f"- FAILED {row} seed {seed}: {err.splitlines()[-1] if err else ''}")
    for row, why in result.get("left_out", {}).items():
        txt.append(f"- left out: {row}: {why}")
    est = result.get("full_run_estimate")
    if est:
        txt.append(
            f"\nFull run estimated from this run's speeds: {est['hours_total']:.1f} h on this machine ({est['rule']})."
        )
    txt.append(f"\nFull run: `{FULL_COMMAND}`")
    return "\n".join(txt) + "\n"


# ------------------------------------------------------------------------------------------------- estimate
def estimate_full(result: dict[str, Any], factors: dict[str, float], seed_factor: float) -> dict[str, Any]:
    """Hours the full run would take here: every stage's seconds in this run times the factor of its scale (training
    image-epochs, training images, evaluation images, UTKFace photos, UTKFace image-epochs of the age estimator,
    once), per-seed stages also times the number of full seeds over this run's. Rows without a finished run here
    are not in it (listed)."""
    per_row: dict[str, float] = {}
    for row, v in result["rows"].items():
        total = 0.0
        for rec in v.get("runs", {}).values():
            each = sum(s["seconds"] * factors[s["scale"]] for s in rec.get("seconds", {}).values())
            total += each * (seed_factor if ROWS[row].kind != "reference" else 1.0)
        per_row[row] = total / 3600
    shared = sum(s["seconds"] * factors[s["scale"]] for s in result.get("stages", {}).values()) / 3600
    return {
        "hours_total": sum(per_row.values()) + shared,
        "hours_per_row": per_row,
        "hours_shared_stages": shared,
        "factors": factors,
        "seed_factor": seed_factor,
        "not_estimated": [r for r, v in result["rows"].items() if not v.get("runs")],
        "rule": "each stage's seconds here x (full size / this run's size) of what it scales with (embedding "
        "passes grow linearly; the all-pairs curves' quadratic part is left out); per-seed stages x full seeds / "
        "seeds here",
    }


def full_sizes(work: Path, args: argparse.Namespace) -> dict[str, int]:
    """The full run's sizes, counted on the LFW and UTKFace photos (``--faces`` may hold only a quick run's)."""
    lfw = DATA / "lfw" / "images"
    _, images, _ = write_training_list(lfw, work / "full_train_count.txt", pairs_people(DEVTEST_PAIRS))
    p1, p2, _ = resolve_pairs(read_lfw_pairs(DEVTEST_PAIRS), lfw)
    return {
        "train_images": images,
        "eval_images": len({*p1, *p2}),
        "utk": len(list((DATA / "utkface" / "images").glob("*.jpg"))),
        "epochs": args.epochs,
        "age_epochs": args.age_epochs,
        "seeds": len([s for s in args.seeds.split(",") if s]),
    }


# ------------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the import every row starts from")
    ap.add_argument(
        "--faces", type=Path, default=None, help="aligned LFW (default demo_out/lfw_aligned, else made)"
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks_out/from_pretrained"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"of {list(ROWS)} (the rows they need are added)")
    ap.add_argument(
        "--age-epochs", type=int, default=2, help="epochs of the UTKFace age estimator (mtlface.py's)"
    )
    ap.add_argument("--age-model", default=None, help="a trained age estimator (skips training one)")
    ap.add_argument("--quick", action="store_true", help="CI-size smoke run (see the module doc)")
    ap.add_argument("--quick-people", type=int, default=100)
    ap.add_argument("--quick-pairs", type=int, default=100, help="matched and mismatched pairs each")
    ap.add_argument("--quick-utk", type=int, default=600, help="UTKFace photos of the quick run")
    ap.add_argument("--reuse", action="store_true", help="keep the runs already in the JSON")
    ap.add_argument(
        "--publish", action="store_true", help="copy the JSON and the table to benchmarks/results/"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    t_start = time.perf_counter()
    if not args.model.is_file():
        raise SystemExit(
            f"no import at {args.model}: make it with `faceforge import dlib --out {args.model}`"
        )
    rows = plan_rows([r for r in args.rows.split(",") if r])
    seeds = [int(s) for s in args.seeds.split(",") if s][: 1 if args.quick else None]
    epochs, age_epochs = (1, 1) if args.quick else (args.epochs, args.age_epochs)
    stem = "from_pretrained_quick" if args.quick else "from_pretrained"
    work = args.out / "quick" if args.quick else args.out
    work.mkdir(parents=True, exist_ok=True)
    if args.faces is None:
        args.faces = (
            DEFAULT_FACES if (DEFAULT_FACES / "align_report.json").is_file() else align_lfw(args.out.parent)
        )
    faces = args.faces
    list_file, n_images, n_people = finetune.training_list(
        faces, work, args.quick_people if args.quick else None
    )
    pairs_file, images = finetune.devtest_set(faces, work, args.quick_pairs if args.quick else None)
    saved = args.out / f"{stem}.json"
    result: dict[str, Any] = json.loads(saved.read_text()) if args.reuse and saved.is_file() else {}
    result.setdefault("rows", {})
    result.setdefault("stages", {})
    result["benchmark"] = "from_pretrained"
    result["quick"] = args.quick
    result["left_out"] = dict(LEFT_OUT)
    result["settings"] = {
        "quick": args.quick,
        "model": str(args.model),
        "model_sha256": file_sha256(args.model),
        "model_name": args.model.stem,
        "faces": str(faces),
        "epochs": epochs,
        "seeds": seeds,
        "rows": rows,
        "train_images": n_images,
        "train_people": n_people,
        "list_file": str(list_file),
        "pairs": f"{pairs_file.name} (flip-sum, 10 folds)",
        "eval_images": len(list(images.glob("*/*.jpg"))),
        "allpairs_rule": "conservative: largest TAR with FAR <= 1e-3",
        "recipe": finetune.RECIPE,
        "recipe_phase_keys": recipe_phase_keys(epochs),
        "student_recipe": STUDENT_RECIPE,
        "ddl_paper_keys": paper_ddl_keys(),
        "age_estimator_epochs": age_epochs,
        "quick_utk": args.quick_utk if args.quick else None,
        "general_teacher": "the plain model of the same seed (from the same import; no SFace import is used)",
        "aggregation": "mean and sample std (ddof 1) over seeds",
        "machine": machine_info(threads=torch.get_num_threads()),
    }
    result["commands"] = {
        "this_run": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "full_run": FULL_COMMAND,
    }
    ctx = Context(
        args.model,
        faces,
        work,
        list_file,
        pairs_file,
        images,
        epochs,
        rows,
        recipe_phase_keys(epochs),
        result,
    )
    timer = Timer(result["stages"])

    def save() -> None:
        summary = {r: v["summary"] for r, v in result["rows"].items() if v.get("summary")}
        result["comparison"] = comparisons(summary)
        write_results(args.out, stem, result, markdown(result), publish=args.publish)

    prepare_shared(ctx, rows, args, age_epochs, timer)
    save()
    for seed in seeds:  # seed by seed: the table is complete after each
        for row in rows:
            is_ref = ROWS[row].kind == "reference"
            key = "-" if is_ref else str(seed)
            entry = result["rows"].setdefault(row, {"label": ROWS[row].label, "runs": {}})
            if is_ref and seed != seeds[0]:
                continue
            if args.reuse and key in entry["runs"]:
                if complete_extras(row, key, ctx):  # a kept run gets the evaluations this run added
                    entry["summary"] = summarise(entry["runs"])
                    save()
                continue
            missing = [
                n for n in ROWS[row].needs if str(seed) not in result["rows"].get(n, {}).get("runs", {})
            ]
            if missing:
                result.setdefault("failed", {}).setdefault(row, {})[key] = (
                    f"skipped: no {', '.join(missing)} model of seed {seed}"
                )
                save()
                continue
            log.info("---- %s seed %s", row, key)
            try:
                entry["runs"][key] = run_one(row, key, ctx)
                result.get("failed", {}).get(row, {}).pop(key, None)
            except Exception:  # a failed run is recorded; the other rows go on
                log.exception("%s seed %s failed", row, key)
                result.setdefault("failed", {}).setdefault(row, {})[key] = traceback.format_exc()
            entry["summary"] = summarise(entry["runs"])
            save()
    result["failed"] = {r: s for r, s in result.get("failed", {}).items() if s}
    result["seconds_this_call"] = time.perf_counter() - t_start
    if args.quick:
        full = full_sizes(work, args)
        utk_here = len(list(utk_sample(work, args.quick_utk).glob("*.jpg")))
        eval_ratio = full["eval_images"] / result["settings"]["eval_images"]
        factors = {
            "train": full["train_images"] * full["epochs"] / (n_images * epochs),
            "images": full["train_images"] / n_images,
            "eval": eval_ratio,
            "utk": full["utk"] / utk_here,
            "utk_train": full["utk"] * full["age_epochs"] / (utk_here * age_epochs),
            "once": 1.0,
        }
        result["full_sizes"] = full
        result["full_run_estimate"] = estimate_full(result, factors, full["seeds"] / len(seeds))
    save()
    print(markdown(result))
    if "full_run_estimate" in result:
        est = result["full_run_estimate"]
        print(
            f"full run estimate: {est['hours_total']:.1f} h on this machine; per row (h): "
            + ", ".join(f"{k} {v:.2f}" for k, v in est["hours_per_row"].items())
            + f"; shared stages {est['hours_shared_stages']:.2f} h\nfull run: {FULL_COMMAND}"
        )
    return result


if __name__ == "__main__":
    main()
