"""``python -m mitigations auto``: the command covering most failing checks, run as printed, the
child judged by its before/after report."""

from __future__ import annotations

import json

import pytest

from mitigations.auto import choose, gate_outcomes, verdict
from pytest_biascheck import files

ROI = "python -m mitigations roi-iou --model m.pt --out m_roi_iou.pt"
REBALANCE = "python -m mitigations rebalance --model m.pt --out m_rebalanced.pt"


def outcome(key: str, status: str, recipe: str) -> dict:
    return {"key": key, "status": status, "recipe": recipe}


def test_choose_takes_the_command_covering_most_failing_checks():
    outcomes = [
        outcome("mask_score[S-mouth]", "FAILED", ROI),
        outcome("worst_group_accuracy[S-Male]", "FAILED", REBALANCE),
        outcome("worst_group_accuracy[S-Hair]", "FAILED", REBALANCE),
        outcome("leakage[S-Male]", "passed", ROI),
        outcome("equalized_odds[S-Male]", "FAILED", "no recipe fixes this check: reason"),
    ]
    assert choose(outcomes) == (
        REBALANCE,
        ["worst_group_accuracy[S-Male]", "worst_group_accuracy[S-Hair]"],
    )
    assert choose(outcomes[:1] + outcomes[3:]) == (ROI, ["mask_score[S-mouth]"])
    assert choose(outcomes[4:]) == (None, [])


def row(item: str, before: str, after: str) -> dict:
    return {"item": item, "before": {"status": before}, "after": {"status": after}}


@pytest.mark.parametrize(
    ("rows", "better", "words"),
    [
        ([row("a", "FAILED", "passed"), row("b", "passed", "passed")], True, "1 failing checks before, 0 after"),
        ([row("a", "FAILED", "passed"), row("b", "passed", "FAILED")], False, "it broke b"),
        ([row("a", "FAILED", "FAILED"), row("b", "skipped", "skipped")], False, "not better"),
    ],
)  # fmt: skip
def test_verdict_needs_fewer_failures_and_nothing_broken(rows, better, words):
    judged, reason = verdict(rows)
    assert judged is better and words in reason


def gate_report(tmp_path, sha: str, recipe: str, status: str = "FAILED"):
    path = tmp_path / "biascheck.json"
    checks = [{"key": "mask_score[Smiling-mouth]", "status": status, "recipe": recipe},
              {"key": "fnr_gap[Smiling-Male]", "status": "info", "recipe": recipe}]  # fmt: skip
    path.write_text(json.dumps({"models": [{"sha256": sha, "checks": checks}]}))
    return path


def test_auto_runs_the_suggested_command_and_judges_the_child(
    cli, capsys, tiny_checkpoint, tmp_path
):
    command = (
        f"python -m mitigations roi-iou --model {tiny_checkpoint} --out tiny_roi_iou.pt "
        "--data synthfaces:n=48 --eval-data synthfaces:n=24 --attribute Smiling --region mouth "
        "--batch-size 16 --max-steps 2"
    )
    sha = files.sha256(tiny_checkpoint, "model", "test")
    results = gate_report(tmp_path, sha, command)
    code = cli("auto", "--model", tiny_checkpoint, "--results", results)
    printed = capsys.readouterr().out
    assert f"1 of 1 failing checks (mask_score[Smiling-mouth]) suggest\n  {command}\n" in printed
    report = json.loads((tmp_path / "tiny_roi_iou.report.json").read_text())
    assert report["recipe"] == "roi-iou" and report["training"]["steps"] == 2
    better, reason = verdict(report["checks"])
    assert code == (0 if better else 1) and reason in printed


def test_auto_with_nothing_failing_runs_nothing(cli, capsys, tiny_checkpoint, tmp_path):
    sha = files.sha256(tiny_checkpoint, "model", "test")
    results = gate_report(tmp_path, sha, ROI, status="passed")
    assert cli("auto", "--model", tiny_checkpoint, "--results", results) == 0
    assert "passes all 1 checks: nothing to fix" in capsys.readouterr().out
    assert list(tmp_path.glob("*.pt")) == []


def test_auto_refuses_results_of_another_model(cli, capsys, tiny_checkpoint, tmp_path):
    results = gate_report(tmp_path, "0" * 64, ROI)
    assert cli("auto", "--model", tiny_checkpoint, "--results", results) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds no model with the sha256 of" in err


def test_without_results_the_gate_is_run(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outcomes = gate_outcomes(tiny_checkpoint, None, "synthfaces:n=64", None)
    assert outcomes and {o["status"] for o in outcomes} <= {"passed", "FAILED", "skipped"}
    assert all(o["recipe"] for o in outcomes)
    assert not (tmp_path / "reports").exists()  # the gate's report went to a temporary folder
