"""Overhead of the gate over the bare evaluation pass, and the time of a cached re-run.

    python benchmarks/gate_overhead.py [--model fixtures/faces_biased.pt] [--n 2000]

Prints, from one run: the bare pass in a fresh process (what a script calling ``evaluate`` costs,
first-use costs included) and warm in-process, a full ``pytest --biascheck`` run with the cache off,
the start-up cost of a process importing the same libraries, the ratio of the two fresh-process
runs after start-up (target <= 1.3), and a cached re-run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pytest_biascheck.config import Settings
from pytest_biascheck.evaluate import evaluate
from pytest_biascheck.model import load_checkpoint
from pytest_biascheck.planning import data_for, plan_for


def timed(cmd: list[str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fixtures/faces_biased.pt")
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    model_path = str(Path(args.model).resolve())
    spec = f"synthfaces:n={args.n}" if "faces" in model_path else f"synthbirds:n={args.n}"
    settings = Settings(data=spec)
    model = load_checkpoint(model_path)
    data, dataset = data_for(model, settings)
    _, plan = plan_for(model, dataset, settings)
    evaluate(model, dataset, data, plan)  # warm-up: first-use costs are not the pass
    start = time.perf_counter()
    evaluate(model, dataset, data, plan)
    bare = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        gate = [
            sys.executable,
            "-m",
            "pytest",
            f"--biascheck={model_path}",
            f"--biascheck-data={spec}",
            "-q",
            "-p",
            "no:cacheprovider",
        ]
        imports = (
            "import pytest, torch, torchvision, pytorch_grad_cam, pandas, pytest_biascheck.evaluate"
        )
        startup = timed([sys.executable, "-c", imports], tmp)
        script = (
            f"{imports}\nfrom pytest_biascheck.config import Settings\n"
            "from pytest_biascheck.evaluate import evaluate\n"
            "from pytest_biascheck.planning import data_for, plan_for\n"
            "from pytest_biascheck.model import load_checkpoint\n"
            f"s = Settings(data={spec!r}); m = load_checkpoint({model_path!r}); d, ds = data_for(m, s)\n"
            "evaluate(m, ds, d, plan_for(m, ds, s)[1])"
        )
        bare_cold = timed([sys.executable, "-c", script], tmp)
        full = timed([*gate, "--biascheck-no-cache"], tmp)
        timed(gate, tmp)  # fills the cache
        cached = timed(gate, tmp)
    print(f"model {Path(model_path).name}, {args.n} images")
    print(f"bare evaluation pass (warm, in-process): {bare:7.1f} s")
    print(f"bare evaluation pass (fresh process):    {bare_cold:7.1f} s")
    print(f"full pytest --biascheck (no cache):      {full:7.1f} s")
    print(f"process start-up (imports):              {startup:7.1f} s")
    # Both runs pay the same start-up; subtracting a separately timed start-up is too noisy here.
    print(f"ratio full run / bare pass, fresh processes: {full / bare_cold:.2f}  (target <= 1.3)")
    print(
        f"cached re-run:                           {cached:7.1f} s  ({cached / full:.2f} of the full run)"
    )


if __name__ == "__main__":
    main()
