"""Before/after: the gate's own evaluation pass and check catalogue, run on the parent and on the
new model with the same plan and thresholds, then written as JSON (and the gate's HTML report)
and printed as a table. No metric is computed here."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_biascheck.checks import catalogue, selected
from pytest_biascheck.config import Settings
from pytest_biascheck.data.base import BiasDataset
from pytest_biascheck.distributed import gather_pass, shard_indices
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.evaluate import Results, finish, run_pass
from pytest_biascheck.model import LoadedModel
from pytest_biascheck.planning import Plan, Scope
from pytest_biascheck.report import write_report
from pytest_biascheck.suggest import fix_for

REPORT_SCHEMA = "mitigations-report/1"


def evaluate_model(
    model: LoadedModel,
    data: BiasDataset,
    spec: str,
    plan: Plan,
    batch_size: int,
    device: str,
    rank: int = 0,
    world: int = 1,
    progress: bool = False,
) -> Results:
    """The gate's evaluation pass; under torchrun each process takes a shard and all get the
    merged Results."""
    indices = shard_indices(len(data), rank, world)
    state = run_pass(model, data, plan, batch_size, device, indices=indices, progress=progress)
    return finish(gather_pass(state), model, spec, plan)


def run_checks(
    results: Results,
    model: LoadedModel,
    scope: Scope,
    settings: Settings,
    name: str,
    hook: Any | None = None,
) -> list[dict[str, Any]]:
    """Every check the gate would run for a model configured as ``name`` (its check list, else
    the default ones), measured on ``results``, with the gate's threshold lookup (model, global,
    default) and its suggested command for ``model``."""
    own = settings.for_model(name)
    wanted = own.checks or settings.checks
    outcomes, fix = [], fix_for(model, results.data, results)
    for check in selected(catalogue(hook), wanted):
        threshold, _ = settings.threshold(name, check.name, check.threshold)
        for target in check.targets(scope):
            measured = check.measure(results, target, scope)
            status = "passed" if check.passes(measured.value, threshold) else "FAILED"
            if measured.n == 0:
                status = "skipped"
            outcomes.append(
                {"item": f"{check.name}[{target.id}]", "model": results.model, "check": check.name,
                 "attribute": target.attribute, "other": target.other, "value": measured.value,
                 "low": measured.low, "high": measured.high, "n": measured.n,
                 "threshold": threshold, "op": ">=" if check.direction == "min" else "<=",
                 "status": status, "description": check.description,
                 "recipe": check.command(target, scope, fix)}
            )  # fmt: skip
    return outcomes


def comparison(
    before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One row per check item: threshold, the value and status before and after, and the change."""
    later = {o["item"]: o for o in after}
    rows = []
    for old in before:
        new = later.get(old["item"])
        if new is None:
            raise BiascheckError(f"check {old['item']} was not measured after training")
        rows.append(
            {
                "item": old["item"],
                "check": old["check"],
                "op": old["op"],
                "threshold": old["threshold"],
                "before": {k: old[k] for k in ("value", "low", "high", "n", "status")},
                "after": {k: new[k] for k in ("value", "low", "high", "n", "status")},
                "change": new["value"] - old["value"],
            }
        )
    return rows


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The before/after table printed at the end of a run."""
    lines = [("check", "before", "after", "change", "threshold")]
    for row in rows:
        lines.append(
            (
                row["item"],
                _cell(row["before"]),
                _cell(row["after"]),
                _number(row["change"], signed=True),
                f"{row['op']} {row['threshold']:.3f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def write_html(
    out_dir: Path, entries: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]
) -> Path:
    """The gate's HTML report of both models (``biascheck.html`` in ``out_dir``)."""
    return write_report(entries, out_dir, meta)[1]


def _number(value: float, signed: bool = False) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _cell(side: Mapping[str, Any]) -> str:
    mark = {"passed": "ok", "FAILED": "FAIL", "skipped": "n/a"}[side["status"]]
    return f"{_number(side['value'])} {mark}"
