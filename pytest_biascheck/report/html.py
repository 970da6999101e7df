"""Render the report document as one self-contained HTML page (inline CSS, SVG and data: images)
through a jinja2 template with autoescaping on, so names from models and data show as text."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from pytest_biascheck.metrics.attention import DEFAULT_RESOLUTION
from pytest_biascheck.report import svg
from pytest_biascheck.report.document import anchor
from pytest_biascheck.report.images import legend_uri

TEMPLATES = Path(__file__).parent / "templates"

#: Column titles of the group-fairness statistics, in display order.
GROUP_STATS = {
    "worst_group_accuracy": "worst-group acc.",
    "mean_group_accuracy": "mean-group acc.",
    "accuracy_gap": "accuracy gap",
    "fnr_gap": "FNR gap",
    "fpr_gap": "FPR gap",
    "equalized_odds_difference": "equalized odds",
    "demographic_parity_difference": "demographic parity",
}


def environment() -> jinja2.Environment:
    """The report templates' environment: autoescaping on, unknown names an error, report filters."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = number
    env.filters["anchor"] = anchor
    env.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False)
    return env


def render(document: Mapping[str, Any], figures: Mapping[str, Any]) -> str:
    """The HTML page of ``document``; ``figures`` maps a model ``id`` to its CAM overlays."""
    models = [model_view(m, figures.get(m.get("id"), {})) for m in document.get("models", [])]
    return (
        environment()
        .get_template("report.html.j2")
        .render(doc=document, models=models, legend=legend_uri())
    )


def number(value: Any, digits: int = 3) -> str:
    """A value as the report prints it: fixed decimals, an en dash when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if not isinstance(value, float):
        return str(value)
    text = f"{value:.{digits}f}"
    return text.removeprefix("-") if float(text) == 0 else text


def model_view(model: Mapping[str, Any], figures: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the template shows for one model, derived from its part of the document."""
    tables = {name: pd.DataFrame(rows) for name, rows in model.get("tables", {}).items()}
    everything = list(model.get("checks", []))
    checks = [c for c in everything if c.get("status") != "info"]
    regions = model.get("scope", {}).get("regions", {})
    levels = model.get("levels", {})
    if "mask_score" in tables and "resolution" in tables["mask_score"]:
        chosen = model.get("resolution", DEFAULT_RESOLUTION)
        tables["mask_score"] = tables["mask_score"][tables["mask_score"]["resolution"] == chosen]
    mask_threshold = threshold(everything, "mask_score")
    return {
        "model": model,
        "checks": sorted(checks, key=lambda c: _ORDER.get(c.get("status"), len(_ORDER))),
        "information": [c for c in everything if c.get("status") == "info"],
        "mask_threshold": mask_threshold,
        "fixes": fixes(checks),
        "task": task_view(model.get("task"), tables),
        "attributes": attribute_rows(model.get("attributes", []), tables, regions),
        "groups": group_rows(tables.get("group_summary")),
        "rates": _rows(tables.get("group_rates")),
        "task_rates": _rows(tables.get("task_groups")),
        "excluded": excluded_view(tables.get("excluded_groups"), model),
        "scatter": svg.scatter(
            model.get("figures", {}).get("heatmap_vs_mcc", []),
            "abs_mcc",
            "heatmap_score",
            threshold(checks, "heatmap_score"),
        ),
        "bars": svg.bars(mask_bars(tables.get("mask_score"), regions, levels, mask_threshold)),
        "figures": figures,
    }


#: Checks are listed failed first, then warned, known failures, passed.
_ORDER = {"FAILED": 0, "warned": 1, "xfailed": 2, "passed": 3}


