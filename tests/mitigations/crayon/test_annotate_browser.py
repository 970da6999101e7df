"""The annotation page in a real browser (Debian Chromium through Playwright): clicks and keys
answer, undo and set the question, the file holds every answer at once, and a reload resumes."""

from __future__ import annotations

import json

from PIL import Image

from tests.mitigations.crayon.test_annotate import served  # noqa: F401 - the running-server fixture
from tests.pages import watched_page


def test_clicks_and_keys_are_saved_and_a_reload_resumes(served, tmp_path, browser):  # noqa: F811
    url, path, _ = served()
    saved = lambda: json.loads(path.read_text())  # noqa: E731
    page, requests, errors = watched_page(browser, 900, 800)
    page.goto(url + "/", wait_until="load")

    def shows(answered: int, position: int) -> None:
        page.wait_for_function(
            "([a, p]) => document.getElementById('answered').textContent === a"
            " && document.getElementById('position').textContent === p",
            arg=[str(answered), str(position)],
        )

    shows(0, 1)
    assert page.locator("#pictures img").count() == 2
    page.click("#yes")
    shows(1, 2)
    page.keyboard.press("n")
    shows(2, 3)
    page.click("#maybe")
    shows(3, 4)
    assert saved()["answers"][:4] == ["yes", "no", "maybe", None]
    page.keyboard.press("u")
    shows(2, 3)
    assert saved()["answers"][2] is None
    page.fill("#question", "Is the mouth highlighted?")
    page.keyboard.press("n")  # typing in the question answers nothing
    page.click("#set-question")
    page.wait_for_function("document.getElementById('status').textContent === 'question saved'")
    assert saved()["question"] == "Is the mouth highlighted?n"
    page.reload(wait_until="load")
    shows(2, 3)
    assert page.input_value("#question") == "Is the mouth highlighted?n"
    page.keyboard.press("y")
    shows(3, 4)
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert saved()["answers"][:4] == ["yes", "no", "yes", None]
    assert saved()["counts"] == {"yes": 2, "no": 1, "maybe": 0, "open": 3}
    assert errors == []
    assert [r for r in requests if not r.startswith(url) and not r.startswith("data:")] == []
    with Image.open(tmp_path / "page.png") as shot:
        assert shot.format == "PNG" and shot.width == 900


def test_page_fits_a_390_pixel_viewport(served, browser):  # noqa: F811
    url, _, _ = served()
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(url + "/", wait_until="load")
    page.wait_for_function("document.querySelectorAll('#pictures img').length === 2")
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for box in [page.locator(s).bounding_box() for s in ("#undo", "#set-question")]:
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390
