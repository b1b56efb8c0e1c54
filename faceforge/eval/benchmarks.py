"""Several benchmarks in one run, one embedding pass per image set, through the embedding cache.

Benchmark specs are ``kind:ARG[:ARG...]``; every kind is a class in the registry
:data:`faceforge.eval.kinds.BENCHMARK_KINDS` (see :mod:`faceforge.eval.kinds` for what each does):

* pairs: ``lfw:PAIRS:IMAGES``, ``bin:FILE``, ``quality:PAIRS:IMAGES[:SOURCES]``, ``qualityall:IMAGES[:SOURCES]``
  (quality sources: :mod:`faceforge.eval.kinds.quality_sources`);
* identity-labelled folders: ``allpairs:IMAGES[:MIN]``, ``ident:IMAGES[:K[:MIN]]``;
* demographic differentials: ``bias:IMAGES:GROUPS[:identities]``, ``biaspairs:PAIRS:IMAGES:GROUPS``
  (GROUPS: a labeller name or an ``identity_or_path,group`` CSV/TSV file);
* age: ``fgnet:IMAGES``, ``cacdvs:PAIRS:IMAGES``, ``agegap:PAIRS:IMAGES``;
* templates: ``ijb:DIR[:N0D1]``;
* robustness: ``robust:PAIRS:IMAGES[:OPTIONS]`` (verification under a white-box attack, per ε) and
  ``lowres:SIZE[:one|both][:UP]:SPEC`` (a pairs / all-pairs spec with faces seen at SIZE pixels).

Embeddings are flip-summed (optional) and L2-normalised; all image files needed by the folder-based
benchmarks are embedded in one pass (``.bin`` and IJB images, which need decoding or aligning
first, go through the same cache on their own).  Every record names its protocol, settings, the
model's ``describe()`` and checksums of the data (sha256 of list / ``.bin`` files; for folders the
sha256 of the sorted ``relative path<TAB>size`` list).

This is the one evaluation path: ``faceforge eval`` calls :func:`run_benchmarks` with the on-disk
cache, and training calls :func:`evaluate_checkpoint` (no cache: the model changes every time).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faceforge.embedders.cache import cached_embed_paths
from faceforge.eval.kinds import BENCHMARK_KINDS, BenchmarkSpec, BenchmarkSpecError, RunContext
from faceforge.eval.kinds.base import (
    DEFAULT_MIN_VALID_FRACTION,
    embedding_settings_record,
    file_sha256,
    folder_checksum,
)
from faceforge.eval.kinds.pairs import verification_record
from faceforge.eval.parity_accuracy import measure_accuracy_part, wants_accuracy_part

log = logging.getLogger(__name__)

__all__ = [
    "BenchmarkSpec",
    "BenchmarkSpecError",
    "CheckpointEvaluation",
    "evaluate_checkpoint",
    "file_sha256",
    "folder_checksum",
    "lfw_spec",
    "parse_benchmark_spec",
    "run_benchmarks",
    "verification_record",
]

RESULT_FORMAT = "faceforge-eval/1"


def parse_benchmark_spec(spec: str) -> BenchmarkSpec:
    """Parse one ``kind:ARG...`` spec (syntax only; files are checked when the run starts)."""
    kind, sep, rest = spec.partition(":")
    if kind not in BENCHMARK_KINDS:
        raise BenchmarkSpecError(spec, f"unknown kind {kind!r}")
    k = BENCHMARK_KINDS.build(kind)
    if not sep or not rest:
        raise BenchmarkSpecError(spec, f"missing arguments, expected {k.usage}")
    return k.parse(spec, rest)


def lfw_spec(pairs_file: str | Path, images_dir: str | Path) -> BenchmarkSpec:
    """``lfw:PAIRS:IMAGES`` from its two paths, unparsed (so either may contain ':')."""
    return BENCHMARK_KINDS.build("lfw").spec_of(pairs_file, images_dir)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _unique_names(specs: list[BenchmarkSpec]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for b in specs:
        seen[b.name] = seen.get(b.name, 0) + 1
        names.append(b.name if seen[b.name] == 1 else f"{b.name}#{seen[b.name]}")
    return names


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
    min_valid_fraction: float = DEFAULT_MIN_VALID_FRACTION,
) -> dict[str, Any]:
    """Run every benchmark; returns the run record (also ``out_dir/result.json`` when ``out_dir`` is given).

    Pairs (images) with an unreadable image are left out; a benchmark where fewer than
    ``min_valid_fraction`` of them can be scored fails (:func:`faceforge.eval.kinds.base.check_valid`).

    Run record: ``format``, ``model`` (``describe()``), ``settings`` (flip, normalisation, cache),
    ``benchmarks`` ``{name: record}`` in spec order, ``embedding`` (images embedded vs taken from the
    cache), ``seconds``.  Each benchmark record has ``name``, ``spec``, ``kind``, ``benchmark``
    (dataset description with checksums), ``settings``, ``summary`` (headline numbers, all floats),
    the protocol's full output, ``plots`` (PNG paths), for kinds with a ROC plot ``curves["roc"]`` (at most
    200 of its points, :func:`faceforge.eval.roc.roc_points`, which ``eval --compare`` overlays) and
    ``seconds``.  For compatibility with single-benchmark result files, the first benchmark's
    ``benchmark``, protocol output and ``plots`` are also copied to the top level, and its settings are
    merged into the top-level ``settings``.
    """
    t_run = time.perf_counter()
    parsed = [s if isinstance(s, BenchmarkSpec) else parse_benchmark_spec(s) for s in specs]
    if not parsed:
        raise ValueError("no benchmark given")
    for b in parsed:
        BENCHMARK_KINDS.build(b.kind).check(b)
    for b in parsed:
        BENCHMARK_KINDS.build(b.kind).check_model(b, embedder)
    names = _unique_names(parsed)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    stats: dict[str, int] = {}

    # 1. plan: which aligned image files each benchmark needs (files are checked above)
    kinds = [BENCHMARK_KINDS.build(b.kind) for b in parsed]
    plans = [k.plan(b, image_ext) for k, b in zip(kinds, parsed, strict=True)]
    all_paths: dict[str, int] = {}
    for plan in plans:
        for f in plan.get("unique_files", []):
            all_paths.setdefault(f, len(all_paths))

    # 2. one embedding pass over every planned image file
    t0 = time.perf_counter()
    path_list = list(all_paths)

    def embed_pass() -> tuple[np.ndarray, list[str]]:
        if not path_list:
            return np.zeros((0, embedder.embedding_size), np.float32), []
        return cached_embed_paths(
            embedder,
            path_list,
            flip=flip,
            cache_dir=cache_dir,
            batch_size=batch_size,
            progress=progress,
            stats=stats,
            normalize=False,
        )

    raw_all, failed_all = embed_pass()
    # a reduced precision whose parity record lacks its accuracy part gets it from the first pairs benchmark
    pairs_bench = next(
        ((b, n, pl) for b, n, pl in zip(parsed, names, plans, strict=True) if b.kind == "lfw"), None
    )
    if pairs_bench is not None and wants_accuracy_part(embedder):
        b, name, plan = pairs_bench
        unit = raw_all / np.maximum(np.linalg.norm(raw_all, axis=1), 1e-12)[:, None]
        if measure_accuracy_part(
            embedder,
            name,
            b.paths[0],
            plan["p1"],
            plan["p2"],
            plan["issame"],
            lambda paths: unit[[all_paths[p] for p in paths]],
            flip,
            n_folds,
            cache_dir,
            batch_size,
            progress,
        ):
            log.warning("%s; embedding again in fp32", embedder.policy.note)
            stats.clear()
            raw_all, failed_all = embed_pass()
    model = embedder.describe()
    # raw norms feed the quality protocol; every other protocol uses the L2-normalised embeddings
    norms_all = np.linalg.norm(raw_all, axis=1)
    emb_all = raw_all / np.maximum(norms_all, 1e-12)[:, None]
    embed_seconds = time.perf_counter() - t0

    def rows(paths: Sequence[str]) -> np.ndarray:
        return emb_all[[all_paths[p] for p in paths]] if paths else np.zeros((0, embedder.embedding_size))

    def norms(paths: Sequence[str]) -> np.ndarray:
        return norms_all[[all_paths[p] for p in paths]]

    def failed_in(paths: Sequence[str]) -> list[str]:
        s = set(paths)
        return [f for f in failed_all if f.split(": ", 1)[0] in s]

    # 3. protocols
    records: dict[str, dict[str, Any]] = {}
    for kind, b, name, plan in zip(kinds, parsed, names, plans, strict=True):
        tb = time.perf_counter()
        ctx = RunContext(
            embedder=embedder,
            model=model,
            flip=flip,
            n_folds=n_folds,
            cache_dir=cache_dir,
            batch_size=batch_size,
            progress=progress,
            stats=stats,
            name=name,
            rows=rows,
            norms=norms,
            failed_in=failed_in,
            min_valid_fraction=min_valid_fraction,
        )
        plot_dir = out / _slug(name) if out is not None else None
        rec: dict[str, Any] = {"name": name, "spec": b.spec, "kind": b.kind}
        rec.update(kind.run(b, plan, ctx, plot_dir))
        rec["model"] = model
        rec["seconds"] = time.perf_counter() - tb
        records[name] = rec

    run: dict[str, Any] = {
        "format": RESULT_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": model,
        "settings": {
            **embedding_settings_record(flip, cache_dir, model),
            "min_valid_fraction": float(min_valid_fraction),
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
        if key not in ("name", "spec", "kind", "model", "settings", "summary", "seconds", "curves"):
            run.setdefault(key, value)
    run["seconds"] = time.perf_counter() - t_run
    if out is not None:
        (out / "result.json").write_text(json.dumps(run, indent=2))
    return run


@dataclass(frozen=True)
class CheckpointEvaluation:
    """What :func:`evaluate_checkpoint` returns: the headline numbers and the whole run record."""

    summaries: dict[str, dict[str, Any]]  # {benchmark name: its summary}, in spec order
    record: dict[str, Any]  # the run record of :func:`run_benchmarks` (also out_dir/result.json)


def evaluate_checkpoint(
    path: str | Path,
    specs: Sequence[str | BenchmarkSpec],
    out_dir: str | Path | None,
    flip: bool = True,
    batch_size: int = 128,
    device: str = "auto",
    progress: bool = True,
    n_folds: int = 10,
    precision: str = "fp32",
    cache_dir: str | Path | None = None,
) -> CheckpointEvaluation:
    """Run ``specs`` on a faceforge checkpoint: the evaluation hook of training.

    The checkpoint becomes a :class:`~faceforge.embedders.checkpoint.CheckpointEmbedder` (``device``,
    ``precision``, ``batch_size`` faces per forward pass) and goes through :func:`run_benchmarks` with
    ``batch_size`` images per embedding chunk, without the on-disk cache unless ``cache_dir`` is given
    (a model under training changes between evaluations).  For an ``lfw`` spec (see :func:`lfw_spec`)
    ``record["verification"]``, ``record["roc"]`` and ``record["val_at_far"]`` hold the numbers the
    trainer's former ``evaluate_pairs`` returned, computed the same way.
    """
    from faceforge.embedders.checkpoint import CheckpointEmbedder

    embedder = CheckpointEmbedder(path, device=device, precision=precision, batch_size=batch_size)
    run = run_benchmarks(
        embedder,
        specs,
        out_dir,
        cache_dir=cache_dir,
        flip=flip,
        n_folds=n_folds,
        batch_size=batch_size,
        progress=progress,
    )
    return CheckpointEvaluation({name: rec["summary"] for name, rec in run["benchmarks"].items()}, run)
