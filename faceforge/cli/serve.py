"""``faceforge serve``: the face search service, its API keys, its calibration and re-embedding.

faceforge serve --db gallery.db [--host 127.0.0.1 --port 8000] [--model default|sface|dlib|CKPT|ONNX]
faceforge serve keys create --db gallery.db --name NAME --scope search [--scope enrol ...]
faceforge serve keys list --db gallery.db
faceforge serve keys revoke --db gallery.db KEY_ID_OR_NAME
faceforge serve calibrate --model sface --images LFW_IMAGES --people-from pairsDevTrain.txt --out cal.json
faceforge serve reembed --db gallery.db --model NEW_MODEL
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from faceforge.cli.arguments import add_precision_argument, parse_key_values
from faceforge.cli.registry import command
from faceforge.core.errors import InputError

log = logging.getLogger(__name__)
DB_ENV = "FACEFORGE_DB"


def _db_arg(p: argparse.ArgumentParser, sub: bool = True) -> None:
    # on the sub-commands the default is suppressed, so `serve --db X keys list` keeps X
    p.add_argument(
        "--db",
        default=argparse.SUPPRESS if sub else os.environ.get(DB_ENV, "faceforge_gallery.db"),
        help=f"gallery database: a SQLite file (WAL) or postgresql://... (default ${DB_ENV} or ./faceforge_gallery.db)",
    )


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="default",
        help="embedder: 'default' (SFace, else dlib), sface, dlib, a .pt checkpoint, an .onnx file or kind:path",
    )
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE", help="embedder option")
    add_precision_argument(p)
    p.add_argument("--detector", default="yunet", help="face detector (yunet, mtcnn, dlib)")
    p.add_argument("--detector-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--min-det-score", type=float, default=0.7, help="ignore detections below this score")


def _add(p: argparse.ArgumentParser) -> None:
    _db_arg(p, sub=False)
    _model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--calibration", help="calibration JSON for the model (default: the packaged one, if any)")
    p.add_argument("--threshold", type=float, help="fixed cosine threshold instead of a calibration")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body (MB)")
    p.add_argument(
        "--max-pixels", type=int, default=40_000_000, help="largest photo (pixels, from its header)"
    )
    p.add_argument("--max-faces", type=int, default=20, help="most faces accepted in one photo")
    p.add_argument("--max-photos", type=int, default=10, help="most photos in one enrolment")
    p.add_argument("--rate-limit", type=int, default=120, help="requests per key per minute (0: no limit)")
    p.add_argument("--min-face-px", type=float, default=0.0, help="quality gate: smallest face box side (px)")
    p.add_argument(
        "--min-quality", type=float, default=0.0, help="quality gate: smallest detector score of a face"
    )
    ix = _index_defaults()
    p.add_argument(
        "--hnsw-above",
        type=int,
        default=ix.hnsw_above,
        help="faces at which HNSW replaces exact search (0: never)",
    )
    p.add_argument("--hnsw-m", type=int, default=ix.hnsw_m, help="HNSW links per node")
    p.add_argument("--ef-construction", type=int, default=ix.ef_construction, help="HNSW build beam width")
    p.add_argument(
        "--ef-search", type=int, default=ix.ef_search, help="HNSW search beam width (recall vs time)"
    )
    p.add_argument(
        "--index-file",
        default=None,
        help="where the HNSW graph is kept between runs (default: <db>.index.npz for a SQLite file, none for "
        "PostgreSQL; 'none': always build at start-up)",
    )
    p.add_argument("--workers", type=int, default=1, help="embedding worker threads")
    p.add_argument("--max-batch", type=int, default=32, help="most faces per embedder call")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a batch waits for more requests")
    p.add_argument(
        "--no-crops",
        action="store_true",
        help="keep no aligned face crops (no re-embedding, no crops on the page)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        help="allow this browser origin (CORS is off by default)",
    )
    p.add_argument("--metrics-public", action="store_true", help="serve /metrics without a key")
    p.add_argument("--log-level", default="info")

    sub = p.add_subparsers(dest="action", metavar="ACTION")
    keys = sub.add_parser("keys", help="create, list or revoke API keys")
    ksub = keys.add_subparsers(dest="keys_action", metavar="create|list|revoke", required=True)
    kc = ksub.add_parser("create", help="create a key and print it once")
    _db_arg(kc)
    kc.add_argument("--name", required=True, help="who or what uses the key")
    kc.add_argument(
        "--scope", action="append", required=True, choices=["search", "enrol", "admin"], help="repeatable"
    )
    kl = ksub.add_parser("list", help="list keys (ids, names, scopes; never the secrets)")
    _db_arg(kl)
    kr = ksub.add_parser("revoke", help="revoke a key by id or name")
    _db_arg(kr)
    kr.add_argument("key", help="key id (the 12 hex characters after ffk_) or name")

    cal = sub.add_parser(
        "calibrate", help="thresholds per target FMR from all-pairs scores of a labelled folder"
    )
    _model_args(cal)
    cal.add_argument(
        "--images", required=True, help="photos in <identity>/<photo> folders (e.g. LFW's images)"
    )
    cal.add_argument("--people-from", help="use only the people named in this LFW pairs file")
    cal.add_argument("--out", required=True, help="calibration JSON to write")

    rc = sub.add_parser(
        "recall",
        help="recall@1 and time per query of the HNSW index against exact search, on this gallery",
        description="Loads the gallery's graph file (or builds the index with the serve options given before "
        "'recall', without saving it) and compares it with exact search over the same faces, on queries made "
        "from the gallery (a face plus noise, cosine about --query-cosine with it) and on --probes embeddings. "
        "Use 'faceforge serve --hnsw-above 1 recall' to try HNSW on a gallery that is still below the switch.",
    )
    _db_arg(rc)
    rc.add_argument(
        "--ef-values", default="64,128,256,512,1024,2048", help="efSearch values to try (comma-separated)"
    )
    rc.add_argument("--queries", type=int, default=1000, help="probe-like queries made from the gallery")
    rc.add_argument(
        "--query-cosine",
        type=float,
        default=0.6,
        help="expected cosine of a made query with its source face (0.6: a typical genuine pair)",
    )
    rc.add_argument(
        "--probes", help="an .npy file of real probe embeddings (L2-normalised, the gallery's model)"
    )
    rc.add_argument("--threads", type=int, default=1, help="OpenMP threads per search while timing")
    rc.add_argument("--seed", type=int, default=0)
    rc.add_argument("--out", help="also write the numbers and settings to this JSON file")

    re = sub.add_parser("reembed", help="move a gallery to another model using its stored face crops")
    _db_arg(re)
    re.add_argument("--model", required=True)
    re.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE")
    add_precision_argument(re)


def _index_defaults() -> Any:
    from faceforge.serve.index import IndexSettings

    return IndexSettings()


def _graph_file(args: argparse.Namespace) -> str | None:
    """``--index-file``: 'none' turns it off; by default beside a SQLite database, none for a URL."""
    if args.index_file is not None:
        return None if args.index_file.lower() == "none" else args.index_file
    return None if "://" in str(args.db) else f"{args.db}.index.npz"


def _settings_index(args: argparse.Namespace) -> Any:
    from faceforge.serve.index import IndexSettings

    return IndexSettings(
        args.hnsw_above, args.hnsw_m, args.ef_construction, args.ef_search, graph_file=_graph_file(args)
    )


def _model_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--precision`` plus the ``--model-option`` values (a ``precision=`` option wins; embedders without a
    precision choice ignore it)."""
    return {"precision": args.precision, **parse_key_values(args.model_option, "--model-option")}


