"""A real ``faceforge serve`` process: killed with SIGKILL during a stream of enrolments (every acknowledged
enrolment must survive and the restarted index must equal the database), and driven by a real headless
browser (Debian's chromium + chromedriver through selenium) to enrol LFW people and find one on the page.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from faceforge.serve.gallery import model_id_of
from faceforge.serve.keys import Actor
from faceforge.serve.store import Store
from tests.serve.helpers import LFW, PEOPLE, ServerProcess, headless_chromium, lfw_photo, need_chromium

httpx = pytest.importorskip("httpx")


def _stream_enrolments(
    url: str, key: str, photos: list[Path], acked: list[str], stop: threading.Event
) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        for i, path in enumerate(photos):
            if stop.is_set():
                return
            name = f"stream-{i:03d}-{path.parent.name}"
            try:
                r = c.post(
                    "/v1/identities",
                    data={"name": name},
                    files=[("photos", (path.name, path.read_bytes(), "image/jpeg"))],
                )
            except httpx.HTTPError:
                return  # the server died mid-request: not acknowledged
            if r.status_code == 201:
                acked.append(name)


def test_kill9_during_enrolments_loses_no_acknowledged_enrolment(tmp_path, default_embedder, lfw):
    """With an HNSW gallery: the first server builds the graph and saves its graph file at start-up, the
    enrolments streamed before the kill are not in that file, so the restart must load it, replay them from
    the database's change feed and check the result (count and checksum)."""
    db = str(tmp_path / "gallery.db")
    store = Store(db)
    desc = default_embedder.describe()
    store.bind_model(model_id_of(desc), desc)
    rng = np.random.default_rng(0)
    filler = rng.standard_normal((40, default_embedder.embedding_size)).astype(np.float32)
    filler /= np.linalg.norm(filler, axis=1, keepdims=True)
    store.bulk_load([f"filler-{i}" for i in range(40)], filler, model_id_of(desc), Actor(name="test"))
    _, key = store.create_key("stream", ["enrol"])
    _, admin = store.create_key("admin", ["admin"])
    store.close()
    people = sorted(p for p in LFW.iterdir() if p.is_dir())[:400]
    photos = [next(iter(sorted(p.glob("*.jpg")))) for p in people]
    hnsw = ("--hnsw-above", "30", "--hnsw-m", "8", "--ef-construction", "40")
    server = ServerProcess(db, tmp_path / "server1.log", "--rate-limit", "0", *hnsw)
    try:
        server.wait_ready()
        acked: list[str] = []
        stop = threading.Event()
        streams = [
            threading.Thread(target=_stream_enrolments, args=(server.url, key, photos[i::2], acked, stop))
            for i in range(2)
        ]
        for t in streams:
            t.start()
        deadline = time.monotonic() + 60
        while len(acked) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.kill9()  # requests are in flight: some enrolments were committed but not acknowledged
        stop.set()
        for t in streams:
            t.join(timeout=30)
    finally:
        server.stop()
    assert len(acked) >= 8, server.log.read_text()[-2000:]

    assert Path(db + ".index.npz").is_file()  # saved after the start-up build
    restarted = ServerProcess(db, tmp_path / "server2.log", *hnsw)
    try:
        restarted.wait_ready()
        with httpx.Client(base_url=restarted.url, headers={"X-API-Key": admin}, timeout=30) as c:
            names = {i["name"] for i in c.get("/v1/identities", params={"limit": 1000}).json()["identities"]}
            status = c.get("/v1/admin/status").json()
    finally:
        restarted.stop()
    missing = [n for n in acked if n not in names]
    assert not missing, f"acknowledged but lost: {missing}"
    assert status["index_check"]["ok"]
    assert status["index_check"]["index_faces"] == status["counts"]["faces"] == len(names) >= len(acked)
    assert "index hnsw (from the graph file) matches the database" in restarted.log.read_text()
    assert status["service"]["index"]["loaded_from"] == "graph file"


def test_web_page_enrols_and_finds_a_person(tmp_path, default_embedder, lfw):
    need_chromium()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    db = str(tmp_path / "gallery.db")
    store = Store(db)
    _, key = store.create_key("browser", ["enrol", "search"])
    store.close()
    server = ServerProcess(db, tmp_path / "server.log")
    browser = None
    try:
        server.wait_ready()
        browser = headless_chromium(tmp_path / "chrome-profile")
        wait = WebDriverWait(browser, 60)
        browser.get(server.url + "/")
        browser.find_element(By.ID, "api-key").send_keys(key)
        browser.find_element(By.ID, "save-key").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "key-status"), "key accepted"))
        for person in PEOPLE[:3]:
            name = browser.find_element(By.ID, "enrol-name")
            name.clear()
            name.send_keys(person.replace("_", " "))
            files = "\n".join(str(lfw_photo(person, n)) for n in (1, 2))
            browser.find_element(By.ID, "enrol-photos").send_keys(files)
            browser.find_element(By.ID, "enrol-submit").click()
            wait.until(
                ec.text_to_be_present_in_element(
                    (By.ID, "enrol-status"), f"enrolled {person.replace('_', ' ')}"
                )
            )
        target = PEOPLE[1]
        browser.find_element(By.ID, "search-photo").send_keys(str(lfw_photo(target, 3)))
        browser.find_element(By.ID, "search-submit").click()
        wait.until(ec.presence_of_element_located((By.ID, "decision-0")))
        decisions = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".decision")]
        assert any(d.startswith(f"Match: {target.replace('_', ' ')} (score") for d in decisions), decisions
        rows = browser.find_elements(By.CSS_SELECTOR, "tr.match-row")
        assert rows and target.replace("_", " ") in rows[0].text
        wait.until(
            lambda b: b.execute_script(
                "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
            )
        )
        browser.save_screenshot(str(tmp_path / "page.png"))
    finally:
        if browser is not None:
            browser.quit()
        server.stop()
