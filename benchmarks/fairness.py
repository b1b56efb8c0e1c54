"""Does CIFP make false matches more even across demographic groups? CosFace vs CosFace + CIFP, ArcFace vs
ArcFace + CIFP, same data, backbone and epochs, several seeds, mean +- std.

Training: the demo recipe ``lfw_mobilefacenet_arcface`` (MobileFaceNet, the LFW people not in pairsDevTest
with at least two images, 6,968 images of 1,262 people, scale 32 and margin 0.3 from the recipe), with the
head ``cosface`` or ``arcface`` and, in the ``*_cifp`` rows, the CIFP logit transform
(faceforge/models/heads/cifp.py: TFace's reference computation, alpha = 1/(C-1), penalty ``code_mean``).
The one place that builds a run's command line is :func:`training_command`.

Evaluation of every run (one embedding pass, flip-sum, through the embedding cache):

* pairsDevTest accuracy (insightface 10-fold) on the LFW faces aligned by ``faceforge align``;
* UTKFace faces prepared with ``faceforge prepare`` (YuNet), no identity labels: every within-group pair an
  impostor pair (up to 200k per group, seed 0), one global threshold for FMR 1e-3 over all pairs pooled,
  the FMR of each race group (``utkface-race``) and each gender (``utkface-gender``), the worst/best FMR
  ratio (raw, and with groups without a false match floored at 1/n_pairs) and the standard deviation of
  log10 FMR across groups (same floor) (``bias:UTK:utkface-race``, ``bias:UTK:utkface-gender``).

Aggregation: per row and number, mean and sample standard deviation (ddof 1) over seeds, with the values.
Comparison per head: CIFP row minus its base row; the target is met when CIFP lowers both the race
worst/best ratio (floored) and the race log10-FMR spread while losing at most 0.5 points of pairsDevTest
accuracy. The table says which, whatever the outcome.

    python benchmarks/fairness.py [--out benchmarks_out/fairness] [--epochs 3] [--seeds 0,1,2]
        [--rows cosface,cosface_cifp,arcface,arcface_cifp] [--utk DIR] [--train-override KEY=VALUE ...]
        [--reuse] [--publish]

Runs live in ``<out>/runs/<row>/seed<k>/``; a run whose ``checkpoints/model.pt`` exists is not trained
again (so a run trained by hand with the same command is picked up) if its ``config.yaml`` matches the
command's config (:func:`run_config_differences`); a run trained otherwise (other epochs, seed, head...)
stops the script with the keys that differ. Writes ``<out>/fairness.json`` and
``<out>/fairness.md`` after every run; ``--publish`` copies both to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import DATA, REPO, RESULTS, align_lfw, faceforge_cli, machine_info, mean_std, pm

RECIPE = "lfw_mobilefacenet_arcface"
ROWS = ("cosface", "cosface_cifp", "arcface", "arcface_cifp")
#: the objective keys of a CIFP row in the plug-in engine's config (issue 16)
CIFP_KEYS = ("method=cifp",)
TARGET_FMR = 1e-3
MAX_ACCURACY_LOSS_POINTS = 0.5
GROUPINGS = {"race": "utkface-race", "gender": "utkface-gender"}


def split_row(row: str) -> tuple[str, bool]:
    """``"arcface_cifp"`` -> ``("arcface", True)``; unknown rows stop with the list."""
    if row not in ROWS:
        raise SystemExit(f"unknown row {row!r}: rows are {', '.join(ROWS)}")
    head, _, cifp = row.partition("_")
    return head, cifp == "cifp"


def training_command(
    row: str, seed: int, faces: Path, run_dir: Path, epochs: int, extra: Sequence[str] = ()
) -> list[str]:
    """The ``faceforge train`` command line of one run (``python -m faceforge train RECIPE KEY=VALUE...``).

    Keys passed, in order: ``head=<cosface|arcface>`` (a group choice; scale 32 and margin 0.3 stay the
    recipe's), ``data.root`` (the aligned LFW tree), ``run.dir`` (both made absolute: the training process
    runs in the repository root, the script may not), ``run.seed``, ``optim.epochs``,
    ``eval.pairs=null`` (this script evaluates), ``run.progress=false``, then ``extra``
    (``--train-override``), and for a ``*_cifp`` row :data:`CIFP_KEYS`: the packaged ``method=cifp``, which
    replaces the margin objective by ``objectives.cifp`` (alpha null = 1/(C-1), penalty code_mean) on the same
    head.
    """
    head, cifp = split_row(row)
    faces, run_dir = Path(faces).absolute(), Path(run_dir).absolute()  # the training runs with cwd=REPO
    cmd = [sys.executable, "-m", "faceforge", "train", RECIPE, f"head={head}"]
    cmd += [f"data.root={faces}", f"run.dir={run_dir}", f"run.seed={seed}", f"optim.epochs={epochs}"]
    cmd += ["eval.pairs=null", "run.progress=false", *extra]
    if cifp:
        cmd += list(CIFP_KEYS)
    return cmd


# ------------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------------


def prepared_utkface(base: Path, images: Path | None = None) -> Path:
    """``faceforge prepare`` (YuNet, largest face) of the UTKFace photos (``images``: all of them by default, or a
    folder holding some of them) into ``base/utk112``, once."""
    faces = base / "utk112"
    if not (faces / "prepare_report.json").is_file():
        src = images if images is not None else DATA / "utkface" / "images"
        faceforge_cli(["prepare", "--images", str(src), "--out", str(faces)])
    return faces


# ------------------------------------------------------------------------------------------------------
# one run: train (unless its model exists), evaluate
# ------------------------------------------------------------------------------------------------------
#: config keys that do not change the trained model (where it lives, logging, threads, resuming, the
#: trainer's own evaluation): a run that differs only there is the same run
IGNORED_KEYS = (
    "run.dir",
    "run.progress",
    "run.log_every",
    "run.threads",
    "run.resume",
    "run.save_every_steps",
    "run.cache_dir",
    "data.num_workers",
    "data.preload",
    "eval",
)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): tree}


@functools.lru_cache(maxsize=32)
def _command_config(overrides: tuple[str, ...]) -> dict[str, Any]:
    """The flattened, resolved config of ``faceforge train RECIPE *overrides``."""
    from omegaconf import OmegaConf

    from faceforge.config import compose_config

    return _flat(OmegaConf.to_container(compose_config(RECIPE, list(overrides)), resolve=True))


def run_config_differences(cmd: Sequence[str], run_dir: Path) -> list[str]:
    """The config keys where ``run_dir/config.yaml`` (written by the trainer when the run started) differs
    from the config of ``cmd`` (a :func:`training_command`), outside :data:`IGNORED_KEYS`; ``data.root`` is
    compared as a path (relative paths from the repository root, where the training runs). A missing
    ``config.yaml`` is reported as ``["config.yaml"]``."""
    from omegaconf import OmegaConf

    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        return ["config.yaml"]
    args = list(cmd)
    want = _command_config(tuple(args[args.index(RECIPE) + 1 :]))
    have = _flat(OmegaConf.to_container(OmegaConf.load(saved_file), resolve=True))

    def ignored(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in IGNORED_KEYS)

    def norm(key: str, value: Any) -> Any:
        return (REPO / str(value)).resolve() if key == "data.root" and value is not None else value

    keys = sorted(k for k in set(want) | set(have) if not ignored(k))
    return [k for k in keys if norm(k, want.get(k, "<absent>")) != norm(k, have.get(k, "<absent>"))]


def train(
    row: str, seed: int, faces: Path, run_dir: Path, epochs: int, extra: Sequence[str]
) -> dict[str, Any]:
    model = run_dir / "checkpoints" / "model.pt"
    cmd = training_command(row, seed, faces, run_dir, epochs, extra)
    info: dict[str, Any] = {"command": cmd[2:], "model": str(model)}
    if model.is_file():
        differs = run_config_differences(cmd, run_dir)
        if differs:
            raise SystemExit(
                f"{run_dir} holds a model trained with another config ({', '.join(differs)} differ from "
                f"{' '.join(cmd[2:])}): remove that run folder or use another --out"
            )
        info["trained"] = "earlier (model.pt existed, same config)"
    else:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
        if proc.returncode != 0:
            raise SystemExit(
                f"training {row} seed {seed} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
            )
        info["trained"] = "this run"
        info["wall_seconds"] = time.perf_counter() - t0
        if not model.is_file():
            raise SystemExit(
                f"training {row} seed {seed} stopped before the end (run.max_steps?): no {model}"
            )
    report = run_dir / "report.json"
    if report.is_file():
        r = json.loads(report.read_text())
        history = r.get("history") or []
        info.update(
            train_seconds=r.get("train_seconds_this_run"),
            num_identities=r.get("num_identities"),
            final_loss=history[-1].get("loss") if history else None,
        )
    return info


def group_numbers(rec: dict[str, Any]) -> dict[str, Any]:
    """The per-group numbers of one ``bias:`` record."""
    b = rec["bias"]
    return {
        "threshold": b["threshold"],
        "overall_fmr": b["overall_fmr"],
        "fmr": {k: v["fmr"] for k, v in b["groups"].items()},
        "n_impostor": {k: v["n_impostor"] for k, v in b["groups"].items()},
        "fmr_ratio": b["fmr_ratio"],
        "fmr_ratio_floored": b["fmr_ratio_floored"],
        "log10_fmr_std": b["log10_fmr_std"],
        "worst_group": b["worst_group"],
        "best_group": b["best_group"],
        "groups_too_few_pairs": b.get("groups_too_few_pairs", []),
    }


def evaluate(
    model: Path, lfw_faces: Path, utk_faces: Path, out_dir: Path, cache: Path, pairs: Path | None = None
) -> dict[str, Any]:
    """pairs accuracy on ``pairs`` (default pairsDevTest) over ``lfw_faces`` and the ``bias:`` numbers of every
    grouping on ``utk_faces``."""
    from faceforge.embedders import embedder_from_spec
    from faceforge.eval.benchmarks import run_benchmarks

    pairs = pairs if pairs is not None else DATA / "lfw" / "pairsDevTest.txt"
    specs = [f"lfw:{pairs}:{lfw_faces}"] + [f"bias:{utk_faces}:{g}" for g in GROUPINGS.values()]
    run = run_benchmarks(embedder_from_spec(str(model)), specs, out_dir, cache_dir=cache, progress=False)
    recs = list(run["benchmarks"].values())
    return {
        "pairs_accuracy": recs[0]["summary"]["accuracy"],
        "pairs_accuracy_fold_std": recs[0]["summary"]["accuracy_std"],
        **{name: group_numbers(rec) for name, rec in zip(GROUPINGS, recs[1:], strict=True)},
        "result_file": str(out_dir / "result.json"),
    }


# ------------------------------------------------------------------------------------------------------
# aggregation over seeds and the CIFP-vs-base comparison
# ------------------------------------------------------------------------------------------------------
def flat_numbers(ev: dict[str, Any]) -> dict[str, float | None]:
    """The numbers of one run that are aggregated: ``pairs_accuracy`` and per grouping the ratio, the
    floored ratio, the log10 spread, the overall FMR and each group's FMR (``race.fmr.Asian``)."""
    out: dict[str, float | None] = {"pairs_accuracy": ev["pairs_accuracy"]}
    for g in GROUPINGS:
        n = ev[g]
        for key in ("fmr_ratio", "fmr_ratio_floored", "log10_fmr_std", "overall_fmr"):
            out[f"{g}.{key}"] = n[key]
        for grp, v in n["fmr"].items():
            out[f"{g}.fmr.{grp}"] = v
    return out


