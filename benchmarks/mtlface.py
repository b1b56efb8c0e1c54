"""MTLFace benchmark (issue 18): age estimation on UTKFace, and plain margin head vs AIFR vs LIAAD students on LFW
with estimated ages, several seeds, mean +- std.

Pipeline (every stage is skipped when its output exists, so an interrupted run resumes; ``--out`` holds it all):

1. faces: LFW aligned from its landmarks (``faceforge align``), UTKFace detected and aligned (``faceforge prepare``
   YuNet + dlib68, largest face), UTKFace split into train / held-out (``utkface_split.py``: 20 %, stratified
   by age, seed 0);
2. **age estimator**: ``aifr_mobilefacenet`` with the ``age`` objective only (no identity loss), AdamW, on the
   UTKFace training faces (``data.labeller=utkface``); its MAE on the held-out faces against predicting the
   training mean for everyone;
3. **LFW ages**: ``faceforge attributes`` with that estimator over every aligned LFW image (``lfw_ages.csv``);
4. **LFW age-gap list** (``lfw_agegap_pairs.py``): pairs of the pairsDevTest people (never trained on) with the
   estimated ages, gap-matched impostors;
5. **rows x seeds**, each trained by ``faceforge train``'s code on the same faces (the LFW people outside
   pairsDevTest with >= 2 images, at most ``--max-per-person`` each), the same epochs and the demo recipe's
   optimiser and head (CosFace; ``--scale/--margin``), MobileFaceNet at paper widths:

   * ``plain``: MobileFaceNet + CosFace (also the LIAAD student without a teacher);
   * ``aifr``: ``aifr_mobilefacenet`` (the same network + AFD) + CosFace + ``age`` (0.001) + ``age_adversarial``
     (0.002) on the estimated ages (``method=mtlface``);
   * ``liaad_general``: the plain student + angular KD (1 - cos, learned projection, weight 10) from dlib's
     ResNet, i.e. LIAAD with one teacher (one-hot attention);
   * ``liaad_both``: the plain student + ``liaad`` (weight 10, confidence attention) from dlib and the AIFR
     model of seed 0 (the age-invariant teacher);

6. evaluation of every model: pairsDevTest 10-fold accuracy, all-pairs TAR@FAR=1e-3 over the pairsDevTest images,
   the ``agegap`` kind on the LFW age-gap list (accuracy per band 0-5, 5-10, 10-20, 20+ estimated years), and for
   models with an age head its MAE on the UTKFace held-out faces. Flip-sum embeddings, as ``faceforge eval``.

Seeds run one after the other (every row of seed 0, then of seed 1, ...), so the table is complete after each.
``--train-only`` trains the rows that need no ages (plain, liaad_general) and stops, so they can train while the
age estimator does; the next run evaluates them.

Hook for rows trained elsewhere (e.g. AIFR + selective fine-tuning from the face-age-synthesis branch):
``--external NAME=SEED:MODEL.pt[,SEED:MODEL.pt...]`` evaluates given models under the same protocol and puts
them in the table, and :data:`ROWS` takes more row builders (``ROWS["name"] = Row(label, overrides)``).

    python benchmarks/mtlface.py [--out benchmarks_out/mtlface] [--seeds 0,1,2] [--epochs 2]
        [--rows plain,aifr,liaad_general,liaad_both] [--max-per-person 4] [--age-epochs 2] [--age-model M]

Writes ``<out>/mtlface.json`` (after every run: nothing is lost) and ``<out>/mtlface.md``; copies both to
benchmarks/results/. General teacher: dlib's ResNet (OpenCV Zoo's SFace, ``faceforge fetch sface``, is the other one available here).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import numpy as np
import torch
from common import DATA, DEVTEST_PAIRS, align_lfw, machine_info, write_results, write_training_list
from lfw_agegap_pairs import build_agegap_pairs
from utkface_split import split_utkface

from faceforge.cli.main import main as faceforge
from faceforge.config import compose_config
from faceforge.data.attributes import utkface_fields
from faceforge.data.pairs import pairs_people, read_lfw_pairs, resolve_pairs
from faceforge.embedders import embedder_from_spec
from faceforge.engine.loop import Trainer
from faceforge.eval.benchmarks import run_benchmarks
from faceforge.methods.mtlface.predict import AttributePredictor, age_mae_report, predict_folder

RECIPE = "lfw_mobilefacenet_arcface"
log = logging.getLogger("mtlface")


@dataclass(frozen=True)
class Row:
    label: str
    overrides: Callable[[dict[str, Any], int], list[str]]  # (context, seed) -> faceforge train overrides
    age_head: bool = False
    needs_ages: bool = False  # trains on the estimated LFW ages (or on a model that did)


def _plain(ctx: dict[str, Any], seed: int) -> list[str]:
    return ["model=mobilefacenet_paper"]


def _aifr(ctx: dict[str, Any], seed: int) -> list[str]:
    return ["method=mtlface", f"data.attributes={ctx['lfw_ages']}"]


def _liaad_general(ctx: dict[str, Any], seed: int) -> list[str]:
    return ["model=mobilefacenet_paper", "method=cosine"]


def _liaad_both(ctx: dict[str, Any], seed: int) -> list[str]:
    teacher = ctx["runs"] / "aifr" / f"seed{ctx['teacher_seed']}" / "checkpoints" / "model.pt"
    if not teacher.is_file():
        raise SystemExit(f"liaad_both needs the age-invariant teacher {teacher}: run the aifr row first")
    return ["model=mobilefacenet_paper", "method=liaad", f"teachers.1.model={teacher}"]


#: the rows of the table, in order (name -> Row); more can be added by a script that imports this one
ROWS: dict[str, Row] = {
    "plain": Row("MobileFaceNet + CosFace (LIAAD student, no teacher)", _plain),
    "aifr": Row("AIFR: + AFD + age + GRL-adversarial age (MTLFace)", _aifr, age_head=True, needs_ages=True),
    "liaad_general": Row("LIAAD student, general teacher only (dlib)", _liaad_general),
    "liaad_both": Row("LIAAD student, dlib + AIFR teachers", _liaad_both, needs_ages=True),
}


# ------------------------------------------------------------------------------------------------ faces


def prepare_utk(out: Path, images: Path | None = None) -> Path:
    """UTKFace (``images``: all of its photos by default, or a folder holding some of them) detected and aligned
    into ``out/utk_aligned`` (YuNet + dlib68, largest face) and split for age estimation, once."""
    faces = out / "utk_aligned"
    if not (faces / "prepare_report.json").is_file():
        args = [
            "prepare",
            "--images",
            str(images if images is not None else DATA / "utkface" / "images"),
            "--out",
            str(faces),
            "--detector",
            "yunet",
        ]
        if faceforge([*args, "--detector-option", "landmarks=dlib68", "--select", "largest"]) != 0:
            raise SystemExit("faceforge prepare failed")
    if not (faces / "age_split.json").is_file():
        split_utkface(faces, 0.2, 0)
    return faces


def train_list(faces: Path, out: Path, cap: int, seed: int = 0) -> Path:
    """``path label`` list of the LFW people outside pairsDevTest with >= 2 images, at most ``cap`` each (a seeded
    choice; 0 = all)."""
    path = out / f"lfw_train_cap{cap}.txt"
    if not path.is_file():
        write_training_list(faces, path, pairs_people(DEVTEST_PAIRS), per_person=cap, seed=seed)
    return path


def devtest_folder(faces: Path, out: Path) -> Path:
    """The images of pairsDevTest.txt (people never trained on), for the pairs and all-pairs benchmarks."""
    full = out / "devtest_112"
    if not (full / ".done").is_file():
        p1, p2, _ = resolve_pairs(read_lfw_pairs(DEVTEST_PAIRS), faces)
        for src in sorted({Path(p) for p in p1 + p2}):
            dst = full / src.relative_to(faces)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        (full / ".done").write_text("ok")
    return full


# ------------------------------------------------------------------------------------------------ ages
def age_mae(model: Path, utk: Path) -> dict[str, Any]:
    """MAE of a model's age head on the held-out UTKFace faces, beside predicting the training mean age."""
    split = json.loads((utk / "age_split.json").read_text())
    pred = predict_folder(AttributePredictor(model), utk / "age_heldout.txt")
    true = np.array([utkface_fields(Path(k).name)[0] for k in pred.keys], dtype=np.float64)
    report = age_mae_report(pred.values["age"], true, split["train_mean_age"])
    report["skipped"] = len(pred.skipped)
    return report


