"""``faceforge synthesize``: aligned faces at other ages with a trained face age synthesis run (MTLFace).

faceforge synthesize --model runs/fas/checkpoints/model.pt --images aligned/ --age-groups 0,3,6 --out aged/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from faceforge.cli.registry import command


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

    groups = list(args.age_groups)  # integers >= 0 (faceforge.core.options)
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


def _add_select(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config", help="the AIFR run's training config (YAML path or packaged name): its data are the sources"
    )
    p.add_argument(
        "overrides", nargs="*", help="config overrides, as for 'faceforge train' (e.g. data.root=...)"
    )
    p.add_argument("--fas", required=True, help="model.pt / last.pt of the face age synthesis run")
    p.add_argument(
        "--aifr", required=True, help="the AIFR checkpoint to fine-tune (it judges identity and age)"
    )
    p.add_argument(
        "--out", required=True, help="output folder: faces/, selected.txt (training list), selection.json"
    )
    p.add_argument("--age-groups", default=None, help="target groups, comma-separated (default: all)")
    p.add_argument("--per-identity", type=int, default=2, help="source faces per person (default 2)")
    p.add_argument(
        "--id-threshold", type=float, default=0.5, help="keep if cos(AIFR(source), AIFR(synthesised)) >= this"
    )
    p.add_argument(
        "--age-margin",
        type=float,
        default=5.0,
        help="the estimator's age may leave the group's range by this many years",
    )
    p.add_argument(
        "--age-model",
        default=None,
        help="another checkpoint with an 'age' objective to judge age (default: --aifr's)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")


@command(
    "select-synthetic",
    "selective fine-tuning data (MTLFace TPAMI): synthesised faces that keep identity and age",
)(_add_select)
def run_select(args: argparse.Namespace) -> int:
    from faceforge.config import compose_config
    from faceforge.data.sources import build_training_data
    from faceforge.methods.mtlface.selection import SelectionRule, select_synthesised

    cfg = compose_config(args.config, args.overrides)
    data = build_training_data(cfg.data, seed=cfg.run.seed, progress=False)
    main_rows = len(data.samples.paths)  # the main source's people (data.sources rows stay as they are)
    groups = list(args.age_groups or []) or None  # None: every group
    rep = select_synthesised(
        args.fas, args.aifr, data.dataset, data.labels[:main_rows], data.samples.paths, args.out, target_groups=groups,
        per_identity=args.per_identity, rule=SelectionRule(args.id_threshold, args.age_margin),
        age_model=args.age_model, seed=args.seed, device=args.device,
    )  # fmt: skip
    print(
        f"kept {rep.kept} of {rep.candidates} synthesised faces; training list {Path(args.out) / 'selected.txt'} "
        f"(fine-tune: faceforge train {args.config} ... data.list_file=<that list> run.init={args.aifr})"
    )
    for g, s in rep.per_group.items():
        print(
            f"  group {g}: identity ok {s['identity_ok']}, age ok {s['age_ok']}, kept {s['kept']} of {s['candidates']}"
        )
    return 0
