"""insightface ``.bin`` verification sets (LFW, CFP-FP, AgeDB-30, ...) read without executing code.

A ``.bin`` is a pickle of ``(bins, issame_list)``: ``bins`` holds 2N encoded images (JPEG/PNG bytes),
images ``2i`` and ``2i+1`` form pair ``i``, and ``issame_list`` holds N booleans.

Pickles can run arbitrary code while loading, so :func:`load_bin` uses an unpickler whose ``find_class``
only resolves the globals a legitimate file needs:

* files written by python 2 (insightface's original tools) contain no globals at all: py2 ``str`` loads as
  ``bytes`` with ``encoding="bytes"``, bools and lists are opcodes;
* python 3 pickles at protocol 2 encode ``bytes`` as ``_codecs.encode(text, "latin1")`` and ``b""`` as
  ``bytes()``; ``bytearray`` appears as ``builtins.bytearray``. These resolve to wrappers that accept only
  those argument shapes (no other codec, no sized allocation);
* some converters store ``issame_list`` as a numpy bool array or a list of ``numpy.bool_``. We decided to
  SUPPORT these: ``numpy.ndarray``, ``numpy.dtype``, and ``numpy[._]core.multiarray._reconstruct`` /
  ``scalar`` resolve to wrappers that refuse object dtypes, so no Python object can be smuggled inside an
  array. Images stored as 1-D uint8 arrays are accepted too.

Everything else (``os.system``, ``posix.system``, ``builtins.eval``, ``pathlib.Path``, mxnet ``NDArray``,
...) raises :class:`UnsafeBinError` naming the file and the refused global. Convert mxnet-pickled files
once with mxnet outside this toolkit.

Sizes are never taken on trust. Before unpickling, every opcode of the file is walked with
:func:`pickletools.genops`, which reads each length-prefixed argument from the bytes actually present, so a
``BINBYTES8`` that declares a terabyte in a 20-byte file is refused before CPython's unpickler would
allocate it. ``numpy.ndarray`` resolves to a marker that ``_reconstruct`` accepts as its class argument but
that cannot be called, so ``numpy.ndarray((4300000000,), 'u1')`` (a 46-byte file, 4 GB of memory) is
refused; array contents come from ``__setstate__``, which numpy checks against the bytes in the file.

:func:`write_bin` writes pickle protocol 4 (python >= 3.4 reads it; bytes and bools need no globals at
protocol >= 3, so our own files load without any whitelisted global), ``issame`` as a list of ``bool``.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from faceforge.core.errors import FaceforgeError, InputError
from faceforge.data.image_io import UnreadableImageError, decode_image_rgb

BIN_PICKLE_PROTOCOL = 4


class UnsafeBinError(FaceforgeError, pickle.UnpicklingError):
    """A ``.bin`` that references a global a verification set never needs (possible code execution)."""

    def __init__(self, path: str | Path, module: str, name: str) -> None:
        super().__init__(
            f"{path}: refusing to load global '{module}.{name}': a .bin verification set only holds "
            "image bytes and booleans (the file is corrupt or malicious; do not load it with plain pickle)"
        )
        self.path, self.module, self.name = str(path), module, name


class BinFormatError(InputError):
    """A ``.bin`` that unpickles safely but is not ``(list of 2N images, N booleans)``, or not a pickle."""


# ------------------------------------------------------------------ whitelisted constructors (wrappers)


def _codecs_encode(text: object, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is only allowed as encode(str, 'latin1')")
    return text.encode("latin1")


def _bytes(*args: object) -> bytes:
    if args == ():
        return b""
    if len(args) == 2 and isinstance(args[0], str):
        return _codecs_encode(args[0], args[1])  # type: ignore[arg-type]
    if len(args) == 1 and isinstance(args[0], bytes | bytearray):
        return bytes(args[0])
    raise pickle.UnpicklingError("bytes() is only allowed with no argument, bytes, or (str, 'latin1')")


def _bytearray(*args: object) -> bytearray:
    return bytearray(_bytes(*args))


def _safe_dtype(dt: object) -> np.dtype:
    d = np.dtype(dt)  # type: ignore[call-overload]
    if d.hasobject or d.kind not in "biuf":
        raise pickle.UnpicklingError(f"numpy dtype {d} is not allowed in a .bin (only bool/int/uint/float)")
    return d


def _np_dtype(obj: object, align: object = False, copy: object = False) -> np.dtype:
    if not isinstance(obj, str | bytes):
        raise pickle.UnpicklingError("numpy.dtype is only allowed from a type string")
    return _safe_dtype(obj.decode("latin1") if isinstance(obj, bytes) else obj)


class _NdarrayClass:
    """What ``numpy.ndarray`` resolves to: a marker for ``_reconstruct``; calling it is refused, since
    ``ndarray(shape)`` would allocate whatever the file declares."""

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise pickle.UnpicklingError("calling numpy.ndarray(...) is not allowed in a .bin (it allocates)")


_NDARRAY = _NdarrayClass()


def _np_reconstruct(cls: object, shape: object, dtype_code: object) -> np.ndarray:
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError("numpy _reconstruct is only allowed for numpy.ndarray")
    # numpy pickles pass shape (0,); the contents and real shape come from __setstate__, which numpy
    # checks against the bytes given, so nothing larger than the file is ever allocated
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _np_scalar(dtype: object, data: object = None) -> np.generic:
    d = _safe_dtype(dtype)
    if not isinstance(data, bytes | bytearray) or len(data) != d.itemsize:
        raise pickle.UnpicklingError("numpy scalar needs raw bytes of its dtype's size")
    return np.frombuffer(bytes(data), dtype=d)[0]


_ALLOWED = {
    ("builtins", "bytes"): _bytes,
    ("__builtin__", "bytes"): _bytes,
    ("builtins", "bytearray"): _bytearray,
    ("__builtin__", "bytearray"): _bytearray,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
}


class RestrictedBinUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals listed in this module's docstring."""

    def __init__(self, file: io.BufferedIOBase, path: str | Path = "<bytes>") -> None:
        super().__init__(file, encoding="bytes")
        self.path = str(path)

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeBinError(self.path, module, name) from None


