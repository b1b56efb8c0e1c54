"""What every benchmark kind shares: the spec, the run context, the kind interface and its registry.

A kind (``lfw``, ``bin``, ``ijb``, ...) is a class registered in :data:`BENCHMARK_KINDS` that

1. parses the arguments of its spec (``kind:ARG[:ARG...]``) into a :class:`BenchmarkSpec`;
2. checks that its files exist (before any image is embedded);
3. plans which aligned image files it needs, so all folder-based benchmarks of a run share one
   embedding pass through the cache;
4. runs its protocol on the embeddings and returns its record (``benchmark`` with checksums,
   ``settings``, ``summary``, the protocol output and ``plots``).

Unreadable images (and images whose size is not the model's) are never scored as anything: a pair with
one is left out of the protocol, a folder image is left out of its folder. :func:`check_valid` then
demands that at least ``min_valid_fraction`` of the pairs (images) are left (default
:data:`DEFAULT_MIN_VALID_FRACTION` = 0.95, ``faceforge eval --min-valid``) and at least one in any case,
else the benchmark fails with :class:`TooFewValidError`: a number computed on what little is left of a
broken set would be printed as if it measured the set. The counts and the fraction go into the record's
``validity`` and the fraction into its ``settings``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from faceforge.core.errors import InputError
from faceforge.core.hashing import file_sha256
from faceforge.core.registry import Registry
from faceforge.data.files import identity_folders

__all__ = [
    "BENCHMARK_KINDS",
    "DEFAULT_MIN_VALID_FRACTION",
    "NORMALISATION",
    "BenchmarkKind",
    "BenchmarkSpec",
    "BenchmarkSpecError",
    "RunContext",
    "TooFewValidError",
    "check_valid",
    "embedding_settings_record",
    "file_sha256",
    "flip_text",
    "folder_checksum",
    "list_identity_folder",
]


class BenchmarkKind:
    """Base class of a benchmark kind; subclasses set ``name`` and ``usage`` and override the steps."""

    name: ClassVar[str] = ""
    usage: ClassVar[str] = ""

    def parse(self, spec: str, rest: str) -> BenchmarkSpec:
        raise NotImplementedError  # every registered kind overrides this

    def check(self, b: BenchmarkSpec) -> None:
        """Raise ``FileNotFoundError`` naming the spec and the missing file or folder."""

    def check_model(self, b: BenchmarkSpec, embedder: Any) -> None:
        """Raise an :class:`~faceforge.core.errors.InputError` when this benchmark cannot run on ``embedder``
        (an attack on a model without input gradients, a resolution above its face size); before any embedding."""

    def plan(self, b: BenchmarkSpec, image_ext: str) -> dict[str, Any]:
        """Read lists; ``unique_files`` are the aligned images to embed in the run's shared pass."""
        return {"unique_files": []}

    def run(
        self, b: BenchmarkSpec, plan: dict[str, Any], ctx: RunContext, plot_dir: Path | None
    ) -> dict[str, Any]:
        raise NotImplementedError  # every registered kind overrides this


BENCHMARK_KINDS: Registry[BenchmarkKind] = Registry("benchmark kind")

#: the smallest share of a benchmark's pairs (or images) that must be readable for it to give a number
DEFAULT_MIN_VALID_FRACTION = 0.95


def accepted_forms() -> str:
    return "; ".join(BENCHMARK_KINDS.get(n)().usage for n in BENCHMARK_KINDS.ordered_names())


class BenchmarkSpecError(ValueError):
    """A benchmark spec that cannot be parsed; the message shows the accepted forms."""

    def __init__(self, spec: str, reason: str) -> None:
        super().__init__(f"bad benchmark spec {spec!r}: {reason} (accepted: {accepted_forms()})")


@dataclass(frozen=True)
class BenchmarkSpec:
    kind: str
    paths: tuple[str, ...]
    k: int = 1
    min_images: int = 1
    spec: str = ""
    name: str = field(default="", compare=False)
    options: tuple[tuple[str, str], ...] = ()

    def option(self, key: str, default: str) -> str:
        return dict(self.options).get(key, default)


@dataclass
class RunContext:
    """What a kind's ``run`` may use: the model, the run's settings, and the shared embedding pass."""

    embedder: Any
    model: dict[str, Any]
    flip: bool
    n_folds: int
    cache_dir: Any
    batch_size: int
    progress: bool
    stats: dict[str, int]
    name: str
    rows: Callable[[Sequence[str]], np.ndarray]  # L2-normalised embeddings of planned files (NaN: unreadable)
    norms: Callable[[Sequence[str]], np.ndarray]  # norms of the raw (flip-summed) embeddings
    failed_in: Callable[[Sequence[str]], list[str]]  # unreadable files among these, with reasons
    min_valid_fraction: float = DEFAULT_MIN_VALID_FRACTION
    #: embeddings of the second (probe) face of each pair when it is seen otherwise than the first (e.g. at a lower
    #: resolution, :mod:`faceforge.eval.kinds.lowres`); ``None``: the same as :attr:`rows`
    probe_rows: Callable[[Sequence[str]], np.ndarray] | None = None

    def probes(self, paths: Sequence[str]) -> np.ndarray:
        """L2-normalised embeddings of the second face of each pair (:attr:`probe_rows`, else :attr:`rows`)."""
        return (self.probe_rows or self.rows)(paths)

    def preprocess_settings(self) -> dict[str, Any]:
        pre = self.model.get("preprocess", {})
        return {"flip": flip_text(self.flip), "alignment": pre.get("alignment"), "colour": pre.get("colour")}


