"""A browser page that records what it requests and every script error, for the browser tests."""

from __future__ import annotations

from typing import Any


def watched_page(browser: Any, width: int, height: int) -> tuple[Any, list[str], list[str]]:
    """A new page of ``width`` x ``height`` px, with the URLs it requests and its console and
    page errors (both lists fill as the page runs)."""
    requests: list[str] = []
    errors: list[str] = []
    page = browser.new_page(viewport={"width": width, "height": height})
    page.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return page, requests, errors
