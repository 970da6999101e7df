"""Shared fixtures of the recipe tests: one intra-op thread, the CLI in-process, and recipe runs on
the biased face fixture for the slow end-to-end tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mitigations.__main__ import main


@pytest.fixture(autouse=True, scope="module")
def _single_threaded(one_thread):
    """Every mitigations test runs on one intra-op thread (``one_thread`` in tests/conftest.py)."""


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Run ``python -m mitigations`` in-process from a clean folder; returns the exit code."""
    monkeypatch.chdir(tmp_path)

    def run(*argv: str) -> int:
        try:
            return main([str(a) for a in argv])
        except SystemExit as exc:  # argparse's usage errors
            return int(exc.code)

    return run


FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
BIASED = FIXTURES / "faces_biased.pt"
#: CPU-sized training data for the end-to-end runs: SynthFaces drawn with the biased preset.
TRAIN_DATA = "synthfaces:split=train,preset=biased,n=4000"
EVAL_DATA = "synthfaces:n=1000"


@pytest.fixture
def run_on_fixture(cli, tmp_path):
    """Run a recipe on the biased face fixture with a config (``checks``/``models`` TOML text);
    returns the report's check rows by item and the report itself."""
    if not BIASED.exists():
        pytest.skip("fixtures/faces_biased.pt is not built")

    def run(recipe: str, *options: str, config: str = "") -> tuple[dict, dict]:
        (tmp_path / "biascheck.toml").write_text(config)
        out = tmp_path / f"{recipe}.pt"
        argv = ["--model", BIASED, "--out", out, "--data", TRAIN_DATA, "--eval-data", EVAL_DATA]
        assert cli(recipe, *argv, *options) == 0
        report = json.loads((tmp_path / f"{recipe}.report.json").read_text())
        return {row["item"]: row for row in report["checks"]}, report

    return run
