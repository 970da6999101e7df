"""Baselines: the measured value of every check item saved to JSON, and regressions against it.

Like pytest-benchmark's ``--benchmark-compare-fail``: a check fails when its value moved in the bad
direction by more than the check's tolerance, even when the absolute threshold still holds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pytest_biascheck import files
from pytest_biascheck.atomic import atomic_write_text
from pytest_biascheck.errors import BiascheckError

SCHEMA = "biascheck-baseline/1"
DEFAULT_TOLERANCE = 0.02


def write_baseline(path: Path, outcomes: list[dict[str, Any]]) -> None:
    """Save ``{item id: value}`` for every check that ran (NaN values are left out)."""
    values = {o["item"]: o["value"] for o in outcomes if not math.isnan(o["value"])}
    atomic_write_text(
        path, json.dumps({"schema": SCHEMA, "values": values}, indent=2, sort_keys=True) + "\n"
    )


def read_baseline(path: Path) -> dict[str, float]:
    """Load a baseline file; a clear error names the file and how to make one."""
    remake = f"regenerate it with --biascheck-save-baseline {path}"
    data = files.read_bytes(
        path, "baseline", "baseline", f"create it with --biascheck-save-baseline {path}"
    )
    try:
        doc = json.loads(data)
    except ValueError as exc:  # not UTF-8, or not JSON
        raise BiascheckError(f"baseline {path} is not valid JSON ({exc}); {remake}") from None
    values = doc.get("values") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(values, dict):
        raise BiascheckError(f"baseline {path} is not a {SCHEMA} file; {remake}")
    bad = [k for k, v in values.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
        raise BiascheckError(f"baseline {path}: the value of {bad[0]!r} is not a number; {remake}")
    return {str(k): float(v) for k, v in values.items()}


def compare(value: float, previous: float | None, direction: str, tolerance: float) -> str | None:
    """ "regressed"/"improved" when ``value`` moved beyond ``tolerance`` from ``previous``, else None."""
    if previous is None or math.isnan(value):
        return None
    change = value - previous if direction == "min" else previous - value
    if change < -tolerance:
        return "regressed"
    if change > tolerance:
        return "improved"
    return None
