"""Text summaries of the checks that ran: the terminal table, the lines for groups left out of
group statistics, and the Markdown summary for pull requests (``--biascheck-summary``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

#: Statuses in the order summaries count them; only "FAILED" fails the run.
STATUSES = ("FAILED", "warned", "xfailed", "passed")


def counts(outcomes: Sequence[Mapping[str, Any]]) -> str:
    """``"2 FAILED, 1 warned, 5 passed"``: how many outcomes have each status."""
    seen = Counter(o["status"] for o in outcomes)
    return ", ".join(f"{seen[s]} {s}" for s in STATUSES if seen[s]) or "no checks"


def _baseline(outcome: Mapping[str, Any]) -> str:
    if outcome["baseline"] is None:
        return ""
    return f"{outcome['baseline']:.3f} {outcome['change'] or 'unchanged'}"


def table(outcomes: Sequence[Mapping[str, Any]]) -> list[str]:
    """One aligned line per check: item, value, interval, threshold, status (and baseline)."""
    header = ("check", "value", "95% CI", "threshold", "status", "baseline")
    if all(o["baseline"] is None for o in outcomes):
        header = header[:-1]  # no baseline given: no empty column
    rows = [header] + [
        (
            o["item"],
            f"{o['value']:.3f}",
            f"{o['low']:.3f}-{o['high']:.3f}",
            f"{o['op']} {o['threshold']:.3f}",
            o["status"],
            _baseline(o),
        )[: len(header)]
        for o in outcomes
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def excluded_lines(name: str, results: Any, share: float) -> tuple[list[str], list[str]]:
    """Lines for the group values, and for the label x group cells, that held under ``share``
    (``min_group_share``) of a model's images and were left out of its group statistics."""
    table_ = results.tables.get("excluded_groups")
    if table_ is None or table_.empty:
        return [], []
    limit = f"{share:.1%}"
    values = table_[table_["label"] == -1].drop_duplicates(["group", "value"])
    lines = [
        f"{name}: {r.group} = {r.level}: n={r.n} ({r.share:.1%} < {limit}), "
        "left out of every group statistic"
        for r in values.itertuples()
    ]
    cells = []
    plan = results.plan
    for r in table_[table_["label"] >= 0].itertuples():
        if plan is not None and r.attribute == plan.task:
            label = f"{r.attribute} = {plan.attributes[r.label]}"
        else:
            label = f"{r.attribute} y={r.label}"
        cells.append(
            f"{name}: {label} in {r.group} = {r.level}: n={r.n} ({r.share:.1%} < "
            f"{limit}), left out of worst-group accuracy and the rates it defines"
        )
    return lines, cells


def markdown(
    outcomes: Sequence[Mapping[str, Any]], notes: Sequence[str], report: str | None
) -> str:
    """A Markdown summary for a pull request or ``$GITHUB_STEP_SUMMARY``: the counts, a table of
    every check, the fix of each failing or warned one, and where the full report is."""
    lines = [f"### biascheck: {counts(outcomes)}", ""]
    if outcomes:
        with_baseline = any(o["baseline"] is not None for o in outcomes)
        head = ["status", "check", "value", "95% CI", "threshold"] + ["baseline"] * with_baseline
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for o in outcomes:
            cells = [
                f"**{o['status']}**" if o["status"] == "FAILED" else o["status"],
                f"`{o['item']}`",
                f"{o['value']:.3f}",
                f"{o['low']:.3f} to {o['high']:.3f}",
                f"{o['op']} {o['threshold']:.3f}",
            ] + [_baseline(o)] * with_baseline
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        fixes = [o for o in outcomes if o["status"] in ("FAILED", "warned")]
        if fixes:
            lines += ["", "Suggested fixes:", ""]
            lines += [f"- `{o['item']}` ({o['status']}): `{o['recipe']}`" for o in fixes]
    if notes:
        lines += ["", *[f"> {note}" for note in notes]]
    if report:
        lines += ["", f"Report: `{report}`"]
    return "\n".join(lines) + "\n"
