"""The gate at real size: a folder of JPEGs at 224 px (written here), torchvision resnet50 and
vit_b_16 (random weights), against a bare ``torch.inference_mode()`` forward pass and a bare
forward+backward over the same DataLoader, as ratios measured in one run; images/s; and the peak
memory of the gate at two dataset sizes (each in its own process: flat means it does not grow).

    python benchmarks/gate_speed.py [--n 2000] [--memory-sizes 2000,20000] [--arch resnet50,vit_b_16]
        [--size 224] [--batch-size 32] [--device cpu|cuda] [--amp] [--channels-last]

Goal: the gate within 1.5x a forward+backward pass (the maps take one backward). Also prints
what decoding costs in the gate's loader against torchvision's decoder, as a share of the gate.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_biascheck.config import Settings  # noqa: E402
from pytest_biascheck.data import open_data  # noqa: E402
from pytest_biascheck.evaluate import evaluate  # noqa: E402
from pytest_biascheck.model import ModelSpec, live_model  # noqa: E402
from pytest_biascheck.planning import plan_for  # noqa: E402

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def write_images(folder: Path, n: int, size: int) -> Path:
    """``n`` noise JPEGs at ``size`` px and labels.csv (one label, a three-valued group, split)."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["image,Smiling,skin_tone,split"]
    for i in range(n):
        path = folder / "img" / f"{i:06d}.jpg"
        if not path.exists():
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path, quality=90)
        rows.append(f"img/{i:06d}.jpg,{i % 2},{('I', 'II', 'III')[i % 3]},test")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "labels.csv"


def build(arch: str, size: int) -> tuple[torch.nn.Module, ModelSpec]:
    """A random torchvision model with one output; its head drawn at random (torchvision's ViT
    head starts at zero, which no map can be taken from)."""
    torch.manual_seed(0)
    kwargs = {"image_size": size} if arch.startswith("vit") else {}
    model = torchvision.models.get_model(arch, weights=None, num_classes=1, **kwargs).eval()
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.normal_(head.weight, std=head.in_features**-0.5)
    return model, ModelSpec(("Smiling",), (3, size, size), **IMAGENET)


