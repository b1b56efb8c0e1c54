"""Distilling dlib's ResNet into MobileFaceNet on LFW: every method of faceforge.distill, one table.

Teacher: dlib's 128-d ResNet (dlib-bin + face-recognition-models). Student: MobileFaceNet (the demo
recipe ``lfw_mobilefacenet_arcface``: ArcFace s=32 m=0.3, seed 0) trained on the LFW people who are
not in pairsDevTest (6,968 images, 1,262 people) plus, with ``--unlabelled DIR``, aligned faces without
identities (e.g. UTKFace after ``faceforge prepare``) that feed only the distillation term.

Rows: the student with ArcFace only; + each baseline (feature L2, cosine, RKD, SP); + EKD; + LIAAD
(teachers: dlib and the ArcFace-only student of the first row, the "second teacher trained by
faceforge"); + DDL with low-resolution hard samples (no teacher). Variant rows (``--rows NAME``, see
``VARIANTS``): ``ddl_easy_margin`` (DDL with the margin loss on the easy images only);
``scratch_finetune`` and ``ddl_finetune`` (the ArcFace-only student trained ``--finetune-epochs`` more at
lr 0.01, with ArcFace alone or with DDL: DDL as TFace uses it, to fine-tune a trained student);
``rkd_unlabelled`` (RKD with the ``--unlabelled`` faces). Any row name with the suffix ``_<N>ep`` (e.g.
``rkd_6ep``, ``scratch_12ep``) trains that row for N epochs instead of ``--epochs``: how far the gap to the
teacher closes with more training.

Columns:
- pairsDevTest accuracy (insightface 10-fold; no flip test-time augmentation for any model, which halves
  the teacher's time; the demo's flip-sum number is higher);
- all-pairs TAR@FAR=1e-3 over the images of pairsDevTest (the DevTest people; conservative rule);
- the same on 24 px versions of those images (shrunk to 24x24 with INTER_AREA, resized back to 112x112
  bilinearly);
- parameters, CPU embeddings/s (batch 32, flip off, this machine's threads) next to the teacher's:
  students at the precision training picks (bf16 autocast + channels_last where the CPU has bf16; the
  fp32 figure and the smallest cosine between the two embeddings are kept too), measured for the teacher
  and every row back to back at the end of the run (so ``--rows "" --reuse`` re-measures them on a quiet
  machine; a kept row whose model file is gone is timed on another row's model of the same network, as
  speed does not depend on the weights);
- training time (wall clock, includes anything else the machine was doing).

    python benchmarks/distill_lfw.py [--out benchmarks_out/distill_lfw] [--epochs 3] [--rows scratch,ekd]
        [--unlabelled benchmarks_out/utk_aligned] [--reuse]

Writes ``<out>/distill_lfw.json`` and ``<out>/distill_lfw.md``; copies both to benchmarks/results/.

``--teacher-phase N`` measures only the teacher phase of training (what the trainer does before the first
step: :func:`faceforge.distill.teachers.build_teacher_tables`, dlib over the training images, no cache) on the
first N training images, with dlib in one process (``workers=1``) and on every core, back to back: faces/s of
each, the ratio (target >= 1.8 on 2 cores) and whether the two tables are identical; writes
``<out>/teacher_phase.json`` and copies it to benchmarks/results/:

    python benchmarks/distill_lfw.py --teacher-phase 512
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from common import DEVTEST_PAIRS, RESULTS, align_lfw, machine_info, write_results

from faceforge.config import compose_config
from faceforge.data.pairs import pairs_people, read_lfw_pairs, resolve_pairs
from faceforge.embedders import embedder_from_spec
from faceforge.engine.loop import Trainer
from faceforge.eval.benchmarks import run_benchmarks

RECIPE = "lfw_mobilefacenet_arcface"
ROWS = ["scratch", "feature_l2", "cosine", "rkd", "sp", "ekd", "liaad", "ddl"]
#: fine-tuning rows start from the ArcFace-only student (run.init) and train --finetune-epochs more
FINETUNE = ["optim.lr=0.01", "optim.warmup_epochs=0"]
#: methods whose distillation term can use faces without identities (--unlabelled)
TAKES_UNLABELLED = ("feature_l2", "cosine", "rkd", "sp", "liaad")


class Variant(NamedTuple):
    method: str
    overrides: list[str]
    init_from_scratch_row: bool = False  # fine-tune the scratch row's model (run.init)
    unlabelled: bool = False  # needs --unlabelled; the default rows take it whenever it is given


#: extra rows (not run by default)
VARIANTS: dict[str, Variant] = {
    "ddl_easy_margin": Variant("ddl", ["objectives.margin.extra_branch=false"]),
    "scratch_finetune": Variant("scratch", FINETUNE, init_from_scratch_row=True),
    "ddl_finetune": Variant("ddl", FINETUNE, init_from_scratch_row=True),
    "rkd_unlabelled": Variant("rkd", [], unlabelled=True),
}
LABELS = {
    "scratch": "ArcFace only",
    "scratch_finetune": "ArcFace only, fine-tuned further",
    "ddl_finetune": "ArcFace only, fine-tuned with DDL",
    "rkd_unlabelled": "+ rkd, unlabelled faces too",
}
LOW_RES = 24
#: a row name ending in _<N>ep trains that row for N epochs (rkd_6ep: RKD for 6 epochs)
EPOCHS_SUFFIX = re.compile(r"^(?P<row>.+)_(?P<epochs>[1-9][0-9]*)ep$")


def split_row(name: str) -> tuple[str, int | None]:
    """``"rkd_6ep"`` -> ``("rkd", 6)``; ``"rkd"`` -> ``("rkd", None)``; unknown rows stop with the list."""
    m = EPOCHS_SUFFIX.match(name)
    base, epochs = (m["row"], int(m["epochs"])) if m else (name, None)
    if base not in ROWS and base not in VARIANTS:
        raise SystemExit(f"unknown row {name!r}: rows are {ROWS + list(VARIANTS)}, optionally with _<N>ep")
    return base, epochs


def devtest_sets(faces: Path, out: Path) -> tuple[Path, Path, Path]:
    """Folders with the images of pairsDevTest (original and 24 px), and the pairs file."""
    pairs_file = DEVTEST_PAIRS
    full, low = out / "devtest_112", out / f"devtest_{LOW_RES}px"
    if not (low / ".done").is_file():
        p1, p2, _ = resolve_pairs(read_lfw_pairs(pairs_file), faces)
        for src in sorted({Path(p) for p in p1 + p2}):
            rel = src.relative_to(faces)
            (full / rel).parent.mkdir(parents=True, exist_ok=True)
            (low / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, full / rel)
            img = cv2.imread(str(src))
            small = cv2.resize(img, (LOW_RES, LOW_RES), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(low / rel), cv2.resize(small, (112, 112), interpolation=cv2.INTER_LINEAR))
        (low / ".done").write_text("ok")
    return full, low, pairs_file


def evaluate(
    embedder: Any, full: Path, low: Path, pairs_file: Path, out_dir: Path, cache: Path
) -> dict[str, Any]:
    specs = [f"lfw:{pairs_file}:{full}", f"allpairs:{full}", f"allpairs:{low}"]
    run = run_benchmarks(embedder, specs, out_dir, cache_dir=cache, flip=False, progress=True)
    recs = list(run["benchmarks"].values())
    return {
        "pairs_accuracy": recs[0]["summary"]["accuracy"],
        "pairs_accuracy_std": recs[0]["summary"]["accuracy_std"],
        "allpairs_tar@far=1e-3": recs[1]["summary"]["tar@far=0.001"],
        f"allpairs_{LOW_RES}px_tar@far=1e-3": recs[2]["summary"]["tar@far=0.001"],
        "settings": {
            "pairs": recs[0]["settings"]["protocol"],
            "allpairs_rule": "conservative: largest TAR with FAR <= 1e-3",
            "flip": run["settings"]["flip"],
        },
        "result_file": str(out_dir / "result.json"),
    }


def embed_speed(embedder: Any, faces: np.ndarray, repeats: int = 3) -> float:
    embedder.embed(faces[:8])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(faces), 32):
            embedder.embed(faces[i : i + 32])
        best = min(best, time.perf_counter() - t0)
    return len(faces) / best


SPEED_KEYS = ("embeddings_per_s", "speed_precision", "embeddings_per_s_fp32", "min_cosine_to_fp32")


def student_speed(model: Path, faces: np.ndarray) -> dict[str, Any]:
    """Embeddings/s of a student at the precision training picks here (``auto``: bf16 autocast with
    channels_last where the CPU has bf16) and in fp32, with the smallest cosine between the two embeddings
    of each face: the evidence that the faster path keeps the accuracy measured in fp32."""
    fast = embedder_from_spec(str(model), batch_size=32, precision="auto")
    fp32 = embedder_from_spec(str(model), batch_size=32, precision="fp32")
    a, b = fast.embed(faces), fp32.embed(faces)
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {
        "embeddings_per_s": embed_speed(fast, faces),
        "speed_precision": fast.precision,
        "embeddings_per_s_fp32": embed_speed(fp32, faces),
        "min_cosine_to_fp32": float(cos.min()),
    }


def train_row(
    name: str,
    faces: Path,
    out: Path,
    epochs: int,
    unlabelled: str | None,
    teacher_cache: Path,
    scratch_model: Path,
    finetune_epochs: int,
) -> tuple[Path, float, dict[str, Any]]:
    run_dir = out / "rows" / name
    base, own_epochs = split_row(name)
    method, extra, from_scratch_row, wants_unlabelled = VARIANTS.get(base, Variant(base, []))
    epochs = own_epochs or epochs
    if wants_unlabelled and not unlabelled:
        raise SystemExit(f"row {name} distils on unlabelled faces: give --unlabelled DIR")
    # default rows take --unlabelled when their method can; variant rows only when they ask for it
    use_unlabelled = wants_unlabelled or (base not in VARIANTS and method in TAKES_UNLABELLED)
    if from_scratch_row:
        if not scratch_model.is_file():
            raise SystemExit(f"row {name} fine-tunes the scratch row: run --rows scratch first")
        epochs = own_epochs or finetune_epochs
        extra = [*extra, f"run.init={scratch_model}"]
    overrides = [
        f"data.root={faces}",
        f"run.dir={run_dir}",
        "eval.pairs=null",
        f"optim.epochs={epochs}",
        "run.progress=false",
        f"run.cache_dir={teacher_cache}",
    ]
    if method != "scratch":
        overrides.append(f"method={method}")
    overrides += extra
    if base == "liaad":
        overrides.append(f"teachers.1.model={scratch_model}")
    if unlabelled and use_unlabelled:
        overrides.append(f"data.sources=[{{root: {unlabelled}}}]")
    t0 = time.perf_counter()
    trainer = Trainer(compose_config(RECIPE, overrides))
    setup = time.perf_counter() - t0
    report = trainer.fit()
    seconds = time.perf_counter() - t0
    info = {
        "overrides": overrides,
        "setup_seconds_incl_teacher_embedding": setup,
        "train_seconds": report["train_seconds_this_run"],
        "images_per_s": report["images_per_s_this_run"],
        "num_images": len(trainer.dataset),
        "precision": report["precision"],
        "objectives": report["objectives"],
        "teachers": trainer.teachers.describe(),
        "final_logs": report["history"][-1] if report["history"] else None,
    }
    return run_dir / "checkpoints" / "model.pt", seconds, info


def row_label(name: str) -> str:
    """The table's name for a row: ``rkd_6ep`` -> ``+ rkd, 6 epochs``."""
    base, epochs = split_row(name)
    label = LABELS.get(base, f"+ {base}")
    return f"{label}, {epochs} epochs" if epochs else label


