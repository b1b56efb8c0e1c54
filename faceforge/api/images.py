"""Image inputs of the Python API: a path, encoded bytes, or a numpy array whose colour order is *stated*.

Every function of :mod:`faceforge.api` that takes a photo or a face crop accepts an :data:`ImageInput`:

* a path (``str`` or :class:`~pathlib.Path`) or encoded bytes (JPEG, PNG, ...): decoded as the face search
  service decodes uploads (:func:`faceforge.serve.pipeline.decode_photo`: the size is read from the header and
  a photo of more than :data:`MAX_PIXELS` pixels is refused before its pixels are decoded, the EXIF orientation
  is applied, grey / 16-bit / RGBA become RGB uint8);
* a numpy array ``uint8 [H, W, 3]`` (or ``[H, W]`` grey), with ``colour="RGB"`` or ``colour="BGR"``. An array
  does not say its channel order, and the two common readers disagree (``cv2.imread`` gives BGR; Pillow,
  imageio and scikit-image give RGB), so faceforge asks instead of guessing: insightface's ``FaceAnalysis.get``
  silently expects BGR and ``face_recognition`` silently expects RGB, and a swapped order lowers accuracy
  without any error. Internally everything is RGB.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from faceforge.core.errors import InputError

#: what the API accepts as a photo or a face crop
ImageInput = str | Path | bytes | np.ndarray
Colour = Literal["RGB", "BGR"]
COLOURS = ("RGB", "BGR")
#: the largest photo decoded (pixels, from the header), as the service's default limit
MAX_PIXELS = 40_000_000


class ImageError(InputError):
    """An image input that cannot be used (unreadable file, wrong array type, colour order not stated)."""


def _check_colour(colour: str | None, what: str) -> str:
    if colour is None:
        raise ImageError(
            f"{what} is a numpy array, whose colour order cannot be told from its pixels: pass colour='RGB' "
            "(Pillow, imageio, scikit-image, faceforge.read_image) or colour='BGR' (cv2.imread, cv2.VideoCapture)"
        )
    c = str(colour).upper()
    if c not in COLOURS:
        raise ImageError(f"colour={colour!r}: choose 'RGB' or 'BGR'")
    return c


def array_to_rgb(image: np.ndarray, colour: str | None, what: str = "the image") -> np.ndarray:
    """A uint8 ``[H, W, 3]`` (or ``[H, W]`` grey) array in ``colour`` order -> contiguous RGB uint8 ``[H, W, 3]``."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ImageError(
            f"{what} is a {arr.dtype} array; faceforge takes uint8 pixels 0..255 (convert with "
            "np.clip(x * 255, 0, 255).astype(np.uint8) if yours are floats in [0, 1])"
        )
    if arr.ndim == 2:
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ImageError(f"{what} has shape {arr.shape}; expected [H, W, 3] (colour) or [H, W] (grey)")
    c = _check_colour(colour, what)
    arr = arr[:, :, :3]  # an alpha channel is dropped
    return np.ascontiguousarray(arr[:, :, ::-1] if c == "BGR" else arr)


def describe_input(image: object) -> str:
    """A short name of an input for messages and results (the path, or the kind of object)."""
    if isinstance(image, str | Path):
        return str(image)
    if isinstance(image, bytes | bytearray):
        return f"<{len(image)} bytes>"
    if isinstance(image, np.ndarray):
        return f"<array {'x'.join(str(s) for s in image.shape)}>"
    return f"<{type(image).__name__}>"


def load_rgb(image: ImageInput, colour: str | None = None, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any :data:`ImageInput` -> RGB uint8 ``[H, W, 3]`` (see the module docstring for what is accepted)."""
    from faceforge.serve.pipeline import PhotoError, decode_photo

    if isinstance(image, np.ndarray):
        return array_to_rgb(image, colour)
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"no image file at {path}")
        data, name = path.read_bytes(), str(path)
    elif isinstance(image, bytes | bytearray | memoryview):
        data, name = bytes(image), describe_input(image)
    else:
        raise ImageError(
            f"cannot read an image from a {type(image).__name__}: give a path, encoded bytes or a uint8 numpy "
            "array (with colour='RGB' or 'BGR')"
        )
    if colour is not None and str(colour).upper() != "RGB":
        raise ImageError(
            f"colour={colour!r} is for numpy arrays; an image file is decoded to RGB whatever its format "
            "(drop the colour argument)"
        )
    try:
        return decode_photo(data, name, max_pixels)
    except PhotoError as exc:
        raise ImageError(str(exc)) from None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as an RGB uint8 array ``[H, W, 3]`` (EXIF orientation applied).

    >>> read_image(photos / "insightface_t1.jpg").shape
    (886, 1280, 3)
    """
    return load_rgb(Path(path))


def encode_png(rgb: np.ndarray) -> bytes:
    """RGB uint8 -> lossless PNG bytes (how an array reaches the gallery, which stores a photo's hash)."""
    import cv2

    ok, enc = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - a uint8 [H, W, 3] array always encodes
        raise ImageError("could not encode the image as PNG")
    return enc.tobytes()


def as_batch(crops: np.ndarray | Sequence[ImageInput], colour: str | None, size: int) -> np.ndarray:
    """Aligned face crops (``[N, S, S, 3]``, one ``[S, S, 3]``, or a list of arrays, paths or encoded images)
    -> RGB uint8 ``[N, S, S, 3]``."""
    if isinstance(crops, np.ndarray):
        crops = list(crops) if crops.ndim == 4 else [crops]
    elif isinstance(crops, str | Path | bytes):
        crops = [crops]
    rgb = [
        array_to_rgb(c, colour, "an aligned face") if isinstance(c, np.ndarray) else load_rgb(c, colour)
        for c in crops
    ]
    for c in rgb:
        if c.shape[:2] != (size, size):
            raise ImageError(
                f"an aligned face is {c.shape[1]}x{c.shape[0]} pixels; this model takes {size}x{size} faces aligned "
                "to the ArcFace template (detect them with faceforge.detect_faces(photo, size=...) or align them "
                "with faceforge.align_face)"
            )
    return np.stack(rgb) if rgb else np.zeros((0, size, size, 3), np.uint8)
