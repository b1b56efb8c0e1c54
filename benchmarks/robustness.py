"""Robustness of face recognition to adversarial faces and to low resolution: AFA and FAN against their baselines.

Every trained row is the demo recipe ``lfw_mobilefacenet_arcface`` (MobileFaceNet, the LFW people not in
pairsDevTest with at least two images, 6,968 images of 1,262 people) with the same epochs and seeds; only the
method differs (:data:`ROWS`):

* adversarial table: ``plain``; ``pgd_at`` (PGD adversarial training at one ε, hybrid clean + adversarial);
  ``afa`` (dual BN mixed by a predicted λ, PGD faces at ε ~ U(0, ε_max)). Evaluated by pairsDevTest accuracy
  (insightface 10-fold, all 1,000 pairs) and by ``robust:`` on a seeded subset of pairsDevTest: accuracy, TAR and
  FAR at the clean threshold under white-box PGD at ε = 0, 1, 2, 4, 8 /255;
* low-resolution table: ``plain``; ``randscale`` (continuous random-scale augmentation only); ``ddl`` (DDL with
  its low-resolution hard branch over the same scales); ``fan``. Evaluated by all-pairs TAR@FAR=1e-3 on the
  pairsDevTest people's faces (2,741 images) at 112 px and with the probe face at 32, 24 and 16 px
  (``lowres:SIZE:one:allpairs``: the second face of each pair down-sampled and back, DDL's degradation);
* ``--pretrained NAME=PATH`` (repeatable): any model faceforge evaluates (a checkpoint, an imported dlib or SFace
  checkpoint, an .onnx file, ``dlib``) in both tables, untrained; models without input gradients get the
  low-resolution numbers and the attack's one-line refusal in place of attacked numbers; with ``--rows ""`` only
  these are evaluated and ``--publish`` writes ``robustness_pretrained.*``;
* ``--init NAME=PATH``: every trained row of ``--rows`` again (named ``ROW+NAME``), fine-tuned from that checkpoint
  (e.g. the dlib import) by the packaged ``finetune`` recipe (:data:`INIT_RECIPE`: class-mean head rows at norm 1,
  backbone at 0.03x the rate, frozen BatchNorm statistics, a head-only first epoch) for ``--init-epochs`` epochs
  (3, the recipe's own) on the same training people, with the row's method on top; ``--init-overrides`` adds
  keys; ``--init-only`` trains only these rows. ``afa`` needs a dual-BN checkpoint: skipped.

Costs are bounded by options recorded in the JSON: training attacks use ``--train-steps`` PGD steps on an
``--adv-fraction`` of each batch, FAN's decoder branch sees ``--fan-decoder-rows`` faces per batch, the attacked
evaluation uses ``--attack-pairs`` pairs and ``--attack-steps`` steps. ``--quick`` is a smoke run (120 people, one
epoch, one seed, 60 attacked pairs, 150 evaluation people) that checks the whole pipeline in minutes.

    python benchmarks/robustness.py [--out benchmarks_out/robustness] [--quick] [--seeds 0,1,2] [--epochs 2]
        [--rows plain,pgd_at,afa,randscale,ddl,fan] [--pretrained NAME=PATH ...]
        [--init NAME=PATH [--init-epochs 3] [--init-only]]
        [--train-override KEY=VALUE ...] [--merge EARLIER.json] [--publish]

``--merge`` carries the runs of an earlier record (e.g. the published one, made on another machine whose run
folders are not here) into this one when the experiment's settings are equal (:func:`merge_runs`).

A run whose ``checkpoints/model.pt`` exists and whose ``command.json`` holds the same command (``run.resume`` aside)
is reused; an interrupted one resumes from its ``last.pt`` (``run.resume=auto``). A model's evaluation is reused
from its ``eval/eval_record.json`` when the model file and the evaluation options are the same.
Writes ``<out>/robustness.json``, ``<out>/robustness.md`` and two plots after every run; ``--publish`` copies
the JSON and the tables to benchmarks/results/ (quick runs as ``robustness_quick.*``) and the plots to docs/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    DEVTEST_PAIRS,
    REPO,
    align_lfw,
    machine_info,
    mean_std,
    pm,
    write_training_list,
)

RECIPE = "lfw_mobilefacenet_arcface"
#: the rows fine-tuned from a pretrained checkpoint (``--init``): the product's own fine-tuning recipe, since a
#: plain recipe's random head and full rate destroy a strong network (benchmarks/finetune.py, the naive row)
INIT_RECIPE = "finetune"
EPS = "0,1/255,2/255,4/255,8/255"
EPS_LABELS = ("0/255", "1/255", "2/255", "4/255", "8/255")  # as the robust kind names them
SIZES = (32, 24, 16)
#: an interrupted training run (a session that ended, a machine that rebooted) goes on from its last epoch's
#: checkpoint (the engine's exact resume) instead of starting again
RESUME = "run.resume=auto"
TABLES = {"attack": ("plain", "pgd_at", "afa"), "lowres": ("plain", "randscale", "ddl", "fan")}


def row_overrides(row: str, a: argparse.Namespace) -> list[str]:
    """The ``faceforge train`` keys of a row beyond the recipe (the one place that says what a row is)."""
    scales = [f"min_scale={a.min_scale}", f"max_scale={a.max_scale}"]
    attack = [f"method.steps={a.train_steps}", f"method.adv_fraction={a.adv_fraction}"]
    rows = {
        "plain": [],
        "pgd_at": ["method=pgd_at", f"method.eps={a.at_eps}", *attack],
        "afa": ["method=afa", f"method.eps={a.afa_eps}", *attack],
        "randscale": [f"data.augment.lowres={{min_scale: {a.min_scale}, max_scale: {a.max_scale}, p: 0.5}}"],
        "ddl": ["method=ddl", *[f"objectives.ddl.hard.lowres.{s}" for s in scales]],
        "fan": ["method=fan", *[f"method.{s}" for s in scales], f"method.decoder_rows={a.fan_decoder_rows}"],
    }
    if row not in rows:
        raise SystemExit(f"unknown row {row!r}: rows are {', '.join(rows)}")
    return rows[row]


# ------------------------------------------------------------------------------------------------------ data
def prepare_data(base: Path, quick: bool) -> dict[str, Path]:
    """Aligned LFW (``faceforge align``), the evaluation folder (pairsDevTest people, links) and, for ``--quick``, a
    training list of 120 people."""
    from faceforge.data.pairs import pairs_people

    faces = align_lfw(base)
    pairs = DEVTEST_PAIRS
    people = sorted(pairs_people(pairs))
    if quick:
        people = people[:150]
    evald = base / ("devtest_people_quick" if quick else "devtest_people")
    evald.mkdir(parents=True, exist_ok=True)
    for name in people:
        if not (evald / name).exists() and (faces / name).is_dir():
            (evald / name).symlink_to((faces / name).resolve())
    out = {"faces": faces, "pairs": pairs, "eval_folder": evald}
    if quick:
        out["list"] = write_training_list(
            faces, base / "quick_train.txt", pairs_people(pairs), min_images=4, max_people=120, per_person=8
        )[0]
    return out


# ------------------------------------------------------------------------------------------------- training
def training_command(row: str, seed: int, data: dict[str, Path], run_dir: Path, a: argparse.Namespace,
                     init: tuple[str, str] | None) -> list[str]:  # fmt: skip
    recipe, epochs = (RECIPE, a.epochs) if init is None else (INIT_RECIPE, a.init_epochs)
    cmd = [sys.executable, "-m", "faceforge", "train", recipe, f"data.root={data['faces'].absolute()}",
           f"run.dir={run_dir.absolute()}", f"run.seed={seed}", f"optim.epochs={epochs}", "eval.pairs=null",
           "run.progress=false", f"run.precision={a.precision}", RESUME, *row_overrides(row, a)]  # fmt: skip
    if "list" in data:
        cmd += [f"data.list_file={data['list'].absolute()}", "data.exclude_pairs=[]"]
    elif init is not None:  # the same training people as the scratch rows (the finetune recipe excludes none)
        cmd += [f"data.exclude_pairs=[{Path(data['pairs']).absolute()}]"]
    if init is not None:
        cmd += [f"run.init={Path(init[1]).absolute()}", *a.init_overrides.split()]
    return cmd + list(a.train_override)


def _same_run(a: list[str], b: list[str]) -> bool:
    """Two training commands train the same model (``run.resume`` only says where an interrupted one goes on)."""

    def keys(c: list[str]) -> list[str]:
        return [x for x in c if not x.startswith("run.resume=")]

    return keys(a) == keys(b)


def train(cmd: list[str], run_dir: Path) -> dict[str, Any]:
    model, saved = run_dir / "checkpoints" / "model.pt", run_dir / "command.json"
    info: dict[str, Any] = {"command": cmd[2:], "model": str(model)}
    if model.is_file() and saved.is_file() and _same_run(json.loads(saved.read_text()), cmd[2:]):
        info["trained"] = "earlier (model.pt and the same command.json existed)"
    else:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
        if proc.returncode != 0 or not model.is_file():
            raise SystemExit(
                f"training failed: {' '.join(cmd[2:])}\n{proc.stdout[-1500:]}\n{proc.stderr[-2500:]}"
            )
        saved.write_text(json.dumps(cmd[2:]))
        info.update(trained="this run", wall_seconds=time.perf_counter() - t0)
    report = json.loads((run_dir / "report.json").read_text()) if (run_dir / "report.json").is_file() else {}
    info["train_seconds"] = report.get("train_seconds_this_run")
    info["images_per_s"] = report.get("images_per_s_this_run")
    info["train_precision"] = report.get("precision")  # what run.precision resolved to (auto: bf16 or fp32)
    return info


# ----------------------------------------------------------------------------------------------- evaluation
def evaluate(
    model: str, tables: set[str], data: dict[str, Path], out: Path, a: argparse.Namespace
) -> dict[str, Any]:
    """The numbers of one model in the tables it belongs to (see the module doc)."""
    from faceforge.core.errors import InputError
    from faceforge.embedders import embedder_from_spec
    from faceforge.eval.benchmarks import run_benchmarks

    emb = embedder_from_spec(model, precision=a.precision)
    cache = Path(a.out) / "embedding_cache"  # keyed by model hash: shared by every run of the benchmark
    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    specs = [f"lfw:{data['pairs']}:{data['faces']}"]
    if "lowres" in tables:
        folder = data["eval_folder"]
        specs += [f"allpairs:{folder}"] + [f"lowres:{s}:{a.lowres_mode}:allpairs:{folder}" for s in SIZES]
    run = run_benchmarks(emb, specs, out / "clean_lowres", cache_dir=cache, progress=False)
    recs = list(run["benchmarks"].values())
    res["pairs_accuracy"] = recs[0]["summary"]["accuracy"]
    if "lowres" in tables:
        res["tar@far=1e-3"] = {
            str(s): r["summary"]["tar@far=0.001"] for s, r in zip((112, *SIZES), recs[1:], strict=True)
        }
    if "attack" in tables:
        spec = (
            f"robust:{data['pairs']}:{data['faces']}:{EPS},steps={a.attack_steps},maxpairs={a.attack_pairs}"
        )
        try:
            attacked = run_benchmarks(emb, [spec], out / "attack", cache_dir=None, progress=False)
            rec = next(iter(attacked["benchmarks"].values()))
            res["attack"] = {
                r["eps_label"]: {k: r[k] for k in ("accuracy", "tar", "far")} for r in rec["per_eps"]
            }
            res["attack_threshold"] = rec["settings"]["threshold"]["threshold"]
        except InputError as exc:  # no input gradients (dlib, ONNX): recorded, not fatal
            res["attack_refused"] = str(exc)
    res["eval_seconds"] = time.perf_counter() - t0
    # the precision the evaluation resolved to (auto: bf16 where the model's parity record passes)
    res["eval_precision"] = getattr(emb, "precision", None)
    return res


#: the options that change a model's evaluation numbers (the rest only say how a model is trained)
EVAL_KEYS = ("precision", "attack_pairs", "attack_steps", "lowres_mode")


def eval_key(model: str, tables: set[str], a: argparse.Namespace) -> dict[str, Any]:
    """What one model's evaluation depends on: the model file's bytes, its tables and the evaluation options."""
    from faceforge.core.hashing import file_sha256

    digest = file_sha256(model) if Path(model).is_file() else model  # e.g. ``dlib``: the runtime itself
    return {"model": digest, "tables": sorted(tables), "eps": EPS, "sizes": list(SIZES),
            **{k: getattr(a, k) for k in EVAL_KEYS}}  # fmt: skip


def evaluate_once(
    model: str, tables: set[str], data: dict[str, Path], out: Path, a: argparse.Namespace
) -> dict[str, Any]:
    """:func:`evaluate`, reusing ``out/eval_record.json`` when it was written for the same :func:`eval_key` (a
    later invocation, e.g. with more seeds, does not attack the same model again)."""
    saved, key = out / "eval_record.json", eval_key(model, tables, a)
    if saved.is_file():
        rec = json.loads(saved.read_text())
        if rec.get("key") == key:
            return {**rec["eval"], "evaluated": "earlier (eval_record.json with the same key)"}
    from faceforge.core.atomic import atomic_writer

    ev = evaluate(model, tables, data, out, a)
    with atomic_writer(saved) as fh:
        fh.write(json.dumps({"key": key, "eval": ev}, indent=2).encode())
    return ev


#: the settings that define the experiment: a run from another record is only merged when all of these are equal
#: (precision is not among them: it is recorded with every carried run, as the machines may differ)
MERGE_KEYS = ("quick", "epochs", "at_eps", "afa_eps", "train_steps", "adv_fraction", "min_scale", "max_scale",
              "fan_decoder_rows", "attack_pairs", "attack_steps", "lowres_mode", "train_override", "eps", "sizes",
              "recipe")  # fmt: skip
#: the settings of the ``--init`` rows alone: compared only when both records have such rows
INIT_MERGE_KEYS = ("init_recipe", "init_epochs", "init_overrides")


def _has_init_rows(record: dict[str, Any]) -> bool:
    return any("+" in row for row in record.get("runs", {}))


def merge_runs(record: dict[str, Any], path: Path) -> list[str]:
    """Carry every run of an earlier ``robustness.json`` (e.g. the published one, whose run folders were on another
    machine) into ``record``; each carried run says where it came from (file, date, machine, precision), and a run
    this invocation makes later replaces the carried one of the same row and seed. Refuses a record whose experiment differs (:data:`MERGE_KEYS`). Returns the
    ``row/seed`` names carried."""
    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--merge {path}: cannot read it ({exc})") from None
    if old.get("benchmark") != "robustness":
        raise SystemExit(f"--merge {path}: not a robustness.json (benchmark={old.get('benchmark')!r})")
    keys = MERGE_KEYS + (INIT_MERGE_KEYS if _has_init_rows(old) and record["settings"].get("init") else ())
    differ = [f"{k}: {old['settings'].get(k)!r} there, {record['settings'].get(k)!r} here" for k in keys
              if old["settings"].get(k) != record["settings"].get(k)]  # fmt: skip
    if differ:
        raise SystemExit(
            f"--merge {path}: a different experiment ({'; '.join(differ)}); rerun those rows instead"
        )
    carried = []
    for row, seeds in old.get("runs", {}).items():
        for seed, entry in seeds.items():
            src = entry.get("carried_from") or {
                "file": str(path), "created": old.get("created"), "machine": old.get("machine"),
                "precision": entry.get("precision", old["settings"].get("precision")),
            }  # fmt: skip
            record["runs"].setdefault(row, {})[seed] = {**entry, "carried_from": src}
            carried.append(f"{row}/{seed}")
    return carried


def flat(ev: dict[str, Any]) -> dict[str, float]:
    out = {"pairs_accuracy": ev["pairs_accuracy"]}
    out.update({f"tar@112/{s}": v for s, v in (ev.get("tar@far=1e-3") or {}).items()})
    for eps, r in (ev.get("attack") or {}).items():
        out.update({f"{k}@eps={eps}": r[k] for k in ("accuracy", "tar", "far")})
    return out


def aggregate(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for row, seeds in runs.items():
        flats = [flat(r["eval"]) for r in seeds.values() if "eval" in r]
        keys = sorted({k for f in flats for k in f})
        out[row] = {k: mean_std([f[k] for f in flats if k in f]) for k in keys}
    return out


def _seeds(row: str, s: dict[str, Any]) -> str:
    """How many runs a row's numbers average (``-``: an untrained model, measured once)."""
    if row.startswith("pretrained:"):
        return "-"
    return str((s.get("pairs_accuracy") or {}).get("n", ""))


