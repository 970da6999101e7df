"""The HTML report in a real browser (Debian Chromium through Playwright): it opens offline with no
console error, fetches nothing but itself, shows the JSON's counts and runs no injected script."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from pytest_biascheck.report import write_report
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
    requests: list[str] = []
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
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
