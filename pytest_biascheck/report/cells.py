"""Which images the report shows for each attribute: those of the label x group cell that its failing
check names (the mask score's worst cell, or the worst-group-accuracy cell), wrong predictions first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pytest_biascheck.checks import worst_mask_cell
from pytest_biascheck.evaluate import Results
from pytest_biascheck.report.document import checked_attributes

#: How many sample images the report shows per attribute.
SAMPLES = 8


def sample_cells(
    results: Results, outcomes: Sequence[Mapping[str, Any]], k: int = SAMPLES
) -> dict[str, dict[str, Any]]:
    """Per figure (each checked attribute; a multiclass head's task first): the cell its samples come
    from (``label``, ``group``, ``value``, ``level``; group None for a label cell), ``reason``,
    ``n`` and ``wrong`` (images and wrong predictions in it) and ``indices``: up to ``k`` image
    indices of the cell, wrong predictions first, each part in image order.

    The cell is the one named by the attribute's first failing (or warned) check that names one:
    ``mask_score`` its worst cell, a check across a protected group that group's worst-group-accuracy
    cell. Without one, the worst-group-accuracy cell over every group; without groups, the label
    with the lowest accuracy."""
    plan = results.plan
    names = checked_attributes(results)
    if results.head == "multiclass":
        names = [plan.task, *names]
    out = {}
    for name in names:
        cell = _named_cell(results, outcomes, name) or _worst_accuracy_cell(results, name, None)
        if cell is None:
            continue
        truth, guess = results.label(name), results.predicted(name)
        inside = truth == cell["label"]
        if cell["group"] is not None:
            inside &= results.column("g", cell["group"]) == cell["value"]
        wrong = truth != guess
        order = np.lexsort((results.frame["index"].to_numpy(), ~wrong))  # wrong first, then index
        chosen = order[inside[order]][:k]
        cell.update(
            n=int(inside.sum()),
            wrong=int((inside & wrong).sum()),
            indices=results.frame["index"].to_numpy()[chosen].tolist(),
            caption=_caption(results, name, cell),
        )
        out[name] = cell
    return out


def _named_cell(
    results: Results, outcomes: Sequence[Mapping[str, Any]], name: str
) -> dict[str, Any] | None:
    """The cell of ``name``'s first failing check that names one (None when none does)."""
    protected = results.plan.protected if results.plan else {}
    failing = [
        o
        for o in outcomes
        if o.get("attribute") == name and o.get("status") in ("FAILED", "warned")
    ]
    for outcome in sorted(failing, key=lambda o: o.get("status") != "FAILED"):
        target = (
            f"{outcome['check']}[{name}{'-' + outcome['other'] if outcome.get('other') else ''}]"
        )
        if outcome["check"] == "mask_score":
            row = worst_mask_cell(results, name)
            if row is not None:
                group = row["group"] or None
                value = int(row["group_value"]) if group else None
                return {"label": int(row["label"]), "group": group, "value": value,
                        "reason": f"the worst cell of the failing {target}"}  # fmt: skip
        elif outcome.get("other") in protected:
            cell = _worst_accuracy_cell(results, name, outcome["other"])
            if cell is not None:
                cell["reason"] = (
                    f"the worst-group-accuracy cell of {outcome['other']}, for the failing {target}"
                )
                return cell
    return None


def _worst_accuracy_cell(results: Results, name: str, group: str | None) -> dict[str, Any] | None:
    """The label x group cell of ``name`` with the lowest accuracy over ``group`` (every group when
    None), among the cells the group statistics keep; without groups, the worst label."""
    task = results.plan.task if results.plan else None
    table = results.tables.get("task_cells" if name == task and task else "group_cells")
    if table is not None and len(table):
        rows = table[~table["excluded"].astype(bool) & (table["n"] > 0)]
        rows = rows[rows["attribute"] == name]
        if group is not None:
            rows = rows[rows["group"] == group]
        if len(rows):
            row = rows.loc[rows["accuracy"].idxmin()]
            label = results.plan.attributes.index(row["class"]) if "class" in row else row["label"]
            return {"label": int(label), "group": row["group"], "value": int(row["value"]),
                    "reason": "the label × group cell with the lowest accuracy"}  # fmt: skip
    if group is not None:
        return None
    truth, guess = results.label(name), results.predicted(name)
    labels = np.unique(truth)
    if not len(labels):
        return None
    accuracy = [float((guess[truth == y] == y).mean()) for y in labels]
    return {"label": int(labels[int(np.argmin(accuracy))]), "group": None, "value": None,
            "reason": "the label with the lowest accuracy"}  # fmt: skip


def _caption(results: Results, name: str, cell: Mapping[str, Any]) -> str:
    """``Smiling = 1, Black_Hair = 0`` (a multiclass task's label by its class name)."""
    plan = results.plan
    task = plan.task if plan else None
    label = plan.attributes[cell["label"]] if name == task and task else cell["label"]
    text = f"{name} = {label}"
    if cell["group"] is None:
        return text
    levels = plan.levels.get(cell["group"], ()) if plan else ()
    value = cell["value"]
    return f"{text}, {cell['group']} = {levels[value] if value < len(levels) else value}"
