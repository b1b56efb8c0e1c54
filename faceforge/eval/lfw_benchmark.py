"""Verification on an LFW-format pairs file: embed, score, run the protocols, write JSON and plots.

Protocol (named in every result): insightface 10-fold accuracy on squared L2 distances of flip-summed,
L2-normalised embeddings (thresholds 0:4:0.01, contiguous folds), plus the whole-ROC numbers on cosine
similarity: AUC, EER and TAR at FAR 1e-3 and 1e-2 under both TAR rules. The scoring itself is
:func:`faceforge.eval.kinds.pairs.verification_record`, shared with ``faceforge eval --benchmark lfw:...``;
this entry point embeds without the on-disk cache (used by the trainer, whose model changes every run).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from faceforge.data.pairs import read_lfw_pairs, resolve_pairs
from faceforge.eval.embedding import embed_paths
from faceforge.eval.kinds.base import file_sha256
from faceforge.eval.kinds.pairs import verification_record


def evaluate_pairs(
    embedder: Any,
    pairs_file: str | Path,
    images_dir: str | Path,
    out_dir: str | Path | None = None,
    flip: bool = True,
    n_folds: int = 10,
    fars: tuple[float, ...] = (1e-3, 1e-2),
    image_ext: str = ".jpg",
    batch_size: int = 128,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the pairs benchmark; returns the result record (also written to ``out_dir/result.json``)."""
    t0 = time.perf_counter()
    pairs = read_lfw_pairs(pairs_file)
    p1, p2, issame = resolve_pairs(pairs, images_dir, ext=image_ext)
    unique = sorted({str(p) for p in p1 + p2})
    index = {p: i for i, p in enumerate(unique)}
    emb, failed = embed_paths(embedder, unique, flip=flip, batch_size=batch_size, progress=progress)
    e1 = emb[[index[str(p)] for p in p1]]
    e2 = emb[[index[str(p)] for p in p2]]
    plot_dir = Path(out_dir) if out_dir is not None else None
    if plot_dir is not None:
        plot_dir.mkdir(parents=True, exist_ok=True)
    model = embedder.describe()
    result: dict[str, Any] = {
        "benchmark": {
            "kind": "lfw-pairs",
            "pairs_file": str(pairs_file),
            "pairs_sha256": file_sha256(pairs_file),
            "images_dir": str(images_dir),
            "n_pairs": len(pairs),
            "n_images": len(unique),
            "unreadable_images": failed,
        },
        "model": model,
        **verification_record(
            e1,
            e2,
            issame,
            model,
            flip,
            n_folds=n_folds,
            fars=fars,
            plot_dir=plot_dir,
            title=Path(pairs_file).name,
        ),
    }
    result["seconds"] = time.perf_counter() - t0
    if plot_dir is not None:
        (plot_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result
