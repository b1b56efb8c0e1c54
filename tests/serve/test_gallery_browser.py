"""The page's gallery view in a real headless browser (Debian's chromium through selenium) against a real
``faceforge serve`` process: LFW people enrolled through the API are listed with their face crops a page at
a time; an admin key renames and deletes; an enrol key sees the people without the buttons, a search key not
even the people, and the API refuses both; the false-match-rate list is filled before any key is given."""

from __future__ import annotations

import pytest

from faceforge.serve.store import Store
from tests.serve.helpers import ServerProcess, headless_chromium, lfw_photo, need_chromium

httpx = pytest.importorskip("httpx")

#: five LFW people with a photo each, enrolled in this order (not name order)
PEOPLE = ("Colin_Powell", "Ariel_Sharon", "Gloria_Macapagal_Arroyo", "Hugo_Chavez", "Jean_Chretien")


def test_gallery_view_pages_renames_and_deletes(tmp_path, default_embedder, lfw):
    need_chromium()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    db = str(tmp_path / "gallery.db")
    store = Store(db)
    keys = {scope: store.create_key(f"page-{scope}", [scope])[1] for scope in ("search", "enrol", "admin")}
    store.close()
    server = ServerProcess(db, tmp_path / "server.log")
    browser = None
    try:
        server.wait_ready()
        ids = {}
        for person in PEOPLE:
            photo = lfw_photo(person, 1)
            r = httpx.post(
                server.url + "/v1/identities",
                data={"name": person.replace("_", " ")},
                files=[("photos", (photo.name, photo.read_bytes(), "image/jpeg"))],
                headers={"X-API-Key": keys["enrol"]},
                timeout=60,
            )
            assert r.status_code == 201, r.text
            ids[person.replace("_", " ")] = r.json()["identity"]["id"]
        by_name = sorted(ids)

        browser = headless_chromium(tmp_path / "chrome-profile")
        wait = WebDriverWait(browser, 60)

        def text(element_id: str) -> str:  # read in the page: the view replaces its elements as it loads
            return browser.execute_script(f"return document.getElementById('{element_id}').textContent")

        def names() -> list[str]:
            return browser.execute_script(
                "return Array.from(document.querySelectorAll('#gallery-list .person-name'), e => e.textContent)"
            )

        def use_key(scope: str) -> None:
            field = browser.find_element(By.ID, "api-key")
            field.clear()
            field.send_keys(keys[scope])
            browser.find_element(By.ID, "save-key").click()
            wait.until(lambda b: f"'page-{scope}'" in text("key-status"))

        browser.get(server.url + "/")
        # no key yet: the false-match-rate list is filled all the same, the gallery asks for a key
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#search-fmr option")) >= 2)
        wait.until(lambda b: "give a key" in text("gallery-status"))

        use_key("admin")
        Select(browser.find_element(By.ID, "gallery-size")).select_by_value("4")
        wait.until(lambda b: text("gallery-page") == "page 1 of 2 (5 people)" and len(names()) == 4)
        assert names() == by_name[:4]
        wait.until(
            lambda b: b.execute_script(
                "const i = document.querySelectorAll('#gallery-list img.crop');"
                "return i.length === 4 && Array.from(i).every(x => x.complete && x.naturalWidth > 0)"
            )
        )
        browser.find_element(By.ID, "gallery-next").click()
        wait.until(lambda b: text("gallery-page") == "page 2 of 2 (5 people)" and names() == by_name[4:])
        assert browser.find_element(By.ID, "gallery-next").get_attribute("disabled") is not None
        browser.find_element(By.ID, "gallery-prev").click()
        wait.until(lambda b: names() == by_name[:4])
        browser.save_screenshot(str(tmp_path / "gallery.png"))

        # rename the first person on the page
        old = by_name[0]
        card = browser.find_element(By.ID, f"person-{ids[old]}")
        card.find_element(By.CSS_SELECTOR, "button.rename").click()
        field = card.find_element(By.CSS_SELECTOR, "input.rename-input")
        field.clear()
        field.send_keys("Zz Renamed Person")
        card.find_element(By.CSS_SELECTOR, "button.rename-save").click()
        wait.until(lambda b: text("gallery-status").startswith(f"renamed {old} to Zz Renamed Person"))
        wait.until(lambda b: names() == by_name[1:5])  # the new name sorts last, onto page 2
        admin = {"X-API-Key": keys["admin"]}
        got = httpx.get(f"{server.url}/v1/identities/{ids[old]}", headers=admin).json()
        assert got["name"] == "Zz Renamed Person"

        # delete the second person on the page (the browser's confirm dialog accepted)
        gone = by_name[2]
        browser.find_element(By.ID, f"person-{ids[gone]}").find_element(
            By.CSS_SELECTOR, "button.delete"
        ).click()
        wait.until(lambda b: b.switch_to.alert)
        browser.switch_to.alert.accept()
        wait.until(lambda b: text("gallery-status").startswith(f"deleted {gone} (1 face(s))"))
        wait.until(lambda b: text("gallery-page") == "page 1 of 1 (4 people)" and gone not in names())
        assert httpx.get(f"{server.url}/v1/identities/{ids[gone]}", headers=admin).status_code == 404

        # an enrol key sees the people and crops but no rename or delete, and the API refuses both
        use_key("enrol")
        wait.until(lambda b: len(names()) == 4)
        assert not browser.find_elements(By.CSS_SELECTOR, "#gallery-list button")
        # a search key does not see the people at all
        use_key("search")
        wait.until(lambda b: "may not list the gallery" in text("gallery-status") and not names())
        assert not browser.find_elements(By.CSS_SELECTOR, "#gallery-list button")
        target = f"{server.url}/v1/identities/{ids[by_name[1]]}"
        for scope in ("search", "enrol"):
            h = {"X-API-Key": keys[scope]}
            for r in (httpx.patch(target, json={"name": "x"}, headers=h), httpx.delete(target, headers=h)):
                assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
        assert httpx.get(target, headers=admin).json()["name"] == by_name[1]
    finally:
        if browser is not None:
            browser.quit()
        server.stop()