def tables_md(summary: dict[str, dict[str, Any]], refused: dict[str, str]) -> str:
    """The two README tables (markdown), mean ± std over seeds in percent, with the number of seeds."""
    lines = ["| model | seeds | pairsDevTest acc (10-fold) | " + " | ".join(f"acc @ ε={e}" for e in EPS_LABELS)
             + " |", "|---" * (3 + len(EPS_LABELS)) + "|"]  # fmt: skip
    for row, s in summary.items():
        seeds = _seeds(row, s)
        if any(k.startswith("accuracy@") for k in s) or row in refused:
            cells = [pm(s.get(f"accuracy@eps={e}"), 100, 1) for e in EPS_LABELS]
            if row in refused:
                cells = ["not differentiable"] * len(EPS_LABELS)
            lines.append(
                f"| {row} | {seeds} | {pm(s.get('pairs_accuracy'), 100, 1)} | " + " | ".join(cells) + " |"
            )
    lines += ["", "| model | seeds | TAR@FAR=1e-3 112 px | " + " | ".join(f"probe {p} px" for p in SIZES) + " |",
              "|---" * (3 + len(SIZES)) + "|"]  # fmt: skip
    for row, s in summary.items():
        seeds = _seeds(row, s)
        if "tar@112/112" in s:
            lines.append(
                f"| {row} | {seeds} | "
                + " | ".join(pm(s.get(f"tar@112/{p}"), 100, 1) for p in (112, *SIZES))
                + " |"
            )
    return "\n".join(lines) + "\n"


