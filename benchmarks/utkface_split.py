"""A seeded train / held-out split of aligned UTKFace faces for age estimation (MTLFace benchmark, issue 18 part 2).

UTKFace has no identity labels, so the split is by image: faces are stratified by age (years), and within each
age a seeded shuffle sends ``round(fraction * n)`` of them to the held-out list (ages with a single face stay in
training). Each list line is ``<path relative to the aligned folder> 0``: the folder's own list, usable as
``data.list_file`` (one placeholder class 0: train with ``objectives.margin=null``), as a ``data.sources`` root and
as ``faceforge attributes --images`` (which ignores everything after the path).

    python benchmarks/utkface_split.py --images benchmarks_out/utk_aligned [--heldout 0.2] [--seed 0]

Writes ``<images>/age_train.txt``, ``<images>/age_heldout.txt`` and ``<images>/age_split.json`` (counts, the
training mean age = the predict-the-mean baseline, seed, fraction).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from faceforge.data.attributes import utkface_fields
from faceforge.data.files import list_images


def split_utkface(images: Path, heldout: float = 0.2, seed: int = 0) -> dict[str, object]:
    files = list_images(images, what="--images")
    by_age: dict[int, list[str]] = defaultdict(list)
    unnamed = []
    for f in files:
        parsed = utkface_fields(f.name)
        rel = f.relative_to(images).as_posix()
        if parsed is None:
            unnamed.append(rel)
        else:
            by_age[parsed[0]].append(rel)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for age in sorted(by_age):
        names = sorted(by_age[age])
        order = rng.permutation(len(names))
        k = round(heldout * len(names)) if len(names) > 1 else 0
        test += [names[i] for i in order[:k]]
        train += [names[i] for i in order[k:]]
    train.sort()
    test.sort()
    for name, rows in (("age_train.txt", train), ("age_heldout.txt", test)):
        (images / name).write_text("".join(f"{r} 0\n" for r in rows))
    ages = np.array([utkface_fields(Path(r).name)[0] for r in train], dtype=np.float64)
    summary = {
        "images": str(images),
        "seed": seed,
        "heldout_fraction": heldout,
        "rule": "stratified by age in years; a seeded shuffle within each age; ages with one face stay in training",
        "train": len(train),
        "heldout": len(test),
        "train_mean_age": float(ages.mean()),
        "train_median_age": float(np.median(ages)),
        "files_without_utkface_name": unnamed,
    }
    (images / "age_split.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", required=True, type=Path, help="aligned UTKFace faces (faceforge prepare)")
    ap.add_argument("--heldout", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    s = split_utkface(args.images, args.heldout, args.seed)
    print(json.dumps({k: v for k, v in s.items() if k != "files_without_utkface_name"}, indent=2))


if __name__ == "__main__":
    main()
