"""Face image quality on LFW: which quality source best predicts the errors of two recognisers (ERC / AOC).

Data: LFW aligned with the shipped MTCNN landmarks.  *Test* = the 963 people of pairsDevTest (2,741
images; nobody in it is used for training), scored two ways: the 1,000 pairs of pairsDevTest (500
impostor pairs: FMR 1e-1 and 1e-2) and every pair of those images (3.75 M pairs: FMR 1e-2, 1e-3, 1e-4).
*Train* = the LFW people not in pairsDevTest with at least two images (6,968 images, 1,262 people): the
training set of the faceforge recogniser and the set the SDD-FIQA pseudo-labels are computed on.

Recognisers scoring the pairs: dlib's ResNet (pretrained) and a faceforge MobileFaceNet + ArcFace trained
by the demo recipe ``lfw_mobilefacenet_arcface`` for ``--epochs`` epochs on Train (or ``--model PATH``).
No flip test-time augmentation for either.

Quality sources (rows; :mod:`faceforge.eval.kinds.quality_sources`):
- random rejection (``random=SEED``; mean and spread over ``--random-seeds`` seeds);
- face size: inter-ocular distance (``facesize``) and detection-box size (``facebox``) in the LFW
  photo, from ``landmarks_mtcnn_5pts_250px.csv``;
- sharpness: variance of the Laplacian of the aligned crop;
- embedding norm of the recogniser that scores the pairs;
- SDD-FIQA trained on pseudo-labels from dlib, and from the faceforge model: pseudo-labels on Train, a quality
  regressor trained on them through ``faceforge train lfw_sddfiqa`` (``method=sddfiqa``; MobileFaceNet whose
  encoder is initialised from the faceforge recogniser, the only faceforge checkpoint here, for both label
  sources), which scores Test with ``faceforge quality --model`` (:func:`sddfiqa_test_scores`; runs are kept
  in ``<out>/sddfiqa/<labeller>/run`` and resumed, scores are reused).

Per source: AOC (``1 - area(ERC) / area(random rejection)``, the normalised area over the curve of
:mod:`faceforge.eval.quality`; higher is better, 0 = random) at each FMR with the threshold fixed on all
pairs (ISO/IEC 29794-1) and re-set per reject level (CR-FIQA), reject fractions 0..0.95.  Every source is
scored on the same pairs.  Also: Spearman correlations of the SDD pseudo-labels with sharpness, face size
and the embedding norm on Train (what the labels measure besides identity evidence).

    python benchmarks/quality.py [--out benchmarks_out/quality] [--model PATH] [--epochs 2]
        [--recognisers dlib,faceforge] [--random-seeds 10] [--sdd-epochs 3 --sdd-milestones 2]

``--out`` is reused: the aligned faces, the recogniser's run, the embedding cache, the pseudo-labels and the
regressors found there are not recomputed (the dlib embeddings of ~9.7k faces take about 13 min the first time).

Writes ``<out>/quality.json``, ``<out>/quality.md`` and the ERC plots under ``<out>/eval/``; copies the JSON
and the table to ``benchmarks/results/`` and draws ``docs/quality_erc.png`` (all pairs, FMR 1e-3).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from common import DEVTEST_PAIRS as PAIRS
from common import LFW_LANDMARKS as LANDMARKS
from common import REPO, align_lfw
from scipy.stats import spearmanr

from faceforge.data.files import identity_folders
from faceforge.data.pairs import pairs_people, read_lfw_pairs, resolve_pairs
from faceforge.embedders import embedder_from_spec
from faceforge.embedders.cache import cached_embed_paths
from faceforge.eval.benchmarks import run_benchmarks
from faceforge.eval.kinds.base import list_identity_folder
from faceforge.eval.kinds.quality_sources import (
    QualityInputs,
    parse_quality_sources,
    relative_key,
    score_images,
)
from faceforge.eval.quality import AOC_FORMULA, ERC_MODES, all_pairs, compare_sources
from faceforge.methods.sddfiqa import label_folder

RECIPE = "lfw_mobilefacenet_arcface"
SDD_RECIPE = "lfw_sddfiqa"  # method=sddfiqa on the Train people (faceforge/configs/lfw_sddfiqa.yaml)
#: the regressors' schedule here: a measured epoch took ~25 min on the shared 2-core CPU (see the README)
SDD_EPOCHS = 3
SDD_MILESTONES = (2,)
#: FMR targets per comparison set: pairsDevTest has 500 impostor pairs, so 1e-3 and below are not resolvable
FMRS = {"pairsDevTest": (1e-1, 1e-2), "all pairs": (1e-2, 1e-3, 1e-4)}
CLASSIC = {
    "face size (eyes)": f"facesize={LANDMARKS}",
    "face size (box)": f"facebox={LANDMARKS}",
    "sharpness": "sharpness",
}
log = logging.getLogger("quality")


# --------------------------------------------------------------------------------------------
# data and recognisers
# --------------------------------------------------------------------------------------------


def split_folders(faces: Path, out: Path) -> tuple[Path, Path]:
    """``out/test`` (pairsDevTest people) and ``out/train`` (the others with >= 2 images): identity folders of
    links to the aligned faces, so file keys stay ``<identity>/<file>`` (files are linked, not folders, because
    folder listings do not follow linked folders)."""
    test_people = pairs_people(PAIRS)
    test, train = out / "test", out / "train"
    for folder in (test, train):
        folder.mkdir(parents=True, exist_ok=True)
    for d, images in identity_folders(faces):
        if d.name in test_people:
            target = test / d.name
        elif len(images) >= 2:
            target = train / d.name
        else:
            continue
        if target.is_symlink():  # the layout of an earlier version: a link to the whole folder
            target.unlink()
        target.mkdir(exist_ok=True)
        for f in images:
            link = target / f.name
            if not link.is_symlink():
                link.symlink_to(f.resolve())
    return test, train


def faceforge_model(args: argparse.Namespace, faces: Path, out: Path) -> tuple[Path, dict[str, Any]]:
    """``--model``, or a model trained by the demo recipe on Train (kept in ``out/faceforge_run``)."""
    if args.model:
        return Path(args.model), {"source": "given (--model)"}
    run = out / "faceforge_run"
    model = run / "checkpoints" / "model.pt"
    info = {
        "recipe": RECIPE,
        "epochs": args.epochs,
        "data": "LFW people not in pairsDevTest with >= 2 images",
    }
    if not model.is_file():
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "faceforge", "train", RECIPE, f"data.root={faces}"]
        cmd += [f"optim.epochs={args.epochs}", f"run.dir={run}", "eval.pairs=null", "run.progress=false"]
        log.info("training the faceforge recogniser: %s", " ".join(cmd))
        subprocess.run(cmd, check=True)
        info["train_seconds"] = time.perf_counter() - t0
    return model, info


# --------------------------------------------------------------------------------------------
# SDD-FIQA rows
# --------------------------------------------------------------------------------------------
def sddfiqa_test_scores(
    labeller: Any,
    name: str,
    train: Path,
    test: Path,
    out: Path,
    cache: Path,
    faces: Path | None = None,
    init_model: Path | None = None,
    epochs: int = SDD_EPOCHS,
    milestones: tuple[int, ...] = SDD_MILESTONES,
    overrides: Sequence[str] = (),
) -> tuple[Path | None, dict[str, Any]]:
    """The SDD-FIQA row trained on pseudo-labels from ``labeller``: a ``path,quality`` CSV over Test.

    1. pseudo-labels of Train from ``labeller`` (m = 24, K = 12, seed 0; one-image identities: none in Train);
    2. a quality regressor trained on them through ``faceforge train lfw_sddfiqa`` (``method=sddfiqa``:
       MobileFaceNet with the paper's widths whose encoder is initialised from ``init_model`` with
       ``run.init_partial``, a fresh Flatten -> PReLU -> Dropout -> Linear head, SmoothL1, Adam 1e-4;
       ``epochs`` epochs, lr x0.1 at ``milestones``, then ``overrides`` (more ``KEY=VALUE``: another quality
       network, a training list, a seed); kept in ``out/sddfiqa/<name>/run`` and resumed there);
    3. ``faceforge quality --model <regressor> --images <test> --out <csv>`` (and on Train, to see the fit).

    Without ``faces`` or ``init_model`` only step 1 runs and the row is marked pending.
    """
    folder = out / "sddfiqa" / name
    labels_csv = folder / "train_labels.csv"
    report_file = folder / "train_labels_report.json"
    if report_file.is_file():
        report = json.loads(report_file.read_text())
    else:
        report = label_folder(labeller, train, labels_csv, seed=0, cache_dir=cache, progress=False)
    info: dict[str, Any] = {
        "pseudo_labels": str(labels_csv),
        "pseudo_label_settings": report["settings"],
        "pseudo_label_stats": report["labels"],
        "pseudo_label_seconds": report["seconds"],
    }
    if faces is None or init_model is None:
        info["status"] = "pending: no recognition checkpoint to initialise the regressor from"
        return None, info
    run = folder / "run"
    model = run / "checkpoints" / "model.pt"
    if not model.is_file():
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "faceforge", "train", SDD_RECIPE, f"data.root={faces}"]
        cmd += [f"data.attributes={labels_csv}", f"run.init={init_model}", f"run.dir={run}"]
        cmd += [f"optim.epochs={epochs}", f"optim.milestones=[{','.join(str(m) for m in milestones)}]"]
        cmd += ["run.progress=false", "run.resume=auto", *overrides]
        log.info("training the SDD-FIQA regressor on %s labels: %s", name, " ".join(cmd))
        subprocess.run(cmd, check=True)
        info["train_seconds_this_call"] = time.perf_counter() - t0
    run_report = json.loads((run / "report.json").read_text())
    hist = run_report["history"]
    info["regressor"] = {
        "model": str(model),
        "recipe": SDD_RECIPE,
        "init": str(init_model),
        "epochs": epochs,
        "milestones": list(milestones),
        "steps": run_report["progress"]["global_step"],
        "train_seconds": run_report["train_seconds_this_run"],
        "images_per_s": run_report["images_per_s_this_run"],
        "loss_first_logged": hist[0].get("quality") if hist else None,
        "loss_last_logged": hist[-1].get("quality") if hist else None,
        "mae_last_logged": hist[-1].get("quality/mae") if hist else None,
    }
    scores = {}
    for split, folder_in in (("test", test), ("train", train)):
        csv_path = folder / f"sddfiqa_{name}_labels_{split}.csv"
        if not csv_path.is_file():
            from faceforge.cli.main import main as faceforge

            args = ["quality", "--model", str(model), "--images", str(folder_in), "--out", str(csv_path)]
            if faceforge([*args, "--cache-dir", str(cache), "--no-progress"]) != 0:
                raise SystemExit(f"faceforge quality failed on {folder_in}")
        scores[split] = csv_path
    q_report = json.loads(scores["test"].with_name(scores["test"].stem + "_report.json").read_text())
    info["regressor"]["predicts"] = (q_report["source"].get("model") or {}).get("predicts")
    info["fit"] = regressor_fit(labeller, name, labels_csv, scores, test, folder, cache)
    info["status"] = "done"
    return scores["test"], info


def regressor_fit(
    labeller: Any, name: str, labels_csv: Path, scores: dict[str, Path], test: Path, folder: Path, cache: Path
) -> dict[str, Any]:
    """Spearman correlation of the regressor's scores with the pseudo-labels: on Train (what it was fitted to)
    and on Test (the labeller's pseudo-labels of the Test people, never trained on: does the regressor predict
    them?)."""
    from faceforge.eval.kinds.quality_sources import read_quality_csv

    test_labels = folder / "test_labels.csv"
    if not test_labels.is_file():
        label_folder(labeller, test, test_labels, seed=0, cache_dir=cache, progress=False)
    out: dict[str, Any] = {}
    for split, labels in (("train", labels_csv), ("test", test_labels)):
        lab, _ = read_quality_csv(labels)
        pred, _ = read_quality_csv(scores[split])
        keys = sorted(k for k in lab if lab[k] is not None and pred.get(k) is not None)
        a = np.array([lab[k] for k in keys])
        b = np.array([pred[k] for k in keys])
        out[split] = {
            "spearman": float(spearmanr(a, b).statistic),
            "n": len(keys),
            "pred_mean": float(b.mean()),
            "pred_std": float(b.std()),
            "label_mean": float(a.mean()),
            "label_std": float(a.std()),
        }
    out["test_labels"] = str(test_labels)
    out["note"] = "Test pseudo-labels: same labeller and settings; one-image identities have none"
    return out


def label_correlations(labels_csv: Path, train: Path, norms: dict[str, float]) -> dict[str, float]:
    """Spearman correlation of the pseudo-labels with the classic measures and the labeller's norm on Train."""
    from faceforge.eval.kinds.quality_sources import read_quality_csv

    table, _ = read_quality_csv(labels_csv)
    keys = sorted(k for k, v in table.items() if v is not None)
    paths = [str(train / k) for k in keys]
    labels = np.array([table[k] for k in keys])
    out: dict[str, float] = {}
    for row, spec in CLASSIC.items():
        vals = score_images(parse_quality_sources(spec)[0], QualityInputs(paths, train)).values
        ok = np.isfinite(vals)
        out[row] = float(spearmanr(labels[ok], vals[ok]).statistic)
    n = np.array([norms.get(k, np.nan) for k in keys])
    ok = np.isfinite(n)
    out["embedding norm (labeller)"] = float(spearmanr(labels[ok], n[ok]).statistic)
    return out


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------
def evaluate(
    embedder: Any, name: str, test: Path, extra: dict[str, str], out: Path, cache: Path, pairs: Path = PAIRS
) -> dict[str, Any]:
    """``quality:`` on ``pairs`` (pairsDevTest, or a pairs file over fewer of Test's images) and ``qualityall:`` on
    Test with every source, through run_benchmarks."""
    sources = ["random=0", *CLASSIC.values(), "norm", *extra.values()]
    fmr = {k: "+".join(f"{f:g}" for f in v) for k, v in FMRS.items()}
    specs = [
        f"quality:{pairs}:{test}:{','.join(sources)},fmr={fmr['pairsDevTest']}",
        f"qualityall:{test}:{','.join(sources)},fmr={fmr['all pairs']}",
    ]
    run = run_benchmarks(embedder, specs, out / "eval" / name, cache_dir=cache, flip=False, progress=False)
    recs = list(run["benchmarks"].values())
    return {
        "pairsDevTest": recs[0],
        "all pairs": recs[1],
        "result_file": str(out / "eval" / name / "result.json"),
    }