def _settings(args: argparse.Namespace) -> Any:
    from faceforge.serve.pipeline import Limits, PipelineSettings
    from faceforge.serve.service import ServiceSettings

    return ServiceSettings(
        db=args.db,
        model=args.model,
        model_options=_model_options(args),
        detector=args.detector,
        detector_options=parse_key_values(args.detector_option, "--detector-option"),
        calibration=args.calibration,
        threshold=args.threshold,
        limits=Limits(
            max_body_bytes=int(args.max_body_mb * 1024 * 1024),
            max_pixels=args.max_pixels,
            max_faces=args.max_faces,
            max_photos=args.max_photos,
            requests_per_minute=args.rate_limit,
        ),
        pipeline=PipelineSettings(args.min_det_score, args.min_face_px, args.min_quality),
        index=_settings_index(args),
        workers=args.workers,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        keep_crops=not args.no_crops,
        cors_origins=list(args.cors_origin),
        metrics_public=args.metrics_public,
    )


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from faceforge.serve.app import create_app
    from faceforge.serve.service import Service
    from faceforge.serve.sql import describe_url

    t0 = time.perf_counter()
    service = Service(_settings(args))
    desc = service.describe()
    check = service.startup_check
    print(
        f"faceforge serve: {describe_url(args.db)}: {check.db_count} faces, index {desc['index']['kind']} "
        f"(from the {desc['index']['loaded_from']}) matches the database (checksum {check.db_checksum[:12]}), model {desc['model'].get('kind')} "
        f"{desc['model_id'][:12]}, thresholds from: {service.calibration.source[:80]}; ready in "
        f"{time.perf_counter() - t0:.1f} s on http://{args.host}:{args.port}/",
        flush=True,
    )
    try:
        uvicorn.run(
            create_app(service), host=args.host, port=args.port, log_level=args.log_level, access_log=False
        )
    finally:
        service.close()
    return 0


