"""Age kinds: ``fgnet:IMAGES``, ``cacdvs:PAIRS:IMAGES`` and ``agegap:PAIRS:IMAGES``.

* ``fgnet`` - FG-NET leave-one-image-out rank-1 on a folder of aligned faces named the FG-NET way
  (``001A02.JPG``: subject 001, age 2); rank-1 also per probe-age band
  (:func:`faceforge.eval.age.fgnet_leave_one_out`).  Files whose names do not parse are listed and
  left out.
* ``cacdvs`` - CACD-VS 10-fold accuracy over a list of ``image_a image_b label`` lines (paths
  relative to ``IMAGES``, label 1 = same person), in the official fold order
  (:func:`faceforge.eval.age.cacd_vs_accuracy`).
* ``agegap`` - age-gap verification over ``image_a image_b label age_a age_b`` lines: 10-fold
  accuracy overall and TAR / FAR / accuracy / AUC per age-gap band (0-5, 5-10, 10-20, 20+ years)
  with each pair decided by its own fold's threshold (:func:`faceforge.eval.age.age_gap_verification`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from faceforge.core.text_files import open_text
from faceforge.data.files import list_images
from faceforge.eval.age import (
    DEFAULT_AGE_EDGES,
    age_gap_verification,
    cacd_vs_accuracy,
    fgnet_leave_one_out,
    parse_fgnet_name,
)
from faceforge.eval.kinds.base import (
    BENCHMARK_KINDS,
    CHECKSUM_RULE_ALL,
    CHECKSUM_RULE_USED,
    BenchmarkKind,
    BenchmarkSpec,
    RunContext,
    TooFewValidError,
    check_valid,
    file_sha256,
    folder_checksum,
    require_dir,
    require_file,
    two_paths,
)
from faceforge.eval.plots import plot_group_bars, plot_score_histogram
from faceforge.eval.verification import squared_l2

__all__ = ["FGNET_AGE_EDGES", "read_age_pairs_list", "read_pairs_list"]

FGNET_AGE_EDGES: tuple[float, ...] = (0, 10, 20, 30, float("inf"))


def _band_name(lo: float | None, hi: float | None) -> str:
    return f"{lo:g}+" if hi is None else f"{lo:g}-{hi:g}"


def read_pairs_list(path: str | Path) -> list[tuple[str, str, bool]]:
    """Whitespace-separated ``name_a name_b label`` lines (label 1 / 0) -> list of tuples."""
    out = []
    with open_text(path) as fh:
        for line in fh:
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3:
                raise ValueError(f"{path}: expected 'name_a name_b label', got {line!r}")
            out.append((parts[0], parts[1], bool(int(parts[2]))))
    return out


def read_age_pairs_list(path: str | Path) -> list[tuple[str, str, bool, float, float]]:
    """``image_a image_b label age_a age_b`` lines -> tuples (label 1 / 0)."""
    out = []
    with open_text(path) as fh:
        for n, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 5:
                raise ValueError(f"{path}:{n}: expected 'image_a image_b label age_a age_b', got {line!r}")
            out.append((parts[0], parts[1], bool(int(parts[2])), float(parts[3]), float(parts[4])))
    if not out:
        raise ValueError(f"{path}: no pairs")
    return out


@BENCHMARK_KINDS.register("fgnet")
class FgnetKind(BenchmarkKind):
    name = "fgnet"
    usage = "fgnet:IMAGES"

    def parse(self, spec: str, rest: str) -> BenchmarkSpec:
        return BenchmarkSpec("fgnet", (rest,), spec=spec, name=f"fgnet:{Path(rest).name}")

    def check(self, b: BenchmarkSpec) -> None:
        require_dir(b, b.paths[0])

    def plan(self, b: BenchmarkSpec, image_ext: str) -> dict[str, Any]:
        every = list_images(b.paths[0], what=b.spec)
        files, bad = [], []
        for f in every:
            try:
                parse_fgnet_name(f.name)
                files.append(str(f))
            except ValueError:
                bad.append(f.name)
        if not files:
            raise ValueError(f"{b.spec}: no FG-NET file names (like 001A02.JPG) under {b.paths[0]}")
        return {"files": files, "every": every, "not_fgnet_names": bad, "unique_files": files}

    def run(
        self, b: BenchmarkSpec, plan: dict[str, Any], ctx: RunContext, plot_dir: Path | None
    ) -> dict[str, Any]:
        files = plan["files"]
        emb = ctx.rows(files)
        ok = ~np.isnan(emb).any(1)
        unreadable = ctx.failed_in(files)
        validity = check_valid(ctx.name, int(ok.sum()), ok.size, "images", ctx.min_valid_fraction, unreadable)
        names = [Path(f).name for f, k in zip(files, ok, strict=True) if k]
        res = fgnet_leave_one_out(emb[ok], names=names, age_edges=FGNET_AGE_EDGES)
        rec: dict[str, Any] = {
            "benchmark": {
                "kind": "fgnet",
                "images_dir": str(b.paths[0]),
                "images_sha256": folder_checksum(b.paths[0], plan["every"]),
                "images_checksum_rule": CHECKSUM_RULE_ALL,
                "n_images": len(files),
                "files_without_fgnet_name": plan["not_fgnet_names"],
                "unreadable_images": unreadable,
            },
            "validity": validity,
            "fgnet": res,
            "summary": {
                "rank-1": res["rank1"],
                **{f"rank-1 age {_band_name(v['lo'], v['hi'])}": v["rank1"] for v in res["age_bands"]},
            },
            "settings": {
                "protocol": "FG-NET leave-one-image-out rank-1",
                "gallery": "every other image",
                "score": "cosine similarity",
                "tie_rule": res["tie_rule"],
                "subject_and_age": "from the file name SSSAaa[x].ext",
                "age_bands": [v if v != float("inf") else None for v in FGNET_AGE_EDGES],
                **ctx.preprocess_settings(),
                "unreadable_images": "left out",
                "min_valid_fraction": ctx.min_valid_fraction,
            },
        }
        if plot_dir is not None:
            bars = {_band_name(v["lo"], v["hi"]): v["rank1"] for v in res["age_bands"]}
            rec["plots"] = {
                "rank1_by_age": str(
                    plot_group_bars(
                        bars, plot_dir / "rank1_by_age.png", f"Rank-1 by probe age: {ctx.name}", "rank-1"
                    )
                )
            }
        return rec


class _PairsListKind(BenchmarkKind):
    """``KIND:PAIRS:IMAGES`` with a whitespace-separated pairs list relative to ``IMAGES``."""

    def parse(self, spec: str, rest: str) -> BenchmarkSpec:
        pairs, images = two_paths(self.name, spec, rest, "PAIRS:IMAGES (a pairs list and an image folder)")
        return BenchmarkSpec(self.name, (pairs, images), spec=spec, name=f"{self.name}:{Path(pairs).stem}")

    def check(self, b: BenchmarkSpec) -> None:
        require_file(b, b.paths[0], "pairs list")
        require_dir(b, b.paths[1])

    def read(self, path: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError  # subclasses

    def plan(self, b: BenchmarkSpec, image_ext: str) -> dict[str, Any]:
        pairs = self.read(b.paths[0])
        root = Path(b.paths[1])
        names = sorted({p[0] for p in pairs} | {p[1] for p in pairs})
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{b.spec}: {len(missing)} images of the pairs list are not under {root}, e.g. {missing[:3]}"
            )
        return {"pairs": pairs, "names": names, "unique_files": [str(root / n) for n in names]}

    def info(self, b: BenchmarkSpec, plan: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
        return {
            "kind": self.name,
            "pairs_file": str(b.paths[0]),
            "pairs_sha256": file_sha256(b.paths[0]),
            "images_dir": str(b.paths[1]),
            "images_sha256": folder_checksum(b.paths[1], [Path(p) for p in plan["unique_files"]]),
            "images_checksum_rule": CHECKSUM_RULE_USED,
            "n_pairs": len(plan["pairs"]),
            "n_images": len(plan["names"]),
            "unreadable_images": ctx.failed_in(plan["unique_files"]),
        }

    @staticmethod
    def pair_rows(
        plan: dict[str, Any], ctx: RunContext
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Embeddings of the two sides of the scorable pairs, their labels, the mask of scorable pairs
        over the list and the ``validity`` entry (pairs with an unreadable image are left out)."""
        emb = ctx.rows(plan["unique_files"])
        index = {n: i for i, n in enumerate(plan["names"])}
        a = emb[[index[p[0]] for p in plan["pairs"]]]
        b = emb[[index[p[1]] for p in plan["pairs"]]]
        ok = ~(np.isnan(a).any(1) | np.isnan(b).any(1))
        unreadable = ctx.failed_in(plan["unique_files"])
        validity = check_valid(ctx.name, int(ok.sum()), ok.size, "pairs", ctx.min_valid_fraction, unreadable)
        if int(ok.sum()) < ctx.n_folds:
            raise TooFewValidError(
                f"{ctx.name}: {int(ok.sum())} scorable pairs cannot be split into {ctx.n_folds} folds"
            )
        y = np.array([p[2] for p in plan["pairs"]], dtype=bool)
        return a[ok], b[ok], y[ok], ok, validity


