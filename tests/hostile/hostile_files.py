"""Builders of broken and hostile inputs, generated at test time (nothing binary is committed).

Each function returns the bytes of one file (or writes a small set of files); the tests of
``tests/hostile`` and the fuzz corpus of ``test_fuzz_hostile_inputs.py`` use them.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# ------------------------------------------------------------------------------------------------ processes


def child_env() -> dict[str, str]:
    """The environment for a child Python that must import the same faceforge as this test process."""
    import faceforge

    env = dict(os.environ)
    root = str(Path(faceforge.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


# ------------------------------------------------------------------------------------------------ images


def encode(img: np.ndarray, ext: str = ".png") -> bytes:
    """RGB (or grey / RGBA / uint16) array -> encoded bytes with OpenCV."""
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 3:
        a = cv2.cvtColor(a, cv2.COLOR_RGB2BGR)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = cv2.cvtColor(a, cv2.COLOR_RGBA2BGRA)
    ok, enc = cv2.imencode(ext, a)
    assert ok, ext
    return enc.tobytes()


def pil_bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and a valid IHDR declaring ``width`` x ``height`` RGB, a few bytes of IDAT, no IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))


def _repeated_zlib(unit: bytes, times: int) -> bytes:
    """``zlib.compress(unit * times)`` without compressing (or holding) the whole: ``unit`` is deflated once,
    ending in a full flush (byte-aligned, no back references across it), so its blocks can be repeated."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(unit) + comp.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(times):  # the checksum of the whole stream (fast: no compression)
        adler = zlib.adler32(unit, adler)
    # zlib header, the repeated blocks, an empty final block (fixed Huffman: 0b011 + end code), Adler-32
    return b"\x78\xda" + block * times + b"\x03\x00" + struct.pack(">I", adler)


def png_bomb(width: int, height: int) -> bytes:
    """A complete, valid all-black RGB PNG: tiny on disk, ``3 * width * height`` bytes once decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = 100 if height % 100 == 0 else 1
    data = _repeated_zlib(b"\0" * (1 + 3 * width) * rows, height // rows)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def png_stripes(width: int, height: int, period: int = 50) -> bytes:
    """A valid RGB PNG, black with a white row every ``period`` rows (``height`` a multiple of it)."""
    assert height % period == 0
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    white, black = b"\0" + b"\xff" * (3 * width), b"\0" * (1 + 3 * width)
    data = _repeated_zlib(white + black * (period - 1), height // period)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def ppm_bomb() -> bytes:
    """The 30-byte file of the issue: a binary PPM header claiming 99999 x 99999 pixels."""
    head = b"P6 99999 99999 255\n"
    return head + b"\0" * (30 - len(head))


def random_image(h: int, w: int, seed: int, channels: int = 3) -> np.ndarray:
    shape = (h, w) if channels == 1 else (h, w, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def cmyk_jpeg(img: np.ndarray) -> bytes:
    return pil_bytes(Image.fromarray(img).convert("CMYK"), "JPEG", quality=90)


def png16(img: np.ndarray) -> bytes:
    return encode(img.astype(np.uint16) * 257, ".png")


def rgba_png(img: np.ndarray) -> bytes:
    alpha = np.full((*img.shape[:2], 1), 128, np.uint8)
    return encode(np.concatenate([img, alpha], axis=2), ".png")


def grey_png(img: np.ndarray) -> bytes:
    return encode(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), ".png")


def animated_gif(img: np.ndarray, frames: int = 3) -> bytes:
    ims = [Image.fromarray(np.roll(img, 7 * k, axis=1)) for k in range(frames)]
    return pil_bytes(ims[0], "GIF", save_all=True, append_images=ims[1:], duration=50, loop=0)


def truncated(data: bytes, fraction: float) -> bytes:
    return data[: max(1, int(len(data) * fraction))]


def random_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# ------------------------------------------------------------------------------------------------ .bin


class _TouchMarker:
    """Unpickling this runs ``os.system("touch <marker>")``: proof that a payload would execute."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def bin_payload(marker: Path, protocol: int = 2) -> bytes:
    return pickle.dumps(([_TouchMarker(marker), b"x"], [True]), protocol=protocol)


def bin_ndarray_bomb(n: int = 4_300_000_000) -> bytes:
    """``([numpy.ndarray((n,), 'u1')], [])`` in protocol-0 opcodes: a few dozen bytes, ``n`` bytes of RAM."""
    return b"((lcnumpy\nndarray\n((I%d\ntS'u1'\ntRa(lt." % n


