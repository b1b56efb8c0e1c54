"""Folder-based kinds: ``allpairs:IMAGES[:MIN]`` and ``ident:IMAGES[:K[:MIN]]``.

* ``allpairs`` - every pair of an identity-labelled folder (identity = sub-folder), identities with
  at least ``MIN`` images (default 1), TAR@FAR 1e-5 .. 1e-1
  (:func:`faceforge.eval.allpairs.allpairs_verification`);
* ``ident`` - 1:N identification on such a folder: ``K`` images per identity (default 1) in the
  gallery, the rest are mated probes; identities with at most ``K`` images are non-mated probes;
  only identities with at least ``MIN`` images (default 1) take part.  CMC rank 1/5/10 and DIR at
  FPIR 0.01 / 0.1 (:mod:`faceforge.eval.identification`).

The demographic-differential kinds (``bias``, ``biaspairs``) are in :mod:`faceforge.eval.kinds.bias`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from faceforge.eval.allpairs import (
    ALLPAIRS_FARS,
    ScoreHistogram,
    allpairs_scores,
    allpairs_verification,
    iter_pair_scores,
)
from faceforge.eval.identification import cosine_scores, identification, split_gallery_probe
from faceforge.eval.kinds.base import (
    BENCHMARK_KINDS,
    CHECKSUM_RULE_ALL,
    NORMALISATION,
    BenchmarkKind,
    BenchmarkSpec,
    BenchmarkSpecError,
    RunContext,
    check_valid,
    folder_checksum,
    list_identity_folder,
    require_dir,
    trailing_ints,
)
from faceforge.eval.plots import plot_cmc, plot_roc, plot_score_histogram
from faceforge.eval.roc import roc, roc_points

__all__ = ["AllPairsKind", "IdentificationKind"]


class _IdentityFolderKind(BenchmarkKind):
    """``KIND:IMAGES[:N...]`` on ``IMAGES/<identity>/<image>``."""

    n_numbers = 1

    def parse(self, spec: str, rest: str) -> BenchmarkSpec:
        parts, nums = trailing_ints(rest.split(":"), self.n_numbers, spec)
        folder = ":".join(parts)
        if not folder:
            raise BenchmarkSpecError(spec, "missing the image folder")
        return self.make(spec, folder, nums)

    def make(self, spec: str, folder: str, nums: list[int]) -> BenchmarkSpec:
        raise NotImplementedError  # subclasses

    def check(self, b: BenchmarkSpec) -> None:
        require_dir(b, b.paths[0])

    def plan(self, b: BenchmarkSpec, image_ext: str) -> dict[str, Any]:
        fl, labels, every = list_identity_folder(b.paths[0], b.min_images)
        files = [str(f) for f in fl]
        return {"files": files, "labels": np.asarray(labels), "every": every, "unique_files": files}

    def embeddings(
        self, b: BenchmarkSpec, plan: dict[str, Any], ctx: RunContext
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any], dict[str, Any], np.ndarray | None]:
        """Readable embeddings, their labels, the dataset description, the common settings and the probe
        embeddings of the same images (:attr:`RunContext.probe_rows`; ``None`` when the probes are the same)."""
        files, labels = plan["files"], plan["labels"]
        emb = ctx.rows(files)
        ok = ~np.isnan(emb).any(1)
        probe = ctx.probe_rows(files) if ctx.probe_rows is not None else None
        if probe is not None:
            ok &= ~np.isnan(probe).any(1)
        unreadable = ctx.failed_in(files)
        validity = check_valid(ctx.name, int(ok.sum()), ok.size, "images", ctx.min_valid_fraction, unreadable)
        info = {
            "images_dir": str(b.paths[0]),
            "images_sha256": folder_checksum(b.paths[0], plan["every"]),
            "images_checksum_rule": CHECKSUM_RULE_ALL,
            "identity_rule": "sub-folder name",
            "min_images_per_identity": b.min_images,
            "n_images": len(files),
            "n_identities": int(np.unique(labels).size),
            "unreadable_images": unreadable,
            "n_images_used": int(ok.sum()),
            "validity": validity,
        }
        common = {
            **ctx.preprocess_settings(),
            "normalisation": NORMALISATION,
            "score": "cosine similarity",
            "unreadable_images": "left out",
            "min_valid_fraction": ctx.min_valid_fraction,
        }
        return emb[ok], labels[ok], info, common, (None if probe is None else probe[ok])


@BENCHMARK_KINDS.register("allpairs")
class AllPairsKind(_IdentityFolderKind):
    name = "allpairs"
    usage = "allpairs:IMAGES[:MIN_IMAGES_PER_ID]"
    exact_max_n = 3000

    def make(self, spec: str, folder: str, nums: list[int]) -> BenchmarkSpec:
        mn = nums[0] if nums else 1
        return BenchmarkSpec(
            "allpairs", (folder,), min_images=mn, spec=spec, name=f"allpairs:{Path(folder).name}"
        )

    def run(
        self, b: BenchmarkSpec, plan: dict[str, Any], ctx: RunContext, plot_dir: Path | None
    ) -> dict[str, Any]:
        emb, labels, info, common, probe = self.embeddings(b, plan, ctx)
        res = allpairs_verification(
            emb, labels, fars=ALLPAIRS_FARS, exact_max_n=self.exact_max_n, probe=probe
        )
        cons = res["tar_at_far"]["conservative"]
        rec: dict[str, Any] = {
            "validity": info["validity"],
            "benchmark": {"kind": "allpairs", **info},
            "allpairs": res,
            "summary": {
                "auc": res["auc"],
                "eer": res["eer"],
                **{f"tar@far={k}": v["tar"] for k, v in cons.items()},
            },
            "settings": {
                "protocol": "allpairs",
                **common,
                "pairs": "every unordered pair i < j; genuine when the identities match",
                "mode": res["mode"],
                "fars": list(ALLPAIRS_FARS),
                "threshold_rule": {
                    "nearest": "ROC point with FAR closest to the target (insightface IJB)",
                    "conservative": "largest TAR with FAR <= target",
                },
            },
        }
        if plot_dir is not None:
            if res["mode"] == "exact":
                s, same = allpairs_scores(emb, labels, probe=probe)
                fpr, tpr, _ = roc(s, same)
                hist_s, hist_same = s, same
            else:
                hist = ScoreHistogram()
                for s, same in iter_pair_scores(emb, labels, probe=probe):
                    hist.add(s, same)
                fpr, tpr, _ = hist.roc()
                # the histogram plot uses every genuine pair and a seeded sample of impostors
                hist_s, hist_same = allpairs_scores(emb, labels, impostor_sample=200_000, seed=0, probe=probe)
            title = ctx.name
            rec["curves"] = {"roc": roc_points(fpr, tpr)}
            rec["plots"] = {
                "roc": str(
                    plot_roc(
                        {f"AUC {res['auc']:.4f}": (fpr, tpr)}, plot_dir / "roc.png", title=f"ROC: {title}"
                    )
                ),
                "scores": str(
                    plot_score_histogram(
                        hist_s, hist_same, plot_dir / "scores.png", title=f"Cosine scores: {title}"
                    )
                ),
            }
        return rec


@BENCHMARK_KINDS.register("ident")
class IdentificationKind(_IdentityFolderKind):
    name = "ident"
    usage = "ident:IMAGES[:K[:MIN_IMAGES_PER_ID]]"
    n_numbers = 2

    def make(self, spec: str, folder: str, nums: list[int]) -> BenchmarkSpec:
        k = nums[0] if nums else 1
        mn = nums[1] if len(nums) > 1 else 1
        return BenchmarkSpec(
            "ident", (folder,), k=k, min_images=mn, spec=spec, name=f"ident:{Path(folder).name}"
        )

    def run(
        self, b: BenchmarkSpec, plan: dict[str, Any], ctx: RunContext, plot_dir: Path | None
    ) -> dict[str, Any]:
        emb, labels, info, common, _ = self.embeddings(b, plan, ctx)
        split = split_gallery_probe(labels, k=b.k, seed=0, few="probe")
        if split.gallery_idx.size == 0:
            raise ValueError(f"{ctx.name}: no identity has more than K={b.k} images, so the gallery is empty")
        g, p = split.gallery_idx, split.probe_idx
        res = identification(emb[p], labels[p], emb[g], labels[g], ranks=(1, 5, 10), fpirs=(0.01, 0.1))
        rec: dict[str, Any] = {
            "validity": info["validity"],
            "benchmark": {"kind": "identification", **info},
            "split": split.to_dict(),
            "identification": res,
            "summary": {f"rank-{r}": v for r, v in res["closed_set"]["rank_k"].items()},
            "settings": {
                "protocol": "closed-set CMC + open-set DIR@FPIR",
                **common,
                "gallery": f"{b.k} image(s) per identity chosen by a seeded permutation (seed 0)",
                "probes": "the other images; identities with <= K images are non-mated probes",
                "gallery_score": "max over an identity's gallery entries",
                "rank_ties": "pessimistic",
                "threshold_rule": "smallest threshold with FPIR <= target on non-mated maxima",
            },
        }
        if res["open_set"] is not None:
            for f, v in res["open_set"]["dir_at_fpir"].items():
                rec["summary"][f"dir@fpir={f}"] = v["dir"]
        if plot_dir is not None:
            s = cosine_scores(emb[p], emb[g])
            same = labels[p][:, None] == labels[g][None, :]
            rec["plots"] = {
                "cmc": str(
                    plot_cmc(res["closed_set"]["cmc"], plot_dir / "cmc.png", title=f"CMC: {ctx.name}")
                ),
                "scores": str(
                    plot_score_histogram(
                        s.ravel(),
                        same.ravel(),
                        plot_dir / "scores.png",
                        title=f"Probe-gallery cosine: {ctx.name}",
                    )
                ),
            }
        return rec