@BENCHMARK_KINDS.register("cacdvs")
class CacdVsKind(_PairsListKind):
    name = "cacdvs"
    usage = "cacdvs:PAIRS:IMAGES"

    def read(self, path: str) -> list[tuple[Any, ...]]:
        return list(read_pairs_list(path))

    def run(
        self, b: BenchmarkSpec, plan: dict[str, Any], ctx: RunContext, plot_dir: Path | None
    ) -> dict[str, Any]:
        a, bb, y, ok, validity = self.pair_rows(plan, ctx)
        emb = np.nan_to_num(ctx.rows(plan["unique_files"]))  # rows of left-out pairs are never read
        pairs = [p for p, k in zip(plan["pairs"], ok, strict=True) if k]
        res = cacd_vs_accuracy(emb, plan["names"], pairs, n_folds=ctx.n_folds)
        rec: dict[str, Any] = {
            "benchmark": self.info(b, plan, ctx),
            "validity": validity,
            "cacdvs": res,
            "summary": {"accuracy": res["accuracy_mean"], "accuracy_std": res["accuracy_std"]},
            "settings": {
                "protocol": f"CACD-VS {ctx.n_folds}-fold accuracy (contiguous folds in list order)",
                "distance": "squared L2 on normalised embeddings",
                "n_folds": ctx.n_folds,
                **ctx.preprocess_settings(),
                "unreadable_images": "pairs left out, listed",
                "min_valid_fraction": ctx.min_valid_fraction,
            },
        }
        if plot_dir is not None:
            cos = np.sum(a * bb, axis=1)
            rec["plots"] = {
                "scores": str(
                    plot_score_histogram(cos, y, plot_dir / "scores.png", title=f"Cosine: {ctx.name}")
                )
            }
        return rec


