"""``faceforge align``: 5-point similarity alignment of a photo folder with a landmarks CSV."""

from __future__ import annotations

import argparse

from faceforge.cli.arguments import print_listed, printable
from faceforge.cli.registry import command


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True, help="folder of photos (ImageFolder layout is kept)")
    p.add_argument(
        "--landmarks", required=True, help="CSV with 'file' and the 5-point columns leye_x..rmouth_y"
    )
    p.add_argument("--out", required=True, help="output folder for aligned faces")
    p.add_argument("--size", type=int, default=112, help="output size in pixels (default 112)")
    p.add_argument(
        "--landmark-offset",
        default="0,0",
        metavar="DX,DY",
        help="added to every landmark, e.g. -48,-48 when landmarks are in original 250px LFW "
        "coordinates but the files are the 160px centre crops",
    )
    p.add_argument("--ext", default=".jpg", choices=[".jpg", ".png"], help="output format (JPEG q95 or PNG)")
    p.add_argument("--overwrite", action="store_true", help="re-align images that already exist in --out")
    p.add_argument(
        "--workers", type=int, default=0, help="processes (default 0: one per core; the outputs are the same)"
    )
    p.add_argument("--no-progress", action="store_true")


@command("align", "align faces to the 112x112 ArcFace template from 5 landmarks")(_add)
def run(args: argparse.Namespace) -> int:
    from faceforge.data.align_folder import align_folder

    dx, dy = args.landmark_offset  # two finite numbers (faceforge.core.options)
    report = align_folder(
        args.images,
        args.landmarks,
        args.out,
        size=args.size,
        landmark_offset=(dx, dy),
        out_ext=args.ext,
        overwrite=args.overwrite,
        workers=args.workers,
        progress=not args.no_progress,
    )
    report_path = f"{args.out}/align_report.json"
    print(
        f"aligned {report.aligned} images, kept {report.kept_existing} already aligned, "
        f"skipped {report.skipped} ({len(report.no_landmarks)} without landmarks, "
        f"{len(report.bad_landmarks)} with unusable landmarks, {len(report.unreadable)} unreadable, "
        f"{len(report.name_taken)} with a taken output name); {len(report.bad_rows)} bad landmarks rows; "
        f"report: {report_path}"
    )
    print_listed("bad landmarks row", [{**r, "file": r["row"]} for r in report.bad_rows], report=report_path)
    print_listed("no landmarks", report.no_landmarks, report=report_path)
    print_listed("unusable landmarks", report.bad_landmarks, report=report_path)
    print_listed("unreadable", report.unreadable, report=report_path)
    print_listed("output name taken", report.name_taken, report=report_path)
    for r in report.renamed[:20]:
        print(f"  renamed: {printable(r['file'])} -> {printable(r['output'])} ({printable(r['reason'])})")
    return 0
