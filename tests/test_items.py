"""Check items behave like any pytest test: ids with the target as parameter id, so every selection
habit works (node ids copied from the output, --deselect, --lf, --ff, --sw, -x), failure text shaped
by --tb, headers that match the ids, and JUnit XML with the measurement as properties."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

from pytest_biascheck.items import status_of
from tests.conftest import TINY_DATA

ALPHA = ("--biascheck=alpha.pt", TINY_DATA)
ITEMS = ["alpha.pt::fixed[Smiling]", "alpha.pt::fixed[Male]", "alpha.pt::fixed[Young]"]


def literal(text: str) -> str:
    """``text`` as an fnmatch pattern that matches it exactly where it holds brackets."""
    return text.replace("[", "[[]")


def ran(result: pytest.RunResult) -> dict[str, str]:
    """{item id: PASSED/FAILED/...} from ``-v`` lines."""
    found = re.findall(
        r"^(\S+::\S+) (PASSED|FAILED|XFAIL|WARNED|SKIPPED)", result.stdout.str(), re.M
    )
    return dict(found)


def test_collect_only_lists_one_item_per_check_and_target(pytester: pytest.Pytester, fixed_values):
    result = pytester.runpytest(*ALPHA, "--collect-only", "-q")
    assert [line for line in result.stdout.lines if "::" in line] == ITEMS
    assert not (pytester.path / "reports").exists()  # nothing evaluated, nothing written


def test_target_is_the_parameter_id(pytester: pytest.Pytester, fixed_values):
    items, _ = pytester.inline_genitems(*ALPHA)
    assert [item.nodeid for item in items] == ITEMS
    assert [item.name for item in items] == [i.split("::")[1] for i in ITEMS]
    if hasattr(items[0], "id") and hasattr(items[0].id, "params"):  # structured ids (pytest >= 9.2)
        assert [(i.id.names, i.id.params) for i in items] == [
            (("fixed",), "Smiling"),
            (("fixed",), "Male"),
            (("fixed",), "Young"),
        ]


def test_node_id_copied_from_the_output_runs_that_item(pytester: pytest.Pytester, fixed_values):
    first = pytester.runpytest(*ALPHA, "-p", "no:cacheprovider")
    (failed,) = re.findall(r"^FAILED (\S+)", first.stdout.str(), re.M)
    assert failed == "alpha.pt::fixed[Male]"
    again = pytester.runpytest(*ALPHA, "-v", failed, "-p", "no:cacheprovider")
    assert ran(again) == {failed: "FAILED"}
    every = pytester.runpytest(*ALPHA, "-v", "alpha.pt::fixed", "-p", "no:cacheprovider")
    assert list(ran(every)) == ITEMS  # the check's name selects all its targets


def test_deselect_leaves_an_item_out(pytester: pytest.Pytester, fixed_values):
    result = pytester.runpytest(*ALPHA, "-v", "--deselect", "alpha.pt::fixed[Male]")
    assert ran(result) == {ITEMS[0]: "PASSED", ITEMS[2]: "PASSED"}
    result.assert_outcomes(passed=2, deselected=1)


def test_lf_reruns_only_the_failures_and_ff_runs_them_first(
    pytester: pytest.Pytester, fixed_values
):
    fixed_values(Young=0.1)
    pytester.runpytest(*ALPHA).assert_outcomes(passed=1, failed=2)
    last_failed = pytester.runpytest(*ALPHA, "-v", "--lf")
    last_failed.stdout.fnmatch_lines(["run-last-failure: rerun previous 2 failures"])
    assert ran(last_failed) == {ITEMS[1]: "FAILED", ITEMS[2]: "FAILED"}
    failed_first = pytester.runpytest(*ALPHA, "-v", "--ff")
    assert list(ran(failed_first)) == [ITEMS[1], ITEMS[2], ITEMS[0]]
    fixed_values()  # Young fixed: the next --lf runs Male only
    pytester.runpytest(*ALPHA, "--lf").assert_outcomes(passed=1, failed=1)
    assert ran(pytester.runpytest(*ALPHA, "-v", "--lf")) == {ITEMS[1]: "FAILED"}


def test_sw_stops_at_a_failure_and_resumes_there(pytester: pytest.Pytester, fixed_values):
    first = pytester.runpytest(*ALPHA, "-v", "--sw")
    assert ran(first) == {ITEMS[0]: "PASSED", ITEMS[1]: "FAILED"}
    fixed_values(Male=0.8)
    second = pytester.runpytest(*ALPHA, "-v", "--sw")
    assert ran(second) == {ITEMS[1]: "PASSED", ITEMS[2]: "PASSED"}


def test_x_stops_at_the_first_failure_and_still_summarises(pytester: pytest.Pytester, fixed_values):
    result = pytester.runpytest(*ALPHA, "-x", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.re_match_lines([r"alpha\.pt::fixed\[Male\] +0\.200 .* FAILED$", r"report: .*"])


def test_failure_header_is_the_items_name_and_text_starts_with_its_id(
    pytester: pytest.Pytester, fixed_values
):
    result = pytester.runpytest(*ALPHA, "-p", "no:cacheprovider")
    text = result.stdout.str()
    (header,) = re.findall(r"^_+ (\S+) _+$", text, re.M)
    assert "alpha.pt::" + header == ITEMS[1]
    expected = [
        f"*_ {header} _*",
        "alpha.pt::fixed[Male]: 0.200 does not meet >= 0.500",
        "  value      0.200  (95% CI 0.150-0.250, n=64 images)",
        "  threshold  >= 0.500  (min; default; set fixed in [thresholds] of *biascheck.toml)",
        "  checks     a value the test sets",
        "  fix        fix --model alpha.pt --attribute Male",
        "  report     reports/biascheck.html#check-alpha.pt-fixed-Male",
        "FAILED alpha.pt::fixed[Male] - 0.200 does not meet >= 0.500",
    ]
    result.stdout.fnmatch_lines([literal(line) for line in expected])


@pytest.mark.parametrize(
    ("style", "shown", "hidden"),
    [
        ("line", ["alpha.pt:0: fixed[Male]: 0.200 does not meet >= 0.500"], ["  value *", "*__ *"]),
        ("short", ["*_ fixed[Male] _*", "  value      0.200*", "  fix  *"], ["  checks  *"]),
        ("long", ["*_ fixed[Male] _*", "  value      0.200*", "  checks     *"], []),
        ("native", ["*_ fixed[Male] _*", "  value      0.200*", "  checks     *"], []),
        ("no", ["FAILED alpha.pt::fixed[Male]*"], ["  value *", "*__ *", "alpha.pt:0:*"]),
    ],
)
def test_tb_style_shapes_the_failure_text(
    pytester: pytest.Pytester, fixed_values, style, shown, hidden
):
    result = pytester.runpytest(*ALPHA, f"--tb={style}", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([literal(line) for line in shown])
    for pattern in hidden:
        result.stdout.no_fnmatch_line(literal(pattern))
    if style == "line":  # the failures section holds one line for the one failure
        lines = result.stdout.lines
        start = next(i for i, line in enumerate(lines) if "= FAILURES =" in line) + 1
        end = next(i for i in range(start, len(lines)) if lines[i].startswith("="))
        assert lines[start:end] == shown


def test_junitxml_carries_the_measurement_and_the_evaluation_time(
    pytester: pytest.Pytester, fixed_values
):
    pytester.runpytest(
        *ALPHA, "--junitxml=out.xml", "-p", "no:cacheprovider", "--biascheck-no-cache"
    )
    cases = ET.parse(pytester.path / "out.xml").getroot().iter("testcase")
    by_name = {c.get("name"): c for c in cases}
    assert list(by_name) == [i.split("::")[1] for i in ITEMS]
    properties = {
        name: {p.get("name"): p.get("value") for p in case.iter("property")}
        for name, case in by_name.items()
    }
    male = properties["fixed[Male]"]
    assert (float(male["value"]), float(male["threshold"]), male["direction"]) == (0.2, 0.5, "min")
    assert [float(x) for x in male["interval"].strip("[]").split(",")] == pytest.approx(
        [0.15, 0.25]
    )
    assert int(male["n"]) == 64
    timed = [name for name, p in properties.items() if "evaluation_seconds" in p]
    assert timed == ["fixed[Smiling]"]  # the item that waited for the evaluation
    seconds = float(properties["fixed[Smiling]"]["evaluation_seconds"])
    assert seconds > 0 and math.isfinite(seconds)
    failure = by_name["fixed[Male]"].find("failure")
    assert failure.get("message") == "0.200 does not meet >= 0.500"
    assert "fix        fix --model alpha.pt --attribute Male" in failure.text
    link = "reports/biascheck.html#check-alpha.pt-fixed-Male"
    assert male["report"] == link and f"report     {link}" in failure.text


def test_report_link_leads_to_the_items_row(pytester: pytest.Pytester, fixed_values):
    """The anchor in the failure text names the row of that item in the report that the run wrote."""
    result = pytester.runpytest(*ALPHA, "-p", "no:cacheprovider", "--biascheck-no-cache")
    (link,) = re.findall(r"^  report     (\S+)$", result.stdout.str(), re.M)
    page, fragment = link.split("#")
    html = (pytester.path / page).read_text()
    row = re.search(rf'<tr class="check failed" id="{fragment}" data-check="([^"]+)"', html)
    assert row is not None and row.group(1) == ITEMS[1]


@pytest.mark.parametrize(
    ("met", "change", "known", "severity", "status"),
    [
        (True, None, False, "fail", "passed"),
        (True, "improved", True, "fail", "passed"),  # a known failure fixed
        (True, "regressed", False, "fail", "FAILED"),  # threshold holds, baseline does not
        (True, "regressed", False, "warn", "warned"),
        (False, None, False, "fail", "FAILED"),
        (False, None, False, "warn", "warned"),
        (False, None, True, "fail", "xfailed"),
        (False, "improved", True, "fail", "xfailed"),
        (False, "regressed", True, "fail", "FAILED"),  # a known failure got worse
        (False, "regressed", True, "warn", "warned"),
    ],
)
def test_status_of_each_combination(met, change, known, severity, status):
    assert status_of(met, change, known, severity) == status
