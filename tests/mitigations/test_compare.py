"""The before/after page: its verdict is about the new model alone, counted from the check rows,
and it shows both models' maps on the same images."""

from __future__ import annotations

import html
import json
import re
import sys

from mitigations.compare import banner, comparison, summary


def row(before: str, after: str) -> dict:
    side = lambda status: {"value": 0.5, "low": 0.4, "high": 0.6, "n": 10, "status": status}  # noqa: E731
    return {"item": "x", "check": "x", "op": ">=", "threshold": 0.5, "before": side(before),
            "after": side(after), "change": 0.0}  # fmt: skip


def test_banner_counts_the_new_models_failures_and_what_it_fixed_and_broke():
    rows = [row("FAILED", "passed"), row("FAILED", "passed"), row("FAILED", "FAILED"),
            row("passed", "FAILED"), row("passed", "passed")]  # fmt: skip
    counts = summary(rows)
    assert counts == {"checks": 5, "failed_before": 3, "failed_after": 2, "fixed": 2, "broke": 1,
                      "release": False}  # fmt: skip
    assert banner(counts, "child") == (
        "do not release child: 2 of 5 bias checks fail; it fixed 2 of the parent's 3 failing "
        "checks and broke 1"
    )


def test_rows_that_changed_come_first_then_those_still_failing():
    def outcome(item: str, status: str) -> dict:
        return {"item": item, "check": "c", "op": ">=", "threshold": 0.5, "value": 0.5,
                "low": 0.4, "high": 0.6, "n": 10, "status": status}  # fmt: skip

    pairs = {"same": ("passed", "passed"), "stuck": ("FAILED", "FAILED"),
             "broken": ("passed", "FAILED"), "fixed": ("FAILED", "passed"),
             "also same": ("passed", "passed")}  # fmt: skip
    rows = comparison(
        [outcome(k, b) for k, (b, _) in pairs.items()],
        [outcome(k, a) for k, (_, a) in pairs.items()],
    )
    assert [r["item"] for r in rows] == ["fixed", "broken", "stuck", "same", "also same"]


def test_banner_says_release_when_the_new_model_passes_every_check():
    rows = [row("FAILED", "passed"), row("passed", "passed"), row("skipped", "passed")]
    counts = summary(rows)
    assert (counts["release"], counts["fixed"], counts["broke"]) == (True, 1, 0)
    assert banner(counts, "child").startswith("release child: all 3 bias checks pass; it fixed 1")


def test_page_shows_one_verdict_the_delta_table_and_both_models_on_the_same_images(
    cli, tiny_checkpoint, tmp_path, monkeypatch
):
    out = tmp_path / "tiny_roi.pt"
    argv = ["roi-iou", "--model", tiny_checkpoint, "--out", out, "--data", "synthfaces:n=48",
            "--eval-data", "synthfaces:n=24", "--attribute", "Smiling", "--region", "mouth",
            "--batch-size", "16", "--max-steps", "2", "--seed", "3"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["/x/mitigations/__main__.py", *map(str, argv)])
    assert cli(*argv) == 0
    report = json.loads((tmp_path / "tiny_roi.report.json").read_text())
    page = (tmp_path / "tiny_roi.report" / "biascheck.html").read_text()
    assert report["summary"] == summary(report["checks"])
    (verdict,) = re.findall(r'<div class="verdict [a-z]+" id="verdict">([^<]*)</div>', page)
    assert html.unescape(verdict) == banner(report["summary"], "tiny_roi") + "."
    assert "across 2 models" not in page
    items = re.findall(r'<tr class="check (?:failed|passed)" id="[^"]+" data-check="([^"]+)"', page)
    assert items == [r["item"] for r in report["checks"]]
    sections = page.split('<div class="attribute-maps"')[1:]
    assert sections
    for section in sections:
        before = re.search(r'<div class="tiles before">(.*?)</div>', section, re.S).group(1)
        after = re.search(r'<div class="tiles after">(.*?)</div>', section, re.S).group(1)
        ids = re.findall(r'data-index="(\d+)"', before)
        assert ids and ids == re.findall(r'data-index="(\d+)"', after)
    assert report["command"] == "python -m mitigations " + " ".join(map(str, argv))
    assert f'<code class="cmd">{report["command"]}</code>' in page
    assert "<dt>seed</dt><dd>3</dd>" in page and str(tiny_checkpoint) in page and str(out) in page
