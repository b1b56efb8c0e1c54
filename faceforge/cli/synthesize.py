"""``faceforge synthesize``: aligned faces at other ages with a trained face age synthesis run (MTLFace).

faceforge synthesize --model runs/fas/checkpoints/model.pt --images aligned/ --age-groups 0,3,6 --out aged/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from faceforge.cli.main import command


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="model.pt (or last.pt) of a 'faceforge train ... method=mtlface_fas' run",
    )
    p.add_argument(
        "--images", required=True, help="folder of aligned 112x112 faces (recursive) or a list file"
    )
    p.add_argument(
        "--age-groups",
        required=True,
        help="target age groups, comma-separated, e.g. 0,3,6 (G=7: 0-10, 11-20, ..., 61+)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder: group<g>/<name>.png per face and group, grid.png, synthesize_report.json",
    )
    p.add_argument("--grid-rows", type=int, default=16, help="faces shown in grid.png (the first N)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")


@command(
    "synthesize", "write aligned faces at other age groups with a face age synthesis model, plus a grid"
)(_add)
def run(args: argparse.Namespace) -> int:
    from faceforge.methods.mtlface.synthesis import Synthesizer, synthesize_folder

    try:
        groups = [int(g) for g in args.age_groups.split(",") if g.strip()]
    except ValueError:
        raise ValueError(
            f"--age-groups {args.age_groups!r}: give group numbers separated by commas, e.g. 0,3,6"
        ) from None
    if not groups:
        raise ValueError("--age-groups: give at least one group, e.g. 0,3,6")
    if not Path(args.images).exists():
        raise FileNotFoundError(f"--images: no folder or list file at {args.images}")
    synth = Synthesizer(args.model, device=args.device)
    bad = [g for g in groups if not 0 <= g < synth.groups]
    if bad:
        raise ValueError(f"--age-groups {bad}: the model has groups 0..{synth.groups - 1}")
    rep = synthesize_folder(synth, args.images, args.out, groups, args.grid_rows, args.batch_size)
    print(
        f"wrote {rep.written} faces ({rep.faces} faces x {len(groups)} groups) to {args.out}; grid: {rep.grid}"
    )
    if rep.skipped:
        print(f"skipped {len(rep.skipped)} images (listed in {Path(args.out) / 'synthesize_report.json'}):")
        for s in rep.skipped[:10]:
            print(f"  {s}")
    return 0
