"""Which file names are images: the one extension list every command uses.

An image is a file whose name ends (case-insensitively) in an extension of a format Pillow can open and
decode on its own: JPEG, PNG (and APNG), GIF (the first frame), BMP, WebP, TIFF, the PNM family, ICO, TGA,
PCX, PSD, QOI, JPEG 2000, ... (:data:`IMAGE_EXTENSIONS`, built from Pillow's registry at import). Left out are
Pillow's identify-only stubs (BUFR, GRIB, HDF5, MPEG, WMF/EMF: no pixel decoder without a plug-in of one's
own) and EPS/PS (decoding needs the Ghostscript program). Decoding tries OpenCV first and Pillow for what
OpenCV does not read (:func:`faceforge.data.image_io.decode_image_rgb`), so every listed format decodes.
"""

from __future__ import annotations

from PIL import Image

__all__ = ["IMAGE_EXTENSIONS", "NOT_DECODED", "is_image_name"]

#: Pillow formats that only identify a file (their decoder is a stub) or need an outside program
NOT_DECODED = frozenset({"BUFR", "GRIB", "HDF5", "MPEG", "WMF", "EPS"})


def _pillow_extensions() -> tuple[str, ...]:
    Image.init()
    found = {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    found -= {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in NOT_DECODED}
    common = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".gif")
    return common + tuple(sorted(found - set(common)))


#: every image extension, the common ones first (lower case, with the dot)
IMAGE_EXTENSIONS: tuple[str, ...] = _pillow_extensions()


def is_image_name(name: str) -> bool:
    """Whether a file name ends in one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)
