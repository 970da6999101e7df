"""The committed fixture models really are biased (or not), as fixtures/README.md says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures import build
from pytest_biascheck.model import load_checkpoint

FIXTURES = Path(build.__file__).parent


@pytest.fixture(scope="module")
def measured() -> dict[str, dict]:
    """Accuracy and group accuracies of every committed fixture, measured now from its file."""
    out = {}
    for name, cfg in build.FIXTURES.items():
        loaded = load_checkpoint(FIXTURES / f"{name}.pt")
        assert loaded.path.stat().st_size <= 5 * 2**20
        out[name] = build.measure(loaded.module, loaded.spec, cfg["kind"])
    return out


@pytest.mark.parametrize("kind", ["faces", "birds"])
def test_biased_twin_loses_worst_group_accuracy_but_not_average_accuracy(measured, kind):
    biased, balanced = measured[f"{kind}_biased"], measured[f"{kind}_balanced"]
    gap = balanced["balanced"]["worst_group_accuracy"] - biased["balanced"]["worst_group_accuracy"]
    assert gap >= 0.20, (kind, gap)
    drop = balanced["train_distribution"]["accuracy"] - biased["train_distribution"]["accuracy"]
    assert drop <= 0.05, (kind, drop)


def test_committed_numbers_match_the_files(measured):
    recorded = json.loads((FIXTURES / "metrics.json").read_text())
    for name, numbers in measured.items():
        for split in ("balanced", "train_distribution"):
            for key, value in numbers[split].items():
                assert recorded[name][split][key] == pytest.approx(value, abs=1e-9), (
                    name,
                    split,
                    key,
                )


def test_fixture_checkpoints_record_their_provenance():
    for name in build.FIXTURES:
        loaded = load_checkpoint(FIXTURES / f"{name}.pt")
        assert loaded.provenance["fixture"] == name
        assert set(loaded.provenance["positive_rates"]) == set(loaded.spec.attributes)


@pytest.mark.slow
def test_rebuilding_a_fixture_reproduces_its_accuracy(tmp_path):
    numbers = build.build("birds_biased", tmp_path)
    recorded = json.loads((FIXTURES / "metrics.json").read_text())["birds_biased"]
    for split in ("balanced", "train_distribution"):
        assert numbers[split]["accuracy"] == pytest.approx(recorded[split]["accuracy"], abs=0.01)