def train_age_estimator(utk: Path, out: Path, epochs: int) -> tuple[Path, dict[str, Any]]:
    run = out / "age_estimator"
    model = run / "checkpoints" / "model.pt"
    info: dict[str, Any] = {}
    if not model.is_file():
        overrides = [
            "model=aifr_mobilefacenet", "objectives.margin=null", "objectives.age.weight=1.0", "optim=adamw",
            "optim.lr=0.001", "optim.warmup_epochs=0.5", f"optim.epochs={epochs}", f"data.root={utk}",
            f"data.list_file={utk / 'age_train.txt'}", "data.labeller=utkface", "data.exclude_pairs=[]",
            "data.min_images_per_identity=1", "eval.pairs=null", "run.progress=false", f"run.dir={run}",
        ]  # fmt: skip
        report = Trainer(compose_config(RECIPE, overrides)).fit()
        info = {"overrides": overrides, "train_seconds": report["train_seconds_this_run"]}
    return model, info


def lfw_ages(model: Path, faces: Path, train: Path, out: Path) -> Path:
    """Estimated ages of the training faces and of every image of the pairsDevTest people (the age-gap list's)."""
    csv_path = out / "lfw_ages.csv"
    if not csv_path.is_file():
        dev = sorted(pairs_people(DEVTEST_PAIRS))
        needed = [line.split()[0] for line in train.read_text().splitlines() if line.strip()]
        needed += [f.relative_to(faces).as_posix() for d in dev for f in sorted((faces / d).glob("*.jpg"))]
        listing = faces / f"ages_needed_{train.stem}.txt"
        listing.write_text("\n".join(sorted(set(needed))) + "\n")
        args = ["attributes", "--model", str(model), "--images", str(listing), "--out", str(csv_path)]
        if faceforge([*args, "--no-progress"]) != 0:
            raise SystemExit("faceforge attributes failed")
    return csv_path


