"""``faceforge export-onnx CHECKPOINT OUT.onnx``: the backbone as ONNX with its preprocessing, checked by onnxruntime.

faceforge export-onnx runs/demo/checkpoints/model.pt model.onnx
faceforge export-onnx last.pt model_b1.onnx --batch 1 --opset 17 --exporter torchscript
"""

from __future__ import annotations

import argparse

from faceforge.cli.registry import command

# as in faceforge.deploy.export_onnx, which is not imported here so that building the parser stays free of torch
DEFAULT_OPSET = 18
EXPORTERS = ("dynamo", "torchscript")


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="faceforge checkpoint (runs/<name>/checkpoints/model.pt or last.pt)")
    p.add_argument("out", help="ONNX file to write (.onnx); written atomically")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument(
        "--batch",
        default="dynamic",
        metavar="dynamic|N",
        help="batch axis: 'dynamic' (default) or a fixed batch size N",
    )
    p.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default="dynamo",
        help="torch.onnx exporter: dynamo (default, torch.export-based) or torchscript (legacy tracer)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="fail when onnxruntime and PyTorch embeddings differ by more than this (max abs, scaled by "
        "max(1, max |embedding|)); default 1e-3",
    )


@command(
    "export-onnx",
    "export a checkpoint's backbone to ONNX (dynamic batch, preprocessing in the metadata), verified "
    "against PyTorch with onnxruntime",
)(_add)
def run(args: argparse.Namespace) -> int:
    from faceforge.deploy.export_onnx import export_onnx

    rep = export_onnx(
        args.checkpoint,
        args.out,
        opset=args.opset,
        batch=args.batch,
        exporter=args.exporter,
        tolerance=args.tolerance,
    )
    pre = rep.metadata["preprocess"]
    size_mb = rep.path.stat().st_size / 2**20
    print(f"wrote {rep.path} ({size_mb:.1f} MiB, sha256 {rep.sha256})")
    print(
        f"  input 'input' float32 [{rep.batch}, 3, {rep.input_size}, {rep.input_size}] -> output 'embedding' "
        f"[{rep.batch}, {rep.embedding_size}]; {rep.exporter} exporter, opset {rep.opset}"
    )
    print(
        f"  preprocessing (metadata 'faceforge'): {pre['colour']}, mean {pre['mean']}, std {pre['std']}, "
        f"alignment {pre['alignment']}"
    )
    print(
        f"  verified with onnxruntime on {rep.verified_faces} random faces: max abs diff {rep.max_abs_diff:.3g} "
        f"(max |embedding| {rep.max_abs_embedding:.3g}, limit {rep.tolerance:.3g})"
    )
    return 0
