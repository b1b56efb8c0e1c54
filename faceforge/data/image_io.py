"""Reading and writing face images as uint8 RGB arrays, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm")


class UnreadableImageError(ValueError):
    """An image file that exists but cannot be decoded (truncated, not an image, empty)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def is_image_file(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def decode_image_rgb(data: bytes | np.ndarray, source: str | Path = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array (H, W, 3); greyscale is expanded to 3 channels."""
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
    if buf.size == 0:
        raise UnreadableImageError(source, "empty file")
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise UnreadableImageError(source, "not a decodable image (truncated or wrong format)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3). Raises FileNotFoundError or UnreadableImageError."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image not found: {p}")
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as exc:
        raise UnreadableImageError(p, f"cannot read file ({exc})") from exc
    return decode_image_rgb(data, p)


def write_image_rgb(path: str | Path, image: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write an RGB uint8 image; the format follows the extension (JPEG at ``jpeg_quality``, PNG lossless).

    The file is written to a temporary name and renamed, so an interrupted job never leaves half a file.
    """
    p = Path(path)
    ext = p.suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if ext in (".jpg", ".jpeg") else []
    ok, enc = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"could not encode image for {p}")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".part")
    enc.tofile(tmp)
    tmp.replace(p)