def row_order(name: str) -> tuple[int, int]:
    """Table order: the rows' order in ROWS and VARIANTS, then more epochs below fewer."""
    base, epochs = split_row(name)
    return (ROWS + list(VARIANTS)).index(base), epochs or 0


def table(rows: dict[str, Any], teacher: dict[str, Any]) -> str:
    precisions = "/".join(sorted({r.get("speed_precision", "fp32") for r in rows.values()})) or "fp32"
    head = (
        f"| model | pairsDevTest acc | all-pairs TAR@FAR=1e-3 | same, 24 px | params | CPU emb/s, {precisions} "
        "(x teacher) | fp32 emb/s | train time |\n|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| teacher: dlib ResNet | {teacher['pairs_accuracy'] * 100:.2f} % | "
        f"{teacher['allpairs_tar@far=1e-3'] * 100:.2f} % | {teacher[f'allpairs_{LOW_RES}px_tar@far=1e-3'] * 100:.2f} % "
        f"| ~{teacher['params'] / 1e6:.1f} M | {teacher['embeddings_per_s']:.0f} | {teacher['embeddings_per_s']:.0f} "
        "| pretrained |"
    ]
    for name, r in sorted(rows.items(), key=lambda kv: row_order(kv[0])):  # re-run rows keep their place
        label = row_label(name)
        lines.append(
            f"| MobileFaceNet, {label} | {r['pairs_accuracy'] * 100:.2f} % | {r['allpairs_tar@far=1e-3'] * 100:.2f} % | "
            f"{r[f'allpairs_{LOW_RES}px_tar@far=1e-3'] * 100:.2f} % | {r['params'] / 1e6:.2f} M | "
            f"{r['embeddings_per_s']:.0f} (x{r['speedup_vs_teacher']:.1f}) | {r.get('embeddings_per_s_fp32', float('nan')):.0f} "
            f"| {r['seconds'] / 60:.1f} min |"
        )
    return head + "\n".join(lines) + "\n"


