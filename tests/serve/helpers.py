"""Helpers for the face search service tests: real data paths, the LFW people used, a server process."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("FACEFORGE_DATA", REPO.parent / "shared" / "data")).resolve()
LFW = DATA / "lfw" / "images"
PHOTOS = DATA / "photos"
PG_ENV = "FACEFORGE_TEST_PG_URL"

#: LFW people of pairsDevTest (never used by the packaged calibration, which uses pairsDevTrain people)
PEOPLE = ("Amelie_Mauresmo", "Alvaro_Uribe", "Ben_Affleck", "Calista_Flockhart", "Bill_Frist")


def lfw_photo(person: str, n: int) -> Path:
    return LFW / person / f"{person}_{n:04d}.jpg"


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


def need_chromium() -> tuple[str, str]:
    """Paths of Debian's chromium and chromedriver; skips the test without them or selenium
    (``.ci/services.sh`` installs them)."""
    import pytest

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip(
            "the page tests need Debian's chromium and chromium-driver (.ci/services.sh installs them)"
        )
    pytest.importorskip("selenium.webdriver")
    return chromium, driver


def headless_chromium(profile: Path) -> Any:
    """A selenium driver of headless chromium (after :func:`need_chromium`) with the fresh user-data folder
    ``profile``; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service as DriverService

    chromium, driver = need_chromium()
    opts = Options()
    opts.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1200,1600",
    ):
        opts.add_argument(flag)
    return webdriver.Chrome(service=DriverService(executable_path=driver), options=opts)
