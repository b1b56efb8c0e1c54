"""Evaluate a model on benchmarks: ``faceforge.evaluate(model, "lfw:pairs.txt:aligned")``.

The benchmarks are those of ``faceforge eval --benchmark`` (:mod:`faceforge.eval.kinds`), run by the same code
(:func:`faceforge.eval.benchmarks.run_benchmarks`), so the numbers are the command's: ``lfw:PAIRS:IMAGES``
(LFW-format pairs over a folder of aligned ``<name>/<name>_NNNN.jpg`` faces: the insightface 10-fold protocol,
ROC, TAR@FAR), ``bin:FILE`` (insightface ``.bin`` sets), ``allpairs:IMAGES[:MIN]`` and ``ident:IMAGES[:K[:MIN]]``
(every pair / closed-set identification on an identity-labelled folder), ``bias:...``, ``quality:...``,
age (``fgnet``, ``cacdvs``, ``agegap``) and ``ijb:DIR``. The images are embedded once for all benchmarks
(flip-sum by default, as ``faceforge eval``).

>>> result = evaluate(sface, pairs=pairs, images=aligned, folds=2)
>>> result.summary["auc"] > 0.95
True
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from faceforge.api.model import Model, load_model
from faceforge.api.results import BenchmarkResult, Evaluation


def evaluate(
    model: Model | str,
    benchmarks: str | Sequence[str] = (),
    *,
    pairs: str | Path | None = None,
    images: str | Path | None = None,
    out_dir: str | Path | None = None,
    flip: bool = True,
    folds: int = 10,
    cache_dir: str | Path | None = None,
    min_valid: float = 0.95,
    progress: bool = False,
) -> Evaluation:
    """Run benchmarks on a model.

    Args:
        model: a loaded :class:`Model` or anything :func:`load_model` takes (loaded on the CPU in fp32).
        benchmarks: one or more ``kind:ARG...`` specs (module docstring).
        pairs: with ``images``, shorthand for one ``lfw`` benchmark: an LFW-format pairs file (paths may
            contain ``:``, which a spec string cannot).
        images: the folder of aligned faces that ``pairs`` names.
        out_dir: write ``result.json`` and the plots there (default: nothing is written).
        flip: add each mirrored face's embedding (``faceforge eval``'s default).
        folds: folds of the pairs protocols (10 for LFW).
        cache_dir: an embedding cache folder shared with ``faceforge eval`` (default: none).
        min_valid: the fewest pairs (images) that must be readable, as a fraction; fewer fails the benchmark.
        progress: show progress bars.
    """
    from faceforge.core.options import check_api
    from faceforge.eval.benchmarks import lfw_spec, run_benchmarks

    check_api(folds=folds, min_valid=min_valid)
    specs: list[Any] = [benchmarks] if isinstance(benchmarks, str) else list(benchmarks)
    if (pairs is None) != (images is None):
        raise ValueError("pairs= and images= go together (an LFW-format pairs file and its aligned faces)")
    if pairs is not None:
        specs.insert(0, lfw_spec(pairs, images))  # type: ignore[arg-type]
    if not specs:
        raise ValueError("no benchmark: give specs such as 'lfw:pairs.txt:aligned' or pairs= and images=")
    m = model if isinstance(model, Model) else load_model(model)
    run = run_benchmarks(
        m.embedder,
        specs,
        out_dir,
        cache_dir=cache_dir,
        flip=flip,
        n_folds=int(folds),
        progress=progress,
        min_valid_fraction=float(min_valid),
    )
    results = {
        name: BenchmarkResult(name, str(rec.get("kind", "")), dict(rec.get("summary", {})), rec)
        for name, rec in run["benchmarks"].items()
    }
    path = Path(out_dir) / "result.json" if out_dir is not None else None
    return Evaluation(results, run, path)
