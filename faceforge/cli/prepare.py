"""``faceforge prepare``: detect, select and align the faces of a photo folder (folder or .rec output)."""

from __future__ import annotations

import argparse

from faceforge.cli.arguments import parse_key_values, print_listed, printable
from faceforge.cli.registry import command


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--images", required=True, help="folder of photos (ImageFolder <identity>/<photo> or flat)"
    )
    p.add_argument("--out", required=True, help="output folder for aligned faces and prepare_report.json")
    p.add_argument(
        "--detector",
        default="yunet",
        help="face detector: yunet (OpenCV, fast), mtcnn (PyTorch; `faceforge fetch mtcnn` first) or dlib "
        "(HOG + 68 points; add --detector-option model=cnn for dlib's CNN)",
    )
    p.add_argument(
        "--detector-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra detector option, repeatable (e.g. min_face=40 for mtcnn, upsample=0 for dlib)",
    )
    p.add_argument(
        "--detector-model",
        default=None,
        metavar="PATH",
        help="detector model file or folder (yunet default: the YuNet model that ships with faceforge; "
        "mtcnn: the folder with pnet/rnet/onet.pt; dlib: face_recognition_models' models folder)",
    )
    p.add_argument(
        "--select",
        default="largest",
        choices=["largest", "central", "all"],
        help="which face to keep per photo: the largest, the one nearest the centre, or all of them "
        "(written as <stem>_<k>.jpg)",
    )
    p.add_argument(
        "--format",
        default="folder",
        choices=["folder", "rec"],
        help="folder: aligned JPEGs in the input's layout; rec: also packed into train.rec/.idx",
    )
    p.add_argument("--size", type=int, default=112, help="output size in pixels (default 112)")
    p.add_argument(
        "--min-score",
        type=float,
        default=None,
        help="detection score threshold in [0, 1] (default: the detector's own, 0.7 for yunet and mtcnn, 0.5 for dlib)",
    )
    p.add_argument(
        "--min-quality",
        type=float,
        default=None,
        metavar="X",
        help="drop aligned faces whose quality (--quality-model) is below X; each is listed in the report "
        "with its score (faces already in --out are scored too)",
    )
    p.add_argument(
        "--quality-model",
        default=None,
        metavar="MODEL",
        help="quality model for --min-quality: a faceforge checkpoint or ONNX file with one output per face "
        "(e.g. the SDD-FIQA regressor of 'faceforge train lfw_sddfiqa')",
    )
    p.add_argument("--overwrite", action="store_true", help="redo photos whose outputs already exist")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes that read, detect and align photos (default 0: one per core; 1: this process only); "
        "the outputs are the same for any number",
    )
    p.add_argument("--no-progress", action="store_true")


def _quality_gate(args: argparse.Namespace):
    """The --min-quality / --quality-model gate (both or neither)."""
    if (args.min_quality is None) != (args.quality_model is None):
        raise ValueError(
            "--min-quality and --quality-model go together: give the threshold and the quality model that scores "
            "the faces (e.g. --quality-model runs/lfw_sddfiqa/checkpoints/model.pt --min-quality 40)"
        )
    if args.quality_model is None:
        return None
    from faceforge.deploy.prepare import QualityGate
    from faceforge.embedders import embedder_from_spec

    model = embedder_from_spec(args.quality_model, batch_size=64)
    if int(model.embedding_size) != 1:
        raise ValueError(
            f"--quality-model {args.quality_model} gives {model.embedding_size} values per face; a quality model "
            "gives 1 (train one with 'faceforge train lfw_sddfiqa', or use a quality ONNX export)"
        )

    from faceforge.core.finite import check_finite

    def score(faces):
        return check_finite(model.embed(faces), model, "quality scores")[:, 0]

    return QualityGate(score, float(args.min_quality), int(model.input_size), model.describe())


@command("prepare", "detect, select and align faces in a photo folder (ImageFolder or .rec output)")(_add)
def run(args: argparse.Namespace) -> int:
    from faceforge.deploy.align_photos import DetectorSpec
    from faceforge.deploy.detect import build_detector
    from faceforge.deploy.prepare import REPORT_NAME, prepare_folder

    options = parse_key_values(args.detector_option, "--detector-option")
    if args.min_score is not None:
        options["score_threshold"] = args.min_score
    # options (names, types, ranges) and model files checked here, before the quality model loads
    detector = build_detector(args.detector, model_path=args.detector_model, **options)
    quality = _quality_gate(args)
    min_score = args.min_score if args.min_score is not None else detector.default_min_score
    spec = DetectorSpec(args.detector, {"model_path": args.detector_model, **options})
    report = prepare_folder(
        args.images,
        args.out,
        detector if args.workers == 1 else spec,
        select=args.select,
        size=args.size,
        out_format=args.format,
        min_score=min_score,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        detector_name=args.detector,
        quality=quality,
        workers=args.workers,
    )
    report_path = f"{args.out}/{REPORT_NAME}"
    print(
        f"aligned {report.faces_written} faces from {report.aligned_images} photos, kept "
        f"{report.kept_existing} already prepared, skipped {report.skipped} ({len(report.no_face)} without a "
        f"face, {len(report.unreadable)} unreadable, {len(report.too_small)} too small, "
        f"{len(report.bad_landmarks)} with unusable landmarks, {len(report.name_taken)} with a taken output "
        f"name), {len(report.several_faces)} with several faces; report: {report_path}"
    )
    if quality is not None:
        print(
            f"quality gate: {len(report.low_quality)} face(s) below {args.min_quality:g} dropped "
            f"({report.dropped_photos} photo(s) left with no face); scores of the kept faces: {report.quality_csv}"
        )
        for e in report.low_quality[:20]:
            q = "no score" if e["quality"] is None else f"{e['quality']:.4g}"
            gone = ", removed from an earlier run" if e.get("removed_existing") else ""
            print(f"  low quality: {printable(e['output'])} (quality {q}{gone})")
        if len(report.low_quality) > 20:
            print(f"  ... and {len(report.low_quality) - 20} more low quality in {report_path}")
    if report.rec:
        print(f"wrote {report.rec} ({report.rec_images} images, {report.num_classes} identities)")
    print_listed("no face", report.no_face, report=report_path)
    print_listed("unreadable", report.unreadable, report=report_path)
    print_listed("too small", report.too_small, report=report_path)
    print_listed("unusable landmarks", report.bad_landmarks, report=report_path)
    print_listed("output name taken", report.name_taken, report=report_path)
    for r in report.renamed[:20]:
        print(f"  renamed: {printable(r['file'])} -> {printable(r['output'])} ({printable(r['reason'])})")
    for s in report.several_faces[:10]:
        print(f"  several faces ({s['faces']}), kept the {args.select} one: {printable(s['file'])}")
    return 0
