"""Regenerate the report screenshots in docs/img/: the gate's report on the biased face fixture at
desktop width and at 390 px, and the before/after page of the fix the gate suggests for it, run by
``python -m mitigations auto``. Runs the gate and the recipe on the CPU (about ten minutes) in a
temporary folder, then Debian Chromium via Playwright.

    python docs/img/make_screenshots.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
FIXTURE = ROOT / "fixtures" / "faces_biased.pt"
#: (file, page, viewport width, height of the picture)
SHOTS = [
    ("report-desktop.png", "report", 1280, 1500),
    ("report-390.png", "report", 390, 1600),
    ("before-after.png", "compare", 1280, 2000),
]


def run(*argv: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, *argv], cwd=cwd, env=env, check=False)


def main() -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("chromium is not installed (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        shutil.copy(FIXTURE, work / FIXTURE.name)
        run("-m", "pytest", "--biascheck", FIXTURE.name, "-p", "no:cacheprovider", "-q",
            "--biascheck-report", "reports", cwd=work)  # fmt: skip
        run("-m", "mitigations", "auto", "--model", FIXTURE.name, cwd=work)
        pages = {
            "report": work / "reports" / "biascheck.html",
            "compare": next(work.glob(f"{FIXTURE.stem}_*.report")) / "biascheck.html",
        }
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium, headless=True, args=["--no-sandbox"]
            )
            for name, page_name, width, height in SHOTS:
                page = browser.new_page(viewport={"width": width, "height": height})
                page.goto(pages[page_name].as_uri(), wait_until="load")
                page.screenshot(path=str(OUT / name))
                print(OUT / name)
            browser.close()


if __name__ == "__main__":
    main()