# ------------------------------------------------------------------------------------------ rows x seeds
def train_row(
    name: str, seed: int, ctx: dict[str, Any], args: argparse.Namespace
) -> tuple[Path, dict[str, Any]]:
    run = ctx["runs"] / name / f"seed{seed}"
    model = run / "checkpoints" / "model.pt"
    overrides = [
        "head=cosface", f"head.scale={args.scale}", f"head.margin={args.margin}", f"data.root={ctx['faces']}",
        f"data.list_file={ctx['train_list']}", f"optim.epochs={args.epochs}", f"run.seed={seed}", "eval.pairs=null",
        "run.progress=false", f"run.dir={run}", f"run.cache_dir={ctx['teacher_cache']}", "run.resume=auto",
        *ROWS[name].overrides(ctx, seed),
    ]  # fmt: skip
    if model.is_file():
        return model, {"overrides": overrides, "reused": True}
    t0 = time.perf_counter()
    trainer = Trainer(compose_config(RECIPE, overrides))
    setup = time.perf_counter() - t0
    report = trainer.fit()
    return model, {
        "overrides": overrides,
        "setup_seconds_incl_teacher_embedding": setup,
        "train_seconds": report["train_seconds_this_run"],
        "images_per_s": report["images_per_s_this_run"],
        "num_images": report["num_images"],
        "num_identities": report["num_identities"],
        "precision": report["precision"],
        "objectives": report["objectives"],
        "final_logs": report["history"][-1] if report["history"] else None,
    }


