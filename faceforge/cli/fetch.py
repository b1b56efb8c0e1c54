"""``faceforge fetch NAME``: download pinned model files (checked by SHA-256) into the model folder."""

from __future__ import annotations

import argparse

from faceforge.cli.registry import command


def _add(p: argparse.ArgumentParser) -> None:
    from faceforge.core.model_files import MODEL_ARCHIVES

    p.add_argument("name", choices=MODEL_ARCHIVES.names(), help="which model files to fetch")
    p.add_argument("--dest", default=None, help="folder for the files (default: $FACEFORGE_MODELS/NAME)")
    p.add_argument("--force", action="store_true", help="download again even if the files are in place")


@command("fetch", "download pretrained model files (e.g. the MTCNN weights), checked by SHA-256")(_add)
def run(args: argparse.Namespace) -> int:
    from faceforge.core.model_files import fetch_model

    folder = fetch_model(args.name, args.dest, force=args.force)
    print(f"{args.name}: files in {folder}")
    return 0
