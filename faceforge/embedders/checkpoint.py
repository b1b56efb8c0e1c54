"""A faceforge checkpoint as an embedder: the backbone and preprocessing come from the checkpoint metadata."""

from __future__ import annotations

import copy
import math
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from faceforge.core.checkpoint import CheckpointError, check_model_meta, load_checkpoint
from faceforge.core.hashing import file_sha256
from faceforge.core.precision import autocast, compile_default, resolve_device
from faceforge.data.preprocess import Preprocess
from faceforge.embedders.base import EMBEDDERS
from faceforge.embedders.parity import PrecisionPolicy
from faceforge.models.backbones import BACKBONES, build_backbone
from faceforge.models.fusion import fold_batchnorm

#: faces per forward pass on a CPU (see :class:`CheckpointEmbedder`): MobileFaceNet and the SFace import are
#: ~1.4x and ~1.2x faster than at 128, the dlib import ~0.9x, IResNet-50 ~1.1x
CPU_FORWARD_BATCH = 32


class ForwardStreams:
    """``n`` worker threads that each run whole forward passes with ``threads`` intra-op threads of their own.

    On a CPU a small network's forward pass on one slice of faces may not keep every core busy through
    PyTorch's intra-op parallelism (each layer is split across the cores, with a barrier after every one).
    Measured on this project's 2-core AMX machine in bf16, the whole ``faceforge embed`` command on 1,000
    faces with flip, two passes at once on one thread each against one pass at a time on both threads (median
    of 3 interleaved runs): the dlib import **1.19x**, IResNet-50 1.01x, MobileFaceNet 0.93x, the SFace import
    0.93x; the bare passes on one hot batch gained 1.08-1.24x for all four (``benchmarks/embed_speed.py``
    gives both). Hence a network opts in (:data:`STREAMS_ATTRIBUTE`). Each worker sets its own OpenMP thread
    count once (a thread's count is its own; the process-wide default new threads start from is put back), so
    the caller's threads keep theirs.
    """

    def __init__(self, n: int, threads: int) -> None:
        self.n, self.threads, self.pid = n, threads, os.getpid()
        self.pool = ThreadPoolExecutor(n, thread_name_prefix="faceforge-forward")
        outer = torch.get_num_threads()
        ready = threading.Barrier(n + 1)

        def init() -> None:
            torch.get_num_threads()  # this thread's lazy set-up first: run later, it would reset the count
            torch.set_num_threads(threads)
            ready.wait()

        started = [self.pool.submit(init) for _ in range(n)]  # each blocks at the barrier: n threads start
        ready.wait()
        for f in started:
            f.result()
        torch.set_num_threads(outer)  # the default new threads take (the workers set it to theirs)

    def map(self, fn, items):  # type: ignore[no-untyped-def]
        return list(self.pool.map(fn, items))


#: a backbone class attribute: True where concurrent forward passes beat intra-op threads on a CPU
STREAMS_ATTRIBUTE = "cpu_forward_streams"