def _keys(args: argparse.Namespace) -> int:
    from faceforge.serve.keys import Actor
    from faceforge.serve.store import Store

    store = Store(args.db)
    try:
        if args.keys_action == "create":
            key, secret = store.create_key(args.name, args.scope, Actor(name="cli"))
            print(secret)
            print(
                f"key {key.key_id} '{key.name}' scopes {','.join(key.scopes)}: shown once, only its hash is stored",
                file=sys.stderr,
            )
        elif args.keys_action == "list":
            for k in store.list_keys():
                state = (
                    "revoked " + time.strftime("%Y-%m-%d %H:%M", time.gmtime(k.revoked_at))
                    if k.revoked_at
                    else "active"
                )
                made = time.strftime("%Y-%m-%d %H:%M", time.gmtime(k.created_at))
                print(f"{k.key_id}\t{k.name}\t{','.join(k.scopes)}\tcreated {made} UTC\t{state}")
        else:
            key = store.revoke_key(args.key, Actor(name="cli"))
            print(f"revoked key {key.key_id} '{key.name}'")
    finally:
        store.close()
    return 0


def _recall(args: argparse.Namespace) -> int:
    import numpy as np

    from faceforge.serve.index import FaceIndex
    from faceforge.serve.recall import probe_like_queries, recall_sweep
    from faceforge.serve.sql import describe_url
    from faceforge.serve.store import Store

    efs = list(args.ef_values)  # integers >= 1 (faceforge.core.options)
    if not efs:
        raise InputError("--ef-values needs at least one efSearch value, e.g. 64,256")
    store = Store(args.db)
    try:
        snap = store.snapshot()
        if not len(snap.ids):
            raise InputError(f"{args.db} holds no faces: enrol some first")
        settings = _settings_index(args)
        index = FaceIndex(snap.embeddings.shape[1], settings)
        t0 = time.perf_counter()
        check = index.rebuild(store, save=False)
        ready_s = time.perf_counter() - t0
    finally:
        store.close()
    if not check.ok:
        raise InputError(f"the index does not match {args.db}: {check.to_dict()}")
    rng = np.random.default_rng(args.seed)
    sets = {"made": probe_like_queries(snap.embeddings, args.queries, args.query_cosine, rng)}
    if args.probes:
        probes = _load_probes(args.probes, snap.embeddings.shape[1])
        sets = {"probes": probes, **sets}
    res = recall_sweep(index, sets, efs, threads=args.threads)
    res["settings"] = {
        "db": describe_url(args.db),
        "index_ready_seconds": round(ready_s, 1),
        "index_from": index.source,
        "query_cosine": args.query_cosine,
        "seed": args.seed,
        "probes": args.probes,
    }
    print(
        f"{res['faces']} faces, index {index.kind} (from the {index.source}, ready in {ready_s:.1f} s); exact "
        f"search {res['exact_ms_per_query']:.3f} ms per query on {args.threads} thread(s)"
    )
    keys = [k for k in res["rows"][0] if k.startswith("recall_at_1")]
    print("\t".join(["efSearch", *keys, "ms/query", "speed-up"]))
    for r in res["rows"]:
        cells = [str(r["ef_search"] if r["ef_search"] is not None else "exact")]
        cells += [f"{r[k]:.4f}" for k in keys] + [f"{r['ms_per_query']:.3f}", f"{r['speedup_vs_exact']:.2f}x"]
        print("\t".join(cells))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


def _load_probes(path: str, dim: int) -> Any:
    import numpy as np

    try:
        probes = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot read probe embeddings {path}: {exc} (expected an .npy of float rows)"
        ) from None
    if probes.ndim != 2 or probes.shape[1] != dim or not np.isfinite(probes).all():
        raise InputError(
            f"{path}: probe embeddings must be finite rows of {dim} values (the gallery's model), got shape "
            f"{probes.shape}"
        )
    return probes / np.linalg.norm(probes, axis=1, keepdims=True).clip(1e-12)


