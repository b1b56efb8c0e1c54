"""On-disk embedding cache: embed each image once per (model, settings), reuse it in every later run.

Layout: ``<cache_dir>/<model_key>/<settings_key>.npz`` holding two arrays, ``hashes`` (content keys,
``<U40``) and ``embeddings`` (float32 ``[n, D]``), plus ``<cache_dir>/<model_key>/model.json`` with
the embedder's ``describe()`` for humans.

* ``model_key`` identifies the network: its ``kind`` plus a hash of ``describe()`` without
  location-only fields (``path``, ``source``, ...), so the checkpoint's sha256, a package version or
  the inference precision change the key while moving the file does not.
* ``settings_key`` covers what changes an embedding for the same network and image: the flip
  test-time augmentation, the input size and the colour order.
* An image's key is the sha1 of its file bytes (an edited file is a new entry); faces that live
  inside a container (a ``.bin``) get ``sha1("<container sha256>:<index>")``.

Stored embeddings are the *raw* ones (the flip sum when flip is on, before L2 normalisation), so the
same entry serves normalised and unnormalised consumers.  Files are rewritten atomically (temporary
file + ``os.replace``) after merging with whatever another process wrote meanwhile.

Speed: the next batch's files are read, hashed and decoded in a background thread while the current batch is
embedded (:class:`_ReadAhead`), and an embedder with ``embed_flip_sum`` preprocesses a face once for both
halves of the flip sum. An embedder whose ``auto`` precision waits on a parity record
(:mod:`faceforge.embedders.parity`) gets the first readable faces before the cache folder is opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from faceforge.core.atomic import atomic_writer
from faceforge.core.finite import check_finite
from faceforge.data.image_io import UnreadableImageError, decode_image_rgb, read_image_bytes
from faceforge.embedders.cache_dir import default_cache_dir

__all__ = [
    "EmbeddingStore",
    "cached_embed",
    "cached_embed_paths",
    "default_cache_dir",
    "embed_batch",
    "model_key",
    "settings_key",
]

#: ``describe()`` fields that say where a model lives, not what it computes.
LOCATION_FIELDS = frozenset({"path", "source", "model_path", "location", "files"})
#: ``describe()`` fields that report how the embeddings are computed without changing them beyond float
#: rounding: how the precision was chosen (the parity record, which gains its accuracy part later; the key
#: covers the precision itself) and inference-only rewrites (BatchNorm folding, about 1e-6 relative)
REPORT_FIELDS = frozenset({"precision_choice", "inference"})


def _canonical_hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:40] or "model"


def model_identity(description: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in description.items() if k not in LOCATION_FIELDS | REPORT_FIELDS}


def model_key(description: dict[str, Any]) -> str:
    """``<kind>-<16 hex>`` from an embedder's ``describe()``."""
    kind = _slug(str(description.get("kind", "model")))
    return f"{kind}-{_canonical_hash(model_identity(description))[:16]}"


def embedding_settings(embedder: Any, flip: bool) -> dict[str, Any]:
    desc = embedder.describe()
    colour = (desc.get("preprocess") or {}).get("colour") or desc.get("colour") or "RGB"
    return {
        "flip": bool(flip),
        "input_size": int(embedder.input_size),
        "colour": str(colour),
        "stored": "raw embedding (flip sum when flip is on), not normalised",
    }


def settings_key(settings: dict[str, Any]) -> str:
    """Readable prefix plus a hash of every setting: ``flip1_112px_RGB-<8 hex>``."""
    head = f"flip{int(settings['flip'])}_{settings['input_size']}px_{_slug(str(settings['colour']))}"
    return f"{head}-{_canonical_hash(settings)[:8]}"


