"""Generation throughput of the synthetic datasets, and DataLoader throughput with 2 workers.

    python benchmarks/data_speed.py [--n 2048] [--batch 256]

Prints images/s per generator and size (target: >= 2,000 faces/s at 64x64 on a 2-core machine) and
the peak RSS of a process that streams 1,000 vs 10,000 faces (memory must not grow with length).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch
from torch.utils.data import DataLoader

from pytest_biascheck.data.synth_birds import SynthBirds
from pytest_biascheck.data.synth_faces import SynthFaces


def rate(dataset, n: int, batch: int, repeats: int = 3) -> float:
    """Images per second of ``dataset.render`` over ``n`` images in batches: the best of
    ``repeats`` timings after one warm-up (the best is the least disturbed by other processes)."""
    dataset.render(range(min(batch, n)))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, n, batch):
            dataset.render(range(i, min(i + batch, n)))
        times.append(time.perf_counter() - start)
    return n / min(times)


def loader_rate(dataset, n: int, batch: int, workers: int) -> float:
    """Images per second through a DataLoader (batched ``__getitems__``) with ``workers`` processes."""
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers)
    start = time.perf_counter()
    seen = sum(b["image"].shape[0] for b in loader)
    assert seen == n
    return n / (time.perf_counter() - start)


def stream_peak_rss(n: int) -> int:
    """Peak RSS (KiB) of a fresh process that renders ``n`` faces in batches, keeping nothing."""
    code = (  # VmHWM, not ru_maxrss: a child's ru_maxrss can include the parent's pages at fork
        "from pytest_biascheck.data.synth_faces import SynthFaces\n"
        f"ds = SynthFaces(n={n}, split='train')\n"
        f"for i in range(0, {n}, 250): ds.render(range(i, min(i + 250, {n})))\n"
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))"
    )
    return int(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    for size in (64, 128):
        n = args.n if size == 64 else args.n // 2
        faces = rate(SynthFaces(n=n, image_size=size), n, args.batch)
        birds = rate(SynthBirds(n=n, split="test", image_size=size), n, args.batch)
        print(f"{size}x{size}: SynthFaces {faces:8.0f} img/s   SynthBirds {birds:8.0f} img/s")
    n = args.n
    single = loader_rate(SynthFaces(n=n), n, args.batch, 0)
    double = loader_rate(SynthFaces(n=n), n, args.batch, 2)
    print(
        f"DataLoader 64x64 faces: 0 workers {single:.0f} img/s, 2 workers {double:.0f} img/s (ratio {double / single:.2f})"
    )
    small, large = stream_peak_rss(1000), stream_peak_rss(10000)
    print(
        f"peak RSS streaming 1,000 faces: {small / 1024:.0f} MiB; 10,000 faces: {large / 1024:.0f} MiB (ratio {large / small:.2f})"
    )


if __name__ == "__main__":
    main()
