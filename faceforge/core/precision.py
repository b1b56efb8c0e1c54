"""Device and mixed-precision choices: bf16 autocast on CPUs with bf16 units, fp16 + GradScaler on CUDA."""

from __future__ import annotations

import contextlib
from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when oneDNN reports native bf16 support on this CPU (AVX-512 BF16 or AMX).

    Without it bf16 autocast is emulated and several times *slower* than fp32 (measured on an AVX2-only
    EPYC: 10x slower for a MobileFaceNet-like block), so ``precision=auto`` picks fp32 there.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N``; a device this machine lacks, or any
    other name, is an :class:`~faceforge.core.rules.OptionError` that says what there is."""
    from faceforge.core.options import DEVICE_RULE

    DEVICE_RULE.check("device", name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    from faceforge.core.rules import OptionError

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(name.partition(":")[2] or 0)
    if index >= count:
        have = f"CUDA devices 0..{count - 1}" if count else "no CUDA device"
        raise OptionError(f"device={name}: this machine has {have} (use device cpu or auto)")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise ValueError("fp16 autocast is for CUDA; on CPU use run.precision=bf16 or fp32")
        return name
    if device.type == "cuda":
        return "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def inference_candidate(device: torch.device) -> str | None:
    """The reduced precision inference should try on ``device``, or None where it would not pay.

    CUDA: bf16 where the GPU supports it (Ampere and later), else fp16. CPU: bf16 where oneDNN has native
    bf16 (:func:`cpu_has_bf16`); elsewhere bf16 is emulated and slower than fp32, so None.
    """
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_bf16():
        return "bf16"
    return None


def hardware_name(device: torch.device) -> str:
    """What ran the numbers, for records: the GPU's name, or the CPU's ISA level as torch reports it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        cap = "unknown"
    return f"cpu {cap}, native bf16: {'yes' if cpu_has_bf16() else 'no'}"


#: ``run.compile=null``: whether torch.compile is on, per device type, from measurements
#: (``benchmarks/compile_speed.py`` on a 2-core CPU: see the README; CUDA: unmeasured until a GPU runs
#: ``benchmarks/gpu_check.py``, whose ``training`` section times both)
COMPILE_DEFAULT = {"cpu": False, "cuda": False}


def compile_default(device: torch.device, requested: bool | None) -> bool:
    """``requested`` if given, else :data:`COMPILE_DEFAULT` for the device type (off for any other)."""
    return bool(requested) if requested is not None else COMPILE_DEFAULT.get(device.type, False)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Context that disables autocast on ``device`` (a no-op where autocast does not exist, e.g. meta):
    heads, losses and the final embedding layers run in fp32 whatever precision the backbone used."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def make_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (bf16 has fp32's range and needs none)."""
    if precision == "fp16":
        return torch.amp.GradScaler(device.type, growth_interval=100)
    return None
