"""The report document: one JSON-ready dict per run (schema ``biascheck-report/2``) holding every
metric table, check outcome, threshold and interval; both the JSON file and the HTML render from it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import platform
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from pytest_biascheck.checks import BUILTIN
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.evaluate import Results
from pytest_biascheck.metrics.mcc import mcc

SCHEMA = "biascheck-report/2"


def build_document(entries: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The report of a run: ``entries`` hold one model each (``results``, ``outcomes``, ``model``,
    ``scope``); ``meta`` the data spec, configuration and library versions."""
    models = [_model_document(i, entry) for i, entry in enumerate(entries)]
    document = {
        "schema": SCHEMA,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "summary": summarise([c for m in models for c in m["checks"]]),
        "models": models,
        "meta": dict(meta),
    }
    return plain(document)


def summarise(checks: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Counts of check outcomes by status: failed (fails the run), warned (severity "warn"),
    xfailed (known failures of the baseline), passed; ``total`` counts these, ``information`` the
    values measured as information (not gating)."""
    statuses = [c.get("status") for c in checks]
    return {
        "passed": statuses.count("passed"),
        "failed": statuses.count("FAILED"),
        "warned": statuses.count("warned"),
        "xfailed": statuses.count("xfailed"),
        "total": len(checks) - statuses.count("info"),
        "information": statuses.count("info"),
    }


def to_json(document: Any) -> str:
    """Strict JSON text of a document: NaN and infinities become null, numpy/torch values plain."""
    return json.dumps(plain(document), indent=1, allow_nan=False, ensure_ascii=False) + "\n"


def plain(value: Any, where: str = "report") -> Any:
    """``value`` as JSON types (dicts, lists, str, int, finite float, bool, None), recursively."""
    if isinstance(value, Mapping):
        return {str(k): plain(v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value), where)
    if isinstance(value, torch.Tensor | np.ndarray):
        return plain(value.tolist(), where)
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(items)]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | str | int):
        return value
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise ValueError(
        f"{where}: {type(value).__name__} cannot go into the JSON report; pass plain data"
    )


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A table as a list of row dicts; a labelled index (e.g. of an MCC matrix) becomes ``index``."""
    if not isinstance(frame.index, pd.RangeIndex):
        frame = frame.rename_axis("index").reset_index()
    return plain(frame.to_dict(orient="records"))


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape the numbers, for the report's ``meta``."""
    import torchvision

    import pytest_biascheck

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pytest_biascheck": pytest_biascheck.__version__,
    }


def checked_attributes(results: Results) -> list[str]:
    """The attributes the evaluation checked (its ``y:`` label columns), in the order of its maps."""
    return [c.split(":", 1)[1] for c in results.frame.columns if c.startswith("y:")]


def anchor(item: str) -> str:
    """The HTML id of a check item's row in the report, for links to it (``report.html#<id>``):
    ``check-`` and the item id with each run of characters other than letters, digits, ``_`` and
    ``.`` made one ``-``."""
    return "check-" + re.sub(r"[^A-Za-z0-9_.]+", "-", item).strip("-")


def split_of(spec: str) -> str:
    """The split of the data ``spec`` the gate evaluates: the spec's own ``split=``, else test."""
    from pytest_biascheck.data import parse_spec

    try:
        return str(parse_spec(spec)[2].get("split", "test"))
    except BiascheckError:
        return "test"


def model_id(position: int) -> str:
    """The id of the ``position``-th model in the document, its HTML anchor and its figures' key."""
    return f"model-{position}"


def heatmap_vs_mcc(results: Results) -> list[dict[str, Any]]:
    """One point per (attribute, protected attribute) pair, as in the Attention-IoU paper: x is the
    |MCC| of their labels (``mcc_labels``, else from the per-image labels), y the heatmap score."""
    table = results.tables.get("heatmap_score")
    if table is None:
        return []
    labels = results.tables.get("mcc_labels", pd.DataFrame())
    overall = table[(table["group"] == "") & (table["label"] == -1)]
    points = []
    for row in overall.itertuples(index=False):
        if row.protected in labels.columns and row.attribute in labels.index:
            correlation = float(labels.loc[row.attribute, row.protected])
        else:
            first = torch.from_numpy(results.label(row.attribute))
            second = torch.from_numpy(np.asarray(results.column("g", row.protected)) > 0)
            correlation = float(mcc(first, second))
        points.append(
            {
                "attribute": row.attribute,
                "protected": row.protected,
                "mcc": correlation,
                "abs_mcc": abs(correlation),
                "heatmap_score": row.mean,
                "low": row.low,
                "high": row.high,
                "n": row.n,
            }
        )
    return points


def _model_document(position: int, entry: Mapping[str, Any]) -> dict[str, Any]:
    results: Results = entry["results"]
    model = dict(entry.get("model", {}))
    checks = [_with_description(o) for o in entry.get("outcomes", [])]
    plan = results.plan
    return {
        "id": model_id(position),
        "name": model.get("name", results.model),
        "path": model.get("path"),
        "sha256": model.get("sha256", results.sha256),
        "arch": model.get("arch"),
        "provenance": model.get("provenance", {}),
        "data": results.data,
        "split": split_of(results.data),
        "n_images": len(results.frame),
        "attributes": checked_attributes(results),
        "head": results.head,
        "task": plan.task if plan else None,
        "min_group_share": plan.min_group_share if plan else None,
        "resolution": plan.resolution if plan else None,
        "levels": plan.levels if plan else {},
        "scope": entry.get("scope", {}),
        "summary": summarise(checks),
        "checks": checks,
        "tables": {name: records(frame) for name, frame in results.tables.items()},
        "figures": {
            "heatmap_vs_mcc": heatmap_vs_mcc(results),
            "samples": {name: _sample_cell(cell) for name, cell in entry.get("cells", {}).items()},
        },
    }


def _sample_cell(cell: Mapping[str, Any]) -> dict[str, Any]:
    """A figure's sample cell as the JSON holds it: where its images come from and which they are."""
    keys = ("label", "group", "value", "caption", "reason", "n", "wrong", "indices")
    return {k: cell[k] for k in keys}


def _with_description(outcome: Mapping[str, Any]) -> dict[str, Any]:
    """An outcome plus its built-in check's description, when the outcome carries none itself."""
    return {"description": _DESCRIPTIONS.get(outcome.get("check"), ""), **outcome}


_DESCRIPTIONS = {check.name: check.description for check in BUILTIN}
