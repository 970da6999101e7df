"""The shared training loop: batch order, invariance to micro-batching, seeded reproducibility,
resuming a killed run, and two gloo processes under torchrun against one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mitigations.train import TrainConfig, global_batches

#: The tiny test model has a 4x4 CAM grid: the gate warns that regions are coarse on it.
pytestmark = pytest.mark.filterwarnings("ignore:regions of .* cover less than one cell")


ROOT = Path(__file__).resolve().parents[2]
TINY_RUN = ("affact-b", "--data", "synthfaces:n=96,seed=3", "--batch-size", "8", "--lr", "0.05",
            "--eval-data", "synthfaces:n=16")  # fmt: skip


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=atol, msg=key)


def test_global_batches_are_seeded_epoch_permutations():
    config = TrainConfig(batch_size=4, epochs=3, seed=5)
    batches = global_batches(10, config)
    assert [len(b) for b in batches] == [4, 4, 2] * 3
    epochs = [np.concatenate(batches[i : i + 3]) for i in (0, 3, 6)]
    assert all(sorted(e.tolist()) == list(range(10)) for e in epochs)
    assert not np.array_equal(epochs[0], epochs[1])
    again = global_batches(10, config)
    assert all(np.array_equal(x, y) for x, y in zip(batches, again, strict=True))
    assert len(global_batches(10, TrainConfig(batch_size=4, epochs=3, max_steps=4))) == 4


def test_micro_batches_and_reruns_give_the_same_weights(cli, tiny_checkpoint, tmp_path):
    common = (*TINY_RUN, "--model", tiny_checkpoint, "--max-steps", "6", "--skip-checks")
    assert cli(*common, "--out", tmp_path / "whole.pt") == 0
    assert cli(*common, "--out", tmp_path / "again.pt") == 0
    assert cli(*common, "--out", tmp_path / "micro.pt", "--micro-batch", "3") == 0
    assert cli(*common, "--out", tmp_path / "seed.pt", "--seed", "1") == 0
    assert_same_weights(tmp_path / "whole.pt", tmp_path / "again.pt")
    assert_same_weights(tmp_path / "whole.pt", tmp_path / "micro.pt", atol=1e-6)
    with pytest.raises(AssertionError):
        assert_same_weights(tmp_path / "whole.pt", tmp_path / "seed.pt", atol=1e-6)
    with pytest.raises(AssertionError):  # training changed the weights at all
        assert_same_weights(tiny_checkpoint, tmp_path / "whole.pt", atol=1e-6)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


#: Each recipe's own options for a tiny run (on top of TINY_RUN's data and loop).
RECIPE_OPTIONS = {
    "affact-b": (),
    "roi-iou": ("--attribute", "Smiling", "--region", "mouth", "--lr", "0.01"),
    "rebalance": ("--attribute", "Smiling", "--protected", "Black_Hair", "--mcc", "0.2"),
    "jlu": ("--attribute", "Smiling", "--spurious", "Black_Hair", "--warm-start", "32"),
    "crayon": ("--attribute", "Smiling", "--mode", "attention", "--simulate", "mouth",
               "--lr", "0.0001"),
}  # fmt: skip


@pytest.mark.parametrize("recipe", list(RECIPE_OPTIONS))
def test_killed_run_resumes_to_the_same_weights(cli, tiny_checkpoint, tmp_path, recipe):
    """kill -9 after a resume state is written, then --resume: bit-identical to an unbroken run
    (model, optimiser, schedule, RNGs and a recipe's extra modules all come back)."""
    common = (recipe, *TINY_RUN[1:], *RECIPE_OPTIONS[recipe], "--model", tiny_checkpoint,
              "--epochs", "6", "--checkpoint-every", "5", "--skip-checks")  # fmt: skip
    assert cli(*common, "--out", tmp_path / "clean.pt") == 0
    out = tmp_path / "killed.pt"
    state = tmp_path / "killed.pt.resume"
    argv = [sys.executable, "-m", "mitigations", *map(str, common), "--out", str(out)]
    process = subprocess.Popen(argv, cwd=tmp_path, env=_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert state.exists() and not out.exists(), process.stderr.read()
    step = torch.load(state, weights_only=True)["step"]
    steps = torch.load(tmp_path / "clean.pt", weights_only=True)["provenance"]["steps"]
    assert 0 < step < steps
    assert cli(*common, "--out", out, "--resume") == 0
    assert not state.exists()
    assert_same_weights(tmp_path / "clean.pt", out)


def test_resume_refuses_a_state_from_other_settings(cli, tiny_checkpoint, tmp_path, capsys):
    common = (*TINY_RUN, "--model", tiny_checkpoint, "--max-steps", "3", "--skip-checks")
    out = tmp_path / "out.pt"
    torch.save({"format": "mitigations-resume/1", "run_id": "other", "step": 1}, f"{out}.resume")
    assert cli(*common, "--out", out, "--resume") == 2
    assert "was written by a run with other settings" in capsys.readouterr().err
    assert not out.exists()


def test_two_gloo_processes_match_one_process(cli, tiny_checkpoint, tmp_path):
    common = (*TINY_RUN, "--model", tiny_checkpoint, "--max-steps", "5")
    assert cli(*common, "--out", tmp_path / "one.pt") == 0
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "mitigations", *map(str, common), "--out", str(tmp_path / "two.pt")]  # fmt: skip
    done = subprocess.run(
        argv, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_weights(tmp_path / "one.pt", tmp_path / "two.pt", atol=1e-5)
    one = json.loads((tmp_path / "one.report.json").read_text())
    two = json.loads((tmp_path / "two.report.json").read_text())
    for a, b in zip(one["checks"], two["checks"], strict=True):  # sharded evaluation, same numbers
        assert a["item"] == b["item"]
        for side in ("before", "after"):
            assert a[side]["value"] == pytest.approx(b[side]["value"], abs=1e-4, nan_ok=True)