def stream_plan(
    device: torch.device,
    streams: int | None,
    slices: int,
    compiled: bool,
    threads: int | None = None,
    network_opts_in: bool = True,
) -> tuple[int, int]:
    """``(streams, threads per stream)`` for forward passes of ``slices`` slices a batch.

    ``streams=None`` (auto): on a CPU, for a network that opts in (``network_opts_in``, from
    :data:`STREAMS_ATTRIBUTE`), one stream per intra-op thread up to the slices in a batch (2 cores and 4 slices
    of 32 faces: 2 streams of 1 thread; 16 threads: 4 streams of 4); else 1, and 1 on a GPU or for a compiled
    network. An explicit number is kept (at most the threads) on a CPU. ``threads``: the intra-op threads
    shared out (default ``torch.get_num_threads()``)."""
    threads = threads or torch.get_num_threads()
    if device.type != "cpu" or compiled or (streams is None and not network_opts_in):
        return 1, threads
    n = min(threads, max(1, slices)) if streams is None else max(1, min(int(streams), threads))
    return n, max(1, threads // n)


_STREAMS_LOCK = threading.Lock()

#: in-place ops that only write values (never shapes): weight initialisers call them
_VALUE_INIT_OPS = frozenset(
    {"normal_", "uniform_", "fill_", "zero_", "erfinv_", "mul_", "add_", "clamp_", "copy_"}
)


class _SkipMetaInit(TorchFunctionMode):
    """Skip value-only in-place ops on ``meta`` tensors: a skeleton has shapes, no values to initialise.

    Initialising meta tensors goes through PyTorch's Python references, whose first call imports
    ``torch._dynamo`` (seconds per process: the first checkpoint a command loaded paid it). Modes are
    per thread, so a model built in another thread meanwhile is initialised as usual."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        if (
            getattr(func, "__name__", None) in _VALUE_INIT_OPS
            and args
            and isinstance(args[0], torch.Tensor)
            and args[0].is_meta
        ):
            return args[0]
        return func(*args, **(kwargs or {}))


def backbone_from_checkpoint(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> torch.nn.Module:
    """Build the backbone the metadata names and load its weights.

    The metadata is checked against the weights *before* anything is allocated: the backbone is first
    built on PyTorch's ``meta`` device (shapes only, no memory), and its parameter names and shapes and its
    output size must match the stored tensors and ``meta.embedding_size``. So a file whose metadata says
    ``embedding_size=1e9`` (or a width the weights do not have) is refused with :class:`CheckpointError`
    naming ``path`` instead of trying a multi-terabyte allocation. ``ckpt`` comes from
    :func:`faceforge.core.checkpoint.load_checkpoint`, which has already checked the metadata's types.
    """
    check_model_meta(ckpt, path, require=True)
    meta = ckpt["meta"]["backbone"]
    name, kwargs = meta["name"], dict(meta.get("kwargs", {}))
    fix = "the file is damaged or its metadata was edited; use the model.pt written by 'faceforge train'"
    if name not in BACKBONES:
        raise CheckpointError(
            f"{path}: unknown backbone {name!r} in its metadata (known: {BACKBONES.names()})"
        )
    try:
        with torch.device("meta"), _SkipMetaInit():
            skeleton = build_backbone(name, **kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{path}: its metadata asks for {name} with {kwargs}, which cannot be built ({exc})"
        ) from None
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in ckpt["backbone"].items()}
    diff = next((k for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)), None)
    if diff is not None:
        raise CheckpointError(
            f"{path}: the weights do not fit the {name} {kwargs} its metadata names (parameter {diff}: "
            f"{have.get(diff, 'missing')} stored, {want.get(diff, 'not expected')} expected); {fix}"
        )
    out = int(getattr(skeleton, "embedding_size", ckpt["meta"]["embedding_size"]))
    if out != ckpt["meta"]["embedding_size"]:
        raise CheckpointError(
            f"{path}: metadata says embedding_size={ckpt['meta']['embedding_size']} but the {name} weights give "
            f"{out}-d embeddings; {fix}"
        )
    model = build_backbone(name, **kwargs)
    model.load_state_dict(ckpt["backbone"])
    return model.eval()


@EMBEDDERS.register("checkpoint")
class CheckpointEmbedder:
    """A faceforge checkpoint as an embedder, in the precision :class:`~.parity.PrecisionPolicy` chooses.

    ``precision``: ``auto`` (default: bf16 autocast + channels_last where the device has native bf16 and the
    model's parity record passes, else fp32; module doc of :mod:`faceforge.embedders.parity`), ``fp32`` or
    ``bf16``. Faces go through the network ``batch_size`` at a time under one ``inference_mode`` and one
    autocast context (weights are cast once per call, not once per batch), in channels_last, with every
    BatchNorm that follows a conv folded into it (:func:`faceforge.models.fusion.fold_batchnorm`).
    ``compile``: torch.compile the network (None: :func:`faceforge.core.precision.compile_default`, off on CPU
    where it did not pay; ``--model-option compile=true``); the first batch of each size then compiles.

    ``forward_batch`` (``--model-option forward_batch=N``): faces per forward pass, at most ``batch_size``
    (None: :data:`CPU_FORWARD_BATCH` on a CPU, ``batch_size`` on a GPU). On a CPU a memory-bound network runs
    faster on fewer faces at a time, whose activations stay in the core's cache: measured on this project's
    2-core AMX machine (bf16, faces/s at 8 / 16 / 32 / 64 / 128 faces per pass), MobileFaceNet 308 / 312 / 307
    / 236 / 213, the SFace import 272 / 250 / 185 / 150 / 160, the dlib import 613 / 830 / 1136 / 1181 / 1298,
    IResNet-50 88 / 98 / 94 / 92 / 84 (``benchmarks/embed_speed.py --forward-batches``). Each face's embedding
    is its own whatever the pass size, up to float rounding (bit-identical at 16 to 128 faces for the first
    three; oneDNN picks other IResNet-50 kernels below 64).

    ``streams`` (``--model-option streams=N``): forward passes run at once, each on its own share of the
    intra-op threads (None: :func:`stream_plan`: on a CPU, for a network that opts in, as the dlib import
    does, one per thread up to the passes in a batch, 2 of one thread each on 2 cores; else 1);
    :class:`ForwardStreams` gives the measurements. Each face's embedding is the one a single stream gives, up
    to float rounding.
    """

    def __init__(
        self,
        source: str | Path,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 128,
        compile: bool | None = None,
        forward_batch: int | None = None,
        streams: int | None = None,
    ):
        self.path = Path(source)
        ckpt = load_checkpoint(self.path)
        check_model_meta(ckpt, self.path, require=True)
        self.meta = ckpt["meta"]
        self.preprocess = Preprocess.from_dict(self.meta["preprocess"])
        self.device = resolve_device(device)
        self.embedding_size = int(self.meta["embedding_size"])
        self.input_size = self.preprocess.input_size
        model = backbone_from_checkpoint(ckpt, self.path).to(self.device)
        example = torch.zeros(1, 3, self.input_size, self.input_size, device=self.device)
        self.folded = fold_batchnorm(model, example)
        self.model = model.to(memory_format=torch.channels_last)
        self.compiled = compile_default(self.device, compile)
        if self.compiled:
            self.model = torch.compile(self.model, dynamic=False)
        self.batch_size = batch_size
        if forward_batch is not None and forward_batch < 1:
            raise ValueError(f"forward_batch must be a positive number of faces, not {forward_batch}")
        default = CPU_FORWARD_BATCH if self.device.type == "cpu" else batch_size
        self.forward_batch = max(1, min(batch_size, forward_batch or default))
        if streams is not None and int(streams) < 1:
            raise ValueError(f"streams must be a positive number of forward passes at once, not {streams}")
        slices = math.ceil(batch_size / self.forward_batch)
        opts_in = bool(getattr(model, STREAMS_ATTRIBUTE, False))
        self.streams, self.stream_threads = stream_plan(
            self.device, streams, slices, self.compiled, None, opts_in
        )
        self._shared: dict[str, ForwardStreams | None] = {"pool": None}  # twins (with_precision) share it
        self._sha256: str | None = None
        self.policy = PrecisionPolicy(precision, self.device, self.sha256, self.embedding_size > 1)

    def torch_network(self) -> tuple[torch.nn.Module, Preprocess]:
        """The backbone (eval mode, fp32) and its preprocessing, for gradient-based attacks
        (:func:`faceforge.embedders.differentiable.face_network`)."""
        return self.model.eval(), self.preprocess

    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        return self._sha256

    @property
    def precision(self) -> str:
        """The precision embeddings are computed in (a pending ``auto`` settles to fp32 when asked first)."""
        return self.policy.ensure()

    @property
    def needs_parity_faces(self) -> bool:
        """True until a reduced precision in play has its parity record (the cache then hands over faces)."""
        return self.policy.needs_record

    def settle_precision(self, faces: np.ndarray, source: str = "") -> None:
        """Let ``auto`` measure this model's parity record on these faces if it has none (first faces only)."""
        if self.policy.needs_record:
            self.policy.settle(faces, self._embed_at, source)

    def with_precision(self, precision: str) -> CheckpointEmbedder:
        """The same network (shared weights, no reload) in another precision."""
        twin = copy.copy(self)
        twin.policy = PrecisionPolicy(precision, self.device, self.sha256, self.embedding_size > 1)
        return twin

    def forward_streams(self) -> ForwardStreams | None:
        """The worker threads (started on first use), or None to run every pass in the calling thread."""
        if self.streams <= 1:
            return None
        with _STREAMS_LOCK:
            pool = self._shared["pool"]
            if pool is None or pool.pid != os.getpid():  # a forked child has the object, not the threads
                self._shared["pool"] = ForwardStreams(self.streams, self.stream_threads)
        return self._shared["pool"]

    def _embed_at(self, faces: np.ndarray, precision: str, flip_sum: bool = False) -> np.ndarray:
        """Raw embeddings of uint8 faces ``[N, H, W, 3]``, ``forward_batch`` faces at a time: each slice is
        preprocessed just before its pass (and, with ``flip_sum``, mirrored for the second pass), so the
        network reads an input still in the cache instead of a whole batch's (19 MB for 128 faces at 112 px
        in fp32): ~5 % faster for the dlib import in bf16, identical numbers. With ``streams`` > 1 the workers of
        :class:`ForwardStreams` take the slices from one queue (a worker slowed by other work takes fewer:
        1.03x over a fixed round-robin share for the dlib import), each under one ``inference_mode`` and
        autocast context of its own (both are per thread; the weights are cast once per worker and call)."""
        if len(faces) == 0:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        batch = torch.from_numpy(np.ascontiguousarray(faces))
        starts = list(range(0, len(batch), self.forward_batch))
        pool = self.forward_streams() if len(starts) > 1 else None
        n = min(pool.n, len(starts)) if pool is not None else 1
        parts: list[torch.Tensor] = [torch.empty(0)] * len(starts)
        todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        for j in range(len(starts)):
            todo.put(j)

        def run(_: int = 0) -> None:
            """Take the next slice until none is left (a worker slowed by other work takes fewer)."""
            with torch.inference_mode(), autocast(self.device, precision):
                while True:
                    try:
                        j = todo.get_nowait()
                    except queue.Empty:
                        return
                    x = self.preprocess(batch[starts[j] : starts[j] + self.forward_batch], self.device)
                    emb = self.model(x).float()
                    # mirror(preprocess(face)) == preprocess(mirror(face)): one preprocessing for both
                    if flip_sum:
                        emb = (
                            emb + self.model(x.flip(3).contiguous(memory_format=torch.channels_last)).float()
                        )
                    parts[j] = emb

        if pool is None:
            run()
        else:
            pool.map(run, range(n))
        return torch.cat(parts).cpu().numpy().astype(np.float32, copy=False)

    def embed(self, faces: np.ndarray) -> np.ndarray:
        self.settle_precision(faces, "the first faces embed() was given")
        return self._embed_at(faces, self.precision)

    def embed_flip_sum(self, faces: np.ndarray) -> np.ndarray:
        """``f(x) + f(mirror(x))`` (insightface's flip test) of uint8 faces ``[N, H, W, 3]``."""
        self.settle_precision(faces, "the first faces embed() was given")
        return self._embed_at(faces, self.precision, flip_sum=True)

    def describe(self) -> dict[str, Any]:
        desc = {
            "kind": "checkpoint",
            "path": str(self.path),
            "sha256": self.sha256(),
            "backbone": self.meta["backbone"],
            "embedding_size": self.embedding_size,
            "preprocess": self.preprocess.to_dict(),
            "precision": self.precision,
            "precision_choice": self.policy.describe(),
            "inference": {
                "memory_format": "channels_last",
                "folded_into_conv": len(self.folded),
                "compiled": self.compiled,
                "forward_batch": self.forward_batch,
                "streams": self.streams,
                "threads_per_stream": self.stream_threads,
                "folding": "eval-mode BatchNorms (and channel_affine layers) that read only a conv/linear "
                "output are folded into it (equal up to float rounding, about 1e-6 relative)",
            },
        }
        if isinstance(self.meta.get("predicts"), str):  # what the output is (older checkpoints do not say)
            desc["predicts"] = self.meta["predicts"]
        return desc
