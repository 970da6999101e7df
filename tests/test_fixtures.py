"""The committed fixture models really are biased (or not), as fixtures/README.md says."""

from __future__ import annotations

import json
import subprocess
import sys
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
    """``python fixtures/build.py`` pins the kernels to AVX2, 2 threads and deterministic algorithms
    in a process of its own, so a rebuild on any CPU (AVX512 kernels alone move the result by 5
    points) or under any load gives the committed numbers."""
    script = Path(build.__file__)
    command = [sys.executable, str(script), "--only", "birds_biased", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rebuilt = json.loads((tmp_path / "metrics.json").read_text())["birds_biased"]
    if rebuilt["cpu_capability"] != "AVX2":
        pytest.skip(
            f"this CPU cannot run the AVX2 kernels the fixtures were built with ({rebuilt})"
        )
    recorded = json.loads((FIXTURES / "metrics.json").read_text())["birds_biased"]
    for split in ("balanced", "train_distribution"):
        assert rebuilt[split]["accuracy"] == pytest.approx(recorded[split]["accuracy"], abs=0.01)
    provenance = load_checkpoint(tmp_path / "birds_biased.pt").provenance
    assert provenance["pinned_isa"] == build.PINNED_ISA and provenance["threads"] == build.THREADS
