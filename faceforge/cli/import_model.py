"""``faceforge import KIND [FILE] --out model.pt``: a pretrained network from another framework as a faceforge
checkpoint that trains, evaluates, exports and serves like one faceforge trained."""

from __future__ import annotations

import argparse

from faceforge.cli.arguments import parse_key_values
from faceforge.cli.registry import command

#: the importer modules; each registers its importer when imported (one-way: the registry does not import them)
IMPORTER_MODULES: tuple[str, ...] = ("faceforge.importers.dlib_net", "faceforge.importers.onnx_net")


def _importers():
    import importlib

    from faceforge.importers.base import IMPORTERS

    for name in IMPORTER_MODULES:
        importlib.import_module(name)
    return IMPORTERS


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=_importers().names(), help="what the source is")
    p.add_argument(
        "source",
        nargs="?",
        default=None,
        help="the model file (dlib: default the installed face-recognition-models file)",
    )
    p.add_argument("--out", required=True, help="the faceforge checkpoint to write (.pt)")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="importer option (repeatable), e.g. --option input=chip150",
    )


@command("import", "turn a pretrained network (dlib .dat, ONNX) into a trainable faceforge checkpoint")(_add)
def run(args: argparse.Namespace) -> int:
    from faceforge.importers.base import save_imported

    options = parse_key_values(args.option, "--option")
    model = _importers().build(args.kind, source=args.source, **options)
    path = save_imported(model, args.out)
    print(f"imported {model.source.get('network', args.kind)} -> {path}")
    print(
        f"  backbone {model.backbone['name']}, {model.embedding_size}-d, input {model.preprocess['input_size']} px "
        f"{model.preprocess['colour']}, alignment {model.preprocess['alignment']}"
    )
    for note in model.notes:
        print(f"  note: {note}")
    return 0