class TooFewValidError(InputError):
    """A benchmark whose pairs (or images) are mostly or all unreadable: no number is given for it."""


def check_valid(
    name: str, valid: int, total: int, unit: str, min_fraction: float, failed: Sequence[str] = ()
) -> dict[str, Any]:
    """Raise :class:`TooFewValidError` unless ``valid`` of ``total`` ``unit`` (pairs or images) reach
    ``min_fraction`` (and at least one); else return the record's ``validity`` entry."""
    example = f"; e.g. {failed[0]}" if failed else ""
    listed = f" ({len(failed)} unreadable image(s){example})" if failed else ""
    if valid == 0:
        raise TooFewValidError(
            f"{name}: none of its {total} {unit} can be scored{listed}; no number is given for it. "
            "Fix or re-align the images"
        )
    if valid < min_fraction * total:
        raise TooFewValidError(
            f"{name}: only {valid} of {total} {unit} ({100 * valid / total:.1f} %) can be scored{listed}, "
            f"fewer than --min-valid {min_fraction:g}. Fix the images, or lower --min-valid to score the rest"
        )
    return {
        "unit": unit,
        "total": int(total),
        "scored": int(valid),
        "left_out": int(total - valid),
        "min_valid_fraction": float(min_fraction),
        "rule": f"{unit} with an unreadable or wrong-size image are left out, never scored",
    }


def flip_text(flip: bool) -> str:
    return "sum of original and horizontal-flip embeddings" if flip else "none"


NORMALISATION = "L2 after flip-sum"
"""How every embedding is normalised before scoring: ``e / max(||e||, 1e-12)`` of the (flip-summed) raw one."""


def embedding_settings_record(
    flip: bool, cache_dir: str | Path | None, model: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The embedding settings every result file records (``faceforge eval`` and ``faceforge embed``);
    with the model's ``describe()``, its inference precision (fp32 for embedders without a choice)."""
    rec = {
        "flip": flip_text(flip),
        "normalisation": NORMALISATION,
        "cache_dir": None if cache_dir is None else str(cache_dir),
    }
    if model is not None:
        rec["precision"] = model.get("precision", "fp32")
    return rec


def trailing_ints(parts: list[str], max_n: int, spec: str) -> tuple[list[str], list[int]]:
    """Split off up to ``max_n`` trailing integer fields (paths themselves may contain ':')."""
    nums: list[int] = []
    while parts and len(nums) < max_n and len(parts) > 1 and parts[-1].strip().lstrip("-").isdigit():
        nums.insert(0, int(parts.pop()))
    for v in nums:
        if v < 1:
            raise BenchmarkSpecError(spec, f"numbers must be >= 1, got {v}")
    return parts, nums


def two_paths(kind: str, spec: str, rest: str, what: str) -> tuple[str, str]:
    """``A:B`` where ``B`` (an image folder) may itself contain ':'."""
    a, sep, b = rest.partition(":")
    if not sep or not a or not b:
        raise BenchmarkSpecError(spec, f"expected {kind}:{what}")
    return a, b


def require_file(b: BenchmarkSpec, path: str, what: str) -> None:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{b.spec}: {what} not found: {path}")


def require_dir(b: BenchmarkSpec, path: str, what: str = "image folder") -> None:
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{b.spec}: {what} not found: {path}")


# --------------------------------------------------------------------------------------------
# data checksums and folders
# --------------------------------------------------------------------------------------------
def list_identity_folder(root: str | Path, min_images: int = 1) -> tuple[list[Path], list[str], list[Path]]:
    """Image files of ``root/<identity>/<file>`` (sorted), their identities, and every image found.

    Identities with fewer than ``min_images`` images are left out of the first two lists.
    """
    root = Path(root)
    files: list[Path] = []
    labels: list[str] = []
    every: list[Path] = []
    for d, imgs in identity_folders(root):  # broken links and FIFOs too (then unreadable)
        every += imgs
        if len(imgs) >= min_images:
            files += imgs
            labels += [d.name] * len(imgs)
    if not files:
        raise ValueError(f"no identity sub-folders with >= {min_images} images under {root}")
    return files, labels, every


def folder_checksum(root: str | Path, files: Sequence[Path]) -> str:
    """sha256 of the sorted ``relative/path<TAB>size`` lines of ``files`` under ``root``."""
    root = Path(root)
    lines = sorted(f"{f.relative_to(root).as_posix()}\t{_size(f)}" for f in files)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


CHECKSUM_RULE_USED = "sha256 of sorted 'relative path<TAB>size' lines of the images used"
CHECKSUM_RULE_ALL = "sha256 of sorted 'relative path<TAB>size' lines of every image in the folder"


def _size(f: Path) -> int:
    """File size for checksums; -1 for a path that cannot be stat'ed (a broken link, listed as unreadable)."""
    try:
        return f.stat().st_size
    except OSError:
        return -1
