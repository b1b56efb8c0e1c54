"""Several benchmarks in one run, one embedding pass per image set, through the embedding cache.

Benchmark specs (``kind:ARG[:ARG...]``):

* ``lfw:PAIRS:IMAGES`` - an LFW-format pairs file over a folder of aligned faces: insightface 10-fold
  accuracy on squared L2 distances, VAL@FAR 1e-3, and the whole-ROC numbers on cosine similarity
  (the same protocol as :func:`faceforge.eval.lfw_benchmark.evaluate_pairs`);
* ``bin:FILE`` - an insightface ``.bin`` verification set (faces ``2i`` and ``2i+1`` form pair ``i``),
  same protocol as ``lfw``;
* ``allpairs:IMAGES[:MIN]`` - every pair of an identity-labelled folder (identity = sub-folder),
  identities with at least ``MIN`` images (default 1), TAR@FAR 1e-5 .. 1e-1
  (:func:`faceforge.eval.allpairs.allpairs_verification`);
* ``ident:IMAGES[:K[:MIN]]`` - 1:N identification on such a folder: ``K`` images per identity
  (default 1) in the gallery, the rest are mated probes; identities with at most ``K`` images are
  non-mated probes; only identities with at least ``MIN`` images (default 1) take part.  CMC rank
  1/5/10 and DIR at FPIR 0.01 / 0.1 (:mod:`faceforge.eval.identification`).
* ``quality:PAIRS:IMAGES`` - quality error-versus-reject on an LFW-format pairs file: image quality is
  the L2 norm of the raw (flip-summed) embedding, as MagFace reads it; pair quality is the smaller of
  the two; FNMR at FMR 1e-1 and 1e-2 as the lowest-quality pairs are rejected, with the threshold fixed
  on all pairs (ISO/IEC 29794-1) and re-set per reject level (MagFace / CR-FIQA), both named, with the
  area under each curve (:func:`faceforge.eval.quality.erc`).
* ``bias:IMAGES:LABELLER`` - demographic differential on a folder without identity labels: groups from
  the file names by a registered labeller (``utkface-gender``, ``utkface-race``, ``utkface-age``), every
  within-group pair an impostor pair (up to 200k sampled per group), one global threshold for FMR 1e-3
  and the per-group FMR with the worst/best ratio (:func:`faceforge.eval.bias.impostor_differential`).

Embeddings are flip-summed (optional) and L2-normalised; all image files needed by the folder-based
benchmarks are embedded in one pass.  Every record names its protocol, settings, the model's
``describe()`` and checksums of the data (sha256 of pair / ``.bin`` files; for folders the sha256 of
the sorted ``relative path<TAB>size`` list).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from faceforge.data.binset import load_bin
from faceforge.data.image_io import UnreadableImageError, decode_image_rgb, is_image_file
from faceforge.eval.allpairs import (
    ALLPAIRS_FARS,
    ScoreHistogram,
    allpairs_scores,
    allpairs_verification,
    iter_pair_scores,
)
from faceforge.eval.cache import cached_embed, cached_embed_paths, member_key
from faceforge.eval.identification import cosine_scores, identification, split_gallery_probe
from faceforge.eval.pairs import read_lfw_pairs, resolve_pairs
from faceforge.eval.plots import plot_roc, plot_score_histogram
from faceforge.eval.roc import roc, summarize_verification
from faceforge.eval.verification import kfold_accuracy, val_at_far

__all__ = [
    "BenchmarkSpec",
    "BenchmarkSpecError",
    "folder_checksum",
    "parse_benchmark_spec",
    "run_benchmarks",
    "verification_record",
]

KINDS = {
    "lfw": "lfw:PAIRS:IMAGES",
    "bin": "bin:FILE",
    "allpairs": "allpairs:IMAGES[:MIN_IMAGES_PER_ID]",
    "ident": "ident:IMAGES[:K[:MIN_IMAGES_PER_ID]]",
    "quality": "quality:PAIRS:IMAGES",
    "bias": "bias:IMAGES:LABELLER",
}
BIAS_TARGET_FMR = 1e-3
BIAS_MAX_PAIRS_PER_GROUP = 200_000
QUALITY_FMRS = (1e-1, 1e-2)
RESULT_FORMAT = "faceforge-eval/1"


class BenchmarkSpecError(ValueError):
    """A benchmark spec that cannot be parsed; the message shows the accepted forms."""

    def __init__(self, spec: str, reason: str) -> None:
        forms = "; ".join(KINDS.values())
        super().__init__(f"bad benchmark spec {spec!r}: {reason} (accepted: {forms})")


@dataclass(frozen=True)
class BenchmarkSpec:
    kind: str
    paths: tuple[str, ...]
    k: int = 1
    min_images: int = 1
    spec: str = ""
    name: str = field(default="", compare=False)


def _trailing_ints(parts: list[str], max_n: int, spec: str) -> tuple[list[str], list[int]]:
    """Split off up to ``max_n`` trailing integer fields (paths themselves may contain ':')."""
    nums: list[int] = []
    while parts and len(nums) < max_n and len(parts) > 1 and parts[-1].strip().lstrip("-").isdigit():
        nums.insert(0, int(parts.pop()))
    for v in nums:
        if v < 1:
            raise BenchmarkSpecError(spec, f"numbers must be >= 1, got {v}")
    return parts, nums


def parse_benchmark_spec(spec: str) -> BenchmarkSpec:
    """Parse one ``kind:ARG...`` spec (syntax only; files are checked when the run starts)."""
    kind, sep, rest = spec.partition(":")
    if kind not in KINDS:
        raise BenchmarkSpecError(spec, f"unknown kind {kind!r}")
    if not sep or not rest:
        raise BenchmarkSpecError(spec, f"missing arguments, expected {KINDS[kind]}")
    if kind == "bin":
        return BenchmarkSpec("bin", (rest,), spec=spec, name=f"bin:{Path(rest).stem}")
    if kind in ("lfw", "quality"):
        pairs, sep, images = rest.partition(":")
        if not sep or not pairs or not images:
            raise BenchmarkSpecError(spec, f"expected {kind}:PAIRS:IMAGES (a pairs file and an image folder)")
        return BenchmarkSpec(kind, (pairs, images), spec=spec, name=f"{kind}:{Path(pairs).stem}")
    parts = rest.split(":")
    if kind == "bias":
        from faceforge.eval.bias import GROUP_LABELLERS

        if len(parts) < 2 or parts[-1] not in GROUP_LABELLERS:
            raise BenchmarkSpecError(
                spec, f"expected bias:IMAGES:LABELLER with LABELLER one of {GROUP_LABELLERS.names()}"
            )
        folder = ":".join(parts[:-1])
        return BenchmarkSpec("bias", (folder, parts[-1]), spec=spec, name=f"bias:{parts[-1]}")
    if kind == "allpairs":
        parts, nums = _trailing_ints(parts, 1, spec)
        folder = ":".join(parts)
        if not folder:
            raise BenchmarkSpecError(spec, "missing the image folder")
        mn = nums[0] if nums else 1
        return BenchmarkSpec(
            "allpairs", (folder,), min_images=mn, spec=spec, name=f"allpairs:{Path(folder).name}"
        )
    parts, nums = _trailing_ints(parts, 2, spec)
    folder = ":".join(parts)
    if not folder:
        raise BenchmarkSpecError(spec, "missing the image folder")
    k = nums[0] if nums else 1
    mn = nums[1] if len(nums) > 1 else 1
    return BenchmarkSpec("ident", (folder,), k=k, min_images=mn, spec=spec, name=f"ident:{Path(folder).name}")


def _check_exists(b: BenchmarkSpec) -> None:
    if b.kind in ("lfw", "quality"):
        if not Path(b.paths[0]).is_file():
            raise FileNotFoundError(f"{b.spec}: pairs file not found: {b.paths[0]}")
        if not Path(b.paths[1]).is_dir():
            raise FileNotFoundError(f"{b.spec}: image folder not found: {b.paths[1]}")
    elif b.kind == "bin":
        if not Path(b.paths[0]).is_file():
            raise FileNotFoundError(f"{b.spec}: .bin file not found: {b.paths[0]}")
    elif not Path(b.paths[0]).is_dir():
        raise FileNotFoundError(f"{b.spec}: image folder not found: {b.paths[0]}")


# --------------------------------------------------------------------------------------------
# data checksums and folders
# --------------------------------------------------------------------------------------------
def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def list_identity_folder(root: str | Path, min_images: int = 1) -> tuple[list[Path], list[str], list[Path]]:
    """Image files of ``root/<identity>/<file>`` (sorted), their identities, and every image found.

    Identities with fewer than ``min_images`` images are left out of the first two lists.
    """
    root = Path(root)
    files: list[Path] = []
    labels: list[str] = []
    every: list[Path] = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        imgs = sorted(f for f in d.iterdir() if f.is_file() and is_image_file(f))
        every += imgs
        if len(imgs) >= min_images:
            files += imgs
            labels += [d.name] * len(imgs)
    if not files:
        raise ValueError(f"no identity sub-folders with >= {min_images} images under {root}")
    return files, labels, every


def folder_checksum(root: str | Path, files: Sequence[Path]) -> str:
    """sha256 of the sorted ``relative/path<TAB>size`` lines of ``files`` under ``root``."""
    root = Path(root)
    lines = sorted(f"{f.relative_to(root).as_posix()}\t{f.stat().st_size}" for f in files)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# plots that plots.py does not have
# --------------------------------------------------------------------------------------------
def _plot_group_bars(diff: dict[str, Any], out_png: Path, title: str) -> Path:
    out_png.parent.mkdir(parents=True, exist_ok=True)
    names = list(diff["groups"])
    vals = [diff["groups"][k]["fmr"] for k in names]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    try:
        ax.bar(names, vals, color="tab:red")
        ax.axhline(
            diff["target_fmr"], color="k", linestyle=":", label=f"overall target {diff['target_fmr']:g}"
        )
        ax.set_ylabel("FMR at the global threshold")
        ax.set_title(f"Per-group FMR: {title}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_png)
    finally:
        plt.close(fig)
    return out_png


def plot_cmc(cmc: Sequence[float], out_png: str | Path, title: str = "CMC") -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    try:
        ranks = np.arange(1, len(cmc) + 1)
        ax.plot(ranks, np.asarray(cmc, dtype=np.float64), marker="o", markersize=3, linewidth=1.5)
        ax.set_xlabel("rank")
        ax.set_ylabel("identification rate")
        ax.set_ylim(0.0, 1.01)
        if len(cmc) > 20:
            ax.set_xscale("log")
        ax.set_title(title)
        ax.grid(True, which="both", linestyle=":", linewidth=0.5)
        fig.tight_layout()
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# --------------------------------------------------------------------------------------------
# protocols on embeddings
# --------------------------------------------------------------------------------------------
def _flip_text(flip: bool) -> str:
    return "sum of original and horizontal-flip embeddings" if flip else "none"


def verification_record(
    e1: np.ndarray,
    e2: np.ndarray,
    issame: np.ndarray,
    model: dict[str, Any],
    flip: bool,
    n_folds: int = 10,
    fars: tuple[float, ...] = (1e-3, 1e-2),
    plot_dir: Path | None = None,
    title: str = "",
) -> dict[str, Any]:
    """The pairs protocol of :func:`faceforge.eval.lfw_benchmark.evaluate_pairs` on given embeddings.

    Pairs with an unreadable image (NaN rows) get zero embeddings (cosine 0) and are counted.
    """
    valid = ~(np.isnan(e1).any(1) | np.isnan(e2).any(1))
    if not valid.all():
        e1, e2 = np.nan_to_num(e1), np.nan_to_num(e2)
    cos = np.sum(e1 * e2, axis=1)
    dist = np.sum((e1 - e2) ** 2, axis=1)
    kfold = kfold_accuracy(dist, issame, n_folds=n_folds)
    val = val_at_far(dist, issame, far_target=1e-3, n_folds=n_folds)
    summary = summarize_verification(cos, issame, fars=fars)
    rec: dict[str, Any] = {
        "settings": {
            "protocol": kfold.rule,
            "flip": _flip_text(flip),
            "normalisation": "L2 after flip-sum",
            "distance": "squared L2 on normalised embeddings (= 2 - 2 cos)",
            "roc_score": "cosine similarity",
            "n_folds": n_folds,
            "fold_split": "contiguous (KFold, no shuffle)",
            "threshold_grid": kfold.grid.to_dict(),
            "threshold_choice": "best accuracy on the other folds, smallest threshold on ties",
            "tar_rules": {
                "nearest": "ROC point with FPR closest to the target (insightface IJB)",
                "conservative": "largest TPR with FPR <= target",
            },
            "alignment": model.get("preprocess", {}).get("alignment"),
            "colour": model.get("preprocess", {}).get("colour"),
        },
        "verification": kfold.to_dict(),
        "val_at_far": val.to_dict(),
        "roc": summary,
    }
    rec["verification"]["pairs_with_unreadable_image"] = int((~valid).sum())
    cons = summary["tar_at_far"]["conservative"]
    rec["summary"] = {
        "accuracy": kfold.mean,
        "accuracy_std": kfold.std,
        "val@far=1e-3": val.val_mean,
        "auc": summary["auc"],
        "eer": summary["eer"],
        **{f"tar@far={k}": v["tar"] for k, v in cons.items()},
    }
    if plot_dir is not None:
        fpr, tpr, _ = roc(cos, issame)
        rec["plots"] = {
            "roc": str(
                plot_roc(
                    {f"acc {kfold.mean * 100:.2f}%": (fpr, tpr)}, plot_dir / "roc.png", title=f"ROC: {title}"
                )
            ),
            "scores": str(
                plot_score_histogram(cos, issame, plot_dir / "scores.png", title=f"Cosine scores: {title}")
            ),
        }
    return rec


def _allpairs_record(
    emb: np.ndarray, labels: np.ndarray, plot_dir: Path | None, title: str, exact_max_n: int = 3000
) -> dict[str, Any]:
    res = allpairs_verification(emb, labels, fars=ALLPAIRS_FARS, exact_max_n=exact_max_n)
    cons = res["tar_at_far"]["conservative"]
    rec: dict[str, Any] = {
        "allpairs": res,
        "summary": {
            "auc": res["auc"],
            "eer": res["eer"],
            **{f"tar@far={k}": v["tar"] for k, v in cons.items()},
        },
    }
    if plot_dir is not None:
        if res["mode"] == "exact":
            s, same = allpairs_scores(emb, labels)
            fpr, tpr, _ = roc(s, same)
            hist_s, hist_same = s, same
        else:
            hist = ScoreHistogram()
            for s, same in iter_pair_scores(emb, labels):
                hist.add(s, same)
            fpr, tpr, _ = hist.roc()
            # the histogram plot uses every genuine pair and a seeded sample of impostors
            hist_s, hist_same = allpairs_scores(emb, labels, impostor_sample=200_000, seed=0)
        rec["plots"] = {
            "roc": str(
                plot_roc({f"AUC {res['auc']:.4f}": (fpr, tpr)}, plot_dir / "roc.png", title=f"ROC: {title}")
            ),
            "scores": str(
                plot_score_histogram(
                    hist_s, hist_same, plot_dir / "scores.png", title=f"Cosine scores: {title}"
                )
            ),
        }
    return rec


def _ident_record(
    emb: np.ndarray, labels: np.ndarray, k: int, plot_dir: Path | None, title: str, seed: int = 0
) -> dict[str, Any]:
    split = split_gallery_probe(labels, k=k, seed=seed, few="probe")
    if split.gallery_idx.size == 0:
        raise ValueError(f"{title}: no identity has more than K={k} images, so the gallery is empty")
    g, p = split.gallery_idx, split.probe_idx
    res = identification(emb[p], labels[p], emb[g], labels[g], ranks=(1, 5, 10), fpirs=(0.01, 0.1))
    rec: dict[str, Any] = {
        "split": split.to_dict(),
        "identification": res,
        "summary": {f"rank-{r}": v for r, v in res["closed_set"]["rank_k"].items()},
    }
    if res["open_set"] is not None:
        for f, v in res["open_set"]["dir_at_fpir"].items():
            rec["summary"][f"dir@fpir={f}"] = v["dir"]
    if plot_dir is not None:
        s = cosine_scores(emb[p], emb[g])
        same = labels[p][:, None] == labels[g][None, :]
        rec["plots"] = {
            "cmc": str(plot_cmc(res["closed_set"]["cmc"], plot_dir / "cmc.png", title=f"CMC: {title}")),
            "scores": str(
                plot_score_histogram(
                    s.ravel(), same.ravel(), plot_dir / "scores.png", title=f"Probe-gallery cosine: {title}"
                )
            ),
        }
    return rec


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
def _unique_names(specs: list[BenchmarkSpec]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for b in specs:
        seen[b.name] = seen.get(b.name, 0) + 1
        names.append(b.name if seen[b.name] == 1 else f"{b.name}#{seen[b.name]}")
    return names


def _embed_bin(
    embedder: Any,
    path: Path,
    flip: bool,
    cache_dir: Any,
    batch_size: int,
    progress: bool,
    stats: dict[str, int],
) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    sha = file_sha256(path)
    blobs, issame = load_bin(path)
    keys = [member_key(sha, i) for i in range(len(blobs))]

    def load(i: int) -> tuple[str | None, Callable[[], tuple[np.ndarray | None, str]]]:
        def decode() -> tuple[np.ndarray | None, str]:
            where = f"{path}[image {i}]"
            try:
                return decode_image_rgb(blobs[i], where), where
            except UnreadableImageError as exc:
                return None, f"{exc.path}: {exc.reason}"

        return keys[i], decode

    emb, failed = cached_embed(
        embedder,
        len(blobs),
        keys,
        load,
        flip=flip,
        cache_dir=cache_dir,
        batch_size=batch_size,
        progress=progress,
        stats=stats,
    )
    return emb, np.asarray(issame, dtype=bool), failed, sha


def _pairs_benchmark_info(b: BenchmarkSpec, plan: dict[str, Any], unreadable: list[str]) -> dict[str, Any]:
    """Dataset description of a pairs-file benchmark (``lfw``, ``quality``), with checksums."""
    pairs_file, images = b.paths
    return {
        "kind": "lfw-pairs",
        "pairs_file": str(pairs_file),
        "pairs_sha256": file_sha256(pairs_file),
        "images_dir": str(images),
        "images_sha256": folder_checksum(images, [Path(p) for p in plan["unique_files"]]),
        "images_checksum_rule": "sha256 of sorted 'relative path<TAB>size' lines of the images used",
        "n_pairs": plan["n_pairs"],
        "n_images": len(plan["unique_files"]),
        "unreadable_images": unreadable,
    }


def _quality_record(
    e1: np.ndarray,
    e2: np.ndarray,
    q1: np.ndarray,
    q2: np.ndarray,
    issame: np.ndarray,
    plot_dir: Path | None,
    title: str,
) -> dict[str, Any]:
    from faceforge.eval.plots import plot_erc
    from faceforge.eval.quality import erc

    ok = ~(np.isnan(e1).any(1) | np.isnan(e2).any(1))
    cos = np.sum(e1[ok] * e2[ok], axis=1)
    y = np.asarray(issame, dtype=bool)[ok]
    res = {
        mode: erc(cos, y, q1[ok], q2[ok], fmrs=QUALITY_FMRS, mode=mode) for mode in ("fixed", "recomputed")
    }
    key = f"{QUALITY_FMRS[-1]:g}"
    summary: dict[str, Any] = {}
    for mode, r in res.items():
        fnmr = r["curves"][key]["fnmr"]
        i20 = int(np.argmin(np.abs(np.asarray(r["reject_fractions"]) - 0.2)))
        summary[f"fnmr@fmr={key} reject 0 ({mode})"] = fnmr[0]
        summary[f"fnmr@fmr={key} reject 20% ({mode})"] = fnmr[i20]
        summary[f"area_under_erc@fmr={key} ({mode})"] = r["area_under_erc"][key]
    out: dict[str, Any] = {
        "quality": res,
        "summary": summary,
        "pairs_with_unreadable_image": int((~ok).sum()),
    }
    if plot_dir is not None:
        curves = {
            f"FMR {f} ({mode})": (r["reject_fractions"], r["curves"][f]["fnmr"])
            for mode, r in res.items()
            for f in r["curves"]
        }
        out["plots"] = {"erc": str(plot_erc(curves, plot_dir / "erc.png", title=f"ERC: {title}"))}
    return out


def run_benchmarks(
    embedder: Any,
    specs: Sequence[str | BenchmarkSpec],
    out_dir: str | Path | None,
    cache_dir: str | Path | None = None,
    flip: bool = True,
    n_folds: int = 10,
    image_ext: str = ".jpg",
    batch_size: int = 128,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every benchmark; returns the run record (also ``out_dir/result.json`` when ``out_dir`` is given).

    Run record: ``format``, ``model`` (``describe()``), ``settings`` (flip, normalisation, cache),
    ``benchmarks`` ``{name: record}`` in spec order, ``embedding`` (images embedded vs taken from the
    cache), ``seconds``.  Each benchmark record has ``name``, ``spec``, ``kind``, ``benchmark``
    (dataset description with checksums), ``settings``, ``summary`` (headline numbers, all floats),
    the protocol's full output, ``plots`` (PNG paths) and ``seconds``.  For compatibility with
    single-benchmark result files, the first benchmark's ``benchmark``, protocol output and ``plots``
    are also copied to the top level, and its settings are merged into the top-level ``settings``.
    """
    t_run = time.perf_counter()
    parsed = [s if isinstance(s, BenchmarkSpec) else parse_benchmark_spec(s) for s in specs]
    if not parsed:
        raise ValueError("no benchmark given")
    for b in parsed:
        _check_exists(b)
    names = _unique_names(parsed)
    model = embedder.describe()
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    stats: dict[str, int] = {}

    # 1. plan: which image files each folder-based benchmark needs
    plans: list[dict[str, Any]] = []
    all_paths: dict[str, int] = {}
    for b in parsed:
        plan: dict[str, Any] = {}
        if b.kind in ("lfw", "quality"):
            pairs = read_lfw_pairs(b.paths[0])
            p1, p2, issame = resolve_pairs(pairs, b.paths[1], ext=image_ext)
            plan.update(p1=[str(p) for p in p1], p2=[str(p) for p in p2], issame=issame, n_pairs=len(pairs))
            files = sorted(set(plan["p1"]) | set(plan["p2"]))
        elif b.kind == "bias":
            from faceforge.eval.bias import GROUP_LABELLERS

            label_of = GROUP_LABELLERS.get(b.paths[1])
            every = sorted(f for f in Path(b.paths[0]).rglob("*") if f.is_file() and is_image_file(f))
            named = [(f, label_of(f.name)) for f in every]
            kept = [(str(f), g) for f, g in named if g is not None]
            if not kept:
                raise ValueError(f"{b.spec}: no file name under {b.paths[0]} gives a group with {b.paths[1]}")
            files = [f for f, _ in kept]
            plan.update(files=files, groups=np.array([g for _, g in kept], dtype=object), every=every)
            plan["unlabelled"] = len(every) - len(kept)
        elif b.kind in ("allpairs", "ident"):
            fl, labels, every = list_identity_folder(b.paths[0], b.min_images)
            files = [str(f) for f in fl]
            plan.update(files=files, labels=np.asarray(labels), every=every)
        else:
            files = []
        plan["unique_files"] = files
        for f in files:
            all_paths.setdefault(f, len(all_paths))
        plans.append(plan)

    # 2. one embedding pass over every image file
    t0 = time.perf_counter()
    path_list = list(all_paths)
    raw_all, failed_all = (
        cached_embed_paths(
            embedder,
            path_list,
            flip=flip,
            cache_dir=cache_dir,
            batch_size=batch_size,
            progress=progress,
            stats=stats,
            normalize=False,
        )
        if path_list
        else (np.zeros((0, embedder.embedding_size), np.float32), [])
    )
    # raw norms feed the quality protocol; every other protocol uses the L2-normalised embeddings
    norms_all = np.linalg.norm(raw_all, axis=1)
    emb_all = raw_all / np.maximum(norms_all, 1e-12)[:, None]
    embed_seconds = time.perf_counter() - t0

    def rows(paths: Sequence[str]) -> np.ndarray:
        return emb_all[[all_paths[p] for p in paths]] if paths else np.zeros((0, embedder.embedding_size))

    def failed_in(paths: Sequence[str]) -> list[str]:
        s = set(paths)
        return [f for f in failed_all if f.split(": ", 1)[0] in s]

    # 3. protocols
    records: dict[str, dict[str, Any]] = {}
    for b, name, plan in zip(parsed, names, plans, strict=True):
        tb = time.perf_counter()
        plot_dir = out / _slug(name) if out is not None else None
        rec: dict[str, Any] = {"name": name, "spec": b.spec, "kind": b.kind}
        if b.kind == "lfw":
            rec["benchmark"] = _pairs_benchmark_info(b, plan, failed_in(plan["unique_files"]))
            v = verification_record(
                rows(plan["p1"]),
                rows(plan["p2"]),
                plan["issame"],
                model,
                flip,
                n_folds,
                plot_dir=plot_dir,
                title=name,
            )
            rec.update(v)
        elif b.kind == "quality":
            rec["benchmark"] = _pairs_benchmark_info(b, plan, failed_in(plan["unique_files"]))
            q1 = norms_all[[all_paths[p] for p in plan["p1"]]]
            q2 = norms_all[[all_paths[p] for p in plan["p2"]]]
            rec.update(
                _quality_record(rows(plan["p1"]), rows(plan["p2"]), q1, q2, plan["issame"], plot_dir, name)
            )
            rec["settings"] = {
                "protocol": "error-versus-reject",
                "quality": "L2 norm of the raw embedding (flip sum when flip is on)",
                "pair_quality": "min of the two images",
                "score": "cosine similarity",
                "flip": _flip_text(flip),
                "fmrs": list(QUALITY_FMRS),
                "threshold_modes": {
                    "fixed": "threshold set once on all pairs (ISO/IEC 29794-1)",
                    "recomputed": "threshold re-set on the remaining pairs per reject level (MagFace, CR-FIQA)",
                },
                "alignment": model.get("preprocess", {}).get("alignment"),
                "colour": model.get("preprocess", {}).get("colour"),
                "unreadable_images": "pairs left out",
            }
        elif b.kind == "bias":
            from faceforge.eval.bias import impostor_differential, within_group_impostor_pairs

            emb = rows(plan["files"])
            ok = ~np.isnan(emb).any(1)
            groups = plan["groups"][ok]
            i, j, pair_groups = within_group_impostor_pairs(groups, BIAS_MAX_PAIRS_PER_GROUP, seed=0)
            e = emb[ok]
            scores = np.einsum("ij,ij->i", e[i], e[j])
            diff = impostor_differential(scores, pair_groups, BIAS_TARGET_FMR)
            rec["benchmark"] = {
                "kind": "groups-from-file-names",
                "images_dir": str(b.paths[0]),
                "images_sha256": folder_checksum(b.paths[0], plan["every"]),
                "labeller": b.paths[1],
                "n_images": len(plan["files"]),
                "n_images_without_group": plan["unlabelled"],
                "unreadable_images": failed_in(plan["files"]),
                "images_per_group": {str(k): int(np.count_nonzero(groups == k)) for k in np.unique(groups)},
            }
            rec["bias"] = diff
            rec["summary"] = {
                "overall_fmr": diff["overall_fmr"],
                **{f"fmr {k}": v["fmr"] for k, v in diff["groups"].items()},
            }
            rec["summary"]["fmr_ratio_worst_best"] = diff["fmr_ratio"]
            rec["settings"] = {
                "protocol": diff["protocol"],
                "pairs": f"within-group pairs, all or {BIAS_MAX_PAIRS_PER_GROUP} sampled per group (seed 0)",
                "identity_assumption": "no identity labels: every pair counted as an impostor pair",
                "threshold_rule": f"one global threshold, FMR <= {BIAS_TARGET_FMR} on all pairs pooled",
                "score": "cosine similarity",
                "flip": _flip_text(flip),
                "alignment": model.get("preprocess", {}).get("alignment"),
                "colour": model.get("preprocess", {}).get("colour"),
            }
            if plot_dir is not None:
                rec["plots"] = {
                    "fmr_by_group": str(_plot_group_bars(diff, plot_dir / "fmr_by_group.png", name))
                }
        elif b.kind == "bin":
            emb, issame, failed, sha = _embed_bin(
                embedder, Path(b.paths[0]), flip, cache_dir, batch_size, progress, stats
            )
            rec["benchmark"] = {
                "kind": "insightface-bin",
                "bin_file": str(b.paths[0]),
                "bin_sha256": sha,
                "n_pairs": int(issame.size),
                "n_images": len(emb),
                "unreadable_images": failed,
            }
            rec.update(
                verification_record(
                    emb[0::2], emb[1::2], issame, model, flip, n_folds, plot_dir=plot_dir, title=name
                )
            )
        else:
            files, labels = plan["files"], plan["labels"]
            emb = rows(files)
            ok = ~np.isnan(emb).any(1)
            base = {
                "images_dir": str(b.paths[0]),
                "images_sha256": folder_checksum(b.paths[0], plan["every"]),
                "images_checksum_rule": "sha256 of sorted 'relative path<TAB>size' lines of every image in the folder",
                "identity_rule": "sub-folder name",
                "min_images_per_identity": b.min_images,
                "n_images": len(files),
                "n_identities": int(np.unique(labels).size),
                "unreadable_images": failed_in(files),
                "n_images_used": int(ok.sum()),
            }
            common = {
                "flip": _flip_text(flip),
                "normalisation": "L2 after flip-sum",
                "score": "cosine similarity",
                "alignment": model.get("preprocess", {}).get("alignment"),
                "colour": model.get("preprocess", {}).get("colour"),
                "unreadable_images": "left out",
            }
            if b.kind == "allpairs":
                rec["benchmark"] = {"kind": "allpairs", **base}
                rec.update(_allpairs_record(emb[ok], labels[ok], plot_dir, name))
                rec["settings"] = {
                    "protocol": "allpairs",
                    **common,
                    "pairs": "every unordered pair i < j; genuine when the identities match",
                    "mode": rec["allpairs"]["mode"],
                    "fars": list(ALLPAIRS_FARS),
                    "threshold_rule": {
                        "nearest": "ROC point with FAR closest to the target (insightface IJB)",
                        "conservative": "largest TAR with FAR <= target",
                    },
                }
            else:
                rec["benchmark"] = {"kind": "identification", **base}
                rec.update(_ident_record(emb[ok], labels[ok], b.k, plot_dir, name))
                rec["settings"] = {
                    "protocol": "closed-set CMC + open-set DIR@FPIR",
                    **common,
                    "gallery": f"{b.k} image(s) per identity chosen by a seeded permutation (seed 0)",
                    "probes": "the other images; identities with <= K images are non-mated probes",
                    "gallery_score": "max over an identity's gallery entries",
                    "rank_ties": "pessimistic",
                    "threshold_rule": "smallest threshold with FPIR <= target on non-mated maxima",
                }
        rec["model"] = model
        rec["seconds"] = time.perf_counter() - tb
        records[name] = rec

    run: dict[str, Any] = {
        "format": RESULT_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": model,
        "settings": {
            "flip": _flip_text(flip),
            "normalisation": "L2 after flip-sum",
            "cache_dir": None if cache_dir is None else str(cache_dir),
        },
        "embedding": {
            "images_embedded": stats.get("computed", 0),
            "images_from_cache": stats.get("cached", 0),
            "seconds": embed_seconds,
        },
        "benchmarks": records,
    }
    first = records[names[0]]
    run["settings"] = {**first.get("settings", {}), **run["settings"]}
    for key, value in first.items():
        if key not in ("name", "spec", "kind", "model", "settings", "summary", "seconds"):
            run.setdefault(key, value)
    run["seconds"] = time.perf_counter() - t_run
    if out is not None:
        (out / "result.json").write_text(json.dumps(run, indent=2))
    return run
