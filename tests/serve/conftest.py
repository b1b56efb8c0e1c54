"""Fixtures for the face search service tests: real LFW photos, the default model, SQLite and PostgreSQL.

PostgreSQL: ``FACEFORGE_TEST_PG_URL`` names a server where the tests may create databases (``.ci/services.sh``
starts a throwaway one for CI); each test gets a fresh database, dropped afterwards. Without it the
PostgreSQL variants skip and say why.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serve.helpers import LFW, PG_ENV


@pytest.fixture(scope="session")
def lfw() -> Path:
    if not LFW.is_dir():
        pytest.skip(f"LFW images not found at {LFW} (set FACEFORGE_DATA)")
    return LFW


def _default_models_installed() -> list[str]:
    """Which of the default face models' files are on this machine (SFace fetched, dlib's models package)."""
    import importlib.util

    from faceforge.core.model_files import find_model_dir

    found = []
    try:
        find_model_dir("sface")
        found.append("sface")
    except FileNotFoundError:
        pass
    if importlib.util.find_spec("dlib") and importlib.util.find_spec("face_recognition_models"):
        found.append("dlib")
    return found


@pytest.fixture(scope="session")
def default_embedder():
    """The service's default model (SFace if fetched, else dlib), loaded once. Skips only on a machine without
    either model; where one is installed (CI), failing to load it is a failure, not a skip."""
    from faceforge.serve.service import load_model

    try:
        return load_model("default")
    except RuntimeError as exc:
        installed = _default_models_installed()
        if installed:
            pytest.fail(f"the default face model did not load although {installed} is installed: {exc}")
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
