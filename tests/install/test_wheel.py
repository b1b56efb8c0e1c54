"""faceforge works outside this repository: the wheel built from the sources, installed into a new environment,
runs prepare, align, train, embed, eval, search, serve and the Python API in an empty folder, with
``FACEFORGE_DATA`` unset and a fresh ``HOME`` (no fetched model files, no caches).

How the environment is made, quickly and honestly:

* the wheel is built by ``pip wheel --no-build-isolation`` from a copy of the package sources (so the checkout
  gets no ``build/`` folder), with the project's own setuptools;
* the new environment is a ``venv`` without pip; the wheel is installed into it by the project's pip
  (``pip --python NEW install --no-deps --no-index WHEEL``);
* the dependencies (torch, OpenCV, faiss, dlib, ...) are not downloaded again: one ``.pth`` line appends the
  project environment's site-packages *after* the new environment's own, so ``import faceforge`` finds the
  installed wheel (checked) and never the checkout (an editable install's import hook lives in a ``.pth`` file of
  that folder, which a path line does not run).

The user's folder holds the group photo, a few LFW people (raw 160 px photos), their 5-point landmarks and an
LFW-format pairs list, all copied in. No command may read ``../shared``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.api.user_folder import PEOPLE, make_user_folder

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 300


def _build_wheel(out: Path) -> Path:
    src = out / "src"
    src.mkdir()
    shutil.copytree(
        REPO / "faceforge", src / "faceforge", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    subprocess.run([*cmd, "-w", str(out / "dist"), str(src)], check=True, timeout=TIMEOUT)
    (wheel,) = (out / "dist").glob("faceforge-*.whl")
    return wheel


def _check_wheel(wheel: Path) -> None:
    """The model file, its licence, calibrations, configs and the web page ship; the torch pin holds."""
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for needed in (
        "faceforge/serve/calibrations/sface_2021dec_int8bq.json",
        "faceforge/serve/calibrations/dlib_resnet_v1.json",
        "faceforge/serve/static/index.html",
        "faceforge/serve/static/gallery.js",
        "faceforge/configs/mobilefacenet_arcface.yaml",
        "faceforge/configs/model/mobilefacenet_paper.yaml",
    ):
        assert needed in names, f"{needed} is not in the wheel"
    assert "Requires-Dist: torch==2.13.0" in meta
    assert "Provides-Extra: serve" in meta and "Provides-Extra: dlib" in meta


def _environment(root: Path, wheel: Path) -> Path:
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=TIMEOUT)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "_faceforge_test_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q"]
    subprocess.run([*pip, str(wheel)], check=True, timeout=TIMEOUT)
    return venv


def _user_folder(data_dir: Path, root: Path) -> Path:
    work = make_user_folder(data_dir, root / "work")
    src = (data_dir / "lfw" / "landmarks_mtcnn_5pts_250px.csv").read_text().splitlines()
    rows = [src[0]] + [r for r in src[1:] if r.split("_0")[0] in PEOPLE]
    (work / "landmarks.csv").write_text("\n".join(rows) + "\n")
    for person in PEOPLE[:3]:  # a gallery of three people (photos 1-3) and probes (photo 5, the group photo)
        (work / "gallery" / person).mkdir(parents=True)
        for i in (1, 2, 3):
            shutil.copy(work / "people" / person / f"{person}_000{i}.jpg", work / "gallery" / person)
        (work / "probes").mkdir(exist_ok=True)
        shutil.copy(work / "people" / person / f"{person}_0005.jpg", work / "probes")
    shutil.copy(work / "photos" / "group.jpg", work / "probes")
    return work


class User:
    """Runs ``faceforge`` (and ``python``) of the new environment in the user's folder, as a stranger would."""

    def __init__(self, venv: Path, work: Path, home: Path) -> None:
        self.bin, self.work = venv / "bin", work
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("FACEFORGE_", "PYTHON", "VIRTUAL_ENV"))
        }
        env.update(HOME=str(home), PATH=f"{self.bin}{os.pathsep}{env.get('PATH', '')}")
        self.env = env

    def run(self, *args: str, expect: int = 0) -> str:
        proc = subprocess.run(
            [str(self.bin / "faceforge"), *args],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == expect, f"faceforge {' '.join(args)} -> {proc.returncode}\n{out[-3000:]}"
        assert "/shared/data" not in out, f"faceforge {args[0]} mentions the checkout's shared data:\n{out}"
        return out

    def python(self, code: str) -> str:
        proc = subprocess.run(
            [str(self.bin / "python"), "-c", code],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(user: User) -> None:
    """``faceforge serve`` on the user's gallery: health, enrol with an admin key, search."""
    import httpx

    key = user.run(
        "serve", "keys", "create", "--db", "served.db", "--name", "admin", "--scope", "admin"
    ).split()[0]
    port = _free_port()
    log = (user.work / "serve.log").open("w")
    proc = subprocess.Popen(
        [str(user.bin / "faceforge"), "serve", "--db", "served.db", "--port", str(port)],
        cwd=user.work,
        env=user.env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (user.work / "serve.log").read_text()
            try:
                with urllib.request.urlopen(f"{url}/v1/health", timeout=2) as resp:
                    assert json.load(resp)["status"] == "ok"
                    break
            except OSError:
                assert time.monotonic() < deadline, "faceforge serve did not start"
                time.sleep(0.5)
        headers = {"X-API-Key": key}
        person = user.work / "people" / "Al_Gore"
        photos = [
            ("photos", (p.name, p.read_bytes(), "image/jpeg")) for p in sorted(person.glob("*.jpg"))[:2]
        ]
        enrolled = httpx.post(f"{url}/v1/identities", headers=headers, data={"name": "Al Gore"}, files=photos)
        assert enrolled.status_code == 201, enrolled.text
        probe = person / "Al_Gore_0006.jpg"
        found = httpx.post(
            f"{url}/v1/search",
            headers=headers,
            files={"photo": (probe.name, probe.read_bytes(), "image/jpeg")},
        )
        assert found.status_code == 200, found.text
        assert found.json()["faces"][0]["decision"]["name"] == "Al Gore"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


@pytest.mark.slow
def test_installed_wheel_works_in_an_empty_folder(data_dir: Path, tmp_path: Path) -> None:
    """About 75 s of CPU time here (build + install 6 s; then eleven fresh processes, each importing torch)."""
    pytest.importorskip("httpx")
    pytest.importorskip("dlib")
    wheel = _build_wheel(tmp_path)
    _check_wheel(wheel)
    venv = _environment(tmp_path, wheel)
    user = User(venv, _user_folder(data_dir, tmp_path), tmp_path / "home")

    where = user.python("import faceforge, json, sys; print(faceforge.__file__); print(json.dumps(sys.path))")
    first, path = where.splitlines()
    assert first.startswith(str(venv)), f"faceforge was imported from {first}, not the installed wheel"
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    inside = [p for p in json.loads(path) if p and Path(p).resolve().is_relative_to(REPO) and p not in deps]
    assert not inside, f"the checkout is on the installed environment's path: {inside}"

    # prepare: the default detector is not there until fetched (one line naming the fix), then works
    out = user.run("prepare", "--images", "photos", "--out", "faces", "--no-progress", expect=2)
    assert "faceforge fetch yunet" in out and "Traceback" not in out, out
    user.run("fetch", "yunet")
    out = user.run("prepare", "--images", "photos", "--out", "faces", "--select", "all", "--no-progress")
    assert len(list((user.work / "faces").glob("group_*.jpg"))) == 6, out
    # align: the user's own landmarks
    user.run("align", "--images", "people", "--landmarks", "landmarks.csv", "--landmark-offset=-48,-48",
             "--out", "aligned", "--no-progress")  # fmt: skip
    assert len(list((user.work / "aligned").rglob("*.jpg"))) == 35
    # train on the user's folder with the packaged config (no LFW files needed), one short epoch
    user.run("train", "mobilefacenet_arcface", "data.root=aligned", "run.dir=run", "optim.epochs=1",
             "data.batch_size=16", "run.progress=false")  # fmt: skip
    model = user.work / "run" / "checkpoints" / "model.pt"
    assert model.is_file()
    # embed with the trained checkpoint; eval with the user's own pairs (dlib, from faceforge[dlib])
    user.run("embed", "--model", str(model), "--images", "faces", "--out", "faces.npz", "--no-progress")
    user.run("eval", "--model", "dlib", "--pairs", "pairs.txt", "--images", "aligned", "--folds", "2",
             "--no-progress", "--out-dir", "eval")  # fmt: skip
    result = json.loads((user.work / "eval" / "result.json").read_text())
    assert next(iter(result["benchmarks"].values()))["summary"]["auc"] > 0.9
    # search: the default model falls back to dlib (SFace is not fetched in this fresh HOME)
    out = user.run("search", "--gallery", "gallery", "--probes", "probes", "--out", "results.csv")
    with (user.work / "results.csv").open() as fh:
        first = {
            r["probe"]: r["identity"] for r in csv.DictReader(fh) if r["rank"] == "1" and r["face"] == "0"
        }
    assert all(first[f"{p}_0005.jpg"] == p for p in PEOPLE[:3]), out
    _serve(user)
    # the Python API from the installed package; what is missing names the one command that gets it
    printed = user.python(
        "import faceforge\n"
        "r = faceforge.compare('people/Al_Gore/Al_Gore_0001.jpg', 'people/Al_Gore/Al_Gore_0002.jpg',"
        " model='dlib', fmr=1e-2)\n"
        "print(r.match, len(faceforge.detect_faces('photos/group.jpg')))\n"
        "try:\n    faceforge.load_model('sface')\nexcept faceforge.ModelFileError as e:\n    print(e)\n"
        "try:\n    faceforge.train('lfw_mobilefacenet_arcface', {'data.root': 'aligned'})\n"
        "except faceforge.FaceforgeError as e:\n    print(e)\n"
    ).splitlines()
    assert printed[0].split() == ["True", "6"]
    assert "faceforge fetch sface" in printed[1]
    assert "FACEFORGE_DATA" in printed[2] and "eval.pairs=null" in printed[2]
    _fetched_sface(user)


def _fetched_sface(user: User) -> None:
    """After ``faceforge fetch sface`` the model is found in the user's cache. The test does not download: it puts
    the files this machine fetched where fetch puts them, and fetch then checks their SHA-256 and keeps them."""
    from faceforge.core.model_files import SFACE_FILE, find_model_dir

    try:
        fetched = find_model_dir("sface")
    except FileNotFoundError:
        return  # never fetched on this machine: the commands above covered the fallback to dlib
    cache = Path(user.env["HOME"]) / ".cache" / "faceforge" / "models" / "sface"
    cache.mkdir(parents=True)
    shutil.copy(fetched / SFACE_FILE, cache / SFACE_FILE)
    assert str(cache) in user.run("fetch", "sface")
    user.run(
        "embed", "--model", "sface", "--images", "faces", "--out", "sface.npz", "--no-flip", "--no-progress"
    )