def _as_image_bytes(obj: object, path: str, i: int) -> bytes:
    if isinstance(obj, bytes):
        return obj
    if isinstance(obj, bytearray):
        return bytes(obj)
    if isinstance(obj, np.ndarray) and obj.dtype == np.uint8 and obj.ndim == 1:
        return obj.tobytes()
    raise BinFormatError(f"{path}: image {i} is a {type(obj).__name__}, expected encoded image bytes")


def _check_opcodes(data: bytes, path: str) -> None:
    """Walk every opcode: length-prefixed arguments longer than the bytes left make the file invalid."""
    try:
        for _ in pickletools.genops(io.BytesIO(data)):
            pass
    except UnicodeDecodeError:
        # a string argument that is present but not valid text: the unpickler decodes it the same way and
        # stops there too, after checking any global that comes first (so a refused global is reported)
        return
    except Exception as exc:  # genops raises ValueError for truncated data, others for garbage bytes
        raise BinFormatError(f"{path}: not a readable .bin pickle ({exc})") from None


def _flat_booleans(obj: object, path: str) -> np.ndarray:
    if isinstance(obj, np.ndarray):
        arr = obj
    elif isinstance(obj, list | tuple) and all(
        isinstance(v, bool | int | np.bool_ | np.integer) for v in obj
    ):
        arr = np.asarray(obj)
    else:
        raise BinFormatError(f"{path}: issame_list must be a flat list of booleans")
    if arr.dtype.hasobject or arr.ndim != 1:
        raise BinFormatError(f"{path}: issame_list must be a flat list of booleans")
    return arr.astype(bool)


def loads_bin(data: bytes, path: str | Path = "<bytes>") -> tuple[list[bytes], np.ndarray]:
    """Like :func:`load_bin` for bytes already in memory."""
    path = str(path)
    _check_opcodes(data, path)
    try:
        obj = RestrictedBinUnpickler(io.BytesIO(data), path).load()
    except UnsafeBinError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        MemoryError,
    ) as exc:
        raise BinFormatError(f"{path}: not a readable .bin pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, tuple | list) or len(obj) != 2:
        raise BinFormatError(f"{path}: expected a pickled (bins, issame_list) pair, got {type(obj).__name__}")
    bins_obj, issame_obj = obj
    if not isinstance(bins_obj, list | tuple):
        raise BinFormatError(f"{path}: bins is a {type(bins_obj).__name__}, expected a list of image bytes")
    bins = [_as_image_bytes(b, path, i) for i, b in enumerate(bins_obj)]
    issame = _flat_booleans(issame_obj, path)
    if len(bins) != 2 * len(issame):
        raise BinFormatError(f"{path}: {len(bins)} images for {len(issame)} pairs (expected 2 per pair)")
    return bins, issame


def load_bin(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """Read a ``.bin`` -> (2N encoded images, bool array of N). Raises UnsafeBinError / BinFormatError."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"verification .bin not found: {p}")
    return loads_bin(p.read_bytes(), p)


def write_bin(path: str | Path, images: Sequence[bytes], issame: Sequence[bool] | np.ndarray) -> None:
    """Write a ``.bin`` (protocol 4, bytes + list of bools) via a ``.part`` file and rename."""
    imgs = [bytes(b) for b in images]
    same = [bool(s) for s in np.asarray(issame).ravel()]
    if len(imgs) != 2 * len(same):
        raise ValueError(f"{len(imgs)} images for {len(same)} pairs (expected 2 per pair)")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".part")
    with open(tmp, "wb") as f:
        pickle.dump((imgs, same), f, protocol=BIN_PICKLE_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(p)


def iter_bin_pairs(path: str | Path) -> Iterator[tuple[np.ndarray, np.ndarray, bool]]:
    """Yield ``(img_a, img_b, same)`` with images decoded to uint8 RGB."""
    bins, issame = load_bin(path)
    for i, same in enumerate(issame):
        a = decode_image_rgb(bins[2 * i], f"{path}[image {2 * i}]")
        b = decode_image_rgb(bins[2 * i + 1], f"{path}[image {2 * i + 1}]")
        yield a, b, bool(same)


def decode_bin(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode every image -> (faces uint8 [2N, H, W, 3] RGB, issame bool [N]); all images must share a size."""
    bins, issame = load_bin(path)
    if not bins:
        raise BinFormatError(f"{path}: no images")
    first = decode_image_rgb(bins[0], f"{path}[image 0]")
    faces = np.empty((len(bins), *first.shape), dtype=np.uint8)
    faces[0] = first
    for i in range(1, len(bins)):
        img = decode_image_rgb(bins[i], f"{path}[image {i}]")
        if img.shape != first.shape:
            raise UnreadableImageError(
                f"{path}[image {i}]",
                f"size {img.shape[1]}x{img.shape[0]} differs from image 0 ({first.shape[1]}x{first.shape[0]})",
            )
        faces[i] = img
    return faces, issame