def plots(summary: dict[str, dict[str, Any]], out: Path) -> dict[str, str]:
    from faceforge.eval.plots import plot_lines

    att = {r: [s[f"accuracy@eps={e}"]["mean"] for e in EPS_LABELS] for r, s in summary.items()
           if f"accuracy@eps={EPS_LABELS[-1]}" in s}  # fmt: skip
    low = {
        r: [s[f"tar@112/{p}"]["mean"] for p in (112, *SIZES)] for r, s in summary.items() if "tar@112/16" in s
    }
    made = {}
    if att:
        made["attack"] = str(plot_lines(range(len(EPS_LABELS)), att, out / "robustness_attack.png",
                                        "Accuracy under PGD (threshold fixed on clean pairs)", "ε", "accuracy",
                                        EPS_LABELS))  # fmt: skip
    if low:
        made["lowres"] = str(plot_lines(range(4), low, out / "robustness_lowres.png", "All-pairs TAR@FAR=1e-3 by "
                                        "probe resolution", "probe size (px)", "TAR", ["112", *map(str, SIZES)]))  # fmt: skip
    return made


def write(out: Path, record: dict[str, Any]) -> None:
    record["summary"] = aggregate(record["runs"])
    record["plots"] = plots(record["summary"], out)
    (out / "robustness.json").write_text(json.dumps(record, indent=2, default=str))
    refused = {r: v["eval"]["attack_refused"] for r, s in record["runs"].items() for v in s.values()
               if "attack_refused" in v.get("eval", {})}  # fmt: skip
    (out / "robustness.md").write_text(tables_md(record["summary"], refused))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks_out/robustness")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: small data, one epoch and seed, few pairs"
    )
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument(
        "--epochs", type=int, default=2, help="the same for every row (2: the fairness benchmark's budget)"
    )
    p.add_argument("--rows", default="plain,pgd_at,afa,randscale,ddl,fan")
    p.add_argument(
        "--precision", default="auto", help="run.precision and evaluation precision (auto: bf16 where fast)"
    )
    p.add_argument("--at-eps", default="4/255", help="pgd_at's single ε")
    p.add_argument("--afa-eps", default="8/255", help="AFA's ε_max")
    p.add_argument("--train-steps", type=int, default=1, help="PGD steps of the training attacks")
    p.add_argument("--adv-fraction", type=float, default=0.5, help="share of each batch attacked in training")
    p.add_argument(
        "--min-scale", type=float, default=0.125, help="random-scale range of randscale, ddl and fan"
    )
    p.add_argument("--max-scale", type=float, default=0.5)
    p.add_argument("--fan-decoder-rows", type=int, default=16)
    p.add_argument("--attack-pairs", type=int, default=300, help="pairsDevTest pairs attacked (half genuine)")
    p.add_argument("--attack-steps", type=int, default=5, help="PGD steps of the evaluation attack")
    p.add_argument("--lowres-mode", default="one", choices=("one", "both"))
    p.add_argument("--pretrained", action="append", default=[], metavar="NAME=PATH")
    p.add_argument(
        "--init", default=None, metavar="NAME=PATH", help="also train every row from this checkpoint"
    )
    p.add_argument(
        "--init-epochs", type=int, default=3, help="epochs of the --init rows (3: the finetune recipe's own)"
    )
    p.add_argument(
        "--init-overrides", default="", help="more keys for the --init rows, e.g. 'finetune.x=...'"
    )
    p.add_argument("--init-only", action="store_true", help="train only the --init rows of --rows")
    p.add_argument("--train-override", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--merge", default=None, metavar="JSON",
        help="also report the runs of this earlier robustness.json that this invocation does not produce",
    )  # fmt: skip
    p.add_argument("--publish", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.epochs, a.init_epochs, a.attack_pairs, a.attack_steps = "0", 1, 1, 60, 2
        a.out = a.out if a.out != "benchmarks_out/robustness" else "benchmarks_out/robustness_quick"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(out, a.quick)
    rows, seeds = [r for r in a.rows.split(",") if r], [int(s) for s in a.seeds.split(",")]
    init = tuple(a.init.split("=", 1)) if a.init else None
    record: dict[str, Any] = {
        "benchmark": "robustness", "quick": a.quick, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {**{k: v for k, v in vars(a).items() if k not in ("out", "publish", "merge")}, "eps": EPS,
                     "sizes": list(SIZES), "recipe": RECIPE, "init_recipe": INIT_RECIPE,
                     "tables": {k: list(v) for k, v in TABLES.items()}},
        "machine": machine_info(), "runs": {},
    }  # fmt: skip
    if a.merge:  # checked before any training: a different experiment stops here, not hours later
        carried = merge_runs(record, Path(a.merge))
        print(f"carrying from {a.merge}: {', '.join(carried) or 'nothing'}", flush=True)
    if a.init_only and init is None:
        raise SystemExit("--init-only needs --init NAME=PATH (the checkpoint the rows are fine-tuned from)")
    if init is not None and (len(init) != 2 or not Path(init[1]).is_file()):
        raise SystemExit(
            f"--init {a.init}: not NAME=PATH of a checkpoint file (e.g. from 'faceforge import dlib')"
        )
    plan = [] if a.init_only else [(r, None) for r in rows]
    plan += [(r, init) for r in rows if r != "afa"] if init else []
    for row, ini in plan:
        name = row if ini is None else f"{row}+{ini[0]}"
        tables = {t for t, members in TABLES.items() if row in members}
        for seed in seeds:
            run_dir = out / "runs" / name / f"seed{seed}"
            cmd = training_command(row, seed, data, run_dir, a, ini)
            entry = {**train(cmd, run_dir), "precision": a.precision}
            entry["eval"] = evaluate_once(entry["model"], tables, data, run_dir / "eval", a)
            record["runs"].setdefault(name, {})[str(seed)] = entry
            print(f"{name} seed {seed}: {json.dumps(flat(entry['eval']))}", flush=True)
            write(out, record)
    for item in a.pretrained:
        name, _, path = item.partition("=")
        entry = {"model": path, "eval": evaluate_once(path, set(TABLES), data, out / "pretrained" / name, a)}
        record["runs"][f"pretrained:{name}"] = {"-": entry}
        write(out, record)
    # what is still carried (a run this invocation made replaced the carried one of its row and seed)
    if a.merge:
        record["merged_from"] = {"file": a.merge, "runs": [f"{r}/{s}" for r, seeds in record["runs"].items()
                                                           for s, e in seeds.items() if "carried_from" in e]}  # fmt: skip
    write(out, record)
    print((out / "robustness.md").read_text())
    if a.publish:
        dest = REPO / "benchmarks" / "results"
        # quick: the smoke run; no trained rows (--rows ""): the pretrained models alone
        stem = "robustness_quick" if a.quick else "robustness" if rows else "robustness_pretrained"
        shutil.copy(out / "robustness.json", dest / f"{stem}.json")
        shutil.copy(out / "robustness.md", dest / f"{stem}.md")
        for png in record["plots"].values() if not a.quick else ():  # smoke-run plots stay in --out
            shutil.copy(png, REPO / "docs" / Path(png).name.replace("robustness", stem, 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
