"""An "LFW age-gap" verification list: pairs of LFW people not used in training, with estimated ages.

LFW has no ages, so the ages come from an age estimator trained by faceforge on UTKFace (``faceforge attributes
--model AGE_MODEL --images lfw_aligned --out lfw_ages.csv``). The people are those of a pairs file the training
left out (``data.exclude_pairs``; by default ``pairsDevTest.txt``: 963 people, 418 with two or more images).

Rules (all seeded, ``--seed``):

* **genuine pairs**: every pair of images of a person; a person with more than ``--max-per-person`` such pairs
  keeps that many, spread over the person's age gaps (pairs sorted by gap, evenly spaced picks), so the few
  people with a hundred photos do not make up the list;
* **impostor pairs**: one per genuine pair, two images of different people whose estimated age gap falls in the
  same 1-year bin as the genuine pair's (drawn from a seeded pool of random different-person pairs; the nearest
  non-empty bin when a bin runs out), so every age-gap band holds as many impostor as genuine pairs and the
  band accuracies compare like with like;
* the list is shuffled, so the 10 contiguous folds of the ``agegap`` protocol each mix every band.

The age gap of a pair is the difference of two *estimated* ages: with an estimator MAE of e years, a gap carries
an error of up to about 2e, so the bands sort pairs by estimated, not true, gap (stated in every result).

    python benchmarks/lfw_agegap_pairs.py --ages lfw_ages.csv --images lfw_aligned --out lfw_agegap.txt
        [--people-from $FACEFORGE_DATA/lfw/pairsDevTest.txt] [--max-per-person 40] [--seed 0]

Writes ``OUT`` (``image_a image_b label age_a age_b``, paths relative to ``--images``; the ``agegap:OUT:IMAGES``
benchmark reads it) and ``OUT.json`` (counts per band, rules, the ages file's hash).
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from faceforge.core.hashing import file_sha256
from faceforge.data.attributes import read_sidecar
from faceforge.data.pairs import pairs_people
from faceforge.eval.age import DEFAULT_AGE_EDGES


def _band(gap: float) -> str:
    edges = DEFAULT_AGE_EDGES
    for lo, hi in itertools.pairwise(edges):
        if lo <= gap < hi:
            return f"{lo:g}-{hi:g}" if np.isfinite(hi) else f"{lo:g}+"
    raise ValueError(gap)


def build_agegap_pairs(
    ages_csv: Path,
    images: Path,
    people_from: Path,
    out: Path,
    max_per_person: int = 40,
    seed: int = 0,
    pool_factor: int = 60,
) -> dict[str, object]:
    table, names = read_sidecar(ages_csv)
    if "age" not in names:
        raise ValueError(f"{ages_csv}: no 'age' column (have {names}); write it with faceforge attributes")
    people = sorted(pairs_people(people_from))
    wanted = set(people)
    by_person: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for path, row in table.items():
        person = path.split("/")[0]
        if person in wanted and row.get("age") is not None and (images / path).is_file():
            by_person[person].append((path, float(row["age"])))
    rng = np.random.default_rng(seed)
    genuine: list[tuple[str, str, float, float]] = []
    for person in sorted(by_person):
        imgs = sorted(by_person[person])
        pairs = [(a[0], b[0], a[1], b[1]) for a, b in itertools.combinations(imgs, 2)]
        if len(pairs) > max_per_person:
            pairs.sort(key=lambda p: (abs(p[2] - p[3]), p[0], p[1]))
            keep = np.unique(np.round(np.linspace(0, len(pairs) - 1, max_per_person)).astype(int))
            pairs = [pairs[i] for i in keep]
        genuine += pairs
    # impostors: a seeded pool of different-person pairs, binned by their age gap (1-year bins)
    flat = [(p, path, age) for p in sorted(by_person) for path, age in sorted(by_person[p])]
    n = len(flat)
    pool: dict[int, list[tuple[str, str, float, float]]] = defaultdict(list)
    for _ in range(pool_factor):
        i, j = rng.integers(0, n, size=len(genuine)), rng.integers(0, n, size=len(genuine))
        for a, b in zip(i.tolist(), j.tolist(), strict=True):
            if flat[a][0] != flat[b][0]:
                pool[int(abs(flat[a][2] - flat[b][2]))].append(
                    (flat[a][1], flat[b][1], flat[a][2], flat[b][2])
                )
    for k in pool:
        rng.shuffle(pool[k])
    used: set[tuple[str, str]] = set()
    impostors: list[tuple[str, str, float, float]] = []
    nearest_bin_used = 0
    for g in genuine:
        target = int(abs(g[2] - g[3]))
        for dist in range(0, 101):
            cands = [b for b in (target - dist, target + dist) if pool.get(b)]
            found = None
            for b in cands:
                while pool[b]:
                    c = pool[b].pop()
                    key = tuple(sorted(c[:2]))
                    if key not in used:
                        used.add(key)
                        found = c
                        break
                if found:
                    break
            if found:
                nearest_bin_used += dist > 0
                impostors.append(found)
                break
    rows = [(*g[:2], 1, *g[2:]) for g in genuine] + [(*m[:2], 0, *m[2:]) for m in impostors]
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{a} {b} {lab} {aa:.2f} {ab:.2f}\n" for a, b, lab, aa, ab in rows))
    bands: dict[str, dict[str, int]] = defaultdict(lambda: {"genuine": 0, "impostor": 0})
    for _, _, lab, aa, ab in rows:
        bands[_band(abs(aa - ab))]["genuine" if lab else "impostor"] += 1
    summary = {
        "out": str(out),
        "ages": str(ages_csv),
        "ages_sha256": file_sha256(ages_csv),
        "people_from": str(people_from),
        "people": len(people),
        "people_with_ages": len(by_person),
        "people_with_pairs": sum(1 for v in by_person.values() if len(v) >= 2),
        "images": sum(len(v) for v in by_person.values()),
        "genuine": len(genuine),
        "impostor": len(impostors),
        "impostors_from_a_nearby_bin": int(nearest_bin_used),
        "bands": dict(sorted(bands.items(), key=lambda kv: float(kv[0].split("-")[0].rstrip("+")))),
        "seed": seed,
        "max_per_person": max_per_person,
        "rules": [
            "genuine: every pair of a person's images; above max_per_person, evenly spaced picks over the pairs "
            "sorted by age gap",
            "impostor: one per genuine pair, different people, estimated age gap in the same 1-year bin (nearest "
            "non-empty bin when one runs out)",
            "age gaps are differences of estimated ages",
            "rows shuffled with the seed",
        ],
    }
    out.with_name(out.name + ".json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--ages", required=True, type=Path, help="attribute CSV with an 'age' column (faceforge attributes)"
    )
    ap.add_argument(
        "--images", required=True, type=Path, help="the aligned LFW tree the CSV's paths are relative to"
    )
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument(
        "--people-from", type=Path, default=None, help="pairs file whose people are used (DevTest)"
    )
    ap.add_argument("--max-per-person", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    people_from = args.people_from
    if people_from is None:
        from faceforge.config import data_folder

        people_from = Path(data_folder()) / "lfw" / "pairsDevTest.txt"
    s = build_agegap_pairs(args.ages, args.images, people_from, args.out, args.max_per_person, args.seed)
    print(json.dumps({k: s[k] for k in ("people_with_pairs", "genuine", "impostor", "bands")}, indent=2))


if __name__ == "__main__":
    main()