def bin_bytes8_bomb(n: int = 3 * 10**12) -> bytes:
    """A protocol-4 pickle whose BINBYTES8 opcode declares ``n`` bytes and holds three."""
    return b"\x80\x04\x8e" + struct.pack("<Q", n) + b"abc."


def bin_of(images: list[bytes], issame: list[bool]) -> bytes:
    return pickle.dumps((images, issame), protocol=4)


# ------------------------------------------------------------------------------------------------ RecordIO

_MAGIC = 0xCED7230A


def rec_record(payload: bytes, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    return struct.pack("<II", _MAGIC, n) + payload + b"\0" * (-len(payload) % 4)


def ir_header(flag: int, label: float, id_: int = 0, labels: list[float] | None = None) -> bytes:
    out = struct.pack("<IfQQ", flag, label, id_, 0)
    if labels:
        out += np.asarray(labels, "<f4").tobytes()
    return out


def write_rec(prefix: Path, records: list[bytes], offsets: list[int] | None = None) -> tuple[Path, Path]:
    """``records`` (already framed) -> ``prefix.rec`` and ``prefix.idx`` (keys 0.., real or given offsets)."""
    rec, idx = prefix.with_suffix(".rec"), prefix.with_suffix(".idx")
    real, pos = [], 0
    for r in records:
        real.append(pos)
        pos += len(r)
    rec.write_bytes(b"".join(records))
    idx.write_text("".join(f"{k}\t{o}\n" for k, o in enumerate(offsets if offsets is not None else real)))
    return rec, idx


# ------------------------------------------------------------------------------------------------ checkpoints


def checkpoint_dict(embedding_size: int = 64) -> dict:
    """A valid faceforge checkpoint of an untrained MobileFaceNet (no BatchNorm calibration)."""
    import torch

    from faceforge.core.checkpoint import FORMAT, VERSION
    from faceforge.data.preprocess import Preprocess
    from faceforge.models.backbones import build_backbone

    torch.manual_seed(0)
    backbone = {"name": "mobilefacenet", "kwargs": {"embedding_size": embedding_size, "scale": 1}}
    model = build_backbone(backbone["name"], **backbone["kwargs"]).eval()
    return {
        "format": FORMAT,
        "version": VERSION,
        "meta": {
            "backbone": backbone,
            "embedding_size": embedding_size,
            "preprocess": Preprocess().to_dict(),
        },
        "backbone": model.state_dict(),
    }


def hostile_checkpoints(good: dict) -> dict[str, dict]:
    """Variants of a valid checkpoint dict whose metadata lies or has the wrong shape."""
    import copy

    def edit(fn) -> dict:
        c = dict(good)  # the weights are shared, the metadata is a copy
        c["meta"] = copy.deepcopy(good["meta"])
        fn(c)
        return c

    return {
        "embedding_size_1e9": edit(lambda c: c["meta"].update(embedding_size=10**9)),
        "kwargs_embedding_size_1e9": edit(
            lambda c: c["meta"]["backbone"]["kwargs"].update(embedding_size=10**9)
        ),
        "kwargs_scale_1e6": edit(lambda c: c["meta"]["backbone"]["kwargs"].update(scale=10**6)),
        "embedding_size_str": edit(lambda c: c["meta"].update(embedding_size="big")),
        "meta_list": edit(lambda c: c.update(meta=[1, 2, 3])),
        "backbone_meta_str": edit(lambda c: c["meta"].update(backbone="mobilefacenet")),
        "kwargs_list": edit(lambda c: c["meta"]["backbone"].update(kwargs=[1])),
        "unknown_backbone": edit(lambda c: c["meta"]["backbone"].update(name="os.system")),
        "no_preprocess": edit(lambda c: c["meta"].pop("preprocess")),
        "no_embedding_size": edit(lambda c: c["meta"].pop("embedding_size")),
        "preprocess_size_1e6": edit(lambda c: c["meta"]["preprocess"].update(input_size=10**6)),
        "preprocess_mean_nan": edit(lambda c: c["meta"]["preprocess"].update(mean=[float("nan")] * 3)),
        "preprocess_colour_int": edit(lambda c: c["meta"]["preprocess"].update(colour=3)),
        "weights_not_tensors": edit(lambda c: c.update(backbone={"a": 1})),
        "weights_other_width": edit(lambda c: c["meta"].update(embedding_size=128)),
    }