def aggregate(runs: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{row: {seed: {"eval": ...}}}`` -> ``{row: {number: mean_std over seeds}}``."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row, seeds in runs.items():
        flats = [flat_numbers(r["eval"]) for _, r in sorted(seeds.items()) if "eval" in r]
        keys = sorted({k for f in flats for k in f})
        out[row] = {k: mean_std([f.get(k) for f in flats]) for k in keys}
    return out


def compare(summary: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per head with both rows: CIFP minus base (means) and whether the issue's target is met."""
    out: dict[str, dict[str, Any]] = {}
    for head in ("cosface", "arcface"):
        base, cifp = summary.get(head), summary.get(f"{head}_cifp")
        if not base or not cifp:
            continue

        def delta(key: str, a: dict = base, b: dict = cifp) -> float | None:
            x, y = a.get(key, {}).get("mean"), b.get(key, {}).get("mean")
            return None if x is None or y is None else y - x

        acc_points = delta("pairs_accuracy")
        acc_points = None if acc_points is None else 100.0 * acc_points
        d_ratio, d_spread = delta("race.fmr_ratio_floored"), delta("race.log10_fmr_std")
        met = (
            None
            if None in (acc_points, d_ratio, d_spread)
            else bool(d_ratio < 0 and d_spread < 0 and acc_points >= -MAX_ACCURACY_LOSS_POINTS)
        )
        out[head] = {
            "pairs_accuracy_points": acc_points,
            "race.fmr_ratio_floored": d_ratio,
            "race.log10_fmr_std": d_spread,
            "gender.fmr_ratio_floored": delta("gender.fmr_ratio_floored"),
            "gender.log10_fmr_std": delta("gender.log10_fmr_std"),
            "target_met": met,
            "target": (
                "CIFP lowers the race worst/best FMR ratio (floored) and the race log10-FMR spread, losing at "
                f"most {MAX_ACCURACY_LOSS_POINTS} points of pairsDevTest accuracy"
            ),
        }
    return out


def small_groups(runs: dict[str, dict[str, dict[str, Any]]]) -> dict[str, list[str]]:
    """Per grouping, the groups any run left out of the ratio and spread for having too few pairs."""
    out: dict[str, set[str]] = {g: set() for g in GROUPINGS}
    for seeds in runs.values():
        for r in seeds.values():
            for g in GROUPINGS:
                out[g] |= set(r.get("eval", {}).get(g, {}).get("groups_too_few_pairs", []))
    return {g: sorted(v) for g, v in out.items()}


def table(
    summary: dict[str, dict[str, dict[str, Any]]],
    comparison: dict[str, Any],
    seeds: int,
    left_out: dict[str, list[str]] | None = None,
) -> str:
    """The README table (markdown): one line per row, then one line per head comparison and the groups left
    out of the ratios and spreads (``left_out``, from :func:`small_groups`)."""
    races = sorted({k.split(".", 2)[2] for s in summary.values() for k in s if k.startswith("race.fmr.")})
    head = (
        "| row | pairsDevTest acc | race FMR worst/best (floored) | race std log10 FMR | gender FMR worst/best "
        "(floored) | gender std log10 FMR | " + " | ".join(f"FMR {r}" for r in races) + " |\n"
    )
    head += "|---" * (6 + len(races)) + "|\n"
    lines = []
    for row in ROWS:
        s = summary.get(row)
        if not s:
            continue
        cells = [
            pm(s.get("pairs_accuracy"), 100, 2, " %"),
            pm(s.get("race.fmr_ratio_floored"), 1, 1),
            pm(s.get("race.log10_fmr_std"), 1, 2),
            pm(s.get("gender.fmr_ratio_floored"), 1, 2),
            pm(s.get("gender.log10_fmr_std"), 1, 2),
            *[pm(s.get(f"race.fmr.{r}"), 100, 3, " %") for r in races],
        ]
        lines.append(f"| {row.replace('_cifp', ' + CIFP')} | " + " | ".join(cells) + " |")
    notes = []
    for h, c in comparison.items():
        verdict = {True: "target met", False: "target NOT met", None: "incomplete"}[c["target_met"]]
        acc = "n/a" if c["pairs_accuracy_points"] is None else f"{c['pairs_accuracy_points']:+.2f} pt"
        ratio = "n/a" if c["race.fmr_ratio_floored"] is None else f"{c['race.fmr_ratio_floored']:+.2f}"
        spread = "n/a" if c["race.log10_fmr_std"] is None else f"{c['race.log10_fmr_std']:+.3f}"
        notes.append(
            f"- {h} + CIFP vs {h} ({seeds} seeds, means): accuracy {acc}, race worst/best {ratio}, "
            f"race std log10 FMR {spread}: {verdict}."
        )
    for g, groups in (left_out or {}).items():
        if groups:
            notes.append(
                f"- {g}: {', '.join(groups)} left out of the worst/best ratio and the log10 spread (fewer than "
                f"1/{TARGET_FMR:g} impostor pairs); their FMR columns are shown for completeness."
            )
    return head + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


# ------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--out", default="benchmarks_out/fairness")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"of {', '.join(ROWS)}")
    ap.add_argument(
        "--lfw", default=None, help="aligned LFW tree (default: <out>/../lfw_aligned, made if missing)"
    )
    ap.add_argument("--utk", default=None, help="UTKFace after faceforge prepare (default <out>/../utk112)")
    ap.add_argument("--train-override", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--reuse", action="store_true", help="keep evaluations already in fairness.json")
    ap.add_argument("--publish", action="store_true", help="copy fairness.json/.md to benchmarks/results/")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in args.rows.split(",") if r]
    for r in rows:
        split_row(r)  # an unknown row stops before any training
    seeds = [int(s) for s in args.seeds.split(",") if s]
    lfw = Path(args.lfw) if args.lfw else align_lfw(out.parent)
    utk = Path(args.utk) if args.utk else prepared_utkface(out.parent)
    saved = out / "fairness.json"
    result: dict[str, Any] = json.loads(saved.read_text()) if args.reuse and saved.is_file() else {}
    runs: dict[str, dict[str, dict[str, Any]]] = result.get("runs", {})
    result["settings"] = {
        "recipe": RECIPE,
        "epochs": args.epochs,
        "seeds": seeds,
        "rows": rows,
        "train_overrides": args.train_override,
        "cifp_keys": list(CIFP_KEYS),
        "lfw_faces": str(lfw),
        "utk_faces": str(utk),
        "utk_prepare_report": str(utk / "prepare_report.json"),
        "evaluation": {
            "pairs": "pairsDevTest, insightface 10-fold, flip-sum, L2",
            "bias": (
                f"bias:UTK:utkface-race and :utkface-gender: within-group impostor pairs (<= 200k per group, "
                f"seed 0), one global threshold for FMR {TARGET_FMR:g} on all pairs pooled"
            ),
            "floor_rule": (
                "a group without a false match counts as FMR = 1/n_pairs in the floored ratio and spread; groups "
                f"with fewer than 1/{TARGET_FMR:g} pairs are left out of both"
            ),
        },
        "aggregation": "mean and sample std (ddof 1) over seeds",
        "machine": machine_info(),
    }
    for row in rows:
        for seed in seeds:
            entry = runs.setdefault(row, {}).setdefault(str(seed), {})
            if args.reuse and "eval" in entry:
                continue
            run_dir = out / "runs" / row / f"seed{seed}"
            entry["train"] = train(row, seed, lfw, run_dir, args.epochs, args.train_override)
            entry["eval"] = evaluate(
                Path(entry["train"]["model"]),
                lfw,
                utk,
                out / "eval" / row / f"seed{seed}",
                out / "eval_cache",
            )
            result["runs"] = runs
            result["summary"] = aggregate(runs)
            result["comparison"] = compare(result["summary"])
            saved.write_text(json.dumps(result, indent=2, default=str))  # after every run: nothing is lost
            md = table(result["summary"], result["comparison"], len(seeds), small_groups(runs))
            (out / "fairness.md").write_text(md)
    result["runs"] = runs
    result["summary"] = aggregate(runs)
    result["comparison"] = compare(result["summary"])
    result["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    saved.write_text(json.dumps(result, indent=2, default=str))
    md = table(result["summary"], result["comparison"], len(seeds), small_groups(runs))
    (out / "fairness.md").write_text(md)
    print(md)
    if args.publish:
        dest = RESULTS
        for f in (saved, out / "fairness.md"):
            shutil.copyfile(f, dest / f.name)


if __name__ == "__main__":
    main()