def teacher_phase(faces: Path, n: int, out: Path) -> dict[str, Any]:
    """The teacher phase on the first ``n`` training images, one process vs every core (module doc)."""
    from faceforge.core.workers import available_cores
    from faceforge.data.image_io import read_image_rgb
    from faceforge.distill.teachers import build_teacher_tables

    devtest = pairs_people(DEVTEST_PAIRS)
    files = [f for f in sorted(faces.rglob("*.jpg")) if f.parent.name not in devtest][:n]
    runs: dict[str, Any] = {}
    tables = {}
    for label, workers in (("one_process", 1), ("every_core", 0)):
        dlib = embedder_from_spec("dlib", workers=workers)
        t0 = time.perf_counter()
        (table,) = build_teacher_tables(
            [dlib], len(files), lambda i: read_image_rgb(files[i]), ["dlib"], [False], None, progress=False
        )
        seconds = time.perf_counter() - t0
        dlib.close()
        tables[label] = table.embeddings.numpy()
        runs[label] = {"workers": dlib.workers, "seconds": seconds, "faces_per_s": len(files) / seconds}
    record = {
        "benchmark": "distill_lfw teacher phase",
        "what": "build_teacher_tables with dlib (no cache, no flip) on the first training images",
        "target": "every_core / one_process >= 1.8 on 2 cores, identical tables",
        "images": len(files),
        "cores": available_cores(),
        "runs": runs,
        "ratio": runs["every_core"]["faces_per_s"] / runs["one_process"]["faces_per_s"],
        "identical": bool(np.array_equal(tables["one_process"], tables["every_core"])),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "note": "the worker pool's start (spawned processes importing faceforge) is inside every_core's time",
    }
    path = out / "teacher_phase.json"
    path.write_text(json.dumps(record, indent=2))
    shutil.copy(path, RESULTS / "teacher_phase.json")
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks_out/distill_lfw")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument(
        "--rows", default=",".join(ROWS), help=f"of {ROWS + list(VARIANTS)}, each optionally with _<N>ep"
    )
    ap.add_argument("--finetune-epochs", type=int, default=1, help="epochs of the *_finetune rows")
    ap.add_argument("--unlabelled", default=None, help="aligned faces without identities (e.g. UTKFace)")
    ap.add_argument("--teacher-cache", default=None, help="teacher embedding cache (default <out>/cache)")
    ap.add_argument("--reuse", action="store_true", help="keep rows whose results exist")
    ap.add_argument(
        "--teacher-phase", type=int, default=0, metavar="N", help="only time the teacher phase on N images"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.teacher_cache) if args.teacher_cache else out / "cache"
    eval_cache = out / "eval_cache"
    faces = align_lfw(out.parent if (out.parent / "lfw_aligned").is_dir() else out)
    if args.teacher_phase:
        rec = teacher_phase(faces, args.teacher_phase, out)
        print(json.dumps({k: rec[k] for k in ("images", "runs", "ratio", "identical")}, indent=2))
        return
    full, low, pairs_file = devtest_sets(faces, out)
    speed_faces = np.stack(
        [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(full.rglob("*.jpg"))[:128]]
    )
    saved = out / "distill_lfw.json"
    result: dict[str, Any] = json.loads(saved.read_text()) if args.reuse and saved.is_file() else {}
    rows: dict[str, Any] = result.get("rows", {})

    if "teacher" not in result:
        dlib = embedder_from_spec("dlib")
        teacher = evaluate(dlib, full, low, pairs_file, out / "eval" / "teacher", eval_cache)
        # dlib stores float32 weights: the file size / 4 bounds the parameter count (a few header bytes aside)
        teacher["params"] = Path(dlib.files["recognition"]).stat().st_size // 4
        teacher["params_rule"] = "size of dlib_face_recognition_resnet_model_v1.dat / 4 bytes (approximate)"
        teacher["model"] = dlib.describe()
        result["teacher"] = teacher
    teacher = result["teacher"]

    scratch_model = out / "rows" / "scratch" / "checkpoints" / "model.pt"
    wanted = [r for r in args.rows.split(",") if r]
    for name in wanted:
        split_row(name)  # an unknown row stops here, before hours of training
    for name in wanted:
        if name in rows and args.reuse:
            continue
        model_path, seconds, info = train_row(
            name,
            faces,
            out,
            args.epochs,
            args.unlabelled,
            cache,
            scratch_model,
            args.finetune_epochs,
        )
        emb = embedder_from_spec(str(model_path), batch_size=32)
        r = evaluate(emb, full, low, pairs_file, out / "eval" / name, eval_cache)
        r["params"] = sum(p.numel() for p in emb.model.parameters())
        r["accuracy_vs_teacher"] = r["pairs_accuracy"] / teacher["pairs_accuracy"]
        r["seconds"] = seconds
        r["training"] = info
        rows[name] = r
        result["rows"] = rows
        saved.write_text(json.dumps(result, indent=2, default=str))  # after every row: nothing is lost

    # speeds last, back to back in one pass, so each ratio compares two runs on the same (quiet) machine
    teacher["embeddings_per_s"] = embed_speed(embedder_from_spec("dlib"), speed_faces[:64], repeats=1)
    measured: dict[int, tuple[str, dict[str, Any]]] = {}  # parameter count -> (row measured, its row)
    for name, r in rows.items():
        model = out / "rows" / name / "checkpoints" / "model.pt"
        if model.is_file():
            r.update(student_speed(model, speed_faces))
            r["speedup_vs_teacher"] = r["embeddings_per_s"] / teacher["embeddings_per_s"]
            r["speed_measured"] = "this run, back to back with the teacher"
            measured.setdefault(r["params"], (name, r))
    for name, r in rows.items():
        model = out / "rows" / name / "checkpoints" / "model.pt"
        if model.is_file():
            continue
        if r["params"] in measured:
            # a row kept from an earlier run whose files are gone: every row trains the recipe's backbone,
            # and its speed does not depend on the weights, so a row of the same network stands in for it
            source, timed = measured[r["params"]]
            r.update({k: timed[k] for k in SPEED_KEYS})
            r["speedup_vs_teacher"] = r["embeddings_per_s"] / teacher["embeddings_per_s"]
            r["speed_measured"] = f"this run, on row {source}'s model (same network and parameter count)"
        else:
            r["speed_measured"] = "in an earlier run (its model file is not in --out)"
    saved.write_text(json.dumps(result, indent=2, default=str))

    best = max(rows, key=lambda k: rows[k]["pairs_accuracy"]) if rows else None
    result["targets"] = {
        "best_student": best,
        "best_accuracy_vs_teacher": rows[best]["accuracy_vs_teacher"] if best else None,
        "target_accuracy_vs_teacher": 0.97,
        "best_speedup_vs_teacher": rows[best]["speedup_vs_teacher"] if best else None,
        "target_speedup": 15.0,
        # per DDL row (ddl and its variants): is its 24 px TAR above the ArcFace-only student's?
        # (trained from scratch, against the ArcFace-only row of as many epochs)
        "ddl_beats_scratch_on_24px": {
            name: r[f"allpairs_{LOW_RES}px_tar@far=1e-3"] > rows[peer][f"allpairs_{LOW_RES}px_tar@far=1e-3"]
            for name, r in rows.items()
            for base, n in [split_row(name)]
            for peer in [f"scratch_{n}ep" if n else "scratch"]
            if base.startswith("ddl")
            and peer in rows
            and not VARIANTS.get(base, Variant(base, [])).init_from_scratch_row
        },
        # the fair test of DDL as TFace uses it: fine-tuning vs ArcFace fine-tuning for as many epochs
        "ddl_finetune_beats_scratch_finetune_on_24px": (
            rows["ddl_finetune"][f"allpairs_{LOW_RES}px_tar@far=1e-3"]
            > rows["scratch_finetune"][f"allpairs_{LOW_RES}px_tar@far=1e-3"]
            if {"ddl_finetune", "scratch_finetune"} <= rows.keys()
            else None
        ),
    }
    result["settings"] = {
        "recipe": RECIPE,
        "epochs": args.epochs,
        "finetune": {
            "epochs": args.finetune_epochs,
            "overrides": FINETUNE,
            "init": "the scratch row's model.pt",
        },
        "epochs_suffix": "a row named <row>_<N>ep trained N epochs instead of --epochs",
        "unlabelled": "per row: training.overrides holds data.sources when a row used it",
        "low_resolution": f"{LOW_RES}x{LOW_RES} (INTER_AREA) then back to 112 (bilinear)",
        "speed": (
            "batch 32, flip off, best of repeats; students at precision auto (bf16 autocast + channels_last "
            "where the CPU has bf16; fp32 figure and min cosine to fp32 kept per row); teacher: dlib in "
            "landmarks mode (shape predictor + chip), fp32"
        ),
        "torch_threads": torch.get_num_threads(),
        "machine": machine_info(),
    }
    md = table(rows, teacher)
    write_results(out, "distill_lfw", result, md)
    print(md)


if __name__ == "__main__":
    main()
