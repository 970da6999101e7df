"""The terminal table and the Markdown summary, from hand-written outcomes."""

from __future__ import annotations

from pytest_biascheck.summary import counts, markdown, table


def outcome(item: str, status: str, value: float, baseline: float | None = None) -> dict:
    return {"item": item, "status": status, "value": value, "low": value - 0.1,
            "high": value + 0.1, "op": ">=", "threshold": 0.5, "baseline": baseline,
            "change": None, "recipe": f"fix {item}"}  # fmt: skip


OUTCOMES = [
    outcome("m.pt::a[X]", "passed", 0.9),
    outcome("m.pt::a[Y|Z]", "FAILED", 0.2),
    outcome("m.pt::b[X]", "warned", 0.3),
    outcome("m.pt::c[X]", "xfailed", 0.4),
]


def test_counts_name_each_status_in_order_of_gravity():
    assert counts(OUTCOMES) == "1 FAILED, 1 warned, 1 xfailed, 1 passed"
    assert counts([]) == "no checks"


def test_table_aligns_columns_and_shows_a_baseline_column_only_when_one_was_given():
    lines = table(OUTCOMES[:2])
    assert lines == [
        "check         value  95% CI       threshold  status",
        "m.pt::a[X]    0.900  0.800-1.000  >= 0.500   passed",
        "m.pt::a[Y|Z]  0.200  0.100-0.300  >= 0.500   FAILED",
    ]
    with_baseline = table([outcome("m.pt::a[X]", "passed", 0.9, baseline=0.85)])
    assert with_baseline[0].endswith("status  baseline")
    assert with_baseline[1].endswith("passed  0.850 unchanged")


def test_markdown_lists_every_check_the_fixes_and_the_report():
    text = markdown(OUTCOMES, ["report not written (x)"], "reports/biascheck.html")
    assert text.splitlines() == [
        "### biascheck: 1 FAILED, 1 warned, 1 xfailed, 1 passed",
        "",
        "| status | check | value | 95% CI | threshold |",
        "|---|---|---|---|---|",
        "| passed | `m.pt::a[X]` | 0.900 | 0.800 to 1.000 | >= 0.500 |",
        "| **FAILED** | `m.pt::a[Y\\|Z]` | 0.200 | 0.100 to 0.300 | >= 0.500 |",
        "| warned | `m.pt::b[X]` | 0.300 | 0.200 to 0.400 | >= 0.500 |",
        "| xfailed | `m.pt::c[X]` | 0.400 | 0.300 to 0.500 | >= 0.500 |",
        "",
        "Suggested fixes:",
        "",
        "- `m.pt::a[Y|Z]` (FAILED): `fix m.pt::a[Y|Z]`",
        "- `m.pt::b[X]` (warned): `fix m.pt::b[X]`",
        "",
        "> report not written (x)",
        "",
        "Report: `reports/biascheck.html`",
    ]
