"""The HTML report in a real browser (Debian Chromium through Playwright): it opens offline with no
console error, fetches nothing but itself, shows the JSON's counts and runs no injected script; its
checks table sorts and filters (and shows every row without JavaScript); it fits a phone's width."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from pytest_biascheck.report import write_report
from pytest_biascheck.report.document import anchor
from tests.pages import watched_page
from tests.report.test_report import EVIL, META, evaluate_tiny, sample_entries


def test_report_opens_offline_and_shows_the_json_counts(
    tiny_checkpoint: Path, tmp_path: Path, browser
) -> None:
    results = evaluate_tiny(tiny_checkpoint)
    entries = sample_entries(results) + sample_entries(results, name=EVIL)
    report_dir = tmp_path / "report"
    json_path, html_path = write_report(entries, report_dir, META)
    document = json.loads(json_path.read_text())
    url = html_path.resolve().as_uri()
    page, requests, errors = watched_page(browser, 1280, 900)
    page.goto(url, wait_until="load")
    counts = {k: int(page.inner_text(f"#n-{k}")) for k in ("passed", "failed", "total")}
    images_ok = page.evaluate(
        "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
    )
    pwned = page.evaluate("window.__pwned === undefined ? null : window.__pwned")
    names = page.eval_on_selector_all("section.model h2", "els => els.map(e => e.textContent)")
    page.screenshot(path=str(report_dir / "biascheck.png"), full_page=True)
    assert errors == []
    assert [r for r in requests if r != url and not r.startswith("data:")] == []
    assert counts == {k: document["summary"][k] for k in ("passed", "failed", "total")}
    assert images_ok is True
    assert pwned is None
    assert names == ["tiny", EVIL]
    with Image.open(report_dir / "biascheck.png") as shot:
        assert shot.format == "PNG" and shot.width == 1280 and shot.height > 900


@pytest.fixture(scope="module")
def report_url(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A report of the tiny model with its sample images, as a file URL."""
    entries = sample_entries(evaluate_tiny(tiny_checkpoint), checkpoint=tiny_checkpoint)
    _, html_path = write_report(entries, tmp_path_factory.mktemp("report"), META)
    return html_path.resolve().as_uri()


def rows(page) -> list[dict[str, str]]:
    """The visible rows of the checks table: item id and value cell."""
    return page.eval_on_selector_all(
        "table.checks:not(.information) tbody tr",
        "rows => rows.filter(r => !r.hidden).map(r => ({item: r.dataset.check, id: r.id,"
        " value: r.querySelector('td.val').dataset.sort}))",
    )


def test_checks_table_sorts_on_a_header_click_and_filters_as_you_type(report_url, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(report_url, wait_until="load")
    first = rows(page)
    assert all(r["id"] == anchor(r["item"]) for r in first)
    header = page.locator("table.checks:not(.information) th", has_text="value")
    missing = sum(r["value"] == "" for r in first)  # NaN values: last in either order
    header.click()
    up = [r["value"] for r in rows(page)]
    assert len(up) == len(first) and up[len(up) - missing :] == [""] * missing
    assert [float(v) for v in up[: len(up) - missing]] == sorted(float(v) for v in up if v)
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    down = [r["value"] for r in rows(page)]
    numbers = [float(v) for v in down[: len(up) - missing]]
    assert numbers == sorted(numbers, reverse=True) and down[len(up) - missing :] == [""] * missing
    page.locator("input.filter").first.fill("mask_score young")
    shown = rows(page)
    expected = [r["item"] for r in first if "mask_score" in r["item"] and "Young" in r["item"]]
    assert [r["item"] for r in shown] == expected and expected
    page.locator("input.filter").first.fill("")
    assert len(rows(page)) == len(first)


def test_without_javascript_every_row_shows_and_no_control_is_left(report_url, browser):
    context = browser.new_context(
        java_script_enabled=False, viewport={"width": 1280, "height": 900}
    )
    page = context.new_page()
    page.goto(report_url, wait_until="load")
    document = json.loads(Path(report_url.removeprefix("file://")).with_suffix(".json").read_text())
    gating = [c for c in document["models"][0]["checks"] if c["status"] != "info"]
    assert len(rows(page)) == len(gating)
    assert page.locator("input.filter").count() == 0
    context.close()


def test_report_fits_a_390_pixel_viewport(report_url, browser):
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(report_url, wait_until="load")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    value = page.locator("table.checks tbody tr td.val").first.bounding_box()
    threshold = page.locator("table.checks tbody tr td[data-label=threshold]").first.bounding_box()
    assert value["x"] + value["width"] <= 390 and threshold["x"] + threshold["width"] <= 390