def _calibrate(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from faceforge.data.image_io import is_image_file
    from faceforge.data.pairs import pairs_people
    from faceforge.deploy.detect import build_detector
    from faceforge.serve.batcher import Batcher
    from faceforge.serve.calibration import Calibration, all_pair_scores, thresholds_from_scores
    from faceforge.serve.pipeline import FacePipeline, Limits, PhotoError, PipelineSettings
    from faceforge.serve.service import load_model

    root = Path(args.images)
    if not root.is_dir():
        raise FileNotFoundError(f"--images {root} is not a folder")
    people = pairs_people(args.people_from) if args.people_from else None
    files = sorted(
        p for p in root.glob("*/*") if is_image_file(p) and (people is None or p.parent.name in people)
    )
    if not files:
        raise ValueError(f"no photos in {root}/<identity>/ for the chosen people")
    embedder = load_model(args.model, _model_options(args))
    detector = build_detector(args.detector, **parse_key_values(args.detector_option, "--detector-option"))
    batcher = Batcher(embedder, max_batch=64, max_wait_ms=0)
    pipe = FacePipeline(
        detector, batcher, embedder.input_size, Limits(), PipelineSettings(args.min_det_score)
    )
    embs, labels, skipped = [], [], []
    faces, face_labels = [], []
    try:
        for path in tqdm(files, desc="calibrate", unit="photo"):
            try:
                photo = pipe.detect(path.read_bytes(), path.name, select="largest")
            except PhotoError as exc:
                skipped.append({"file": str(path.relative_to(root)), "reason": str(exc)})
                continue
            faces.append(photo.faces[0])
            face_labels.append(path.parent.name)
            if len(faces) == 64:
                embs.append(pipe.embed(faces))
                labels += face_labels
                faces, face_labels = [], []
        if faces:
            embs.append(pipe.embed(faces))
            labels += face_labels
    finally:
        batcher.close()
    emb = np.concatenate(embs)
    gen, imp = all_pair_scores(emb, np.asarray(labels))
    desc = embedder.describe()
    cal = Calibration(
        model_sha256=desc.get("sha256"),
        model_kind=str(desc.get("kind")),
        source=(
            f"faceforge serve calibrate: {len(labels)} photos of {len(set(labels))} people from {root.name}"
            + (f" named in {Path(args.people_from).name}" if args.people_from else "")
            + f"; {len(imp)} impostor and {len(gen)} genuine pairs (all pairs)"
        ),
        table=thresholds_from_scores(gen, imp),
        impostor_pairs=len(imp),
        genuine_pairs=len(gen),
        settings={
            "detector": args.detector,
            "detector_options": parse_key_values(args.detector_option, "--detector-option"),
            "min_det_score": args.min_det_score,
            "face": "largest",
            "alignment": "arcface_112",
            "flip": False,
            "photos_without_face": skipped,
            "preprocess": desc.get("preprocess"),
            "precision": desc.get("precision", "fp32"),
            "precision_choice": desc.get("precision_choice"),
        },
    )
    cal.save(args.out)
    for row in cal.table:
        print(f"FMR {row['fmr']:g}: threshold {row['threshold']:.4f}, FNMR {row['fnmr'] * 100:.2f} %")
    print(
        f"{args.out}: {len(imp)} impostor pairs, {len(gen)} genuine pairs, {len(skipped)} photos without a face"
    )
    return 0


def _reembed(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from faceforge.core.finite import check_finite
    from faceforge.serve.gallery import model_id_of
    from faceforge.serve.keys import Actor
    from faceforge.serve.pipeline import l2_normalise
    from faceforge.serve.service import load_model
    from faceforge.serve.store import Store

    embedder = load_model(args.model, _model_options(args))
    desc = embedder.describe()

    def decode(data: bytes) -> np.ndarray:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        if img.shape[0] != embedder.input_size:
            raise ValueError(
                f"stored crops are {img.shape[0]} px, the new model takes {embedder.input_size} px"
            )
        return img

    store = Store(args.db)
    try:
        n = store.reembed(
            lambda crops: l2_normalise(check_finite(embedder.embed(np.stack(crops)), embedder)),
            model_id_of(desc),
            desc,
            Actor(name="cli"),
            decode,
        )
    finally:
        store.close()
    print(f"re-embedded {n} faces with {desc.get('kind')} ({model_id_of(desc)[:12]})")
    return 0


@command("serve", "face search service: enrol, search, verify over HTTP; keys, calibration, re-embedding")(
    _add
)
def run(args: argparse.Namespace) -> int:
    actions = {"keys": _keys, "calibrate": _calibrate, "reembed": _reembed, "recall": _recall}
    return actions.get(args.action, _serve)(args)
