"""The quick validity suite: every gating check fails the models that took a shortcut and passes
the balanced twins; the attention check fails an untrained and a background-only model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_biascheck.checks import BUILTIN

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``python benchmarks/validity.py --quick``, run as a user would (a few minutes)."""
    out = tmp_path_factory.mktemp("validity")
    command = [sys.executable, "benchmarks/validity.py", "--quick", "--bootstrap", "300",
               "--work", str(out / "models"), "--json", str(out / "validity.json")]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return json.loads((out / "validity.json").read_text())


@pytest.mark.slow
def test_every_gating_check_separates_every_quick_case(quick: dict) -> None:
    gating = {c.name for c in BUILTIN if c.gate} - set(quick["guards"])  # accuracy guards
    cases = {r["case"] for r in quick["rows"]}
    assert len(cases) >= 3
    for case in cases:
        took = [r for r in quick["rows"] if r["case"] == case and r["took_shortcut"]]
        assert took, f"no model of {case} took its shortcut: the case tests nothing"
    for name in gating:
        for case, verdict in quick["verdicts"].get(name, {}).items():
            assert not verdict["false_pass"] and not verdict["false_fail"], (name, case, verdict)
    assert {"mask_score", "worst_group_accuracy", "equalized_odds", "leakage"} <= set(
        quick["verdicts"]
    )


@pytest.mark.slow
def test_untrained_and_background_only_models_fail_the_mask_score(quick: dict) -> None:
    blind = [r for r in quick["rows"] if r["role"] in ("untrained", "extra")]
    assert {r["role"] for r in blind} == {"untrained", "extra"}
    for row in blind:
        mask = row["values"]["mask_score"]
        assert not mask["passes"], (row["case"], row["twin"], mask)  # JSON: 0.0 or false
        raw = row["values"]["mask_score@grid"]
        assert raw["value"] < 0.1 and raw["raw"] < raw["chance"] + 0.1 * (1 - raw["chance"])


@pytest.mark.slow
def test_a_balanced_model_sees_its_regions_above_chance(quick: dict) -> None:
    balanced = [r for r in quick["rows"] if r["role"] == "balanced"]
    for row in balanced:
        mask = row["values"]["mask_score"]  # the worst group of images showing the attribute
        assert mask["low"] > 0 and mask["passes"], (row["case"], row["twin"], mask)
