"""``faceforge search``: batch 1:N search without the server.

faceforge search --gallery DIR_OR_DB --probes DIR --out results.csv [--model default] [--fmr 1e-4] [--k 5]

``--gallery`` is a folder of ``<identity>/<photo>`` (enrolled into a temporary SQLite gallery, or into
``--save-db PATH``; photos without a usable face are skipped and listed) or an existing gallery database
(a SQLite file or ``postgresql://...``, which must hold embeddings of the same model). ``--probes`` is a
folder of photos (any depth); every face of every photo is searched. The CSV has one row per (probe face,
rank); ``results.json`` beside it records the settings (model, threshold rule, detector, gallery) and the
skipped photos with their reasons.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from faceforge.cli.arguments import add_precision_argument, finish_job, parse_key_values, print_listed
from faceforge.cli.registry import command

CSV_COLUMNS = (
    "probe",
    "face",
    "box",
    "det_score",
    "rank",
    "identity",
    "identity_id",
    "face_id",
    "score",
    "match",
    "threshold",
)


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gallery", required=True, help="folder of <identity>/<photo>, a SQLite gallery or postgresql://..."
    )
    p.add_argument("--probes", required=True, help="folder of probe photos")
    p.add_argument(
        "--out", required=True, help="results CSV (a .json with the settings is written beside it)"
    )
    p.add_argument("--model", default="default", help="embedder (default: SFace, else dlib)")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE")
    add_precision_argument(p)
    p.add_argument("--detector", default="yunet")
    p.add_argument("--detector-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--min-det-score", type=float, default=0.7)
    p.add_argument("--calibration", help="calibration JSON (default: the packaged one for the model)")
    p.add_argument("--threshold", type=float, help="fixed cosine threshold instead of a calibration")
    p.add_argument(
        "--fmr", type=float, default=None, help="target false-match rate of the decision (default 1e-4)"
    )
    p.add_argument("--k", type=int, default=5, help="identities per probe face")
    p.add_argument("--save-db", help="with a gallery folder: keep the enrolled gallery in this SQLite file")


def _is_db(spec: str) -> bool:
    return spec.startswith(("postgresql://", "postgres://", "sqlite:///")) or Path(spec).is_file()


def _photo(path: Path, use: Callable[[bytes], Any], skipped: list[dict[str, str]]) -> Any:
    """``use(the photo's bytes)``; a photo that cannot be read or used is listed in ``skipped`` (file, reason)
    and None is returned: one bad photo never ends the job."""
    from faceforge.data.image_io import UnreadableImageError, read_image_bytes
    from faceforge.serve.pipeline import PhotoError

    try:
        return use(read_image_bytes(path))
    except (PhotoError, UnreadableImageError, FileNotFoundError) as exc:
        reason = exc.reason if isinstance(exc, UnreadableImageError) else str(exc)
        skipped.append({"file": str(path), "reason": reason})
        return None


def _enrol_folder(service: Any, root: Path, skipped: list[dict[str, str]]) -> int:
    """Enrol every identity folder below ``root``; a bad photo is skipped and listed, never fatal."""
    from faceforge.data.files import list_images
    from faceforge.serve.keys import Actor
    from faceforge.serve.store import NewFace

    people = sorted(d for d in root.iterdir() if d.is_dir() and not d.is_symlink())
    if not people:
        raise ValueError(f"gallery folder {root} has no <identity>/ sub-folders")
    enrolled = 0
    actor = Actor(name="cli:search")
    for person in people:
        faces = []
        for path in list_images(person, allow_empty=True):
            photo = _photo(
                path, lambda data, name=path.name: service.pipeline.detect(data, name, "largest"), skipped
            )
            if photo is None:
                continue
            face = photo.faces[0]
            service.pipeline.embed([face])
            faces.append(
                NewFace(
                    face.embedding,
                    photo.sha256,
                    face.box,
                    face.landmarks,
                    face.det_score,
                    face.quality,
                    face.crop_jpeg(),
                )
            )
        if faces:
            service.store.enrol(person.name, faces, service.gallery.model_id, actor)
            enrolled += 1
    service.index.sync(service.store)
    return enrolled


@command("search", "batch 1:N search of probe photos against a gallery folder or database, to CSV")(_add)
def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from faceforge.data.files import list_images
    from faceforge.serve.index import IndexSettings
    from faceforge.serve.pipeline import PipelineSettings
    from faceforge.serve.service import Service, ServiceSettings
    from faceforge.serve.sql import describe_url

    probes = Path(args.probes)
    if not probes.is_dir():
        raise FileNotFoundError(f"--probes {probes} is not a folder")
    probe_files = list_images(probes, what="--probes")  # FIFOs, broken links ... are listed as skipped
    skipped: list[dict[str, str]] = []  # gallery photos
    skipped_probes: list[dict[str, str]] = []
    searched = 0
    with tempfile.TemporaryDirectory() as tmp:
        from_db = _is_db(args.gallery)
        if not from_db and not Path(args.gallery).is_dir():
            raise FileNotFoundError(f"--gallery {args.gallery} is neither a folder nor a gallery database")
        if from_db:
            db = args.gallery
        else:
            db = args.save_db or str(Path(tmp) / "gallery.db")
            if Path(db).exists():
                raise ValueError(f"--save-db {db} exists; choose a new file or pass it as --gallery")
        settings = ServiceSettings(
            db=db,
            model=args.model,
            model_options={
                "precision": args.precision,
                **parse_key_values(args.model_option, "--model-option"),
            },
            detector=args.detector,
            detector_options=parse_key_values(args.detector_option, "--detector-option"),
            calibration=args.calibration,
            threshold=args.threshold,
            pipeline=PipelineSettings(args.min_det_score),
            index=IndexSettings(),
            max_wait_ms=0.0,
        )
        service = Service(settings)
        try:
            enrolled = None if from_db else _enrol_folder(service, Path(args.gallery), skipped)
            if not from_db:
                print_listed("gallery photo skipped", skipped)
                finish_job(service.index.count, len(skipped), f"gallery photos below {args.gallery}")
            decision = service.gallery.decision(args.fmr)
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            n_faces = n_match = 0
            with out.open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(CSV_COLUMNS)
                for path in tqdm(probe_files, desc="search", unit="photo"):
                    rel = str(path.relative_to(probes))
                    result = _photo(
                        path,
                        lambda data, rel=rel: service.gallery.search_photo(data, rel, args.k, args.fmr),
                        skipped_probes,
                    )
                    if result is None:
                        continue
                    searched += 1
                    for fi, face in enumerate(result["faces"]):
                        n_faces += 1
                        n_match += face["decision"] is not None
                        for rank, m in enumerate(face["matches"], start=1):
                            writer.writerow(
                                (
                                    rel,
                                    fi,
                                    json.dumps(face["box"]),
                                    face["det_score"],
                                    rank,
                                    m["name"],
                                    m["identity_id"],
                                    m["face_id"],
                                    f"{m['score']:.6f}",
                                    int(m["match"]),
                                    f"{decision.threshold:.6f}",
                                )
                            )
            report = {
                "gallery": describe_url(args.gallery),
                "gallery_identities_enrolled": enrolled,
                "gallery_faces": service.index.count,
                "probes": str(probes),
                "probe_photos": len(probe_files),
                "probe_photos_searched": searched,
                "probe_faces": n_faces,
                "probe_faces_matched": n_match,
                "k": args.k,
                "decision_rule": decision.to_dict()
                | {"rule": "match = cosine >= threshold", "source": service.calibration.source},
                "service": service.describe(),
                "skipped": skipped + skipped_probes,  # every photo not used, gallery then probes
                "skipped_gallery_photos": len(skipped),
                "skipped_probe_photos": len(skipped_probes),
            }
            out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        finally:
            service.close()
    report_path = out.with_suffix(".json")
    print(
        f"{out}: {n_faces} faces in {searched} of {len(probe_files)} probe photos, {n_match} matched at threshold "
        f"{decision.threshold:.4f} (FMR {decision.fmr}); skipped {len(skipped_probes)} probe photo(s) and "
        f"{len(skipped)} gallery photo(s) (listed in {report_path})"
    )
    print_listed("probe photo skipped", skipped_probes, report=str(report_path))
    return finish_job(searched, len(skipped_probes), "probe photos", str(report_path))
