"""Pair-based kinds: ``lfw:PAIRS:IMAGES``, ``bin:FILE``, ``quality:PAIRS:IMAGES`` and ``qualityall:IMAGES``.

* ``lfw`` - an LFW-format pairs file over a folder of aligned faces: insightface 10-fold accuracy on
  squared L2 distances, VAL@FAR 1e-3, and the whole-ROC numbers on cosine similarity;
* ``bin`` - an insightface ``.bin`` verification set (faces ``2i`` and ``2i+1`` form pair ``i``),
  the same protocol as ``lfw``;
* ``quality`` - error-versus-reject on an LFW-format pairs file, ``qualityall`` - the same on every pair
  of an identity-labelled folder: image quality from one or several sources (default: the L2 norm of
  the raw, flip-summed embedding, as MagFace reads it; :mod:`faceforge.eval.kinds.quality_sources`); pair
  quality is the smaller of the two; FNMR at FMR 1e-2, 1e-3, 1e-4 as the lowest-quality pairs are
  rejected, with the threshold fixed on all pairs (ISO/IEC 29794-1) and re-set per reject level
  (MagFace / CR-FIQA), both named, with the area under each curve and the AOC
  (:func:`faceforge.eval.quality.erc`; spec options in :mod:`faceforge.eval.kinds.quality_common`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from faceforge.data.binset import load_bin
from faceforge.data.image_io import UnreadableImageError, decode_image_rgb
from faceforge.data.pairs import read_lfw_pairs, resolve_pairs
from faceforge.embedders.cache import cached_embed, member_key
from faceforge.eval.kinds.base import (
    BENCHMARK_KINDS,
    CHECKSUM_RULE_ALL,
    CHECKSUM_RULE_USED,
    DEFAULT_MIN_VALID_FRACTION,
    NORMALISATION,
    BenchmarkKind,
    BenchmarkSpec,
    BenchmarkSpecError,
    RunContext,
    TooFewValidError,
    check_valid,
    file_sha256,
    flip_text,
    folder_checksum,
    list_identity_folder,
    require_dir,
    require_file,
    two_paths,
)
from faceforge.eval.kinds.quality_common import (
    check_sources,
    max_pairs,
    parse_options,
    run_quality,
    split_options,
)
from faceforge.eval.plots import plot_roc, plot_score_histogram
from faceforge.eval.quality import DEFAULT_FMRS, all_pairs
from faceforge.eval.roc import roc, roc_points, summarize_verification
from faceforge.eval.verification import kfold_accuracy, val_at_far

__all__ = ["QUALITY_FMRS", "verification_record"]

QUALITY_FMRS = DEFAULT_FMRS  # 1e-2, 1e-3, 1e-4: default of the quality kinds (fmr= in the spec)


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
    min_valid_fraction: float = DEFAULT_MIN_VALID_FRACTION,
    failed: Sequence[str] = (),
) -> dict[str, Any]:
    """The pairs protocol of the ``lfw`` and ``bin`` kinds on the embeddings of each pair's two faces.

    Pairs with an unreadable image (NaN rows) are left out of every number and counted in ``validity``;
    fewer than ``min_valid_fraction`` scorable pairs (or none, or fewer than ``n_folds``) raise
    :class:`~faceforge.eval.kinds.base.TooFewValidError` naming the benchmark (``title``) and the first
    unreadable image of ``failed``.
    """
    valid = ~(np.isnan(e1).any(1) | np.isnan(e2).any(1))
    name = title or "pairs benchmark"
    validity = check_valid(name, int(valid.sum()), int(valid.size), "pairs", min_valid_fraction, failed)
    if int(valid.sum()) < n_folds:
        raise TooFewValidError(
            f"{name}: {int(valid.sum())} scorable pairs cannot be split into {n_folds} folds; fix the images"
        )
    e1, e2, issame = e1[valid], e2[valid], np.asarray(issame, dtype=bool)[valid]
    cos = np.sum(e1 * e2, axis=1)
    dist = np.sum((e1 - e2) ** 2, axis=1)
    kfold = kfold_accuracy(dist, issame, n_folds=n_folds)
    val = val_at_far(dist, issame, far_target=1e-3, n_folds=n_folds)
    summary = summarize_verification(cos, issame, fars=fars)
    rec: dict[str, Any] = {
        "settings": {
            "protocol": kfold.rule,
            "flip": flip_text(flip),
            "normalisation": NORMALISATION,
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
            "unreadable_images": "pairs left out",
            "min_valid_fraction": float(min_valid_fraction),
        },
        "verification": kfold.to_dict(),
        "val_at_far": val.to_dict(),
        "roc": summary,
        "validity": validity,
    }
    rec["verification"]["pairs_with_unreadable_image"] = int((~valid).sum())
    rec["verification"]["pairs_scored"] = int(valid.sum())
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
        rec["curves"] = {"roc": roc_points(fpr, tpr)}
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


class _PairsFileKind(BenchmarkKind):
    """``KIND:PAIRS:IMAGES``: an LFW-format pairs file over a folder of aligned faces."""

    def parse(self, spec: str, rest: str) -> BenchmarkSpec:
        pairs, images = two_paths(self.name, spec, rest, "PAIRS:IMAGES (a pairs file and an image folder)")
        return self.spec_of(pairs, images, spec)

    def spec_of(self, pairs: str | Path, images: str | Path, spec: str | None = None) -> BenchmarkSpec:
        """The spec of a pairs file and an image folder given apart (either path may contain ':')."""
        pairs, images = str(pairs), str(images)
        return BenchmarkSpec(
            self.name,
            (pairs, images),
            spec=spec or f"{self.name}:{pairs}:{images}",
            name=f"{self.name}:{Path(pairs).stem}",
        )

    def check(self, b: BenchmarkSpec) -> None:
        require_file(b, b.paths[0], "pairs file")
        require_dir(b, b.paths[1])

    def plan(self, b: BenchmarkSpec, image_ext: str) -> dict[str, Any]:
        pairs = read_lfw_pairs(b.paths[0])
        p1, p2, issame = resolve_pairs(pairs, b.paths[1], ext=image_ext)
        plan: dict[str, Any] = {
            "p1": [str(p) for p in p1],
            "p2": [str(p) for p in p2],
            "issame": issame,
            "n_pairs": len(pairs),
        }
        plan["unique_files"] = sorted(set(plan["p1"]) | set(plan["p2"]))
        return plan

    @staticmethod
    def info(b: BenchmarkSpec, plan: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
        """Dataset description with checksums."""
        pairs_file, images = b.paths
        return {
            "kind": "lfw-pairs",
            "pairs_file": str(pairs_file),
            "pairs_sha256": file_sha256(pairs_file),
            "images_dir": str(images),
            "images_sha256": folder_checksum(images, [Path(p) for p in plan["unique_files"]]),
            "images_checksum_rule": CHECKSUM_RULE_USED,
            "n_pairs": plan["n_pairs"],
            "n_images": len(plan["unique_files"]),
            "unreadable_images": ctx.failed_in(plan["unique_files"]),
        }


@BENCHMARK_KINDS.register("lfw")
class LfwPairsKind(_PairsFileKind):
    name = "lfw"
    usage = "lfw:PAIRS:IMAGES"

    def run(
        self, b: BenchmarkSpec, plan: dict[str, Any], ctx: RunContext, plot_dir: Path | None
    ) -> dict[str, Any]:
        rec = {"benchmark": self.info(b, plan, ctx)}
        rec.update(
            verification_record(
                ctx.rows(plan["p1"]),
                ctx.probes(plan["p2"]),
                plan["issame"],
                ctx.model,
                ctx.flip,
                ctx.n_folds,
                plot_dir=plot_dir,
                title=ctx.name,
                min_valid_fraction=ctx.min_valid_fraction,
                failed=rec["benchmark"]["unreadable_images"],
            )
        )
        return rec


@BENCHMARK_KINDS.register("bin")
class BinKind(BenchmarkKind):
    name = "bin"
    usage = "bin:FILE"

    def parse(self, spec: str, rest: str) -> BenchmarkSpec:
        return BenchmarkSpec("bin", (rest,), spec=spec, name=f"bin:{Path(rest).stem}")

    def check(self, b: BenchmarkSpec) -> None:
        require_file(b, b.paths[0], ".bin file")

    def run(
        self, b: BenchmarkSpec, plan: dict[str, Any], ctx: RunContext, plot_dir: Path | None
    ) -> dict[str, Any]:
        path = Path(b.paths[0])
        sha = file_sha256(path)
        blobs, issame_list = load_bin(path)
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
            ctx.embedder,
            len(blobs),
            keys,
            load,
            flip=ctx.flip,
            cache_dir=ctx.cache_dir,
            batch_size=ctx.batch_size,
            progress=ctx.progress,
            stats=ctx.stats,
        )
        issame = np.asarray(issame_list, dtype=bool)
        rec: dict[str, Any] = {
            "benchmark": {
                "kind": "insightface-bin",
                "bin_file": str(path),
                "bin_sha256": sha,
                "n_pairs": int(issame.size),
                "n_images": len(emb),
                "unreadable_images": failed,
            }
        }
        rec.update(
            verification_record(
                emb[0::2],
                emb[1::2],
                issame,
                ctx.model,
                ctx.flip,
                ctx.n_folds,
                plot_dir=plot_dir,
                title=ctx.name,
                min_valid_fraction=ctx.min_valid_fraction,
                failed=failed,
            )
        )
        return rec


@BENCHMARK_KINDS.register("quality")
class QualityKind(_PairsFileKind):
    """Error-versus-reject on a pairs file; quality sources and settings in :mod:`.quality_common`."""

    name = "quality"
    usage = "quality:PAIRS:IMAGES[:SOURCES]"

    def parse(self, spec: str, rest: str) -> BenchmarkSpec:
        parts, field = split_options(spec, rest.split(":"), 2)
        pairs, images = two_paths(self.name, spec, ":".join(parts), "PAIRS:IMAGES[:SOURCES]")
        options = parse_options(spec, field, ("fmr",))
        return BenchmarkSpec(
            self.name, (pairs, images), spec=spec, name=f"{self.name}:{Path(pairs).stem}", options=options
        )

    def check(self, b: BenchmarkSpec) -> None:
        super().check(b)
        check_sources(b)

    def run(
        self, b: BenchmarkSpec, plan: dict[str, Any], ctx: RunContext, plot_dir: Path | None
    ) -> dict[str, Any]:
        files = plan["unique_files"]
        index = {f: i for i, f in enumerate(files)}
        ia = np.array([index[p] for p in plan["p1"]], dtype=np.int64)
        ib = np.array([index[p] for p in plan["p2"]], dtype=np.int64)
        emb = ctx.rows(files)
        cos = np.sum(emb[ia] * emb[ib], axis=1, dtype=np.float64)
        pair_settings = {"pairs": "the pairs file"}
        return run_quality(
            b,
            ctx,
            files,
            b.paths[1],
            ia,
            ib,
            cos,
            np.asarray(plan["issame"], dtype=bool),
            self.info(b, plan, ctx),
            pair_settings,
            plot_dir,
        )


@BENCHMARK_KINDS.register("qualityall")
class QualityAllPairsKind(BenchmarkKind):
    """Error-versus-reject on every pair of an identity-labelled folder (identity = sub-folder)."""

    name = "qualityall"
    usage = "qualityall:IMAGES[:SOURCES]"

    def parse(self, spec: str, rest: str) -> BenchmarkSpec:
        parts, field = split_options(spec, rest.split(":"), 1)
        folder = ":".join(parts)
        if not folder:
            raise BenchmarkSpecError(spec, "missing the image folder")
        options = parse_options(spec, field, ("fmr", "maxpairs"))
        return BenchmarkSpec(
            self.name, (folder,), spec=spec, name=f"{self.name}:{Path(folder).name}", options=options
        )

    def check(self, b: BenchmarkSpec) -> None:
        require_dir(b, b.paths[0])
        check_sources(b)

    def plan(self, b: BenchmarkSpec, image_ext: str) -> dict[str, Any]:
        fl, labels, every = list_identity_folder(b.paths[0], 1)
        files = [str(f) for f in fl]
        return {"unique_files": files, "labels": np.asarray(labels), "every": every}

    def run(
        self, b: BenchmarkSpec, plan: dict[str, Any], ctx: RunContext, plot_dir: Path | None
    ) -> dict[str, Any]:
        files = plan["unique_files"]
        emb = ctx.rows(files)
        good = ~np.isnan(emb).any(1)
        validity = check_valid(ctx.name, int(good.sum()), int(good.size), "images", ctx.min_valid_fraction,
                               ctx.failed_in(files))  # fmt: skip
        ok = np.flatnonzero(good)
        ia, ib, cos, same, pair_info = all_pairs(emb[ok], plan["labels"][ok], max_pairs=max_pairs(b))
        info = {
            "kind": "identity-folder all pairs",
            "images_dir": str(b.paths[0]),
            "images_sha256": folder_checksum(b.paths[0], plan["every"]),
            "images_checksum_rule": CHECKSUM_RULE_ALL,
            "identity_rule": "sub-folder name",
            "n_images": len(files),
            "n_identities": int(np.unique(plan["labels"]).size),
            "unreadable_images": ctx.failed_in(files),
            **pair_info,
        }
        pair_settings = {"pairs": pair_info["pairs"], "unreadable_images_in_pairs": "left out before pairing"}
        return run_quality(
            b,
            ctx,
            [files[i] for i in ok],
            b.paths[0],
            ia,
            ib,
            cos,
            same,
            info,
            pair_settings,
            plot_dir,
            validity,
        )
