"""Face datasets in MXNet RecordIO (``train.rec`` + ``train.idx``) without mxnet: :func:`read_face_rec` and
:func:`write_face_rec`. The record format is :mod:`faceforge.data.recordio_format`, the file reader and writer
:mod:`faceforge.data.recordio_files`; their names are importable from here too.

insightface ``train.rec`` files (what arcface_torch's ``MXFaceDataset`` reads) put a header-only record at
key 0 whose label is ``[a, b]``: images are keys ``1 .. a-1`` and keys ``a .. b-1`` are one record per
identity whose label is the ``[first, last+1)`` image-key range of that identity. Files without that record
(plain ``im2rec`` output) use every key of the ``.idx``.

Nothing read from a file sizes an allocation before it is checked against the file: ``.idx`` offsets
must lie inside the ``.rec`` (a negative or past-the-end offset names ``file:line``), a record's length
must fit in the bytes left after it, record 0's ``a`` cannot announce more images than the index lists,
and image labels must be whole numbers below the identity count ``b - a`` (or
:data:`faceforge.data.limits.MAX_CLASSES` without a range record). Every error names the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from faceforge.data.image_io import UnreadableImageError, decode_image_rgb
from faceforge.data.limits import MAX_CLASSES, checked_label
from faceforge.data.recordio_files import (  # noqa: F401  (re-exported)
    IndexedRecordReader,
    RecordWriter,
    read_idx,
    scan_offsets,
)
from faceforge.data.recordio_format import (  # noqa: F401  (re-exported)
    IR_SIZE,
    MAGIC,
    IRHeader,
    RecordIOError,
    frame_record,
    header_label,
    pack,
    pack_img,
    unpack,
)
from faceforge.data.samples import Samples


def read_face_rec(
    rec_path: str | Path, idx_path: str | Path | None = None
) -> tuple[IndexedRecordReader, np.ndarray, np.ndarray]:
    """Open an insightface-style face ``.rec`` -> (reader, image keys, int64 labels).

    With a range record at key 0 (``flag > 0``), image keys are ``1 .. label[0]-1`` as in arcface_torch's
    ``MXFaceDataset``; otherwise every key of the index is an image.
    """
    reader = IndexedRecordReader(rec_path, idx_path)
    keys: np.ndarray | None = None
    bound = MAX_CLASSES
    if 0 in reader:
        h0 = _header(reader, 0)
        if h0.flag > 0:
            rng = np.asarray(h0.label, dtype=np.float64).ravel()
            end = _whole(rng[0], rec_path, "record 0's image range end")
            if not 1 <= end <= len(reader) + 1:
                raise RecordIOError(
                    f"{rec_path}: record 0 announces images 1..{end - 1} but the index lists "
                    f"{len(reader)} records: the .rec is damaged or not an insightface face .rec"
                )
            keys = np.arange(1, end, dtype=np.int64)
            missing = sorted(set(range(1, end)) - set(reader.index))
            if missing:
                raise RecordIOError(
                    f"{rec_path}: record 0 announces images 1..{end - 1} but key {missing[0]} is not in the index"
                )
            if rng.size > 1:
                n_ids = _whole(rng[1], rec_path, "record 0's identity range end") - end
                if not 0 <= n_ids <= len(reader):
                    raise RecordIOError(
                        f"{rec_path}: record 0 announces {n_ids} identity records but the index lists "
                        f"{len(reader)} records"
                    )
                bound = n_ids or MAX_CLASSES
    if keys is None:
        keys = np.asarray(reader.keys, dtype=np.int64)
    labels = np.empty(len(keys), dtype=np.int64)
    for i, k in enumerate(keys.tolist()):
        h = _header(reader, k)
        try:
            labels[i] = checked_label(h.label if h.flag == 0 else np.asarray(h.label).ravel()[0], bound)
        except ValueError as exc:
            raise RecordIOError(f"{rec_path}: record key {k}: {exc}") from None
    return reader, keys, labels


def _header(reader: IndexedRecordReader, key: int) -> IRHeader:
    try:
        return reader.read_header(key)
    except RecordIOError as exc:
        msg = str(exc)
        raise RecordIOError(
            msg if reader.rec_path in msg else f"{reader.rec_path}[key {key}]: {msg}"
        ) from None


def _whole(value: float, rec_path: str | Path, what: str) -> int:
    if not np.isfinite(value) or value != int(value) or abs(value) > 2**53:
        raise RecordIOError(f"{rec_path}: {what} is {value!r}, not a whole number")
    return int(value)


def _image_ext(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    return None


def write_face_rec(
    samples: Samples | tuple[Sequence[str], Sequence[int]],
    out_prefix: str | Path,
    encode_quality: int = 95,
) -> tuple[Path, Path]:
    """Write ``<out_prefix>.rec`` / ``.idx`` in insightface's layout (range record, images, identity records).

    JPEG and PNG files are stored as their original bytes (so folder -> rec -> folder is byte-identical);
    other formats are decoded and re-encoded as JPEG at ``encode_quality``. Images are written grouped by
    label (stable within a label) so every identity owns a contiguous key range. Returns (rec, idx) paths.
    """
    import cv2

    if isinstance(samples, Samples):
        paths, labels = list(samples.paths), np.asarray(samples.labels, dtype=np.int64)
    else:
        paths, labels = list(samples[0]), np.asarray(samples[1], dtype=np.int64)
    if len(paths) != len(labels):
        raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
    if not paths:
        raise ValueError("no samples to write")
    order = np.argsort(labels, kind="stable")
    num_classes = int(labels.max()) + 1
    n = len(paths)
    prefix = Path(out_prefix)
    rec_path, idx_path = prefix.with_name(prefix.name + ".rec"), prefix.with_name(prefix.name + ".idx")
    first = np.full(num_classes, -1, dtype=np.int64)
    last = np.full(num_classes, -1, dtype=np.int64)
    with RecordWriter(rec_path, idx_path) as w:
        w.write(0, pack(IRHeader(0, [n + 1, n + 1 + num_classes], 0, 0), b""))
        for key, i in enumerate(order, start=1):
            path, lab = paths[i], int(labels[i])
            data = Path(path).read_bytes()
            if _image_ext(data) is None:
                img = decode_image_rgb(data, path)
                ok, enc = cv2.imencode(
                    ".jpg",
                    cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, int(encode_quality)],
                )
                if not ok:
                    raise UnreadableImageError(path, "could not re-encode as JPEG")
                data = enc.tobytes()
            w.write(key, pack(IRHeader(0, float(lab), key, 0), data))
            if first[lab] < 0:
                first[lab] = key
            last[lab] = key
        for c in range(num_classes):
            rng = [first[c], last[c] + 1] if first[c] >= 0 else [0, 0]
            w.write(n + 1 + c, pack(IRHeader(0, rng, n + 1 + c, 0), b""))
    return rec_path, idx_path
