"""The run's report: ``biascheck.json`` (every metric, threshold, interval and status) and a
self-contained ``biascheck.html`` rendered from the same document, both written atomically."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_biascheck.atomic import atomic_open
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.report import html
from pytest_biascheck.report.cells import sample_cells
from pytest_biascheck.report.document import (
    SCHEMA,
    build_document,
    library_versions,
    model_id,
    to_json,
)
from pytest_biascheck.report.images import model_figures

JSON_NAME, HTML_NAME = "biascheck.json", "biascheck.html"
#: The JSON Schema (draft 2020-12) that ``biascheck.json`` follows.
JSON_SCHEMA = Path(__file__).with_name("biascheck.schema.json")

__all__ = ["HTML_NAME", "JSON_NAME", "JSON_SCHEMA", "SCHEMA", "library_versions", "write_report"]


def write_report(
    entries: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    meta: Mapping[str, Any],
    modify: Callable[[dict[str, Any]], object] | None = None,
) -> tuple[Path, Path]:
    """Write ``out_dir/biascheck.json`` and ``out_dir/biascheck.html`` for one entry per model
    (``results``, ``outcomes``, ``model``, ``scope``, and optionally ``images``: a function from
    image indices to their images, maps and regions, ``evaluate.sample_maps`` bound to the model and
    data, which draws the sample images; without it the report shows none); ``modify(document)``
    (the ``pytest_biascheck_report`` hook) may change the document first. Both files are rendered
    in memory before either is replaced, so a failure leaves an existing report as it was."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BiascheckError(f"report folder {out} is a file; pass a folder to --biascheck-report")
    entries = [{**e, "cells": sample_cells(e["results"], e.get("outcomes", []))} for e in entries]
    document = build_document(entries, meta)
    if modify is not None:
        modify(document)
    text = to_json(document)
    figures = {model_id(i): entry_figures(entry) for i, entry in enumerate(entries)}
    page = html.render(json.loads(text), figures)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / JSON_NAME, out / HTML_NAME
    with atomic_open(json_path, "w") as json_file, atomic_open(html_path, "w") as html_file:
        json_file.write(text)
        html_file.write(page)
    return json_path, html_path


def entry_figures(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The overlays of one entry: its mean maps, and its sample images when it can draw them."""
    cells = entry.get("cells") or sample_cells(entry["results"], entry.get("outcomes", []))
    wanted = sorted({i for cell in cells.values() for i in cell["indices"]})
    draw = entry.get("images")
    return model_figures(entry["results"], cells, draw(wanted) if draw and wanted else {})
