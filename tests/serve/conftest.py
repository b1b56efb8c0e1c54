"""Fixtures for the face search service tests: real LFW photos, the default model, SQLite and PostgreSQL.

PostgreSQL: ``FACEFORGE_TEST_PG_URL`` names a server where the tests may create databases (``.ci/services.sh``
starts a throwaway one for CI); each test gets a fresh database, dropped afterwards. Without it the
PostgreSQL variants skip and say why.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("FACEFORGE_DATA", REPO.parent / "shared" / "data"))
LFW = DATA / "lfw" / "images"
PHOTOS = DATA / "photos"
PG_ENV = "FACEFORGE_TEST_PG_URL"

#: LFW people of pairsDevTest (never used by the packaged calibration, which uses pairsDevTrain people)
PEOPLE = ("Amelie_Mauresmo", "Alvaro_Uribe", "Ben_Affleck", "Calista_Flockhart", "Bill_Frist")


def lfw_photo(person: str, n: int) -> Path:
    return LFW / person / f"{person}_{n:04d}.jpg"


@pytest.fixture(scope="session")
def lfw() -> Path:
    if not LFW.is_dir():
        pytest.skip(f"LFW images not found at {LFW} (set FACEFORGE_DATA)")
    return LFW


@pytest.fixture(scope="session")
def default_embedder():
    """The service's default model (SFace if fetched, else dlib), loaded once."""
    from faceforge.serve.service import load_model

    try:
        return load_model("default")
    except RuntimeError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def detector():
    from faceforge.deploy.detect import build_detector

    try:
        return build_detector("yunet")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def _pg_admin_url() -> str | None:
    url = os.environ.get(PG_ENV)
    if not url:
        return None
    return url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test."""
    admin = _pg_admin_url()
    if admin is None:
        pytest.skip(
            f"PostgreSQL tests need {PG_ENV} (CI sets it from .ci/services.sh; run `. .ci/services.sh`)"
        )
    import psycopg

    name = f"ff_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError as exc:
        pytest.fail(f"{PG_ENV}={admin} is set but the server does not answer: {exc}")
    base, _, _ = admin.rpartition("/")
    yield f"{base}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """The same store tests on SQLite (WAL) and PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "gallery.db")
    return request.getfixturevalue("pg_url")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``faceforge serve`` in a child process on 127.0.0.1, for the crash and browser tests."""

    def __init__(self, db: str, log: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.log = log
        self._fh = log.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "faceforge",
                "serve",
                "--db",
                db,
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                *extra,
            ],
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                if httpx.get(self.url + "/v1/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        self.proc.kill()  # SIGKILL: no shutdown handler runs
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()
