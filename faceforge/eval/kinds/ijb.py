"""``ijb:DIR[:SWITCHES]``: IJB-B / IJB-C 1:1 verification and 1:N identification from insightface files.

``DIR`` has insightface's layout (``IJBC/``): ``meta/`` with ``*_face_tid_mid.txt``,
``*_name_5pts_score.txt`` and (for 1:1) ``*_template_pair_label.txt``, and ``loose_crop/`` with the
images named in them.  Each loose crop is aligned to the 112x112 ArcFace template from its five
landmarks in ``*_name_5pts_score.txt`` (as insightface's ``ijb_evals.py`` does), then embedded
through the cache.  When ``meta/`` also holds ``*_1N_probe_mixed.csv`` and ``*_1N_gallery_G*.csv``
(``TEMPLATE_ID`` and ``SUBJECT_ID`` columns), 1:N is run against each gallery.

``SWITCHES`` picks insightface's N and D switches (default ``N0D1``, the ``ijb_evals.py`` default):
``N0`` L2-normalise every image feature before pooling, ``N1`` keep its norm; ``D1`` multiply by the
detector score, ``D0`` do not.  F follows the run's flip setting (``F1``: original + flipped
summed, ``F0``: original only); ``F2`` (concatenation) is available in the library
(:func:`faceforge.eval.ijb.image_features`), not here.  The switches are recorded in the result.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from faceforge.core.text_files import open_text
from faceforge.data.align import TEMPLATE_NAME, LandmarksError, warp_face
from faceforge.data.image_io import UnreadableImageError, decode_image_rgb, read_image_bytes
from faceforge.embedders.cache import cached_embed
from faceforge.eval.ijb import (
    ijb_1to1,
    ijb_1toN,
    image_features,
    template_features,
)
from faceforge.eval.kinds.base import (
    BENCHMARK_KINDS,
    BenchmarkKind,
    BenchmarkSpec,
    BenchmarkSpecError,
    RunContext,
    check_valid,
    file_sha256,
    require_dir,
)
from faceforge.eval.plots import plot_cmc, plot_roc, plot_score_histogram
from faceforge.eval.roc import roc, roc_points

__all__ = [
    "IJBMeta",
    "IjbKind",
    "load_ijb_meta",
    "read_1n_templates",
    "read_face_tid_mid",
    "read_name_5pts_score",
    "read_template_pair_label",
]

StrPath = str | os.PathLike[str]

_SWITCHES = re.compile(r"^(N[01])(D[01])$")


# --------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------
def _split_lines(path: StrPath) -> list[list[str]]:
    with open_text(path) as fh:
        return [line.split() for line in fh if line.strip()]


def read_face_tid_mid(path: StrPath) -> tuple[list[str], NDArray[np.int64], NDArray[np.int64]]:
    """``image tid mid`` lines -> ``(image_names, template_ids, media_ids)``."""
    rows = _split_lines(path)
    if any(len(r) != 3 for r in rows):
        raise ValueError(f"{path}: expected 3 columns (img tid mid)")
    return (
        [r[0] for r in rows],
        np.array([int(r[1]) for r in rows], dtype=np.int64),
        np.array([int(r[2]) for r in rows], dtype=np.int64),
    )


def read_template_pair_label(path: StrPath) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """``t1 t2 label`` lines -> three int64 arrays (parsed in C: IJB-C has ~15.7M pairs)."""
    flat = np.fromfile(path, dtype=np.int64, sep=" ")
    if flat.size % 3:
        raise ValueError(f"{path}: expected 3 integer columns (t1 t2 label)")
    arr = flat.reshape(-1, 3)
    return arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy()


def read_name_5pts_score(path: StrPath) -> tuple[list[str], NDArray[np.float64], NDArray[np.float64]]:
    """``image x1 y1 ... x5 y5 faceness`` lines -> ``(names, landmarks (n, 5, 2), faceness (n,))``."""
    rows = _split_lines(path)
    if any(len(r) != 12 for r in rows):
        raise ValueError(f"{path}: expected 12 columns (img, 10 landmark values, faceness)")
    vals = np.array([[float(v) for v in r[1:]] for r in rows], dtype=np.float64).reshape(-1, 11)
    return [r[0] for r in rows], vals[:, :10].reshape(-1, 5, 2), vals[:, 10].copy()


def read_1n_templates(path: StrPath) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """1:N gallery/probe CSV with ``TEMPLATE_ID`` and ``SUBJECT_ID`` header columns (one row per
    image, as in the IJB-C ``*_1N_gallery_G1.csv`` / ``*_1N_probe_mixed.csv`` files) ->
    ``(template_ids, subject_ids)``, one entry per template in order of first appearance."""
    with open_text(path) as fh:
        reader = csv.reader(fh)
        header = [h.strip().upper() for h in next(reader)]
        ti, si = header.index("TEMPLATE_ID"), header.index("SUBJECT_ID")
        seen: dict[int, int] = {}
        for row in reader:
            if not row:
                continue
            t, s = int(row[ti]), int(row[si])
            if seen.setdefault(t, s) != s:
                raise ValueError(f"{path}: template {t} has two subjects")
    return np.array(list(seen), dtype=np.int64), np.array(list(seen.values()), dtype=np.int64)


@dataclass(frozen=True, eq=False)
class IJBMeta:
    """Contents of one IJB meta directory, image arrays aligned with ``names``."""

    names: list[str]
    template_ids: NDArray[np.int64]
    media_ids: NDArray[np.int64]
    landmarks: NDArray[np.float64] | None
    faceness: NDArray[np.float64] | None
    pair_t1: NDArray[np.int64] | None
    pair_t2: NDArray[np.int64] | None
    pair_label: NDArray[np.int64] | None


def _one(meta_dir: Path, suffix: str, required: bool) -> Path | None:
    hits = sorted(meta_dir.glob(f"*{suffix}"))
    if len(hits) > 1:
        raise ValueError(f"several *{suffix} files in {meta_dir}: {[h.name for h in hits]}")
    if not hits and required:
        raise FileNotFoundError(f"no *{suffix} in {meta_dir}")
    return hits[0] if hits else None


def load_ijb_meta(meta_dir: StrPath) -> IJBMeta:
    """Read ``*_face_tid_mid.txt`` (required), ``*_name_5pts_score.txt`` and
    ``*_template_pair_label.txt`` (optional) from ``meta_dir``; checks that the two per-image files
    list the same images in the same order."""
    d = Path(meta_dir)
    names, tids, mids = read_face_tid_mid(_one(d, "_face_tid_mid.txt", True))  # type: ignore[arg-type]
    lmk = score = None
    p5 = _one(d, "_name_5pts_score.txt", False)
    if p5 is not None:
        names5, lmk, score = read_name_5pts_score(p5)
        if names5 != names:
            raise ValueError("image lists of face_tid_mid and name_5pts_score differ")
    t1 = t2 = lab = None
    pp = _one(d, "_template_pair_label.txt", False)
    if pp is not None:
        t1, t2, lab = read_template_pair_label(pp)
    return IJBMeta(names, tids, mids, lmk, score, t1, t2, lab)


@BENCHMARK_KINDS.register("ijb")
class IjbKind(BenchmarkKind):
    name = "ijb"
    usage = "ijb:DIR[:N0D1]"

    def parse(self, spec: str, rest: str) -> BenchmarkSpec:
        parts = rest.split(":")
        options: tuple[tuple[str, str], ...] = ()
        if len(parts) > 1 and (m := _SWITCHES.match(parts[-1])):
            parts.pop()
            options = (("norm", m.group(1)), ("detector", m.group(2)))
        elif len(parts) > 1 and re.match(r"^[NDF]\d", parts[-1]):
            raise BenchmarkSpecError(spec, f"switches {parts[-1]!r} must look like N0D1 (N0/N1 then D0/D1)")
        folder = ":".join(parts)
        if not folder:
            raise BenchmarkSpecError(spec, "missing the IJB folder (with meta/ and loose_crop/)")
        return BenchmarkSpec("ijb", (folder,), spec=spec, name=f"ijb:{Path(folder).name}", options=options)

    def check(self, b: BenchmarkSpec) -> None:
        require_dir(b, b.paths[0], "IJB folder")
        require_dir(b, str(Path(b.paths[0]) / "meta"), "IJB meta folder")
        require_dir(b, str(Path(b.paths[0]) / "loose_crop"), "IJB loose_crop folder")

    def plan(self, b: BenchmarkSpec, image_ext: str) -> dict[str, Any]:
        meta_dir = Path(b.paths[0]) / "meta"
        meta = load_ijb_meta(meta_dir)
        if meta.landmarks is None or meta.faceness is None:
            raise FileNotFoundError(f"{b.spec}: {meta_dir} has no *_name_5pts_score.txt (landmarks to align)")
        probe = sorted(meta_dir.glob("*_1N_probe_mixed.csv"))
        galleries = sorted(meta_dir.glob("*_1N_gallery_G*.csv"))
        if meta.pair_t1 is None and not (probe and galleries):
            raise FileNotFoundError(
                f"{b.spec}: {meta_dir} has neither *_template_pair_label.txt (1:1) nor "
                "*_1N_probe_mixed.csv + *_1N_gallery_G*.csv (1:N)"
            )
        return {"meta": meta, "meta_dir": meta_dir, "probe": probe[:1], "galleries": galleries}

    def _embed(self, b: BenchmarkSpec, plan: dict[str, Any], ctx: RunContext) -> tuple[np.ndarray, list[str]]:
        meta = plan["meta"]
        crops = Path(b.paths[0]) / "loose_crop"
        size = ctx.embedder.input_size

        def load(i: int) -> tuple[str | None, Callable[[], tuple[np.ndarray | None, str]]]:
            path = crops / meta.names[i]
            if not path.exists() and not path.is_symlink():
                raise FileNotFoundError(
                    f"{b.spec}: image {meta.names[i]} of the meta files is not in {crops}"
                )
            try:
                data = read_image_bytes(path)
            except UnreadableImageError as exc:
                error = f"{exc.path}: {exc.reason}"
                return None, lambda: (None, error)
            lmk = np.asarray(meta.landmarks[i], dtype=np.float64)
            # the key covers the bytes, the landmarks and the alignment: a changed input re-embeds
            key = hashlib.sha1(data + lmk.tobytes() + f"{TEMPLATE_NAME}/{size}".encode()).hexdigest()

            def decode() -> tuple[np.ndarray | None, str]:
                try:
                    return warp_face(decode_image_rgb(data, path), lmk, size), str(path)
                except UnreadableImageError as exc:
                    return None, f"{exc.path}: {exc.reason}"
                except LandmarksError as exc:
                    return None, f"{path}: landmarks of the meta file: {exc}"

            return key, decode

        return cached_embed(
            ctx.embedder,
            len(meta.names),
            None,
            load,
            flip=ctx.flip,
            cache_dir=ctx.cache_dir,
            batch_size=ctx.batch_size,
            normalize=False,
            progress=ctx.progress,
            stats=ctx.stats,
        )

    def run(
        self, b: BenchmarkSpec, plan: dict[str, Any], ctx: RunContext, plot_dir: Path | None
    ) -> dict[str, Any]:
        meta = plan["meta"]
        norm, detector = b.option("norm", "N0"), b.option("detector", "D1")
        flip = "F1" if ctx.flip else "F0"
        raw, failed = self._embed(b, plan, ctx)
        readable = ~np.isnan(raw).any(1)
        validity = check_valid(
            ctx.name, int(readable.sum()), readable.size, "images", ctx.min_valid_fraction, failed
        )
        raw = np.nan_to_num(raw)  # an unreadable image adds nothing to its template
        # a template none of whose images is readable is empty: its 1:1 pairs are left out, not scored 0
        tids_all = np.asarray(meta.template_ids)
        filled = set(np.unique(tids_all[readable]).tolist())
        switches = {"code": f"{norm}{detector}{flip}", "flip": flip, "norm": norm, "detector": detector}
        rec: dict[str, Any] = {
            "benchmark": {
                "kind": "ijb",
                "dir": str(b.paths[0]),
                "meta_sha256": {
                    p.name: file_sha256(p) for p in sorted(plan["meta_dir"].iterdir()) if p.is_file()
                },
                "n_images": len(meta.names),
                "n_templates": int(np.unique(meta.template_ids).size),
                "unreadable_images": failed,
            },
            "validity": validity,
            "settings": {
                "protocol": "IJB template-based 1:1 and 1:N",
                "switches": switches,
                "alignment": f"{TEMPLATE_NAME} from the 5 landmarks of *_name_5pts_score.txt",
                "pooling": "media-mean, template-sum, L2-normalise",
                "tar_rule": "nearest (insightface); conservative also reported",
                **ctx.preprocess_settings(),
                "unreadable_images": "zero feature (adds nothing to its template); 1:1 pairs with a "
                "template of unreadable images only are left out",
                "min_valid_fraction": ctx.min_valid_fraction,
            },
            "summary": {},
            "plots": {},
        }
        # the cache already holds e (F0) or e + e_flip (F1), so image_features runs with F0 here
        pair_ok = None
        if meta.pair_t1 is not None:
            pair_ok = np.array(
                [
                    int(a) in filled and int(c) in filled
                    for a, c in zip(meta.pair_t1, meta.pair_t2, strict=True)
                ],
                dtype=bool,
            )
            check_valid(ctx.name, int(pair_ok.sum()), pair_ok.size, "template pairs", 0.0, failed)
            rec["validity"]["template_pairs_left_out"] = int((~pair_ok).sum())
            res = ijb_1to1(
                raw,
                meta.template_ids,
                meta.media_ids,
                np.asarray(meta.pair_t1)[pair_ok],
                np.asarray(meta.pair_t2)[pair_ok],
                np.asarray(meta.pair_label)[pair_ok],
                faceness=meta.faceness,
                flip="F0",
                norm=norm,
                detector=detector,
            )
            res["switches"] = switches
            rec["ijb_1to1"] = res
            for far, v in res["tar_at_far"]["nearest"].items():
                rec["summary"][f"tar@far={far}"] = v["tar"]
            rec["summary"]["auc"] = res["auc"]
        feats = image_features(raw, None, meta.faceness, "F0", norm, detector)
        tids, tfeats = template_features(feats, meta.template_ids, meta.media_ids)
        if plan["probe"] and plan["galleries"]:
            galleries = {p.stem.rsplit("_", 1)[-1]: read_1n_templates(p) for p in plan["galleries"]}
            res_n = ijb_1toN(tids, tfeats, galleries, read_1n_templates(plan["probe"][0]), settings=switches)
            rec["ijb_1toN"] = res_n
            rec["benchmark"]["galleries"] = list(galleries)
            for r, v in res_n["mean"]["rank_k"].items():
                rec["summary"][f"rank-{r}"] = v
            for f, v in res_n["mean"]["tpir_at_fpir"].items():
                rec["summary"][f"tpir@fpir={f}"] = v
        if plot_dir is not None:
            if meta.pair_t1 is not None:
                order = {int(t): i for i, t in enumerate(tids)}
                s = np.einsum(
                    "ij,ij->i",
                    tfeats[[order[int(t)] for t in np.asarray(meta.pair_t1)[pair_ok]]],
                    tfeats[[order[int(t)] for t in np.asarray(meta.pair_t2)[pair_ok]]],
                )
                y = np.asarray(meta.pair_label).astype(bool)[pair_ok]
                fpr, tpr, _ = roc(s, y)
                rec["curves"] = {"roc": roc_points(fpr, tpr)}
                rec["plots"]["roc"] = str(
                    plot_roc({switches["code"]: (fpr, tpr)}, plot_dir / "roc.png", title=f"ROC: {ctx.name}")
                )
                rec["plots"]["scores"] = str(
                    plot_score_histogram(s, y, plot_dir / "scores.png", title=f"Template scores: {ctx.name}")
                )
            if "ijb_1toN" in rec:
                first = next(iter(rec["ijb_1toN"]["galleries"].values()))
                rec["plots"]["cmc"] = str(
                    plot_cmc(
                        first["closed_set"]["cmc"],
                        plot_dir / "cmc.png",
                        title=f"CMC (first gallery): {ctx.name}",
                    )
                )
        return rec
