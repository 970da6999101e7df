"""The README's check table is the catalogue: same checks, gating, direction, threshold and recipe."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_biascheck.checks import BUILTIN

README = Path(__file__).resolve().parent.parent / "README.md"


def table_rows() -> dict[str, list[str]]:
    """Rows of the table under '### Checks', keyed by check name: [gates, threshold, what, fix]."""
    text = README.read_text()
    section = text[text.index("### Checks") :]
    rows = {}
    for line in section.splitlines()[4:]:
        if not line.startswith("| `"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows[re.match(r"`(\w+)\[", cells[0]).group(1)] = cells[1:]
    return rows


def test_the_table_lists_every_check_once() -> None:
    assert sorted(table_rows()) == sorted(c.name for c in BUILTIN)


@pytest.mark.parametrize("check", BUILTIN, ids=lambda c: c.name)
def test_each_row_matches_the_catalogue(check) -> None:
    gates, threshold, _, fix = table_rows()[check.name]
    assert gates == ("yes" if check.gate else "no")
    op = ">=" if check.direction == "min" else "<="
    assert threshold == f"{op} {check.threshold:.2f}"
    assert fix == " or ".join(f"`{remedy.recipe}`" for remedy in check.recipe)