def evaluate(model: Path | str, ctx: dict[str, Any], out_dir: Path, age_head: bool) -> dict[str, Any]:
    """pairsDevTest 10-fold, all-pairs TAR@FAR=1e-3 on its images, the LFW age-gap bands, and the age head's MAE.

    ``ctx``: ``devtest`` (the images of the pairs), ``agegap`` (the list), ``faces``, ``eval_cache``, ``flip``, ``utk``
    (for the MAE) and optionally ``pairs`` (another pairs file over ``devtest``; default pairsDevTest)."""
    emb = embedder_from_spec(str(model), batch_size=64)
    specs = [
        f"lfw:{ctx.get('pairs', DATA / 'lfw' / 'pairsDevTest.txt')}:{ctx['devtest']}",
        f"allpairs:{ctx['devtest']}",
        f"agegap:{ctx['agegap']}:{ctx['faces']}",
    ]
    run = run_benchmarks(emb, specs, out_dir, cache_dir=ctx["eval_cache"], flip=ctx["flip"], progress=False)
    lfw, allp, gap = list(run["benchmarks"].values())
    r: dict[str, Any] = {
        "pairs_accuracy": lfw["summary"]["accuracy"],
        "allpairs_tar@far=1e-3": allp["summary"]["tar@far=0.001"],
        "agegap_accuracy": gap["summary"]["accuracy"],
        "agegap_bands": {
            k.removeprefix("accuracy gap "): v
            for k, v in gap["summary"].items()
            if k.startswith("accuracy gap ")
        },
        "result_file": str(out_dir / "result.json"),
    }
    if age_head:
        r["age"] = age_mae(Path(model), ctx["utk"])
    return r


def record_path(out: Path, name: str, seed: int | str) -> Path:
    return out / "records" / name / f"seed{seed}.json"


def load_runs(out: Path) -> dict[str, dict[str, Any]]:
    """Every finished (row, seed) record: one file each, so several workers can train and evaluate at once."""
    runs: dict[str, dict[str, Any]] = {}
    for f in sorted((out / "records").glob("*/seed*.json")):
        runs.setdefault(f.parent.name, {})[f.stem.removeprefix("seed")] = json.loads(f.read_text())
    return runs