def random_reference(embedder: Any, test: Path, cache: Path, seeds: int) -> dict[str, Any]:
    """AOC of random rejection over ``seeds`` seeds on the two comparison sets (same pairs as ``evaluate``)."""
    files, ids, _ = list_identity_folder(test, 1)
    paths = [str(f) for f in files]
    emb, _ = cached_embed_paths(embedder, paths, flip=False, cache_dir=cache, progress=False)
    index = {p: i for i, p in enumerate(paths)}
    p1, p2, issame = resolve_pairs(read_lfw_pairs(PAIRS), test, ext=".jpg")
    ia = np.array([index[str(p)] for p in p1])
    ib = np.array([index[str(p)] for p in p2])
    sets = {
        "pairsDevTest": (ia, ib, np.sum(emb[ia] * emb[ib], 1), np.asarray(issame, bool)),
        "all pairs": all_pairs(emb, np.asarray(ids))[:4],
    }
    inputs = QualityInputs(paths, test)
    qual = {
        f"random={s}": score_images(parse_quality_sources(f"random={s}")[0], inputs).values
        for s in range(seeds)
    }
    out: dict[str, Any] = {}
    for set_name, (a, b, cos, y) in sets.items():
        res = compare_sources(cos, y, a, b, qual, fmrs=FMRS[set_name])
        out[set_name] = {
            mode: {
                key: {
                    "mean": float(np.mean([res["aoc"][s][mode][key] for s in qual])),
                    "std": float(np.std([res["aoc"][s][mode][key] for s in qual])),
                }
                for key in res["aoc"]["random=0"][mode]
            }
            for mode in ERC_MODES
        }
    return out


