"""Verification on an LFW-format pairs file: embed, score, run the protocols, write JSON and plots.

Protocol (named in every result): insightface 10-fold accuracy on squared L2 distances of flip-summed,
L2-normalised embeddings (thresholds 0:4:0.01, contiguous folds), plus the whole-ROC numbers on cosine
similarity: AUC, EER and TAR at FAR 1e-3 and 1e-2 under both TAR rules.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from faceforge.eval.embedding import embed_paths
from faceforge.eval.pairs import read_lfw_pairs, resolve_pairs
from faceforge.eval.plots import plot_roc, plot_score_histogram
from faceforge.eval.roc import roc, summarize_verification
from faceforge.eval.verification import kfold_accuracy, val_at_far


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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
    valid = ~(np.isnan(e1).any(1) | np.isnan(e2).any(1))
    if not valid.all():
        # an unreadable image gets a zero embedding (cosine 0 to anything); such pairs are counted in the
        # result instead of being dropped, so the pair count never changes silently
        e1, e2 = np.nan_to_num(e1), np.nan_to_num(e2)
    cos = np.sum(e1 * e2, axis=1)
    dist = np.sum((e1 - e2) ** 2, axis=1)
    kfold = kfold_accuracy(dist, issame, n_folds=n_folds)
    val = val_at_far(dist, issame, far_target=1e-3, n_folds=n_folds)
    summary = summarize_verification(cos, issame, fars=fars)
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
        "settings": {
            "protocol": kfold.rule,
            "flip": "sum of original and horizontal-flip embeddings" if flip else "none",
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
        "seconds": None,
    }
    result["verification"]["pairs_with_unreadable_image"] = int((~valid).sum())
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        fpr, tpr, _ = roc(cos, issame)
        result["plots"] = {
            "roc": str(
                plot_roc(
                    {f"acc {kfold.mean * 100:.2f}%": (fpr, tpr)},
                    out / "roc.png",
                    title=f"ROC: {Path(pairs_file).name}",
                )
            ),
            "scores": str(
                plot_score_histogram(
                    cos, issame, out / "scores.png", title=f"Cosine scores: {Path(pairs_file).name}"
                )
            ),
        }
    result["seconds"] = time.perf_counter() - t0
    if out_dir is not None:
        (Path(out_dir) / "result.json").write_text(json.dumps(result, indent=2))
    return result
