"""Demographic-differential kinds: ``bias:IMAGES:GROUPS[:identities]`` and ``biaspairs:PAIRS:IMAGES:GROUPS``.

``GROUPS`` is a registered file-name labeller (``utkface-gender``, ``utkface-race``, ``utkface-age``) or a
group file ``FILE.csv`` / ``FILE.tsv`` (``FILE.csv#column`` picks a column): a header row with a key column
``path`` / ``file`` / ``image`` / ``identity`` and a ``group`` column, keyed by the image path relative to
``IMAGES`` or by identity (:class:`faceforge.data.attributes.GroupSource`). Images without a group are left
out and counted.

* ``bias:IMAGES:GROUPS`` (the original form; faces without identity labels, such as UTKFace): every
  within-group pair is an impostor pair (up to 200k sampled per group, seed 0), one global threshold is set
  for FMR 1e-3 on all pairs pooled, and each group's FMR is reported with the worst/best ratio and the
  standard deviation of log10 FMR (:func:`faceforge.eval.bias.impostor_differential`).
* ``bias:IMAGES:GROUPS:identities``: ``IMAGES/<identity>/<image>``; genuine pairs within an identity (up to
  50k per group), impostor pairs across identities of the same group (up to 200k per group), then the
  group-pairs report below. The 10-fold accuracy uses a balanced subset per group, genuine and impostor
  interleaved so every contiguous fold holds both (:func:`faceforge.eval.bias.balanced_interleaved`).
* ``biaspairs:PAIRS:IMAGES:GROUPS``: an LFW-format pairs file; a pair belongs to group ``g`` when both its
  images are in ``g`` (pairs across groups, or with an image without a group, are left out and counted),
  then the group-pairs report, its 10-fold accuracy over each group's pairs in the file's order.

Group-pairs report (:func:`faceforge.eval.bias.group_pairs_report`): each group's 10-fold accuracy
(insightface protocol on squared L2 distances, grid ``arange(0, 4, 0.01)``) with the mean and standard
deviation over groups (the RFW numbers CIFP reports); for each target FMR (1e-3, 1e-4) one global
threshold set on the impostor pairs of all groups pooled, and each group's FMR and FNMR there, with the
max/min ratios; each group's AUC and EER; one ROC plot with a curve per group and each group's operating
point at the FMR-1e-3 threshold; and a per-group table for the HTML report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from faceforge.data.attributes import GROUP_LABELLERS, GroupSource, group_source, is_group_file
from faceforge.data.files import list_images
from faceforge.data.pairs import read_lfw_pairs, resolve_pairs
from faceforge.eval.bias import (
    BIAS_FMRS,
    balanced_interleaved,
    group_pairs_report,
    group_pairs_table,
    identity_group_pairs,
    impostor_differential,
    within_group_impostor_pairs,
)
from faceforge.eval.kinds.base import (
    BENCHMARK_KINDS,
    CHECKSUM_RULE_ALL,
    CHECKSUM_RULE_USED,
    BenchmarkKind,
    BenchmarkSpec,
    BenchmarkSpecError,
    RunContext,
    check_valid,
    file_sha256,
    folder_checksum,
    list_identity_folder,
    require_dir,
    require_file,
)
from faceforge.eval.plots import plot_group_bars, plot_group_roc
from faceforge.eval.roc import roc

__all__ = [
    "BIAS_MAX_GENUINE_PER_GROUP",
    "BIAS_MAX_PAIRS_PER_GROUP",
    "BIAS_TARGET_FMR",
    "BiasKind",
    "BiasPairsKind",
]

BIAS_TARGET_FMR = 1e-3
BIAS_MAX_PAIRS_PER_GROUP = 200_000
BIAS_MAX_GENUINE_PER_GROUP = 50_000
MODES = ("impostors", "identities")


def _check_groups(spec: str, groups: str) -> None:
    if groups not in GROUP_LABELLERS and not is_group_file(groups):
        raise BenchmarkSpecError(
            spec,
            f"GROUPS must be a labeller ({', '.join(GROUP_LABELLERS.names())}) or a group file "
            "FILE.csv / FILE.tsv[#column]",
        )


def _groups_label(groups: str) -> str:
    return (
        groups
        if not is_group_file(groups)
        else Path(groups.partition("#")[0]).name + (f"#{groups.partition('#')[2]}" if "#" in groups else "")
    )


def _check_group_file(b: BenchmarkSpec, groups: str) -> None:
    if is_group_file(groups):
        require_file(b, groups.partition("#")[0], "group file")


def _rel(path: str | Path, root: str | Path) -> str:
    return Path(path).relative_to(root).as_posix()


def _counts(groups: np.ndarray) -> dict[str, int]:
    return {str(k): int(np.count_nonzero(groups == k)) for k in sorted(np.unique(groups).tolist())}


def _threshold_settings() -> dict[str, Any]:
    return {
        "threshold_rule": (
            "one global threshold per target FMR, the smallest with FMR <= target on the impostor pairs of "
            "all groups pooled; accept score >= threshold"
        ),
        "target_fmrs": list(BIAS_FMRS),
        "score": "cosine similarity",
        "accuracy": (
            "insightface 10-fold per group: squared L2 of normalised embeddings, thresholds arange(0, 4, "
            "0.01), contiguous folds, smallest threshold on ties; mean and std (ddof 0) over groups (RFW)"
        ),
    }


def group_pairs_record(
    cos: np.ndarray,
    dist: np.ndarray,
    issame: np.ndarray,
    groups: np.ndarray,
    ctx: RunContext,
    plot_dir: Path | None,
    accuracy_index: np.ndarray | None = None,
) -> dict[str, Any]:
    """``bias`` / ``summary`` / ``group_table`` / ``plots`` of the group-pairs report (module doc)."""
    report = group_pairs_report(
        cos, issame, groups, dist=dist, fmrs=BIAS_FMRS, n_folds=ctx.n_folds, accuracy_index=accuracy_index
    )
    acc = report["accuracy"]
    summary: dict[str, Any] = {
        "accuracy_mean_over_groups": acc["mean"],
        "accuracy_std_over_groups": acc["std"],
        **{f"accuracy {k}": v["accuracy_mean"] for k, v in acc["groups"].items()},
    }
    for f, d in report["at_fmr"].items():
        summary[f"fmr_ratio@{f}"] = d["fmr_ratio"]
        summary[f"fnmr_ratio@{f}"] = d["fnmr_ratio"]
        summary[f"log10_fmr_std@{f}"] = d["fmr_spread"]["log10_fmr_std"]
    rec: dict[str, Any] = {"bias": report, "summary": summary, "group_table": group_pairs_table(report)}
    if plot_dir is not None:
        main = report["at_fmr"][f"{BIAS_FMRS[0]:g}"]
        curves, points = {}, {}
        for k in report["groups"]:
            m = groups == k
            if issame[m].all() or not issame[m].any():
                continue
            fpr, tpr, _ = roc(cos[m], issame[m])
            curves[k] = (fpr, tpr)
            g = main["groups"][k]
            points[k] = (g["fmr"], None if g["fnmr"] is None else 1.0 - g["fnmr"])
        rec["plots"] = {
            "roc_by_group": str(
                plot_group_roc(
                    curves,
                    plot_dir / "roc_by_group.png",
                    title=f"ROC per group: {ctx.name}",
                    points=points,
                    points_label=f"global threshold for FMR {BIAS_FMRS[0]:g}",
                )
            ),
            "fmr_by_group": str(
                plot_group_bars(
                    {k: v["fmr"] for k, v in main["groups"].items()},
                    plot_dir / "fmr_by_group.png",
                    title=f"Per-group FMR: {ctx.name}",
                    ylabel="FMR at the global threshold",
                    reference=(BIAS_FMRS[0], f"overall target {BIAS_FMRS[0]:g}"),
                )
            ),
        }
    return rec


@BENCHMARK_KINDS.register("bias")
class BiasKind(BenchmarkKind):
    name = "bias"
    usage = "bias:IMAGES:GROUPS[:identities]"

    def parse(self, spec: str, rest: str) -> BenchmarkSpec:
        parts = rest.split(":")
        mode = "impostors"
        if len(parts) > 2 and parts[-1] in MODES:
            mode = parts.pop()
        if len(parts) < 2 or not parts[-1] or not parts[0]:
            raise BenchmarkSpecError(spec, "expected bias:IMAGES:GROUPS[:identities]")
        groups = parts[-1]
        _check_groups(spec, groups)
        name = f"bias:{_groups_label(groups)}" + (":identities" if mode == "identities" else "")
        return BenchmarkSpec(
            "bias", (":".join(parts[:-1]), groups), spec=spec, name=name, options=(("mode", mode),)
        )

    def check(self, b: BenchmarkSpec) -> None:
        require_dir(b, b.paths[0])
        _check_group_file(b, b.paths[1])

    def plan(self, b: BenchmarkSpec, image_ext: str) -> dict[str, Any]:
        root = Path(b.paths[0])
        src = group_source(b.paths[1])
        identities: list[str] | None = None
        if b.option("mode", "impostors") == "identities":
            files, ids, every = list_identity_folder(root)
        else:
            every = list_images(root, what=b.spec)
            files, ids = every, None
        kept = [(n, str(f), g) for n, f in enumerate(files) if (g := src.group_of(_rel(f, root))) is not None]
        if not kept:
            raise ValueError(f"{b.spec}: no image under {root} has a group from {b.paths[1]}")
        if ids is not None:
            identities = [ids[n] for n, _, _ in kept]
        used = [f for _, f, _ in kept]
        return {
            "files": used,
            "groups": np.array([g for _, _, g in kept], dtype=object),
            "identities": None if identities is None else np.asarray(identities),
            "every": every,
            "unlabelled": len(files) - len(kept),
            "source": src,
            "unique_files": used,
        }

    def _info(
        self, b: BenchmarkSpec, plan: dict[str, Any], ctx: RunContext, groups: np.ndarray
    ) -> dict[str, Any]:
        src: GroupSource = plan["source"]
        info = {
            "kind": "groups-from-file-names" if src.labeller is not None else "groups-from-file",
            "images_dir": str(b.paths[0]),
            "images_sha256": folder_checksum(b.paths[0], plan["every"]),
            "images_checksum_rule": CHECKSUM_RULE_ALL,
            "groups": src.describe(),
            "n_images": len(plan["files"]),
            "n_images_without_group": plan["unlabelled"],
            "unreadable_images": ctx.failed_in(plan["files"]),
            "images_per_group": _counts(groups),
        }
        if src.labeller is not None:
            info["labeller"] = b.paths[1]
        return info

    def run(
        self, b: BenchmarkSpec, plan: dict[str, Any], ctx: RunContext, plot_dir: Path | None
    ) -> dict[str, Any]:
        emb = ctx.rows(plan["files"])
        ok = ~np.isnan(emb).any(1)
        unreadable = ctx.failed_in(plan["files"])
        validity = check_valid(ctx.name, int(ok.sum()), ok.size, "images", ctx.min_valid_fraction, unreadable)
        groups, e = plan["groups"][ok], emb[ok]
        info = self._info(b, plan, ctx, groups)
        if b.option("mode", "impostors") == "identities":
            rec = self._run_identities(ctx, plot_dir, e, plan["identities"][ok], groups, info)
            rec["validity"] = validity
            return rec
        i, j, pair_groups = within_group_impostor_pairs(groups, BIAS_MAX_PAIRS_PER_GROUP, seed=0)
        scores = np.einsum("ij,ij->i", e[i], e[j])
        diff = impostor_differential(scores, pair_groups, BIAS_TARGET_FMR)
        per_image = _counts(groups)
        rec: dict[str, Any] = {
            "benchmark": info,
            "validity": validity,
            "bias": diff,
            "summary": {
                "overall_fmr": diff["overall_fmr"],
                **{f"fmr {k}": v["fmr"] for k, v in diff["groups"].items()},
                "fmr_ratio_worst_best": diff["fmr_ratio"],
                "fmr_ratio_floored": diff["fmr_ratio_floored"],
                "log10_fmr_std": diff["log10_fmr_std"],
            },
            "group_table": {
                "title": f"per-group impostor FMR at one global threshold (FMR {BIAS_TARGET_FMR:g} overall)",
                "columns": ["group", "images", "impostor pairs", "FMR"],
                "rows": [[k, per_image.get(k), v["n_impostor"], v["fmr"]] for k, v in diff["groups"].items()]
                + [["max/min (floored)", None, None, diff["fmr_ratio_floored"]]],
            },
            "settings": {
                "protocol": diff["protocol"],
                "mode": "impostors",
                "groups": b.paths[1],
                "pairs": f"within-group pairs, all or {BIAS_MAX_PAIRS_PER_GROUP} sampled per group (seed 0)",
                "identity_assumption": "no identity labels: every pair counted as an impostor pair",
                "threshold_rule": f"one global threshold, FMR <= {BIAS_TARGET_FMR} on all pairs pooled",
                "fmr_floor_rule": diff["floor_rule"],
                "score": "cosine similarity",
                **ctx.preprocess_settings(),
                "unreadable_images": "left out",
            },
        }
        if plot_dir is not None:
            rec["plots"] = {
                "fmr_by_group": str(
                    plot_group_bars(
                        {k: v["fmr"] for k, v in diff["groups"].items()},
                        plot_dir / "fmr_by_group.png",
                        title=f"Per-group FMR: {ctx.name}",
                        ylabel="FMR at the global threshold",
                        reference=(diff["target_fmr"], f"overall target {diff['target_fmr']:g}"),
                    )
                )
            }
        return rec

    def _run_identities(
        self,
        ctx: RunContext,
        plot_dir: Path | None,
        e: np.ndarray,
        ids: np.ndarray,
        groups: np.ndarray,
        info: dict[str, Any],
    ) -> dict[str, Any]:
        i, j, same, pair_groups = identity_group_pairs(
            ids, groups, BIAS_MAX_GENUINE_PER_GROUP, BIAS_MAX_PAIRS_PER_GROUP, seed=0
        )
        cos = np.einsum("ij,ij->i", e[i], e[j])
        dist = np.sum((e[i] - e[j]) ** 2, axis=1)
        acc_idx = balanced_interleaved(same, pair_groups, seed=0)
        info["identities_per_group"] = {
            str(k): int(np.unique(ids[groups == k]).size) for k in sorted(np.unique(groups).tolist())
        }
        rec: dict[str, Any] = {"benchmark": info}
        rec.update(group_pairs_record(cos, dist, same, pair_groups, ctx, plot_dir, accuracy_index=acc_idx))
        rec["settings"] = {
            "protocol": rec["bias"]["protocol"],
            "mode": "identities",
            "identity_rule": "sub-folder name",
            "pairs": (
                f"per group: genuine = pairs of images of one identity (all, or {BIAS_MAX_GENUINE_PER_GROUP} "
                f"drawn, seed 0); impostor = pairs of different identities of the group (all, or "
                f"{BIAS_MAX_PAIRS_PER_GROUP} drawn, seed 0)"
            ),
            "accuracy_pairs": (
                "per group: min(genuine, impostor) of each drawn (seed 0), interleaved genuine/impostor"
            ),
            **_threshold_settings(),
            **ctx.preprocess_settings(),
            "normalisation": "L2 after flip-sum",
            "unreadable_images": "left out",
        }
        return rec


@BENCHMARK_KINDS.register("biaspairs")
class BiasPairsKind(BenchmarkKind):
    name = "biaspairs"
    usage = "biaspairs:PAIRS:IMAGES:GROUPS"

    def parse(self, spec: str, rest: str) -> BenchmarkSpec:
        pairs, _, more = rest.partition(":")
        parts = more.split(":")
        if not pairs or len(parts) < 2 or not parts[0] or not parts[-1]:
            raise BenchmarkSpecError(spec, "expected biaspairs:PAIRS:IMAGES:GROUPS")
        groups = parts[-1]
        _check_groups(spec, groups)
        return BenchmarkSpec(
            "biaspairs",
            (pairs, ":".join(parts[:-1]), groups),
            spec=spec,
            name=f"biaspairs:{Path(pairs).stem}:{_groups_label(groups)}",
        )

    def check(self, b: BenchmarkSpec) -> None:
        require_file(b, b.paths[0], "pairs file")
        require_dir(b, b.paths[1])
        _check_group_file(b, b.paths[2])

    def plan(self, b: BenchmarkSpec, image_ext: str) -> dict[str, Any]:
        pairs = read_lfw_pairs(b.paths[0])
        p1, p2, issame = resolve_pairs(pairs, b.paths[1], ext=image_ext)
        src = group_source(b.paths[2])
        root = Path(b.paths[1])
        g1 = [src.group_of(_rel(p, root)) for p in p1]
        g2 = [src.group_of(_rel(p, root)) for p in p2]
        keep = np.array([a is not None and a == c for a, c in zip(g1, g2, strict=True)], dtype=bool)
        if not keep.any():
            raise ValueError(f"{b.spec}: no pair has both images in one group of {b.paths[2]}")
        plan: dict[str, Any] = {
            "p1": [str(p) for p, k in zip(p1, keep, strict=True) if k],
            "p2": [str(p) for p, k in zip(p2, keep, strict=True) if k],
            "issame": issame[keep],
            "groups": np.array([a for a, k in zip(g1, keep, strict=True) if k], dtype=object),
            "n_pairs": len(pairs),
            "pairs_without_group": sum(1 for a, c in zip(g1, g2, strict=True) if a is None or c is None),
            "pairs_across_groups": sum(
                1 for a, c in zip(g1, g2, strict=True) if a is not None and c is not None and a != c
            ),
            "source": src,
        }
        plan["unique_files"] = sorted(set(plan["p1"]) | set(plan["p2"]))
        return plan

    def run(
        self, b: BenchmarkSpec, plan: dict[str, Any], ctx: RunContext, plot_dir: Path | None
    ) -> dict[str, Any]:
        e1, e2 = ctx.rows(plan["p1"]), ctx.rows(plan["p2"])
        ok = ~(np.isnan(e1).any(1) | np.isnan(e2).any(1))
        unreadable = ctx.failed_in(plan["unique_files"])
        validity = check_valid(ctx.name, int(ok.sum()), ok.size, "pairs", ctx.min_valid_fraction, unreadable)
        e1, e2 = e1[ok], e2[ok]
        issame, groups = np.asarray(plan["issame"], dtype=bool)[ok], plan["groups"][ok]
        cos = np.sum(e1 * e2, axis=1)
        dist = np.sum((e1 - e2) ** 2, axis=1)
        src: GroupSource = plan["source"]
        rec: dict[str, Any] = {
            "benchmark": {
                "kind": "lfw-pairs-with-groups",
                "pairs_file": str(b.paths[0]),
                "pairs_sha256": file_sha256(b.paths[0]),
                "images_dir": str(b.paths[1]),
                "images_sha256": folder_checksum(b.paths[1], [Path(p) for p in plan["unique_files"]]),
                "images_checksum_rule": CHECKSUM_RULE_USED,
                "groups": src.describe(),
                "n_pairs": plan["n_pairs"],
                "pairs_without_group": plan["pairs_without_group"],
                "pairs_across_groups": plan["pairs_across_groups"],
                "pairs_with_unreadable_image": int((~ok).sum()),
                "n_pairs_used": int(ok.sum()),
                "pairs_per_group": _counts(groups),
                "unreadable_images": unreadable,
            },
            "validity": validity,
        }
        rec.update(group_pairs_record(cos, dist, issame, groups, ctx, plot_dir))
        rec["settings"] = {
            "protocol": rec["bias"]["protocol"],
            "pairs": (
                "the pairs file's pairs whose two images are in one group; pairs across groups or with an "
                "image without a group are left out"
            ),
            "fold_order": "each group's pairs in the file's order, contiguous folds",
            **_threshold_settings(),
            **ctx.preprocess_settings(),
            "normalisation": "L2 after flip-sum",
            "unreadable_images": "pairs left out",
        }
        return rec