def save_record(out: Path, name: str, seed: int | str, record: dict[str, Any]) -> None:
    path = record_path(out, name, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(path)


def mean_std(values: list[float]) -> tuple[float, float]:
    """(mean, std) of :func:`common.mean_std`, the pair this script's tables and record use."""
    ms = common.mean_std(values)
    return ms["mean"], ms["std"]


def aggregate(runs: dict[str, Any]) -> dict[str, Any]:
    """Per row: mean and std (over seeds) of every number."""
    out: dict[str, Any] = {}
    for name, seeds in runs.items():
        res = [s["eval"] for s in seeds.values() if "eval" in s]
        if not res:
            continue
        row: dict[str, Any] = {"seeds": sorted(int(k) for k in seeds), "n": len(res)}
        for key in ("pairs_accuracy", "allpairs_tar@far=1e-3", "agegap_accuracy"):
            row[key] = mean_std([r[key] for r in res])
        row["agegap_bands"] = {
            b: mean_std([r["agegap_bands"][b] for r in res]) for b in res[0]["agegap_bands"]
        }
        if all("age" in r for r in res):
            row["age_mae"] = mean_std([r["age"]["mae"] for r in res])
        secs = [
            s["training"].get("train_seconds")
            for s in seeds.values()
            if s.get("training", {}).get("train_seconds")
        ]
        row["train_minutes"] = mean_std([v / 60 for v in secs]) if secs else None
        out[name] = row
    return out


def fmt(ms: tuple[float, float] | None, scale: float = 100.0, unit: str = " %") -> str:
    if ms is None:
        return "-"
    m, s = ms
    return f"{m * scale:.2f} ± {s * scale:.2f}{unit}"


def table(summary: dict[str, Any], labels: dict[str, str]) -> str:
    bands = next(iter(summary.values()))["agegap_bands"].keys() if summary else []
    head = "| row | seeds | pairsDevTest acc | all-pairs TAR@FAR=1e-3 | age-gap acc | " + " | ".join(
        f"gap {b}" for b in bands
    )
    head += " | age MAE (UTKFace held-out) | train min/run |\n|" + "---|" * (7 + len(bands)) + "\n"
    lines = []
    for name, r in summary.items():
        cells = [labels.get(name, name), ",".join(map(str, r["seeds"])), fmt(r["pairs_accuracy"]),
                 fmt(r["allpairs_tar@far=1e-3"]), fmt(r["agegap_accuracy"])]  # fmt: skip
        cells += [fmt(r["agegap_bands"][b]) for b in bands]
        cells.append(fmt(r.get("age_mae"), 1.0, " y") if r.get("age_mae") else "-")
        cells.append(fmt(r["train_minutes"], 1.0, "") if r.get("train_minutes") else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    def get(row: str, key: str, band: str | None = None) -> float | None:
        if row not in summary:
            return None
        return summary[row]["agegap_bands"][band][0] if band else summary[row][key][0]

    top = (
        max(next(iter(summary.values()))["agegap_bands"], key=lambda b: float(b.split("-")[0].rstrip("+")))
        if summary
        else None
    )
    t: dict[str, Any] = {"largest_band": top}
    pairs = (("aifr", "plain"), ("liaad_both", "liaad_general"))
    for a, b in pairs:
        if a in summary and b in summary:
            t[f"{a}_minus_{b}"] = {
                "pairs_accuracy": get(a, "pairs_accuracy") - get(b, "pairs_accuracy"),
                "allpairs_tar@far=1e-3": get(a, "allpairs_tar@far=1e-3") - get(b, "allpairs_tar@far=1e-3"),
                f"agegap {top}": get(a, "", top) - get(b, "", top),
            }
    if "aifr" in summary and "plain" in summary:
        d = t["aifr_minus_plain"]
        t["aifr_matches_plain_overall"] = d["pairs_accuracy"] >= 0 and d["allpairs_tar@far=1e-3"] >= 0
        t["aifr_beats_plain_on_largest_band"] = d[f"agegap {top}"] > 0
    if "liaad_both" in summary and "liaad_general" in summary:
        t["two_teachers_beat_one_on_largest_band"] = t["liaad_both_minus_liaad_general"][f"agegap {top}"] > 0
    t["note"] = (
        "means over seeds; compare differences with the seed std (one 1,000-pair accuracy moves ~2 points with the seed)"
    )
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks_out/mtlface", type=Path)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--max-per-person", type=int, default=4, help="training images per LFW person (0: all)")
    ap.add_argument("--age-epochs", type=int, default=2, help="epochs of the UTKFace age estimator")
    ap.add_argument(
        "--scale", type=float, default=32.0, help="CosFace s (the demo's small-data choice; paper 64)"
    )
    ap.add_argument("--margin", type=float, default=0.3, help="CosFace m (paper 0.35)")
    ap.add_argument("--teacher-seed", type=int, default=0, help="the AIFR run that teaches liaad_both")
    ap.add_argument("--external", action="append", default=[], help="NAME=SEED:MODEL.pt[,SEED:MODEL.pt]")
    ap.add_argument("--faces", type=Path, default=None, help="folder holding lfw_aligned/ and utk_aligned/")
    ap.add_argument("--train-only", action="store_true", help="train the rows that need no ages, then stop")
    ap.add_argument("--report-only", action="store_true", help="aggregate the finished runs into the table")
    ap.add_argument(
        "--age-model", type=Path, default=None, help="a trained age estimator (skips stage 2's training)"
    )
    ap.add_argument(
        "--flip", action="store_true", help="evaluate flip-sum embeddings (default: one per image)"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    base = args.faces or out
    faces, utk = align_lfw(base), prepare_utk(base)
    saved = out / "mtlface.json"
    result: dict[str, Any] = json.loads(saved.read_text()) if saved.is_file() else {}

    def save() -> None:
        saved.write_text(json.dumps(result, indent=2, default=str))

    ctx: dict[str, Any] = {
        "faces": faces, "utk": utk, "runs": out / "runs", "train_list": train_list(faces, out, args.max_per_person),
        "devtest": devtest_folder(faces, out), "teacher_cache": out / "teacher_cache", "eval_cache": out / "eval_cache",
        "teacher_seed": args.teacher_seed, "flip": args.flip,
    }  # fmt: skip
    seeds = [int(s) for s in args.seeds.split(",") if s]
    wanted = [r for r in args.rows.split(",") if r]
    unknown = [r for r in wanted if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}: rows are {list(ROWS)}")
    if args.train_only:  # rows that need no ages can train while the age estimator does (evaluated later)
        for seed in seeds:
            for name in [r for r in wanted if not ROWS[r].needs_ages]:
                train_row(name, seed, ctx, args)
        return

    labels = {n: r.label for n, r in ROWS.items()}
    if not args.report_only:
        if args.age_model:
            age_model, age_info = args.age_model, {"trained": "outside this script (--age-model)"}
        else:
            age_model, age_info = train_age_estimator(utk, out, args.age_epochs)
        if "age_estimator" not in result:
            held = age_mae(age_model, utk)
            split = json.loads((utk / "age_split.json").read_text())
            result["age_estimator"] = {
                "model": str(age_model),
                "training": age_info,
                "heldout": held,
                "split": split,
            }
            save()
        ctx["lfw_ages"] = lfw_ages(age_model, faces, ctx["train_list"], out)
        ctx["agegap"] = agegap = out / "lfw_agegap.txt"
        if not agegap.is_file():
            people_from = DEVTEST_PAIRS
            result["agegap_list"] = build_agegap_pairs(ctx["lfw_ages"], faces, people_from, agegap)
            save()
        for seed in seeds:  # seed by seed: a complete table after each one
            for name in wanted:
                if record_path(out, name, seed).is_file():
                    continue
                t0 = time.perf_counter()
                model, info = train_row(name, seed, ctx, args)
                info["wall_seconds"] = time.perf_counter() - t0
                t1 = time.perf_counter()
                ev = evaluate(model, ctx, out / "eval" / name / f"seed{seed}", ROWS[name].age_head)
                ev["eval_seconds"] = time.perf_counter() - t1
                save_record(out, name, seed, {"model": str(model), "training": info, "eval": ev})
                log.info(
                    "%s seed %d: %s",
                    name,
                    seed,
                    json.dumps({k: v for k, v in ev.items() if k != "result_file"}),
                )
        for spec in args.external:  # rows trained elsewhere, evaluated here under the same protocol
            name, _, models = spec.partition("=")
            labels[name] = name
            for item in models.split(","):
                seed, _, path = item.partition(":")
                if not record_path(out, name, seed).is_file():
                    ev = evaluate(path, ctx, out / "eval" / name / f"seed{seed}", True)
                    save_record(out, name, seed, {"model": path, "training": {"external": True}, "eval": ev})
    runs = load_runs(out)
    labels.update({n: n for n in runs if n not in labels})
    summary = aggregate({n: runs[n] for n in labels if n in runs})
    result["summary"] = summary
    result["targets"] = targets(summary)
    result["settings"] = {
        "recipe": RECIPE,
        "head": f"cosface s={args.scale} m={args.margin}",
        "epochs": args.epochs,
        "max_per_person": args.max_per_person,
        "train_list": str(ctx["train_list"]),
        "age_estimator_epochs": args.age_epochs,
        "teacher_seed": args.teacher_seed,
        "flip": "flip-sum embeddings" if args.flip else "no flip (one embedding per image)",
        "agegap": "LFW age-gap list of the pairsDevTest people (lfw_agegap_pairs.py); gaps of estimated ages",
        "general_teacher": "dlib ResNet (SFace after `faceforge fetch sface` is the other choice: teachers.0.model=sface)",
        "torch_threads": torch.get_num_threads(),
        "machine": machine_info(),
    }
    save()
    md = table(summary, labels)
    write_results(out, "mtlface", result, md)
    print(md)
    print(json.dumps(result["targets"], indent=2))


if __name__ == "__main__":
    main()
