"""Before/after: the gate's own evaluation pass and check catalogue, run on the parent and on the
new model with the same plan and thresholds, then written as JSON, as one HTML page (delta table,
a verdict on the new model, both models' maps on the same images, provenance) and printed as a
table. No metric is computed here."""

from __future__ import annotations

import math
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_biascheck.atomic import atomic_write_text
from pytest_biascheck.checks import catalogue, selected
from pytest_biascheck.config import Settings
from pytest_biascheck.data.base import BiasDataset
from pytest_biascheck.distributed import gather_pass, shard_indices
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.evaluate import Results, finish, run_pass
from pytest_biascheck.model import LoadedModel
from pytest_biascheck.planning import Plan, Scope
from pytest_biascheck.report import HTML_NAME, html
from pytest_biascheck.report.cells import sample_cells
from pytest_biascheck.report.images import legend_uri, sample_tiles
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
    """One row per check item: threshold, the value and status before and after, and the change;
    the checks whose status changed first (fixed, then broken), then those failing on both sides,
    then the rest, each in catalogue order."""
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
    return sorted(rows, key=_interest)


def _interest(row: Mapping[str, Any]) -> int:
    """0: fixed, 1: broken, 2: failing before and after, 3: the rest."""
    failed = (row["before"]["status"] == "FAILED", row["after"]["status"] == "FAILED")
    return {(True, False): 0, (False, True): 1, (True, True): 2}.get(failed, 3)


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


def command_line() -> str | None:
    """The command that started this process when it is ``python -m mitigations ...`` (None when
    a recipe runs inside another program, whose command line says nothing about the run)."""
    if Path(sys.argv[0]).parts[-2:] != ("mitigations", "__main__.py"):
        return None
    return shlex.join(["python", "-m", "mitigations", *sys.argv[1:]])


def summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the before/after page's banner says about the new model: its failing checks, and how
    many of the parent's failures it fixed and how many passing checks it broke."""
    before = [r["before"]["status"] == "FAILED" for r in rows]
    after = [r["after"]["status"] == "FAILED" for r in rows]
    return {
        "checks": len(rows),
        "failed_before": sum(before),
        "failed_after": sum(after),
        "fixed": sum(b and not a for b, a in zip(before, after, strict=True)),
        "broke": sum(a and not b for b, a in zip(before, after, strict=True)),
        "release": not any(after),
    }


def banner(counts: Mapping[str, Any], name: str) -> str:
    """The verdict on the new model ``name`` in one sentence."""
    change = f"it fixed {counts['fixed']} of the parent's {counts['failed_before']} failing checks and broke {counts['broke']}"
    if counts["release"]:
        return f"release {name}: all {counts['checks']} bias checks pass; {change}"
    return (
        f"do not release {name}: {counts['failed_after']} of {counts['checks']} bias checks fail; "
        f"{change}"
    )


def side_by_side(
    results: tuple[Results, Results],
    outcomes: tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]],
    draw: tuple[Any, Any],
) -> list[dict[str, Any]]:
    """Maps of the parent and the new model on the same images, for each attribute a check failed
    for (before or after): the images of the cell the parent's failing check names, wrong
    predictions of the parent first; ``draw`` holds each model's ``evaluate.sample_maps``."""
    before, after = results
    cells = sample_cells(before, outcomes[0])
    failing = [o["attribute"] for side in outcomes for o in side if o["status"] == "FAILED"]
    names = [n for n in dict.fromkeys(failing) if n in cells] or list(cells)[:1]
    wanted = sorted({i for n in names for i in cells[n]["indices"]})
    drawn = [d(wanted) if wanted else {} for d in draw]
    return [
        {"attribute": n, "cell": cells[n],
         "before": sample_tiles(n, before, cells[n], drawn[0]),
         "after": sample_tiles(n, after, cells[n], drawn[1])}
        for n in names
    ]  # fmt: skip


def write_html(
    out_dir: Path, document: Mapping[str, Any], maps: Sequence[Mapping[str, Any]]
) -> Path:
    """The before/after page (``biascheck.html`` in ``out_dir``) of the run ``document`` (the
    ``mitigations-report`` JSON) with the ``side_by_side`` maps, written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / HTML_NAME
    page = html.environment().get_template("compare.html.j2").render(
        doc=document, maps=maps, banner=banner(document["summary"], Path(document["out"]["path"]).stem),
        legend=legend_uri(),
    )  # fmt: skip
    atomic_write_text(path, page)
    return path


def _number(value: float, signed: bool = False) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _cell(side: Mapping[str, Any]) -> str:
    mark = {"passed": "ok", "FAILED": "FAIL", "skipped": "n/a"}[side["status"]]
    return f"{_number(side['value'])} {mark}"