def sha1_bytes(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def member_key(container_sha256: str, index: int) -> str:
    """Cache key of face ``index`` inside a container file (a ``.bin``) with the given sha256."""
    return sha1_bytes(f"{container_sha256}:{index}".encode())


class EmbeddingStore:
    """One ``.npz`` of ``hashes`` -> ``embeddings``, held in memory, saved atomically with merging."""

    def __init__(self, path: str | Path, dim: int) -> None:
        self.path = Path(path)
        self.dim = int(dim)
        self._index: dict[str, int] = {}
        self._rows: list[np.ndarray] = []
        self._new: dict[str, np.ndarray] = {}
        self._load_into(self.path)

    def _read(self, path: Path) -> tuple[np.ndarray, np.ndarray] | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                hashes, emb = z["hashes"], z["embeddings"]
        except (OSError, ValueError, KeyError):
            return None  # a damaged cache file is ignored and rewritten, never fatal
        if emb.ndim != 2 or emb.shape[1] != self.dim or len(hashes) != len(emb):
            return None
        return hashes, emb.astype(np.float32, copy=False)

    def _load_into(self, path: Path) -> None:
        got = self._read(path)
        if got is None:
            return
        hashes, emb = got
        for h, e in zip(hashes.tolist(), emb, strict=True):
            if h not in self._index:
                self._index[h] = len(self._rows)
                self._rows.append(e)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def get(self, key: str) -> np.ndarray | None:
        i = self._index.get(key)
        return None if i is None else self._rows[i]

    def put(self, key: str, embedding: np.ndarray) -> None:
        e = np.asarray(embedding, dtype=np.float32).reshape(self.dim)
        if key in self._index:
            self._rows[self._index[key]] = e
        else:
            self._index[key] = len(self._rows)
            self._rows.append(e)
        self._new[key] = e

    @property
    def dirty(self) -> bool:
        return bool(self._new)

    def save(self) -> None:
        """Merge with the file on disk (entries another process added survive) and replace it atomically."""
        if not self._new:
            return
        self._load_into(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        hashes = np.array(list(self._index), dtype="<U40")
        emb = np.stack(self._rows).astype(np.float32) if self._rows else np.zeros((0, self.dim), np.float32)
        with atomic_writer(self.path) as fh:
            np.savez(fh, hashes=hashes, embeddings=emb)
        self._new.clear()


def open_store(embedder: Any, flip: bool, cache_dir: str | Path) -> EmbeddingStore:
    desc = embedder.describe()
    settings = embedding_settings(embedder, flip)
    folder = Path(cache_dir) / model_key(desc)
    folder.mkdir(parents=True, exist_ok=True)
    meta = folder / "model.json"
    if not meta.is_file():
        meta.write_text(json.dumps(desc, indent=2, default=str))
    return EmbeddingStore(folder / f"{settings_key(settings)}.npz", embedder.embedding_size)


# ``load(i) -> (cache key, decode)``: the key (None: do not cache) without decoding, and a function
# that decodes the image, returning (image or None when unreadable, a name or the error message)
Decode = Callable[[], tuple[np.ndarray | None, str]]
Loader = Callable[[int], tuple[str | None, Decode]]


@dataclass
class _Chunk:
    """One batch of work, read ahead: cache hits, decoded misses and what could not be used."""

    count: int
    hits: list[tuple[int, np.ndarray]] = field(default_factory=list)
    faces: list[np.ndarray] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    row_keys: list[str | None] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _read_chunks(
    n: int,
    keys: Sequence[str] | None,
    load: Loader,
    store: EmbeddingStore | None,
    size: int,
    batch_size: int,
) -> Iterator[_Chunk]:
    """Chunks of ``batch_size`` items: hits looked up, misses read and decoded (run ahead in a thread)."""
    for start in range(0, n, batch_size):
        chunk = _Chunk(min(n, start + batch_size) - start)
        for i in range(start, start + chunk.count):
            if store is not None and keys is not None and (hit := store.get(keys[i])) is not None:
                chunk.hits.append((i, hit))
                continue
            key, decode = load(i)
            if keys is not None:
                key = keys[i]
            if store is not None and key is not None and (hit := store.get(key)) is not None:
                chunk.hits.append((i, hit))
                continue
            img, where = decode()
            if img is None:
                chunk.failed.append(where)
                continue
            if img.shape[:2] != (size, size):
                chunk.failed.append(f"{where}: {wrong_size_reason(img, size)}")
                continue
            chunk.faces.append(img)
            chunk.rows.append(i)
            chunk.row_keys.append(key)
        yield chunk


class _ReadAhead:
    """Iterate a generator in a background thread, ``depth`` items ahead of the consumer.

    Reading, hashing and JPEG decoding (OpenCV releases the GIL) of the next chunk then overlap the forward
    pass of this one. An exception in the thread is raised in the consumer; leaving early stops the thread.
    """

    _END = object()

    def __init__(self, items: Iterator[Any], depth: int = 2) -> None:
        self._items = items
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faceforge-read-ahead", daemon=True)

    def _run(self) -> None:
        try:
            for item in self._items:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(self._END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._queue.put(exc)

    def __enter__(self) -> Iterator[Any]:
        self._thread.start()
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):  # unblock a producer waiting on a full queue
                self._queue.get(timeout=0.05)


def _settle_precision(embedder: Any, n: int, load: Loader, size: int) -> None:
    """Give an embedder whose precision waits on a parity record (``auto``, module
    :mod:`faceforge.embedders.parity`) its first readable faces, before the cache folder (keyed by the
    precision) is opened."""
    if not getattr(embedder, "needs_parity_faces", False):
        return
    from faceforge.embedders.parity import PARITY_FACES  # (torch: only for an embedder that needs it)

    faces: list[np.ndarray] = []
    first = ""
    for i in range(n):
        img, where = load(i)[1]()
        if img is not None and img.shape[:2] == (size, size):
            faces.append(img)
            first = first or where
            if len(faces) >= PARITY_FACES:
                break
    if faces:
        embedder.settle_precision(
            np.stack(faces), f"the first {len(faces)} readable faces of the first run, from {first}"
        )


def embed_batch(embedder: Any, faces: np.ndarray, flip: bool) -> np.ndarray:
    """Raw embeddings of uint8 faces; with ``flip``, ``f(x) + f(mirror(x))`` (the embedder's own
    ``embed_flip_sum`` when it has one, which preprocesses once for both). NaN or infinite outputs raise
    :class:`~faceforge.core.finite.ModelOutputError` naming the model."""
    if not flip:
        return check_finite(embedder.embed(faces), embedder)
    both = getattr(embedder, "embed_flip_sum", None)
    if both is not None:
        return check_finite(both(faces), embedder)
    emb = check_finite(embedder.embed(faces), embedder)
    return emb + check_finite(embedder.embed(np.ascontiguousarray(faces[:, :, ::-1])), embedder)


def cached_embed(
    embedder: Any,
    n: int,
    keys: Sequence[str] | None,
    load: Loader,
    flip: bool = True,
    cache_dir: str | Path | None = None,
    batch_size: int = 128,
    normalize: bool = True,
    progress: bool = True,
    stats: dict[str, int] | None = None,
    save_every: int = 4096,
) -> tuple[np.ndarray, list[str]]:
    """Embed ``n`` items through the cache.

    ``keys`` (if known without loading, e.g. faces in a ``.bin``) lets cached items skip loading;
    otherwise ``load(i)`` returns the key and a decoder, called on cache misses only.  Rows of unreadable
    items and of images whose size is not the model's input size are NaN and their errors are returned.
    ``stats`` (if given) receives ``cached`` and ``computed`` counts.  The next ``batch_size`` items are
    read and decoded in a background thread while the current ones are embedded.
    """
    out = np.full((n, embedder.embedding_size), np.nan, dtype=np.float32)
    failed: list[str] = []
    size = embedder.input_size
    _settle_precision(embedder, n, load, size)
    store = open_store(embedder, flip, cache_dir) if cache_dir is not None else None
    n_cached = n_computed = since_save = 0
    chunks = _read_chunks(n, keys, load, store, size, batch_size)
    with tqdm(total=n, desc="embed", unit="img", disable=not progress) as bar, _ReadAhead(chunks) as ahead:
        for chunk in ahead:
            for i, hit in chunk.hits:
                out[i] = hit
            n_cached += len(chunk.hits)
            failed += chunk.failed
            if chunk.faces:
                emb = embed_batch(embedder, np.stack(chunk.faces), flip)
                out[chunk.rows] = emb
                n_computed += len(chunk.rows)
                if store is not None:
                    for k, e in zip(chunk.row_keys, emb, strict=True):
                        if k is not None:
                            store.put(k, e)
                            since_save += 1
                    if since_save >= save_every:
                        store.save()
                        since_save = 0
            bar.update(chunk.count)
    if store is not None:
        store.save()
    if stats is not None:
        stats["cached"] = stats.get("cached", 0) + n_cached
        stats["computed"] = stats.get("computed", 0) + n_computed
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out, failed


def wrong_size_reason(img: np.ndarray, size: int) -> str:
    """Why an image of another size than the model's input is left out (one bad file never ends a run)."""
    return (
        f"is {img.shape[1]}x{img.shape[0]} but the model takes aligned {size}x{size} faces "
        "(align the images first: 'faceforge align' or 'faceforge prepare')"
    )


def _path_loader(paths: Sequence[str | Path]) -> Loader:
    def load(i: int) -> tuple[str | None, Decode]:
        p = Path(paths[i])
        try:
            data = read_image_bytes(p)
        except UnreadableImageError as exc:
            error = f"{exc.path}: {exc.reason}"
            return None, lambda: (None, error)

        def decode() -> tuple[np.ndarray | None, str]:
            try:
                return decode_image_rgb(data, p), str(p)
            except UnreadableImageError as exc:
                return None, f"{exc.path}: {exc.reason}"

        return (sha1_bytes(data) if data else None), decode

    return load


def cached_embed_paths(
    embedder: Any,
    paths: Sequence[str | Path],
    flip: bool = True,
    cache_dir: str | Path | None = None,
    batch_size: int = 128,
    normalize: bool = True,
    progress: bool = True,
    stats: dict[str, int] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Embeddings ``[N, D]`` float32 of image files (NaN rows for unreadable ones) and the unreadable files.

    Flip test-time augmentation follows insightface's "Accuracy-Flip": ``e = f(x) + f(mirror(x))``; with
    ``normalize`` the rows are then divided by ``max(||e||, 1e-12)``.  Only images missing from the
    cache are embedded: every file is still read and hashed (sha1 of its bytes), so an edited image is
    re-embedded, but only cache misses are decoded.  ``cache_dir=None`` disables the cache.
    """
    return cached_embed(
        embedder,
        len(paths),
        None,
        _path_loader(paths),
        flip=flip,
        cache_dir=cache_dir,
        batch_size=batch_size,
        normalize=normalize,
        progress=progress,
        stats=stats,
    )
