"""Baselines: every check's value and pass/fail saved per model, and regressions against them.

Like pytest-benchmark's ``--benchmark-compare-fail``: a check fails when its value moved in the bad
direction by more than the check's tolerance, even when the absolute threshold still holds. Values
are keyed by check and target (``mask_score[Smiling-mouth]``), not by file name, so a baseline saved
for ``model.pt`` applies to ``candidate.pt``; a check that failed in the baseline is a known failure,
accepted while it does not regress, so a team can adopt the gate on a model that already fails.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_biascheck import files
from pytest_biascheck.atomic import atomic_write_text
from pytest_biascheck.errors import BiascheckError

SCHEMA = "biascheck-baseline/2"


@dataclass(frozen=True)
class Entry:
    """A check's value in the baseline and whether it met its threshold then."""

    value: float
    passed: bool


@dataclass(frozen=True)
class Baseline:
    """The saved checks of one model: ``checks`` maps ``check[target]`` to its entry."""

    model: str
    path: str
    checks: dict[str, Entry] = field(default_factory=dict)


def write_baseline(path: Path, outcomes: Sequence[Mapping[str, Any]]) -> None:
    """Save the value and pass/fail of every check that ran, per model (NaN values are left out)."""
    models: dict[str, dict[str, Any]] = {}
    for o in outcomes:
        if math.isnan(o["value"]):
            continue
        model = models.setdefault(o["path"], {"model": o["model"], "path": o["path"], "checks": {}})
        model["checks"][o["key"]] = {"value": o["value"], "passed": o["met"]}
    doc = {"schema": SCHEMA, "models": list(models.values())}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")


def read_baseline(path: Path) -> list[Baseline]:
    """Load a baseline file; a clear error names the file and how to make one."""
    remake = f"regenerate it with --biascheck-save-baseline {path}"
    data = files.read_bytes(
        path, "baseline", "baseline", f"create it with --biascheck-save-baseline {path}"
    )
    try:
        doc = json.loads(data)
    except ValueError as exc:  # not UTF-8, or not JSON
        raise BiascheckError(f"baseline {path} is not valid JSON ({exc}); {remake}") from None
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if schema != SCHEMA:
        raise BiascheckError(f"baseline {path} has schema {schema!r}, not {SCHEMA!r}; {remake}")
    try:
        return [
            Baseline(
                str(m["model"]),
                str(m["path"]),
                {str(k): _entry(v) for k, v in m["checks"].items()},
            )
            for m in doc["models"]
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BiascheckError(
            f"baseline {path} is damaged ({type(exc).__name__}: {exc}); {remake}"
        ) from None


def _entry(saved: Any) -> Entry:
    value, passed = saved["value"], saved["passed"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"value {value!r} is not a number")
    if not isinstance(passed, bool):
        raise TypeError(f"passed {passed!r} is not true or false")
    return Entry(float(value), passed)


def match(
    baselines: Sequence[Baseline], models: Mapping[str, tuple[str, list[str]]], source: Path
) -> dict[str, Baseline]:
    """Which baseline each model of the run is compared with. ``models`` maps a model's path to its
    (name, check keys). A lone baseline applies to a lone model whatever its name; otherwise a
    model takes the baseline saved from the same path, else the only one of the same name.
    A baseline file that matches no check of the run is an error."""
    if len(baselines) == 1 and len(models) == 1:
        matched = {next(iter(models)): baselines[0]}
    else:
        matched = {}
        for path, (name, _) in models.items():
            same = [b for b in baselines if b.path == path] or [
                b for b in baselines if b.model == name
            ]
            if len(same) == 1:
                matched[path] = same[0]
    if not any(set(b.checks) & set(models[p][1]) for p, b in matched.items()):
        saved = ", ".join(f"{b.model} ({len(b.checks)} checks)" for b in baselines) or "nothing"
        raise BiascheckError(
            f"baseline {source} matches no check of this run (it holds {saved}); save one for "
            f"these models and checks with --biascheck-save-baseline {source}"
        )
    return matched


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