def rows_of(rec: dict[str, Any], labels: dict[str, str]) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{row: {mode: {fmr: AOC}}}`` from a quality record; ``labels`` maps row names to source labels."""
    aoc = rec["quality"]["aoc"]
    return {row: aoc[src] for row, src in labels.items() if src in aoc}


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
ROW_ORDER = [
    "random rejection",
    "face size (eyes)",
    "face size (box)",
    "sharpness",
    "embedding norm",
    "SDD-FIQA, dlib labels",
    "SDD-FIQA, faceforge labels",
]


def _fmt(v: Any, std: float | None = None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" + (f" ± {std:.3f}" if std is not None else "")


#: fewer false non-matches than this at reject 0 make an AOC noise (marked with a dagger in the table)
MIN_ERRORS = 20


def few_errors(rr: dict[str, Any], set_name: str, key: str) -> bool:
    fnmr0 = rr["fnmr_at_reject_0"][set_name][key]
    return fnmr0 is None or round(fnmr0 * rr["pairs"][set_name]["n_genuine_used"]) < MIN_ERRORS


def table(result: dict[str, Any]) -> str:
    recs = result["recognisers"]
    lines = []
    for set_name, fmrs in FMRS.items():
        keys = [f"{f:g}" for f in fmrs]
        head = ["quality source"]
        for r in recs:
            head += [f"{r} AOC@{k}" for k in keys] + [f"{r} mean (fixed)", f"{r} mean (recomputed)"]
        lines.append(
            f"\n**{set_name}** (AOC, threshold fixed on all pairs unless marked; higher is better)\n"
        )
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for row in ROW_ORDER:
            cells = [row]
            for rr in recs.values():
                got = rr["rows"][set_name].get(row)
                mark = {k: " †" if few_errors(rr, set_name, k) else "" for k in keys}
                if row == "random rejection":
                    ref = rr["random"][set_name]
                    cells += [_fmt(ref["fixed"][k]["mean"], ref["fixed"][k]["std"]) + mark[k] for k in keys]
                    cells += [
                        _fmt(np.mean([ref[m][k]["mean"] for k in keys])) for m in ("fixed", "recomputed")
                    ]
                elif got is None:
                    status = (
                        result.get("sddfiqa", rr.get("sddfiqa", {})).get(row, {}).get("status", "not run")
                    )
                    cells += ["pending" if status.startswith("pending") else "n/a"] * (len(keys) + 2)
                else:
                    cells += [_fmt(got["fixed"][k]) + mark[k] for k in keys]
                    for m in ("fixed", "recomputed"):
                        vals = [got[m][k] for k in keys if got[m][k] is not None]
                        cells.append(_fmt(float(np.mean(vals)) if vals else None))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(result: dict[str, Any]) -> str:
    recs = result["recognisers"]
    seeds = result["settings"].get("random_seeds", "several")
    txt = ["# Face image quality on LFW: AOC of each quality source\n", table(result)]
    txt.append(
        f"\nRandom rejection: mean ± std over {seeds} seeds; a source whose AOC lies within that spread of the "
        f"random mean is not distinguishable from random rejection here. †: fewer than {MIN_ERRORS} false "
        "non-matches at reject 0, so FNMR(0) (the AOC's denominator) rests on a handful of pairs and the AOC is "
        "noise. Mean columns average the AOC over the FMRs of the set.\n"
    )
    txt.append("\nFNMR at reject 0 (fixed threshold; false non-matches / genuine pairs):\n")
    for r, rr in recs.items():
        for set_name in FMRS:
            s = rr["fnmr_at_reject_0"][set_name]
            n_gen = rr["pairs"][set_name]["n_genuine_used"]
            txt.append(
                f"- {r}, {set_name}: "
                + ", ".join(f"FMR {k}: {v * 100:.2f} % ({round(v * n_gen)}/{n_gen})" for k, v in s.items())
            )
    txt.append("\nSpearman correlation of the SDD-FIQA pseudo-labels (Train) with other measures:\n")
    for lab, corr in result.get("pseudo_label_correlations", {}).items():
        txt.append(f"- labels from {lab}: " + ", ".join(f"{k} {v:+.3f}" for k, v in corr.items()))
    sdd = result.get("sddfiqa", {})
    if any(i.get("status") == "done" for i in sdd.values()):
        txt.append("\nSDD-FIQA regressors (Spearman correlation of their scores with the pseudo-labels):\n")
        for row, info in sdd.items():
            reg, fit = info.get("regressor", {}), info.get("fit", {})
            if not fit:
                continue
            txt.append(
                f"- {row}: {reg['steps']} steps ({reg['epochs']} epochs) in {reg['train_seconds'] / 60:.0f} min "
                f"({reg['images_per_s']:.1f} img/s); SmoothL1 {reg['loss_first_logged']:.2f} -> "
                f"{reg['loss_last_logged']:.2f}; Train (fitted) rho {fit['train']['spearman']:+.3f}, "
                f"Test (labels of the unseen people) rho {fit['test']['spearman']:+.3f} (n = {fit['test']['n']})"
            )
    txt.append(f"\nAOC: {AOC_FORMULA}.")
    return "\n".join(txt) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks_out/quality")
    ap.add_argument("--model", default=None, help="faceforge recogniser (default: train the demo recipe)")
    ap.add_argument(
        "--epochs", type=int, default=2, help="epochs of the faceforge recogniser when trained here"
    )
    ap.add_argument("--recognisers", default="dlib,faceforge")
    ap.add_argument("--sdd-epochs", type=int, default=SDD_EPOCHS, help="epochs of each SDD-FIQA regressor")
    ap.add_argument(
        "--sdd-milestones",
        type=lambda t: [int(x) for x in t.split(",") if x],
        default=list(SDD_MILESTONES),
        help="epochs at which the regressor's lr drops x0.1 (comma-separated)",
    )
    ap.add_argument("--random-seeds", type=int, default=10)
    ap.add_argument("--report-only", action="store_true", help="rebuild quality.md from <out>/quality.json")
    args = ap.parse_args()
    if args.report_only:
        result = json.loads((Path(args.out) / "quality.json").read_text())
        write_report(result, Path(args.out))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    faces = align_lfw(out)
    test, train = split_folders(faces, out)
    model_path, model_info = faceforge_model(args, faces, out)
    build: dict[str, Callable[[], Any]] = {
        "dlib": lambda: embedder_from_spec("dlib", batch_size=64),
        "faceforge": lambda: embedder_from_spec(str(model_path), batch_size=64),
    }
    wanted = [r for r in args.recognisers.split(",") if r]
    embedders = {r: build[r]() for r in wanted}

    # SDD-FIQA: pseudo-labels from each recogniser on Train; test scores once the regressor exists
    sdd_csv: dict[str, Path] = {}
    sdd_info: dict[str, dict[str, Any]] = {}
    correlations: dict[str, dict[str, float]] = {}
    for r, emb in embedders.items():
        row = f"SDD-FIQA, {r} labels"
        t0 = time.perf_counter()
        csv_path, info = sddfiqa_test_scores(
            emb, r, train, test, out, cache, faces, model_path, args.sdd_epochs, tuple(args.sdd_milestones)
        )
        info["seconds"] = time.perf_counter() - t0
        sdd_info[row] = info
        if csv_path is not None:
            sdd_csv[row] = csv_path
        files, _, _ = list_identity_folder(train, 2)
        raw, _ = cached_embed_paths(
            emb, [str(f) for f in files], flip=False, cache_dir=cache, normalize=False, progress=False
        )
        norms = {
            relative_key(f, train): float(n) for f, n in zip(files, np.linalg.norm(raw, axis=1), strict=True)
        }
        correlations[r] = label_correlations(Path(info["pseudo_labels"]), train, norms)
        log.info("%s pseudo-labels: %s; correlations %s", r, info["pseudo_label_stats"], correlations[r])

    labels = {"random rejection": "random=0", **{k: v for k, v in CLASSIC.items()}, "embedding norm": "norm"}
    labels.update({row: f"csv={p}" for row, p in sdd_csv.items()})
    result: dict[str, Any] = {"recognisers": {}}
    curves: dict[str, dict[str, Any]] = {}
    for r, emb in embedders.items():
        t0 = time.perf_counter()
        recs = evaluate(emb, r, test, {row: f"csv={p}" for row, p in sdd_csv.items()}, out, cache)
        rnd = random_reference(emb, test, cache, args.random_seeds)
        result["recognisers"][r] = {
            "model": emb.describe(),
            "rows": {s: rows_of(recs[s], labels) for s in FMRS},
            "random": rnd,
            "sddfiqa": sdd_info,
            "fnmr_at_reject_0": {
                s: {
                    k: c["fnmr"][0]
                    for k, c in recs[s]["quality"]["sources"]["random=0"]["fixed"]["curves"].items()
                }
                for s in FMRS
            },
            "pairs": {
                s: {k: recs[s]["quality"][k] for k in ("n_pairs_used", "n_genuine_used", "n_impostor_used")}
                for s in FMRS
            },
            "plots": {s: recs[s].get("plots") for s in FMRS},
            "result_file": recs["result_file"],
            "seconds": time.perf_counter() - t0,
        }
        log.info("%s done in %.0f s", r, time.perf_counter() - t0)
        curves[r] = {
            row: recs["all pairs"]["quality"]["sources"][src]["fixed"] for row, src in labels.items()
        }
    result["sddfiqa"] = sdd_info
    result["pseudo_label_correlations"] = correlations
    result["erc_plot"] = str(erc_plot(curves, REPO / "docs" / "quality_erc.png"))
    result["settings"] = {
        "test": "LFW people of pairsDevTest (963 people, 2,741 images), aligned with the shipped MTCNN landmarks",
        "train": "LFW people not in pairsDevTest with >= 2 images (the recogniser's and the pseudo-labels' set)",
        "comparison_sets": {
            "pairsDevTest": "the 1,000 pairs of pairsDevTest",
            "all pairs": "every pair of the Test images (identity = folder)",
        },
        "fmrs": {k: list(v) for k, v in FMRS.items()},
        "flip": "none (both recognisers)",
        "score": "cosine similarity",
        "pair_quality": "min of the two images",
        "reject_fractions": "0, 0.05, ..., 0.95",
        "aoc": AOC_FORMULA,
        "threshold_modes": {
            "fixed": "set once on all pairs (ISO/IEC 29794-1)",
            "recomputed": "re-set per reject level (CR-FIQA)",
        },
        "random_rejection": f"random=SEED source, seeds 0..{args.random_seeds - 1}: mean ± std of the AOC",
        "random_seeds": args.random_seeds,
        "sources": {**labels},
        "faceforge_model": {"path": str(model_path), **model_info},
        "sddfiqa": {
            "recipe": f"faceforge train {SDD_RECIPE} (method=sddfiqa): sddfiqa_mobilefacenet scale 1, encoder "
            "initialised from the faceforge recogniser (run.init_partial), SmoothL1, Adam 1e-4 "
            "(betas 0.9/0.99, eps 1e-6, wd 5e-4), batch 64, bf16 autocast where the CPU has it",
            "epochs": args.sdd_epochs,
            "milestones": list(args.sdd_milestones),
            "labels": "SDD-FIQA pseudo-labels of Train (m=24, K=12, seed 0) from each recogniser",
            "scores": "faceforge quality --model <regressor> on Test: one forward pass, no flip",
        },
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    result["seconds"] = time.perf_counter() - t_start
    write_report(result, out)


#: rows drawn in the summary ERC plot, with their colours
PLOT_ROWS = {
    "random rejection": "tab:gray",
    "face size (eyes)": "tab:orange",
    "sharpness": "tab:red",
    "embedding norm": "tab:purple",
    "SDD-FIQA, dlib labels": "tab:blue",
    "SDD-FIQA, faceforge labels": "tab:green",
}


def erc_plot(curves: dict[str, dict[str, Any]], path: Path, fmr: str = "0.001") -> Path:
    """One small PNG: ERC (fixed threshold, all pairs, FMR ``fmr``) of the main rows, one panel per recogniser."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.6 * len(curves), 3.4), squeeze=False)
    for ax, (rec, rows) in zip(axes[0], curves.items(), strict=True):
        for row, colour in PLOT_ROWS.items():
            if row not in rows:
                continue
            erc = rows[row]
            fnmr = np.array(erc["curves"][fmr]["fnmr"], dtype=float)
            ax.plot(erc["reject_fractions"], 100 * fnmr, marker=".", ms=3, lw=1.2, color=colour, label=row)
        ax.set_title(f"{rec}: all Test pairs, FMR {float(fmr):g}", fontsize=9)
        ax.set_xlabel("fraction of pairs rejected (lowest quality first)", fontsize=8)
        ax.set_ylabel("FNMR (%), threshold fixed on all pairs", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def write_report(result: dict[str, Any], out: Path) -> None:
    """``quality.json`` and ``quality.md`` in ``out``, copied to benchmarks/results/."""
    (out / "quality.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "quality.md").write_text(markdown(result))
    results = REPO / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "quality.json", results / "quality.json")
    shutil.copyfile(out / "quality.md", results / "quality.md")
    print(markdown(result))


if __name__ == "__main__":
    main()