@BENCHMARK_KINDS.register("agegap")
class AgeGapKind(_PairsListKind):
    name = "agegap"
    usage = "agegap:PAIRS:IMAGES"

    def read(self, path: str) -> list[tuple[Any, ...]]:
        return list(read_age_pairs_list(path))

    def run(
        self, b: BenchmarkSpec, plan: dict[str, Any], ctx: RunContext, plot_dir: Path | None
    ) -> dict[str, Any]:
        a, bb, y, ok, validity = self.pair_rows(plan, ctx)
        ages = np.array([(p[3], p[4]) for p in plan["pairs"]], dtype=np.float64)[ok]
        res = age_gap_verification(
            squared_l2(a, bb), y, ages[:, 0], ages[:, 1], DEFAULT_AGE_EDGES, ctx.n_folds
        )
        summary: dict[str, Any] = {"accuracy": res["overall"]["accuracy_mean"]}
        for band in res["bands"]:
            summary[f"accuracy gap {_band_name(band['lo'], band['hi'])}"] = band["accuracy"]
        rec: dict[str, Any] = {
            "benchmark": self.info(b, plan, ctx),
            "agegap": res,
            "validity": validity,
            "summary": summary,
            "settings": {
                "protocol": "age-gap verification",
                "gap_rule": res["gap_rule"],
                "decision_rule": res["decision_rule"],
                "distance": "squared L2 on normalised embeddings",
                "n_folds": ctx.n_folds,
                **ctx.preprocess_settings(),
                "unreadable_images": "pairs left out, listed",
                "min_valid_fraction": ctx.min_valid_fraction,
            },
        }
        if plot_dir is not None:
            bars = {_band_name(v["lo"], v["hi"]): v["accuracy"] for v in res["bands"]}
            rec["plots"] = {
                "accuracy_by_gap": str(
                    plot_group_bars(
                        bars, plot_dir / "accuracy_by_gap.png", f"Accuracy by age gap: {ctx.name}", "accuracy"
                    )
                )
            }
        return rec
