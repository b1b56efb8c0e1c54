"""Verification under a changed condition (an attack, a lower resolution) with the threshold fixed on clean pairs.

An operator sets a verification threshold once, on ordinary (clean) comparisons, and keeps it; an attacker or a
low-resolution camera then changes the scores but not the threshold. So the threshold ``t`` is chosen on the clean
scores and every condition is scored with that same ``t`` (accept a pair when ``cos >= t``)::

    TAR(t) = #{genuine s >= t} / n_genuine      FAR(t) = #{impostor s >= t} / n_impostor
    accuracy(t) = (#{genuine s >= t} + #{impostor s < t}) / n

Threshold rules (:func:`fixed_threshold`):

* ``accuracy``: the midpoint between consecutive sorted clean scores with the highest clean accuracy (the
  smallest such threshold on ties) - the decision rule of LFW's protocol, fitted on all clean pairs at once;
* ``far=X``: the smallest threshold with clean FAR <= X (:func:`faceforge.eval.allpairs.threshold_at_rate`,
  ISO/IEC 19795-1's "threshold for FMR = X").

numpy only; the attacks and the down-sampling that produce the changed scores live with the models.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from faceforge.eval.allpairs import threshold_at_rate

__all__ = [
    "THRESHOLD_RULES",
    "best_accuracy_threshold",
    "fixed_threshold",
    "parse_threshold_rule",
    "rates_at",
    "subset_pairs",
]

THRESHOLD_RULES = ("accuracy", "far=X")


def best_accuracy_threshold(scores: ArrayLike, issame: ArrayLike) -> float:
    """The threshold of highest accuracy on ``scores``: candidates are the midpoints between consecutive distinct
    sorted scores plus one below and one above all of them; the smallest best one wins ties."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    same = np.asarray(issame, dtype=bool).ravel()
    if s.size == 0:
        raise ValueError("no scores to fix a threshold on")
    u = np.unique(s)
    cand = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2.0, [u[-1] + 1.0]])
    order = np.argsort(s)
    s_sorted, same_sorted = s[order], same[order]
    # pairs below each candidate: rejected; accuracy = impostors below + genuine at or above
    below = np.searchsorted(s_sorted, cand, side="left")
    imp_below = np.concatenate([[0], np.cumsum(~same_sorted)])[below]
    gen_below = np.concatenate([[0], np.cumsum(same_sorted)])[below]
    correct = imp_below + (same.sum() - gen_below)
    return float(cand[int(np.argmax(correct))])


def parse_threshold_rule(text: str) -> tuple[str, float | None]:
    """``"accuracy"`` or ``"far=1e-2"`` -> ``(rule, far or None)``; ValueError naming the accepted forms."""
    if text == "accuracy":
        return "accuracy", None
    key, sep, value = text.partition("=")
    try:
        far = float(value) if key == "far" and sep else None
    except ValueError:
        far = None
    if far is None or not 0.0 < far < 1.0:
        raise ValueError(f"threshold rule {text!r}: use 'accuracy' or 'far=X' with 0 < X < 1 (e.g. far=1e-2)")
    return "far", far


def fixed_threshold(scores: ArrayLike, issame: ArrayLike, rule: str = "accuracy") -> dict[str, Any]:
    """The threshold fixed on clean ``scores`` by ``rule`` (module doc) and how it was chosen."""
    name, far = parse_threshold_rule(rule)
    s = np.asarray(scores, dtype=np.float64).ravel()
    same = np.asarray(issame, dtype=bool).ravel()
    if name == "accuracy":
        t = best_accuracy_threshold(s, same)
        text = "highest accuracy on the clean pairs (midpoints of sorted scores, smallest on ties)"
    else:
        t, _ = threshold_at_rate(s[~same], float(far))
        text = f"smallest threshold with clean FAR <= {far:g} (ISO/IEC 19795-1)"
    return {"rule": rule, "threshold": float(t), "chosen": text, "accept": "cosine >= threshold"}


def rates_at(scores: ArrayLike, issame: ArrayLike, threshold: float) -> dict[str, float]:
    """Accuracy, TAR and FAR at a fixed ``threshold``, with the mean genuine and impostor scores."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    same = np.asarray(issame, dtype=bool).ravel()
    acc = s >= threshold
    gen, imp = s[same], s[~same]
    return {
        "accuracy": float(np.mean(acc == same)) if s.size else float("nan"),
        "tar": float(np.mean(gen >= threshold)) if gen.size else float("nan"),
        "far": float(np.mean(imp >= threshold)) if imp.size else float("nan"),
        "mean_genuine": float(gen.mean()) if gen.size else float("nan"),
        "mean_impostor": float(imp.mean()) if imp.size else float("nan"),
        "n_genuine": float(gen.size),
        "n_impostor": float(imp.size),
    }


def subset_pairs(issame: np.ndarray, max_pairs: int | None, seed: int) -> np.ndarray:
    """Indices of at most ``max_pairs`` pairs (all when None): half genuine, half impostor, drawn without
    replacement by ``seed``, returned in file order."""
    n = len(issame)
    if max_pairs is None or max_pairs >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    gen, imp = np.flatnonzero(issame), np.flatnonzero(~issame)
    k_gen = min(len(gen), max_pairs // 2)
    k_imp = min(len(imp), max_pairs - k_gen)
    pick = np.concatenate([rng.choice(gen, k_gen, replace=False), rng.choice(imp, k_imp, replace=False)])
    return np.sort(pick)
