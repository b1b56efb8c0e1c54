"""One prepared check for the first GPU faceforge runs on: every CUDA path, timed, in one JSON.

Needs nothing but this checkout (no network, no data folder): it makes its own data, a synthetic face-like
data set written as a JPEG folder and as a RecordIO pair with faceforge's writer. Sections, in this order (each
one is recorded even when it fails, with its error, and the JSON is rewritten after each, so a run cut short
still leaves what it measured):

- ``machine``: device, torch / CUDA / cuDNN versions, memory, bf16 support;
- ``data``: the synthetic set (identities, images, seconds to write);
- ``training``: for MobileFaceNet and iresnet50 (``--quick``: iresnet18), images/s of :meth:`Trainer.train_step` (the engine: preprocess,
  autocast forward, ArcFace head, CE, backward through the gradient scaler, clip, SGD) on a uint8 batch already
  on the device, against the **limit**: the bare step of the same network and head on a preprocessed batch on
  the device (``autocast -> backbone -> criterion -> scaler.scale(loss).backward() -> scaler.step``), for bf16
  autocast and fp16 + GradScaler, channels_last, without and (budget allowing, last) with torch.compile;
- ``data_pipeline``: the training DataLoader (``Trainer._loader()``: sampler, read, decode, flip, collate,
  pinned memory on CUDA) over the RecordIO and the JPEG folder with N workers, each batch copied to the device,
  against the MobileFaceNet training rate it must feed (ratio >= 1 needed);
- ``distributed``: a process group of one rank (NCCL on CUDA, gloo on CPU): all_reduce and all_gather, then
  :class:`~faceforge.models.heads.criterion.ShardedCriterion` with Partial FC (sample rate 0.1) on the device:
  steps of loss, backward and SGD;
- ``embedding``: the evaluation embedding path (``faceforge embed``'s :func:`embed_files`, no cache, flip on)
  over the synthetic JPEGs against the bare forward pass, with the precision ``auto`` chose and its parity
  record (cosine on synthetic faces here: a smoke check, not the real-face record);
- ``parity``: the same 20 training steps (MobileFaceNet, fp32, TF32 off, seed 0, the same batches) on the CPU
  and on the device; every step's loss within ``1e-2 * |loss_cpu| + 1e-3``.

On one GPU the whole run stays under 8 minutes (``--budget-seconds``, default 420: the compiled variants run
last and are skipped, and listed, when the budget is spent). On a CPU, ``--device cpu --quick`` runs every
section on tiny sizes as a smoke test (CI runs it: tests/benchmarks/test_gpu_check.py).

    python benchmarks/gpu_check.py                      # on a CUDA machine: writes benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from common import REPO, machine_info

import faceforge
from faceforge.config import compose_config
from faceforge.core.checkpoint import FORMAT, VERSION, atomic_torch_save
from faceforge.core.precision import autocast, hardware_name
from faceforge.data.dataset import Batch
from faceforge.data.preprocess import Preprocess
from faceforge.data.recordio import write_face_rec
from faceforge.embedders.checkpoint import CheckpointEmbedder
from faceforge.engine.loop import Trainer
from faceforge.eval.embed_files import embed_files
from faceforge.models.backbones import build_backbone
from faceforge.objectives.margin import find_margin

CONFIG = "lfw_mobilefacenet_arcface"
PARITY_STEPS = 20
PARITY_RTOL, PARITY_ATOL = 1e-2, 1e-3
#: a compiled training variant starts only with this much of the budget left (compiling IResNet-50's forward
#: and backward takes a minute or two)
COMPILE_RESERVE_S = 120


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per call after ``warmup`` calls (device synchronised before reading the clock)."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / steps


# ------------------------------------------------------------------------------------------------- data
def synthetic_faces(root: Path, identities: int, per_identity: int, seed: int = 0) -> dict[str, Any]:
    """Face-like 112x112 JPEGs (a smooth background, a skin-toned ellipse with darker eyes and mouth, all
    varied per identity and image) in ``root/faces/<id>/<k>.jpg`` and the same as ``root/train.rec``/.idx."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:112, 0:112].astype(np.float32)
    paths, labels = [], []
    for ident in range(identities):
        base = rng.uniform(0.8, 1.2, size=4)
        tone = rng.uniform(90, 220, size=3)
        folder = root / "faces" / f"id{ident:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_identity):
            j = rng.normal(0, 0.03, size=4) + base
            img = np.empty((112, 112, 3), np.float32)
            img[:] = rng.uniform(0, 255, size=3) * (0.7 + 0.3 * yy[..., None] / 112)
            face = ((xx - 56) / (30 * j[0])) ** 2 + ((yy - 60) / (40 * j[1])) ** 2 <= 1
            img[face] = tone + rng.normal(0, 4, size=3)
            for cx in (42 * j[2], 70 * j[3]):  # eyes
                img[((xx - cx) ** 2 + (yy - 50) ** 2) <= 16] = 40
            img[(np.abs(xx - 56) < 12 * j[0]) & (np.abs(yy - 82) < 3)] = (150, 60, 60)  # mouth
            path = folder / f"{k:03d}.jpg"
            cv2.imwrite(str(path), cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
            paths.append(str(path))
            labels.append(ident)
    rec, idx = write_face_rec((paths, labels), root / "train")
    return {
        "identities": identities,
        "images": len(paths),
        "folder": str(root / "faces"),
        "rec": str(rec),
        "idx": str(idx),
        "seconds": time.perf_counter() - t0,
        "what": "synthetic face-like images (no real faces): for speed and code paths, not accuracy",
    }


def trainer(
    data: dict[str, Any], device: torch.device, tmp: Path, overrides: list[str], name: str
) -> Trainer:
    cfg = compose_config(
        CONFIG,
        [
            f"data.root={data['folder']}",
            "data.exclude_pairs=[]",
            "eval.pairs=null",
            "run.progress=false",
            f"run.device={device.type}",
            f"run.dir={tmp / 'runs' / name}",
            "data.min_images_per_identity=1",
            "data.preload=false",
            *overrides,
        ],
    )
    return Trainer(cfg)


def uint8_batch(n: int, classes: int, device: torch.device, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 112, 112, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return Batch(images.to(device), labels.to(device), torch.arange(n))


# --------------------------------------------------------------------------------------------- training
def bare_step(t: Trainer, batch: Batch) -> Callable[[], None]:
    """The limit: autocast forward of the (compiled) backbone, the margin criterion, scaled backward, step."""
    x = t.preprocess(batch.images, t.device)
    labels = batch.labels.to(t.device)
    criterion = find_margin(t.objectives).criterion
    opt = t.optimizers["main"]
    scaler = t.scalers.get("main")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(t.device, t.precision):
            emb = t.model(x).float()
        loss = criterion(emb, labels).loss
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    return step


def training_row(
    data: dict[str, Any],
    device: torch.device,
    tmp: Path,
    model: str,
    batch: int,
    precision: str,
    compiled: bool,
    warmup: int,
    steps: int,
) -> dict[str, Any]:
    overrides = [f"model={model}", f"data.batch_size={batch}", f"run.precision={precision}"]
    overrides += ["run.channels_last=true", f"run.compile={str(compiled).lower()}", "data.num_workers=0"]
    t = trainer(data, device, tmp, overrides, f"{model}_{precision}_{compiled}")
    b = uint8_batch(batch, t.data.num_classes, device)
    t0 = time.perf_counter()
    t.train_step(b)  # first step: compilation, cuDNN autotuning
    first = time.perf_counter() - t0
    engine = timed(lambda: t.train_step(b), device, warmup, steps)
    limit = timed(bare_step(t, b), device, warmup, steps)
    logs = t.train_step(b)
    return {
        "model": model,
        "batch_size": batch,
        "precision": t.precision,
        "gradient_scaler": t.scalers.get("main") is not None,
        "compile": t.compiled,
        "channels_last": True,
        "first_step_seconds": first,
        "engine_images_per_s": batch / engine,
        "limit_images_per_s": batch / limit,
        "ratio_to_limit": limit / engine,
        "loss_finite": bool(math.isfinite(logs.get("loss", float("nan")))),
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


# ---------------------------------------------------------------------------------------- data pipeline
def pipeline_rate(t: Trainer, device: torch.device, batches: int) -> float:
    t._set_epoch(0, 0)
    it = iter(t._loader())
    next(it)  # worker start-up
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            break
        batch.images.to(device, non_blocking=True)
        n += len(batch)
    sync(device)
    return n / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------ distributed
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed_check(device: torch.device, classes: int, batch: int, steps: int) -> dict[str, Any]:
    import torch.distributed as dist

    from faceforge.models.heads import build_head
    from faceforge.models.heads.criterion import ShardedCriterion

    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        x = torch.arange(4, dtype=torch.float32, device=device)
        dist.all_reduce(x)
        parts = [torch.empty_like(x)]
        dist.all_gather(parts, x)
        collectives = bool(torch.equal(parts[0], torch.arange(4, dtype=torch.float32, device=device)))
        torch.manual_seed(0)
        head = build_head("arcface", embedding_size=512, num_classes=classes).to(device)
        crit = ShardedCriterion(head, classes, 0.1).to(device)
        opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
        emb = torch.nn.functional.normalize(torch.randn(batch, 512, device=device), dim=1).requires_grad_(
            True
        )
        labels = torch.randint(0, classes, (batch,), device=device)
        losses: list[float] = []

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss = crit(emb, labels).loss
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))

        seconds = timed(step, device, 1, steps)
        return {
            "backend": backend,
            "world_size": dist.get_world_size(),
            "collectives_ok": collectives,
            "classes": classes,
            "sample_rate": 0.1,
            "batch": batch,
            "step_seconds": seconds,
            "losses_finite": all(math.isfinite(v) for v in losses),
            "weight_on_device": str(head.weight.device),
        }
    finally:
        dist.destroy_process_group()


# -------------------------------------------------------------------------------------------- embedding
def embedding_row(
    data: dict[str, Any], device: torch.device, tmp: Path, model: str, batch: int, images: int
) -> dict[str, Any]:
    torch.manual_seed(0)
    net = build_backbone(model)
    meta = {
        "backbone": {"name": model, "kwargs": {}},
        "embedding_size": int(net.embedding_size),
        "preprocess": Preprocess().to_dict(),
        "faceforge_version": faceforge.__version__,
    }
    path = tmp / f"{model}.pt"
    atomic_torch_save(
        {"format": FORMAT, "version": VERSION, "meta": meta, "backbone": net.state_dict()}, path
    )
    emb = CheckpointEmbedder(path, device=device.type, precision="auto", batch_size=batch)
    files = sorted(Path(data["folder"]).rglob("*.jpg"))[:images]
    faces = np.stack([cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files[:batch]])
    emb.settle_precision(faces, "synthetic faces of benchmarks/gpu_check.py (a smoke check)")
    x = emb.preprocess(torch.from_numpy(faces), emb.device)

    def bare() -> None:
        with torch.inference_mode(), autocast(emb.device, emb.precision):
            emb.model(x)

    bare_s = timed(bare, device, 2, 5)
    listing = tmp / "embed_list.txt"
    listing.write_text("".join(f"{f}\n" for f in files))
    t0 = time.perf_counter()
    embed_files(
        emb, listing, tmp / f"{model}_emb.npz", flip=True, cache_dir=None, batch_size=batch, progress=False
    )
    sync(device)
    command = 2 * len(files) / (time.perf_counter() - t0)
    return {
        "model": model,
        "weights": "random init",
        "precision": emb.precision,
        "precision_note": emb.policy.note,
        "parity": emb.describe()["precision_choice"]["record"],
        "bare_forward_per_s": len(faces) / bare_s,
        "embed_files_forward_per_s": command,
        "ratio": command / (len(faces) / bare_s),
        "images": len(files),
    }


# --------------------------------------------------------------------------------------------- parity
def parity_check(data: dict[str, Any], device: torch.device, tmp: Path, batch: int) -> dict[str, Any]:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    overrides = ["model=mobilefacenet_paper", f"data.batch_size={batch}", "run.precision=fp32"]
    overrides += ["run.compile=false", "data.num_workers=0", "run.seed=0"]
    losses = {}
    for label, dev in (("cpu", torch.device("cpu")), ("device", device)):
        t = trainer(data, dev, tmp, overrides, f"parity_{label}")
        out = []
        for step in range(PARITY_STEPS):
            out.append(float(t.train_step(uint8_batch(batch, t.data.num_classes, dev, seed=step))["loss"]))
        losses[label] = out
    a, b = np.array(losses["cpu"]), np.array(losses["device"])
    ok = np.abs(a - b) <= PARITY_RTOL * np.abs(a) + PARITY_ATOL
    return {
        "steps": PARITY_STEPS,
        "model": "mobilefacenet_paper, ArcFace, SGD, fp32, TF32 off, seed 0, the same uint8 batches",
        "compared": f"cpu vs {device}",
        "tolerance": f"|loss_device - loss_cpu| <= {PARITY_RTOL} * |loss_cpu| + {PARITY_ATOL} at every step",
        "losses_cpu": losses["cpu"],
        "losses_device": losses["device"],
        "max_abs_diff": float(np.abs(a - b).max()),
        "within_tolerance": bool(ok.all()),
    }


# ------------------------------------------------------------------------------------------------ main
def machine(device: torch.device) -> dict[str, Any]:
    rec = machine_info(device=str(device), hardware=hardware_name(device), cuda=torch.version.cuda)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        rec |= {
            "gpu_memory_gb": props.total_memory / 2**30,
            "capability": f"{props.major}.{props.minor}",
            "cudnn": torch.backends.cudnn.version(),
            "bf16": torch.cuda.is_bf16_supported(),
        }
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (the point) or cpu (a smoke test)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and one timed step: a smoke test")
    ap.add_argument(
        "--budget-seconds", type=float, default=420.0, help="skip the compiled variants after this"
    )
    ap.add_argument("--compile", action="store_true", help="with --quick: run the compiled variants too")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu_check.json")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu --quick for the smoke test")
    device = torch.device(args.device)
    budget = Budget(args.budget_seconds)
    quick = args.quick
    sizes = {
        "identities": 8 if quick else 512,
        "per_identity": 4 if quick else 16,
        # quick: IResNet-18 stands in for IResNet-50 (same code path, a fraction of the CPU time)
        "batch": {"mobilefacenet": 4, "iresnet18": 2} if quick else {"mobilefacenet": 256, "iresnet50": 128},
        "embed_images": 8 if quick else 4096,
        "warmup": 1 if quick else 3,
        "steps": 1 if quick else 20,
        "workers": [0, 2] if quick else [0, 4, 8, 16],
        "pipeline_batches": 2 if quick else 40,
        "classes": 1000 if quick else 200_000,
        "parity_batch": 4 if quick else 64,
    }
    precisions = ["bf16", "fp16"] if device.type == "cuda" else ["auto"]
    result: dict[str, Any] = {
        "benchmark": "gpu_check",
        "settings": {"device": str(device), "quick": quick, "budget_seconds": args.budget_seconds, **sizes},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def section(name: str, fn: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        try:
            result[name] = {"ok": True, **fn()}
        except Exception as exc:  # recorded, and the next section runs
            result[name] = {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "trace": traceback.format_exc(),
            }
        result[name]["seconds"] = time.perf_counter() - t0
        args.out.write_text(json.dumps(result, indent=2, default=str))
        print(f"{name}: {'ok' if result[name]['ok'] else result[name]['error']}", flush=True)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["FACEFORGE_CACHE"] = str(tmp / "cache")  # parity records of this run only
        section("machine", lambda: machine(device))
        section("data", lambda: synthetic_faces(tmp / "data", sizes["identities"], sizes["per_identity"]))
        data = result["data"]
        if not data["ok"]:
            raise SystemExit(f"could not make the synthetic data: {data['error']}")

        def train(compiled: bool) -> dict[str, Any]:
            """Every model x precision; compiled: precision by precision (bf16 first), while the budget lasts."""
            rows: list[dict[str, Any]] = []
            for precision in precisions:
                for model, batch in sizes["batch"].items():
                    if compiled and budget.left() < COMPILE_RESERVE_S:
                        rows.append(
                            {"model": model, "precision": precision, "compile": True, "skipped": "budget"}
                        )
                        continue
                    w, n = sizes["warmup"], sizes["steps"]
                    rows.append(training_row(data, device, tmp, model, batch, precision, compiled, w, n))
            return {"rows": rows}

        section("training", lambda: train(False))

        def pipeline() -> dict[str, Any]:
            rows = result["training"].get("rows", [])
            done = [r for r in rows if r.get("model") == "mobilefacenet" and "engine_images_per_s" in r]
            feed = max((r["engine_images_per_s"] for r in done), default=float("nan"))
            out: dict[str, Any] = {"training_images_per_s_to_feed": feed, "formats": {}}
            batch = sizes["batch"]["mobilefacenet"]
            for fmt, extra in (("rec", ["data.format=rec", f"data.rec={data['rec']}"]), ("folder", [])):
                out["formats"][fmt] = {}
                for workers in sizes["workers"]:
                    t = trainer(
                        data,
                        device,
                        tmp,
                        [f"data.batch_size={batch}", f"data.num_workers={workers}", *extra],
                        f"pipe_{fmt}_{workers}",
                    )
                    rate = pipeline_rate(t, device, sizes["pipeline_batches"])
                    out["formats"][fmt][f"workers_{workers}"] = {
                        "images_per_s": rate,
                        "ratio_to_training": rate / feed,
                    }
            out["pin_memory"] = device.type == "cuda"
            return out

        section("data_pipeline", pipeline)
        section("distributed", lambda: distributed_check(device, sizes["classes"], sizes["parity_batch"], 3))
        section(
            "embedding",
            lambda: {
                "rows": [
                    embedding_row(data, device, tmp, m, b, sizes["embed_images"])
                    for m, b in sizes["batch"].items()
                ]
            },
        )
        section("parity", lambda: parity_check(data, device, tmp, sizes["parity_batch"]))
        if not quick or args.compile:
            section("training_compiled", lambda: train(True))
        else:
            result["training_compiled"] = {"ok": True, "skipped": "--quick without --compile", "seconds": 0.0}
        result["seconds_total"] = args.budget_seconds - budget.left()
        args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