def fixes(checks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The suggested commands of failed (and warned) checks, each once, with the checks it addresses."""
    by_command: dict[str, list[str]] = {}
    for check in checks:
        if check.get("status") in ("FAILED", "warned") and check.get("recipe"):
            by_command.setdefault(check["recipe"], []).append(_target(check))
    return [{"command": c, "checks": items} for c, items in by_command.items()]


def threshold(checks: Sequence[Mapping[str, Any]], name: str) -> float | None:
    """The threshold a model's ``name`` checks used (None when none ran)."""
    return next((c.get("threshold") for c in checks if c.get("check") == name), None)


def task_view(task: str | None, tables: Mapping[str, pd.DataFrame]) -> dict[str, Any] | None:
    """A multiclass head's task: top-1 and balanced accuracy, and the confusion matrix (rows: true
    class, columns: predicted class); None for a multilabel model."""
    if task is None or "task" not in tables:
        return None
    confusion = tables["confusion"]
    classes = [c for c in confusion.columns if c != "index"]
    return {
        "name": task,
        **_rows(tables["task"])[0],
        "classes": classes,
        "confusion": [
            {"true": row["index"], "counts": [row[c] for c in classes]} for row in _rows(confusion)
        ],
    }


def excluded_view(table: pd.DataFrame | None, model: Mapping[str, Any]) -> dict[str, list]:
    """Groups left out for holding under the minimum share: ``groups`` (each group value once:
    out of every statistic) and ``cells`` (label x group cells, the label in words)."""
    if table is None or table.empty:
        return {"groups": [], "cells": []}
    task, classes = model.get("task"), model.get("attributes", [])
    values = table[table["label"] == -1].drop_duplicates(["group", "value"])
    cells = []
    for row in _rows(table[table["label"] >= 0]):
        label, attribute = row["label"], row["attribute"]
        subset = f"{task} = {classes[label]}" if attribute == task else f"{attribute} y = {label}"
        cells.append({**row, "subset": subset})
    return {"groups": _rows(values), "cells": cells}


def attribute_rows(
    attributes: Sequence[str], tables: Mapping[str, pd.DataFrame], regions: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Per checked attribute: accuracy, FNR, FPR, mask score, majority/minority-class energy and the
    no-activation rate; for a multiclass head's classes, per-class accuracy and precision with the
    one-vs-rest FNR and FPR."""
    overall = tables.get("overall", pd.DataFrame(columns=["attribute"]))
    classes = tables.get("classes")
    rows = []
    for name in attributes:
        rates = (
            overall[overall["attribute"] == name]
            if classes is None
            else classes[classes["class"] == name]
        )
        majority, minority = _energies(tables, name)
        rows.append(
            {
                "attribute": name,
                "region": regions.get(name),
                **(_rows(rates.head(1))[0] if len(rates) else {}),
                "mask_score": _cell(tables.get("mask_score"), name, label=-1, group=""),
                "majority_energy": majority,
                "minority_energy": minority,
                "no_activation_rate": _no_activation(tables.get("energy"), name),
            }
        )
    return rows


def group_rows(summary: pd.DataFrame | None) -> dict[str, Any]:
    """The long ``group_summary`` table pivoted to one row per (attribute, protected group)."""
    if summary is None or summary.empty:
        return {"stats": {}, "rows": []}
    stats = {s: t for s, t in GROUP_STATS.items() if s in set(summary["stat"])}
    stats.update({s: s.replace("_", " ") for s in summary["stat"].unique() if s not in stats})
    rows = []
    for (attribute, group), part in summary.groupby(["attribute", "group"], sort=False):
        cells = {row["stat"]: row for row in _rows(part)}
        rows.append({"attribute": attribute, "group": group, "cells": cells})
    return {"stats": stats, "rows": rows}


def mask_bars(
    table: pd.DataFrame | None,
    regions: Mapping[str, str],
    levels: Mapping[str, Sequence[str]] | None = None,
    lift: float | None = None,
) -> list[dict[str, Any]]:
    """Bars of the mask-score chart: each attribute overall (labelled with its region), then each
    label x protected-group cell (group values by name when ``levels`` names them), with the
    cell's chance level and, given the check's ``lift`` threshold, the score it needs."""
    if table is None or table.empty:
        return []

    def marks(row: Mapping[str, Any]) -> dict[str, Any]:
        chance = row.get("chance")
        if chance is None or lift is None:
            return {}
        return {"needs": chance + lift * (1 - chance)}

    out = []
    for attribute, part in table.groupby("attribute", sort=False):
        region = regions.get(attribute, "region")
        for row in _rows(part[part["group"] == ""].sort_values("label")):
            overall = row["label"] == -1
            label = f"{attribute} · {region}" if overall else f"y = {row['label']}"
            out.append(
                {**row, **marks(row), "value": row["mean"], "level": 0 if overall else 1,
                 "label": label}
            )  # fmt: skip
        for row in _rows(part[part["group"] != ""]):
            names = (levels or {}).get(row["group"], [])
            value = row["group_value"]
            level = names[value] if value < len(names) else value
            label = f"y = {row['label']}, {row['group']} = {level}"
            out.append({**row, **marks(row), "value": row["mean"], "level": 1, "label": label})
    return out


def _energies(tables: Mapping[str, pd.DataFrame], name: str) -> tuple[dict | None, dict | None]:
    """Energy inside the region for images predicted as the majority and the minority class; with
    balanced classes (ties), class 0 counts as the majority, as the checks do."""
    energy = tables.get("energy")
    if energy is None:
        return None, None
    rows = energy[energy["attribute"] == name]
    majority = rows[rows["role"] == "majority"]["predicted"].tolist()
    majority_class = int(majority[0]) if majority else 0
    cells = tables.get("energy_cells")
    return (
        _cell(cells, name, label=majority_class, group=""),
        _cell(cells, name, label=1 - majority_class, group=""),
    )


def _no_activation(energy: pd.DataFrame | None, name: str) -> float | None:
    """Share of images whose map has no activation, over both predicted classes."""
    if energy is None:
        return None
    rows = energy[(energy["attribute"] == name) & (energy["n"] > 0)]
    n = rows["n"].sum()
    return float((rows["no_activation_rate"] * rows["n"]).sum() / n) if n else None


def _cell(table: pd.DataFrame | None, attribute: str, **match: Any) -> dict[str, Any] | None:
    """The row of ``table`` for ``attribute`` matching ``match`` as a dict (None when absent)."""
    if table is None or table.empty:
        return None
    rows = table[table["attribute"] == attribute]
    for key, value in match.items():
        rows = rows[rows[key] == value]
    return _rows(rows.head(1))[0] if len(rows) else None


def _rows(table: pd.DataFrame | None) -> list[dict[str, Any]]:
    """Table rows as dicts with missing values as None (what the JSON holds)."""
    if table is None:
        return []
    return table.astype(object).where(table.notna(), None).to_dict(orient="records")


def _target(check: Mapping[str, Any]) -> str:
    """``check[attribute-other]``, as pytest names the item."""
    other = check.get("other")
    return f"{check.get('check')}[{check.get('attribute')}{'-' + str(other) if other else ''}]"
