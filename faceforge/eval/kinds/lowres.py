"""``lowres:SIZE[:one|both][:UP]:SPEC``: a pairs or all-pairs benchmark with faces seen at ``SIZE`` pixels.

``SPEC`` is an ``lfw:PAIRS:IMAGES``, ``allpairs:IMAGES[:MIN]`` or ``bin:FILE`` spec; its protocol runs unchanged
on faces down-sampled to ``SIZE x SIZE`` with INTER_AREA and resized back to the model's input size with ``UP``
(``cubic`` by default; ``nearest``, ``linear``, ``area``, ``lanczos``): DDL's low-resolution degradation
(:class:`faceforge.embedders.degraded.LowResolutionEmbedder`).

* ``one`` (default): the second face of every pair is degraded, the first stays at full resolution: a
  low-resolution probe (a surveillance capture) against a high-resolution gallery. For ``allpairs`` pair
  ``(i, j)``, ``i < j``, compares image ``i`` at full resolution with image ``j`` degraded
  (:func:`faceforge.eval.allpairs.iter_pair_scores`'s ``probe``);
* ``both``: every face is degraded (``bin`` files support only this mode).

The record is the inner benchmark's, with the degradation under ``settings.low_resolution``; degraded
embeddings go through the embedding cache under their own key. A ``SIZE`` above the model's face size stops
before anything is embedded. Example::

    faceforge eval --model run/model.pt --benchmark lowres:16:allpairs:aligned --benchmark lowres:24:both:lfw:pairs.txt:aligned
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from faceforge.data.augment_extra import INTERPOLATION_NAMES
from faceforge.embedders.cache import cached_embed_paths
from faceforge.embedders.degraded import LowResolutionEmbedder, check_probe_size
from faceforge.eval.kinds.base import (
    BENCHMARK_KINDS,
    BenchmarkKind,
    BenchmarkSpec,
    BenchmarkSpecError,
    RunContext,
)

__all__ = ["LowResolutionKind"]

#: inner kinds and the modes each supports
INNER_KINDS = {"lfw": ("one", "both"), "allpairs": ("one", "both"), "bin": ("both",)}
MODES = ("one", "both")


@BENCHMARK_KINDS.register("lowres")
class LowResolutionKind(BenchmarkKind):
    name = "lowres"
    usage = "lowres:SIZE[:one|both][:UP]:lfw:PAIRS:IMAGES|allpairs:IMAGES|bin:FILE"

    def parse(self, spec: str, rest: str) -> BenchmarkSpec:
        fields = rest.split(":")
        size_text = fields.pop(0)
        if not size_text.isdigit() or int(size_text) < 1:
            raise BenchmarkSpecError(spec, f"SIZE must be a whole number of pixels >= 1, got {size_text!r}")
        mode, up = "one", "cubic"
        while fields and fields[0] in (*MODES, *INTERPOLATION_NAMES):
            word = fields.pop(0)
            mode, up = (word, up) if word in MODES else (mode, word)
        inner_spec = ":".join(fields)
        kind, sep, inner_rest = inner_spec.partition(":")
        if kind not in INNER_KINDS or not sep:
            raise BenchmarkSpecError(
                spec,
                f"after the size and mode give an {' / '.join(INNER_KINDS)} spec, e.g. lowres:16:one:lfw:PAIRS:IMAGES",
            )
        if mode not in INNER_KINDS[kind]:
            raise BenchmarkSpecError(spec, f"{kind} supports only mode {INNER_KINDS[kind]}; use both")
        inner = BENCHMARK_KINDS.build(kind).parse(inner_spec, inner_rest)
        options = (("size", size_text), ("mode", mode), ("up", up), ("inner", inner_spec))
        return BenchmarkSpec(self.name, inner.paths, spec=spec, name=f"lowres{size_text}{mode}:{inner.name}",
                             options=options)  # fmt: skip

    @staticmethod
    def inner(b: BenchmarkSpec) -> tuple[BenchmarkKind, BenchmarkSpec]:
        text = b.option("inner", "")
        kind, _, rest = text.partition(":")
        k = BENCHMARK_KINDS.build(kind)
        return k, k.parse(text, rest)

    def check(self, b: BenchmarkSpec) -> None:
        kind, inner = self.inner(b)
        kind.check(inner)

    def check_model(self, b: BenchmarkSpec, embedder: Any) -> None:
        check_probe_size(int(b.option("size", "0")), embedder.input_size)

    def plan(self, b: BenchmarkSpec, image_ext: str) -> dict[str, Any]:
        kind, inner = self.inner(b)
        plan = kind.plan(inner, image_ext)
        files = list(plan.get("unique_files", []))
        # the shared (full-resolution) pass is needed only for the first face in mode 'one'
        return {
            "inner": plan,
            "files": files,
            "unique_files": files if b.option("mode", "one") == "one" else [],
        }

    def run(
        self, b: BenchmarkSpec, plan: dict[str, Any], ctx: RunContext, plot_dir: Path | None
    ) -> dict[str, Any]:
        kind, inner = self.inner(b)
        mode = b.option("mode", "one")
        low = LowResolutionEmbedder(ctx.embedder, int(b.option("size", "0")), b.option("up", "cubic"))
        files: list[str] = plan["files"]
        index = {f: i for i, f in enumerate(files)}
        raw, failed = (
            cached_embed_paths(low, files, flip=ctx.flip, cache_dir=ctx.cache_dir, batch_size=ctx.batch_size,
                               progress=ctx.progress, stats=ctx.stats, normalize=False)
            if files else (np.zeros((0, low.embedding_size), np.float32), [])
        )  # fmt: skip
        norms = np.linalg.norm(raw, axis=1)
        emb = raw / np.maximum(norms, 1e-12)[:, None]

        def low_rows(paths: Any) -> np.ndarray:
            return emb[[index[p] for p in paths]] if len(paths) else np.zeros((0, low.embedding_size))

        def failed_in(paths: Any) -> list[str]:
            wanted = set(paths)
            return list(
                dict.fromkeys([*ctx.failed_in(paths), *(f for f in failed if f.split(": ", 1)[0] in wanted)])
            )

        if mode == "one":
            sub = dataclasses.replace(ctx, probe_rows=low_rows, failed_in=failed_in)
        else:
            sub = dataclasses.replace(
                ctx,
                embedder=low,
                rows=low_rows,
                norms=lambda p: norms[[index[x] for x in p]],
                failed_in=failed_in,
            )
        rec = kind.run(inner, plan["inner"], sub, plot_dir)
        rec.setdefault("settings", {})["low_resolution"] = {
            **low.degradation(),
            "mode": mode,
            "degraded": "the second face of every pair" if mode == "one" else "every face",
            "inner_spec": inner.spec,
        }
        return rec
