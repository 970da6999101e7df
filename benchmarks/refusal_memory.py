"""Peak memory of refusing the largest hostile model files: a sparse 2 GB file of zeros, a link to
/dev/zero and a FIFO, each loaded in a fresh process and refused by the front door.

    python benchmarks/refusal_memory.py

Prints each refusal's message and its peak RSS against a process that only imports the loader
(the refusal must add almost nothing: nothing is read but the zip directory's tail), and against
reading the 2 GB file whole, as the loader did before.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

#: Prints VmHWM (KiB), not ru_maxrss: a child's ru_maxrss can include the parent's pages at fork.
PEAK = "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))"
LOAD = (
    "import sys\n"
    "from pytest_biascheck.errors import BiascheckError\n"
    "from pytest_biascheck.model import load_checkpoint\n"
    "try:\n"
    "    load_checkpoint(sys.argv[1])\n"
    "except BiascheckError as exc:\n"
    "    print(exc, file=sys.stderr)\n"
)


def peak_rss(code: str, *args: str) -> tuple[int, str]:
    """(peak RSS in KiB, stderr) of a fresh interpreter running ``code`` with ``args``; 60 s at most."""
    done = subprocess.run(
        [sys.executable, "-c", code + PEAK, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(done.stdout.split()[-1]), done.stderr.strip()


def main() -> None:
    base, _ = peak_rss("import pytest_biascheck.model\n")
    print(f"import only: peak RSS {base / 1024:.0f} MiB")
    with tempfile.TemporaryDirectory() as folder:
        zeros, link, fifo = (Path(folder) / n for n in ("zeros.pt", "zero.pt", "fifo.pt"))
        with open(zeros, "wb") as fh:
            fh.truncate(2 << 30)
        link.symlink_to("/dev/zero")
        os.mkfifo(fifo)
        for path in (zeros, link, fifo):
            peak, message = peak_rss(LOAD, str(path))
            print(
                f"{path.name}: peak RSS {peak / 1024:.0f} MiB, {(peak - base) / 1024:+.1f} MiB over "
                f"import only (ratio {peak / base:.3f}); {message}"
            )
        whole, _ = peak_rss(
            "import sys, pytest_biascheck.model\nsys.argv[1:] and open(sys.argv[1], 'rb').read()\n",
            str(zeros),
        )
        print(
            f"reading zeros.pt whole (the old loader's first step): peak RSS {whole / 1024:.0f} MiB "
            f"(ratio {whole / base:.2f} of import only)"
        )


if __name__ == "__main__":
    main()