def clocks() -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds (all its threads): on a shared machine the CPU
    ratio is the one other jobs do not skew."""
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    now = clocks()
    return now[0] - start[0], now[1] - start[1]


def gate(model, spec, csv: Path, args) -> tuple[tuple[float, float], int]:
    """(wall, CPU) seconds of one gate evaluation (maps, metrics, tables) and the images it saw."""
    loaded = live_model(model, spec, "bench")
    if args.channels_last:
        loaded.module = loaded.module.to(memory_format=torch.channels_last)
    data = open_data(f"csv:{csv},groups=skin_tone", "test", spec.input_size[1])
    settings = Settings(bootstrap=100)
    settings.models = {}
    _, plan = plan_for(loaded, data, settings)
    autocast = torch.autocast(args.device, enabled=args.amp)
    start = clocks()
    with autocast:
        results = evaluate(loaded, data, "bench", plan, args.batch_size, args.device)
    return since(start), len(results.frame)


def bare(model, spec, csv: Path, args, backward: bool) -> tuple[float, float]:
    """(wall, CPU) seconds of a bare pass over the same DataLoader: forward under inference_mode, or
    forward+backward of the summed outputs (what one Grad-CAM needs at least)."""
    data = open_data(f"csv:{csv},groups=skin_tone", "test", spec.input_size[1])
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, num_workers=args.workers)
    model = model.to(args.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    start = clocks()
    for batch in loader:
        images = spec.normalize(batch["image"].to(args.device))
        with torch.autocast(args.device, enabled=args.amp):
            if backward:
                images.requires_grad_(True)
                model(images).sum().backward()
            else:
                with torch.inference_mode():
                    model(images)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return since(start)


def decoding(csv: Path, size: int) -> tuple[float, float]:
    """Seconds per image of the gate's loader (Pillow in-process, with its decompression-bomb and
    file checks, resize, tensor) and of torchvision's JPEG decoder with the same resize: what
    decoding in workers or with torchvision could save at most."""
    data = open_data(f"csv:{csv},groups=skin_tone", "test", size)
    start = time.perf_counter()
    for i in range(len(data)):
        data[i]
    pil = (time.perf_counter() - start) / len(data)
    paths = sorted((csv.parent / "img").glob("*.jpg"))[: len(data)]
    start = time.perf_counter()
    for path in paths:
        image = torchvision.io.decode_jpeg(torchvision.io.read_file(str(path)))
        torchvision.transforms.functional.resize(image, [size, size], antialias=True)
    return pil, (time.perf_counter() - start) / len(paths)


def peak_memory(arch: str, n: int, folder: Path, args) -> float:
    """Peak memory (GiB) of a process that runs the gate on ``n`` images: RSS on CPU, CUDA's
    allocator peak on a GPU."""
    command = [sys.executable, __file__, "--child", "--arch", arch, "--n", str(n),
               "--folder", str(folder), "--size", str(args.size), "--batch-size",
               str(args.batch_size), "--device", args.device]  # fmt: skip
    command += ["--amp"] * args.amp + ["--channels-last"] * args.channels_last
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_gib"]


def child(args) -> None:
    csv = write_images(Path(args.folder), args.n, args.size)
    model, spec = build(args.arch, args.size)
    gate(model, spec, csv, args)
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"peak_gib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--memory-sizes", default="2000,20000")
    parser.add_argument("--arch", default="resnet50,vit_b_16")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--folder", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="gate_speed_"))
    sizes = [int(s) for s in args.memory_sizes.split(",") if s]
    print(f"device {args.device}, amp {args.amp}, channels_last {args.channels_last}, "
          f"{torch.get_num_threads()} threads, batch {args.batch_size}, {args.size} px")  # fmt: skip
    for arch in args.arch.split(","):
        csv = write_images(folder / "speed", args.n, args.size)
        model, spec = build(arch, args.size)
        bare(model, spec, csv, args, backward=False)  # warm-up: first-use costs, file cache
        forward = bare(model, spec, csv, args, backward=False)
        both = bare(model, spec, csv, args, backward=True)
        seconds, n = gate(model, spec, csv, args)
        print(
            f"{arch}: {n} images; gate {seconds[0]:.1f} s ({n / seconds[0]:.1f} images/s); "
            f"bare forward {forward[0]:.1f} s ({n / forward[0]:.1f} images/s); forward+backward "
            f"{both[0]:.1f} s; gate / forward = {seconds[0] / forward[0]:.2f}x, gate / "
            f"forward+backward = {seconds[0] / both[0]:.2f}x (goal <= 1.5x)"
        )
        pil, tv = decoding(csv, args.size)
        print(
            f"{arch}: decoding {pil * 1e3:.1f} ms/image in the gate's loader (Pillow, in-process), "
            f"{tv * 1e3:.1f} ms/image with torchvision.io.decode_jpeg: "
            f"{pil * n / seconds[0]:.1%} of the gate's time"
        )
        if args.device == "cpu":
            print(
                f"{arch}: in CPU seconds (not skewed by other jobs): gate / forward = "
                f"{seconds[1] / forward[1]:.2f}x, gate / forward+backward = "
                f"{seconds[1] / both[1]:.2f}x"
            )
        peaks = [peak_memory(arch, size, folder / f"memory{size}", args) for size in sizes]
        shown = ", ".join(f"{s} images {p:.2f} GiB" for s, p in zip(sizes, peaks, strict=True))
        print(f"{arch}: peak memory {shown}; ratio {peaks[-1] / peaks[0]:.2f}x (flat: ~1.0x)")


if __name__ == "__main__":
    main()
