"""Fine-tuning pretrained imports on the demo's training identities: as imported, naive, and the finetune recipe.

For every ``--model NAME=PATH`` (a faceforge checkpoint, e.g. ``faceforge import dlib --out dlib.pt`` or
``faceforge import onnx sface.onnx --out sface.pt``), four rows on the same data, epochs and backbone:

* ``imported``: the model as imported, no training (evaluated once: it has no seed);
* ``naive``: the packaged ``finetune`` recipe with every fine-tuning option off: a random head, the backbone at the
  full learning rate, BatchNorm statistics re-estimated, nothing frozen, no head-only phase;
* ``previous``: the recipe as it was before ``finetune.head_row_norm`` (imprinted rows at a random head's norm,
  ~0.11, backbone at 0.01x): what the row-norm fix changes;
* ``finetune``: the packaged recipe as it is (class-mean head rows at norm 1, backbone at 0.03x, frozen BN
  statistics, a head-only epoch, backbone ramp; see faceforge/configs/finetune.yaml).

Training data: the demo's identities -- LFW people who are not in pairsDevTest and have at least 2 images (1,262
people, 6,968 images) from the aligned folder ``--faces`` (``faceforge align`` of LFW; made under ``--out`` when
not given, as ``make demo`` makes it). Trained rows run ``--seeds`` (default 0,1,2; ``run.seed``).

Metrics (``faceforge eval``'s code, flip-sum, fp32): pairsDevTest accuracy (insightface 10-fold) and all-pairs
TAR@FAR=1e-3 over the images of pairsDevTest (the DevTest people; conservative rule: the largest TAR with FAR <=
1e-3), mean +- std over the seeds.

``--select``: choose the recipe's settings without looking at the test people. A quarter of the training people
(every 4th by name) is held out; each of :data:`CANDIDATES` is trained on the other three quarters and scored by
all-pairs TAR@FAR=1e-3 over the held-out people's images (and their all-pairs AUC); it writes
``finetune_select.{json,md}``. The packaged recipe's values come from this run; pairsDevTest is never seen by it.

``--quick``: a CI-size smoke run of the same code: the first ``--quick-people`` (100) training people, 2 epochs, one
seed, the first 100 matched and 100 mismatched pairs of pairsDevTest; it writes ``finetune_quick.{json,md}`` (never
the full results) and an estimate of the full run's time from the speeds it measured.

    python benchmarks/finetune.py --model dlib=dlib.pt --model sface=sface.pt [--faces demo_out/lfw_aligned]
        [--out benchmarks_out/finetune] [--epochs 3] [--seeds 0,1,2] [--quick] [--reuse] [--plugins MODULE]

Writes ``<out>/finetune[_quick].json`` and ``.md`` after every run (nothing is lost to an interruption) and copies
both to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from common import DEVTEST_PAIRS, align_lfw, machine_info, mean_std, write_results, write_training_list

from faceforge.config import compose_config
from faceforge.core.checkpoint import load_checkpoint
from faceforge.core.hashing import file_sha256
from faceforge.data.files import identity_folders, list_images
from faceforge.data.pairs import pairs_people, read_lfw_pairs, resolve_pairs, write_lfw_pairs
from faceforge.engine.loop import Trainer
from faceforge.engine.setup import import_plugins
from faceforge.eval.benchmarks import evaluate_checkpoint

RECIPE = "finetune"
#: every fine-tuning option off: what a first attempt does (the recipe's data, head, optimiser and epochs)
NAIVE = [
    "finetune.head_init=random",
    "finetune.head_row_norm=null",
    "finetune.backbone_lr_mult=1.0",
    "finetune.freeze_bn=none",
    "finetune.head_only_epochs=0",
    "finetune.backbone_warmup_epochs=0",
    "finetune.freeze=[]",
]
#: the recipe before head_row_norm (its imprinted rows at a random head's norm, backbone x0.01): the fix's effect
PREVIOUS = ["finetune.head_row_norm=null", "finetune.backbone_lr_mult=0.01"]
ROWS: dict[str, list[str] | None] = {"imported": None, "naive": NAIVE, "previous": PREVIOUS, "finetune": []}
LABELS = {
    "imported": "as imported (no training)",
    "naive": "naive fine-tune (random head, full lr, nothing frozen)",
    "previous": "previous recipe (class-mean head rows at a random head's norm ~0.11, 0.01x backbone lr)",
    "finetune": "finetune recipe (class-mean head rows at norm 1, 0.03x backbone lr, frozen BN stats, head-only "
    "epoch)",
}
METRICS = ("pairs_accuracy", "allpairs_tar@far=1e-3")
#: settings tried by ``--select`` on held-out training people (the recipe's own values are the first): the
#: imprinted head rows' norm (``finetune.head_row_norm``: 1, or as built ~0.11), the backbone's learning-rate
#: multiplier, and training the final projection only (``fc``: dlib's ResNet; ``features``/``output_layer`` name
#: it in IResNet/MobileFaceNet)
AS_BUILT = "finetune.head_row_norm=null"
CANDIDATES: dict[str, list[str]] = {
    "recipe (head rows at norm 1, backbone lr x0.03)": [],
    "head rows at norm 1, backbone lr x0.01": ["finetune.backbone_lr_mult=0.01"],
    "head rows at norm 1, backbone lr x0.1": ["finetune.backbone_lr_mult=0.1"],
    "head rows as built, backbone lr x0.01": [AS_BUILT, "finetune.backbone_lr_mult=0.01"],
    "head rows as built, backbone lr x0.03": [AS_BUILT, "finetune.backbone_lr_mult=0.03"],
    "head rows as built, backbone lr x0.003": [AS_BUILT, "finetune.backbone_lr_mult=0.003"],
    "head rows as built, backbone lr x0.001": [AS_BUILT, "finetune.backbone_lr_mult=0.001"],
    "head rows as built, final projection only (x0.01)": [
        AS_BUILT,
        "finetune.backbone_lr_mult=0.01",
        "finetune.freeze=[conv1.*,affine1.*,blocks.*]",
    ],
}
FULL_COMMAND = (
    "python benchmarks/finetune.py --model dlib=dlib.pt --model sface=sface.pt --faces demo_out/lfw_aligned "
    "--out benchmarks_out/finetune --epochs 3 --seeds 0,1,2"
)


def training_list(faces: Path, out: Path, people: int | None) -> tuple[Path, int, int]:
    """``path label`` list of the demo's training identities (not in pairsDevTest, >= 2 images), optionally the
    first ``people`` of them by name; returns (file, images, people)."""
    name = "train_quick.txt" if people else "train.txt"
    return write_training_list(faces, out / name, pairs_people(DEVTEST_PAIRS), max_people=people)


def selection_split(faces: Path, out: Path) -> tuple[Path, Path, int, int]:
    """The ``--select`` split of the training people: every 4th (by name) held out, the rest in a ``path label``
    list; the held-out people's images copied to a folder (the all-pairs set). Returns (list, folder, training
    images, held-out people)."""
    people = [
        d
        for d, files in identity_folders(faces)
        if d.name not in pairs_people(DEVTEST_PAIRS) and len(files) >= 2
    ]
    held = {d.name for d in people[3::4]}
    list_file, n_images, _ = write_training_list(
        faces, out / "train_select.txt", pairs_people(DEVTEST_PAIRS) | held
    )
    images = out / "select_images"
    if not (images / ".done").is_file():
        for d in people[3::4]:
            (images / d.name).mkdir(parents=True, exist_ok=True)
            for f in list_images(d):
                shutil.copyfile(f, images / d.name / f.name)
        (images / ".done").write_text("ok")
    return list_file, images, n_images, len(held)


def select(models: dict[str, str], faces: Path, out: Path, epochs: int, seed: int, plugins: list[str],
           extra: list[str], reuse: bool) -> dict[str, Any]:  # fmt: skip
    """Train every candidate of :data:`CANDIDATES` on three quarters of the training people and score it on the
    held-out quarter (see the module doc)."""
    list_file, images, n_images, n_held = selection_split(faces, out)
    saved = out / "finetune_select.json"
    result: dict[str, Any] = json.loads(saved.read_text()) if reuse and saved.is_file() else {}
    result["settings"] = {
        "purpose": "choose the finetune recipe's settings on held-out training people (never pairsDevTest)",
        "train_images": n_images, "held_out_people": n_held,
        "held_out_images": len(list_images(images, recursive=True)), "epochs": epochs, "seed": seed, "set": extra,
        "metric": "all-pairs TAR@FAR=1e-3 over the held-out people's images (conservative rule), flip-sum",
        "machine": machine_info(threads=torch.get_num_threads()),
    }  # fmt: skip
    result.setdefault("models", {})
    for name, path in models.items():
        entry = result["models"].setdefault(name, {})
        for cand, overrides in {"as imported (no training)": None, **CANDIDATES}.items():
            if cand in entry and reuse:
                continue
            where = out / "select" / name / cand.split(" (")[0].replace(" ", "_").replace(".", "")
            model, info = Path(path), {}
            if overrides is not None:
                model, info = train(Path(path), "finetune", seed, faces, list_file, epochs, where, plugins,
                                    [*extra, *overrides])  # fmt: skip
            ev = evaluate_checkpoint(model, [f"allpairs:{images}"], where / "eval", flip=True, batch_size=64,
                                     device="cpu", progress=False)  # fmt: skip
            summary = next(iter(ev.record["benchmarks"].values()))["summary"]
            entry[cand] = {"overrides": overrides, "allpairs_tar@far=1e-3": summary["tar@far=0.001"],
                           "allpairs_auc": summary.get("auc"), "training": info}  # fmt: skip
            write_results(out, "finetune_select", result, select_table(result))
    return result


def select_table(result: dict[str, Any]) -> str:
    lines = ["| model | candidate | held-out all-pairs TAR@FAR=1e-3 | AUC |", "|---|---|---|---|"]
    for name, entry in result["models"].items():
        for cand, r in entry.items():
            auc = f"{r['allpairs_auc']:.4f}" if r.get("allpairs_auc") is not None else "-"
            lines.append(f"| {name} | {cand} | {r['allpairs_tar@far=1e-3'] * 100:.2f} % | {auc} |")
    s = result["settings"]
    lines.append(
        f"\n{s['train_images']} training images (three quarters of the training people), {s['held_out_people']} "
        f"held-out people ({s['held_out_images']} images), {s['epochs']} epochs, seed {s['seed']}; pairsDevTest "
        "unseen."
    )
    return "\n".join(lines) + "\n"


def devtest_set(faces: Path, out: Path, per_kind: int | None) -> tuple[Path, Path]:
    """The pairsDevTest pairs file (or its first ``per_kind`` matched and mismatched pairs) and a folder with the
    images those pairs use (the all-pairs set)."""
    src = DEVTEST_PAIRS
    pairs_file, images = src, out / "devtest_images"
    if per_kind:
        pairs = read_lfw_pairs(src)
        matched = [p for p in pairs if p.same][:per_kind]
        mismatched = [p for p in pairs if not p.same][:per_kind]
        pairs_file = write_lfw_pairs([*matched, *mismatched], out / "pairsDevTest_quick.txt")
        images = out / "devtest_images_quick"
    if not (images / ".done").is_file():
        p1, p2, _ = resolve_pairs(read_lfw_pairs(pairs_file), faces)
        for f in sorted({Path(p) for p in p1 + p2}):
            (images / f.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, images / f.parent.name / f.name)
        (images / ".done").write_text("ok")
    return pairs_file, images


def evaluate(model: Path, pairs_file: Path, images: Path, out_dir: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    specs = [f"lfw:{pairs_file}:{images}", f"allpairs:{images}"]
    ev = evaluate_checkpoint(model, specs, out_dir, flip=True, batch_size=64, device="cpu", progress=False)
    lfw, allpairs = list(ev.record["benchmarks"].values())
    return {
        "pairs_accuracy": lfw["summary"]["accuracy"],
        "pairs_accuracy_std_over_folds": lfw["summary"]["accuracy_std"],
        "allpairs_tar@far=1e-3": allpairs["summary"]["tar@far=0.001"],
        "eval_images": len(list(images.glob("*/*.jpg"))),
        "eval_seconds": time.perf_counter() - t0,
        "result_file": str(out_dir / "result.json"),
    }


def train(model: Path, row: str, seed: int, faces: Path, list_file: Path, epochs: int, run_dir: Path,
          plugins: list[str], extra: list[str]) -> tuple[Path, dict[str, Any]]:  # fmt: skip
    size = int(load_checkpoint(model)["meta"].get("preprocess", {}).get("input_size", 112))
    overrides = [
        f"run.init={model}",
        f"run.dir={run_dir}",
        f"run.seed={seed}",
        f"data.root={faces}",
        f"data.list_file={list_file}",
        f"data.image_size={size}",
        f"optim.epochs={epochs}",
        "run.progress=false",
        "run.resume=auto",  # an interrupted run goes on from its last checkpoint (exact resume)
        *extra,
        *(ROWS[row] or []),
    ]
    if plugins:
        overrides.append(f"run.plugins=[{','.join(plugins)}]")
    return train_recipe(RECIPE, overrides)


def train_recipe(recipe: str, overrides: list[str]) -> tuple[Path, dict[str, Any]]:
    """Train the packaged ``recipe`` with ``overrides`` (``faceforge train``'s trainer, in this process); returns the
    model file and what the run did (its overrides, set-up seconds, which include the head's class means and any
    teacher tables, training seconds and speed, data size, precision, fine-tuning options, last logged numbers)."""
    t0 = time.perf_counter()
    trainer = Trainer(compose_config(recipe, overrides))
    setup_seconds = time.perf_counter() - t0
    report = trainer.fit()
    return Path(report["model"]), {
        "overrides": overrides,
        "setup_seconds_incl_class_means": setup_seconds,
        "train_seconds": report["train_seconds_this_run"],
        "images_per_s": report["images_per_s_this_run"],
        "num_images": len(trainer.dataset),
        "num_identities": trainer.data.num_classes,
        "precision": report["precision"],
        "finetune": report.get("finetune"),
        "final_logs": report["history"][-1] if report["history"] else None,
    }


def summarise(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """mean, std (over seeds; 0 for one run) and n of every metric."""
    out: dict[str, Any] = {"n": len(runs)}
    for m in METRICS:
        ms = mean_std([r[m] for r in runs.values()])
        out[m], out[f"{m}_std"] = ms["mean"], ms["std"]
    return out


def estimate_full(result: dict[str, Any], full_images: int, full_epochs: int, seeds: int) -> dict[str, Any]:
    """Hours the full run would take here, from this run's measured speeds: per model, one evaluation of the import
    plus, for each trained row, ``seeds x`` (``epochs x images / that row's training images/s`` + its set-up and
    class-mean seconds per image ``x images`` + an evaluation), with the evaluation seconds per image (mean over
    this run's evaluations) scaled to pairsDevTest's 1,655 images. A row's speed is its own: the recipe's head-only
    steps are cheaper than the naive row's (its measured rate over the quick run's 2 epochs, half of them head-only,
    overstates a 3-epoch run's a little)."""
    full_eval_images = 1655
    per_model = {}
    for name, m in result["models"].items():
        evaluated = [r for row in m["rows"].values() for r in row.get("runs", {}).values()]
        if not evaluated:
            continue
        eval_s = statistics.fmean(r["eval_seconds"] / r["eval_images"] for r in evaluated) * full_eval_images
        seconds = eval_s
        for row in ("naive", "finetune"):
            runs = [r["training"] for r in m["rows"].get(row, {}).get("runs", {}).values()]
            if runs:
                ips = statistics.fmean(r["images_per_s"] for r in runs)
                setup = statistics.fmean(r["setup_seconds_incl_class_means"] / r["num_images"] for r in runs)
                seconds += seeds * (full_images * full_epochs / ips + full_images * setup + eval_s)
        per_model[name] = seconds / 3600
    return {"hours_per_model": per_model, "hours_total": sum(per_model.values()),
            "rule": "imported eval + per trained row: seeds x (epochs x images / its training images/s + its "
                    "set-up and class means + eval), at the speeds this run measured on this machine"}  # fmt: skip


def table(result: dict[str, Any]) -> str:
    lines = [
        "| model | row | pairsDevTest acc | all-pairs TAR@FAR=1e-3 | seeds |",
        "|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        for row in ROWS:
            s = m["rows"].get(row, {}).get("summary")
            if not s:
                continue
            acc, tar = s["pairs_accuracy"] * 100, s["allpairs_tar@far=1e-3"] * 100
            sd = row != "imported"
            lines.append(
                f"| {name} | {LABELS[row]} | {acc:.2f} %"
                + (f" ± {s['pairs_accuracy_std'] * 100:.2f}" if sd else "")
                + f" | {tar:.2f} %"
                + (f" ± {s['allpairs_tar@far=1e-3_std'] * 100:.2f}" if sd else "")
                + f" | {s['n'] if sd else '-'} |"
            )
    setting = result["settings"]
    lines.append(
        f"\n{setting['train_images']} training images of {setting['train_people']} people, {setting['epochs']} "
        f"epochs, pairs: {setting['pairs']}; {'QUICK smoke run, not the benchmark' if setting['quick'] else ''}"
    )
    est = result.get("full_run_estimate")
    if est:
        per = ", ".join(f"{k} {v:.1f} h" for k, v in est["hours_per_model"].items())
        lines.append(f"\nFull run estimated from this run's speeds: {est['hours_total']:.1f} h ({per}).")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, metavar="NAME=PATH", help="repeatable")
    ap.add_argument(
        "--faces", default=None, help="aligned LFW (default: <out>/../lfw_aligned, made if missing)"
    )
    ap.add_argument("--out", default="benchmarks_out/finetune")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--naive-seeds", default=None, help="seeds of the naive row (default: --seeds)")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"of {list(ROWS)}")
    ap.add_argument("--quick", action="store_true", help="CI-size smoke run (see the module doc)")
    ap.add_argument("--select", action="store_true", help="choose the recipe on held-out people (module doc)")
    ap.add_argument("--quick-people", type=int, default=100)
    ap.add_argument("--quick-pairs", type=int, default=100, help="matched and mismatched pairs each")
    ap.add_argument("--plugins", default="", help="modules that register backbones (comma-separated)")
    ap.add_argument("--reuse", action="store_true", help="keep runs whose results exist")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every trained row, before the row's own (e.g. head.margin=0.2)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    models = dict(spec.split("=", 1) for spec in args.model)
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or any(not Path(p).is_file() for p in models.values()):
        raise SystemExit(f"unknown rows {unknown} (rows: {list(ROWS)}) or missing model files in {models}")
    plugins = [p for p in args.plugins.split(",") if p]
    import_plugins(plugins)
    epochs = 2 if args.quick else args.epochs
    seeds = (
        [int(s) for s in args.seeds.split(",")][:1] if args.quick else [int(s) for s in args.seeds.split(",")]
    )
    naive_seeds = (
        seeds if args.naive_seeds is None else [int(s) for s in args.naive_seeds.split(",")][: len(seeds)]
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    faces = Path(args.faces) if args.faces else align_lfw(out.parent)
    if args.select:
        print(select_table(select(models, faces, out, epochs, seeds[0], plugins, args.set, args.reuse)))
        return
    list_file, n_images, n_people = training_list(faces, out, args.quick_people if args.quick else None)
    pairs_file, images = devtest_set(faces, out, args.quick_pairs if args.quick else None)
    stem = "finetune_quick" if args.quick else "finetune"
    saved = out / f"{stem}.json"
    result: dict[str, Any] = json.loads(saved.read_text()) if args.reuse and saved.is_file() else {}
    result.setdefault("models", {})
    result["settings"] = {
        "quick": args.quick, "recipe": RECIPE, "naive_overrides": NAIVE, "epochs": epochs, "seeds": seeds,
        "train_images": n_images, "train_people": n_people, "pairs": f"{pairs_file.name} (flip-sum, 10 folds)",
        "allpairs_rule": "conservative: largest TAR with FAR <= 1e-3", "faces": str(faces), "set": args.set,
        "machine": machine_info(threads=torch.get_num_threads()),
    }  # fmt: skip

    def save() -> None:
        write_results(out, stem, result, table(result))

    for name, path in models.items():
        model = Path(path)
        meta = load_checkpoint(model)["meta"]
        entry = result["models"].setdefault(name, {"rows": {}})
        entry["model"] = {"path": str(model), "sha256": file_sha256(model), "backbone": meta.get("backbone", {}).get("name"),
                          "source": meta.get("source"), "preprocess": meta.get("preprocess")}  # fmt: skip
        for row in rows:
            runs = entry["rows"].setdefault(row, {"runs": {}})["runs"]
            row_seeds = naive_seeds if row == "naive" else seeds
            for seed in ["-"] if row == "imported" else [str(s) for s in row_seeds]:
                if seed in runs and args.reuse:
                    continue
                where = out / "runs" / name / row / (f"seed{seed}" if seed != "-" else "")
                if row == "imported":
                    runs[seed] = evaluate(model, pairs_file, images, where / "eval")
                else:
                    trained, info = train(
                        model, row, int(seed), faces, list_file, epochs, where, plugins, args.set
                    )
                    runs[seed] = {**evaluate(trained, pairs_file, images, where / "eval"), "training": info}
                entry["rows"][row]["summary"] = summarise(runs)
                save()
    if args.quick:
        result["full_run_estimate"] = estimate_full(result, 6968, args.epochs, 3)
        result["full_run_command"] = FULL_COMMAND
    save()
    print(table(result))
    if "full_run_estimate" in result:
        print(json.dumps(result["full_run_estimate"], indent=2))


if __name__ == "__main__":
    main()
