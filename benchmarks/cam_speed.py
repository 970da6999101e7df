"""How fast and how flat in memory compute_cams is: vs pytorch-grad-cam's per-attribute loop, vs one
plain forward+backward, and peak RSS when streaming many images. Prints a table and the ratios."""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torchvision

from pytest_biascheck.cam import compute_cams


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call, synchronising the GPU so that queued kernels count."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


class AbsLogit:
    """pytorch-grad-cam target |z_a| (the binary-CAM paper's predicted class), as Attention-IoU uses."""

    def __init__(self, a: int) -> None:
        self.a = a

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[..., self.a].abs()


def reference_loop(model: torch.nn.Module, x: torch.Tensor, attributes: int) -> None:
    """The usual way: one pytorch-grad-cam GradCAM call (forward + backward) per attribute."""
    from pytorch_grad_cam import GradCAM

    with GradCAM(model, [model.layer4]) as cam:
        for a in range(attributes):
            cam(x, [AbsLogit(a)] * len(x))


def forward_backward(model: torch.nn.Module, x: torch.Tensor) -> None:
    """One plain forward + backward of the batch: the cost floor of any gradient-based map."""
    model.zero_grad(set_to_none=True)
    model(x).sum().backward()


def speed(args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=args.outputs).eval().to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    runs = {
        "compute_cams closed form": lambda: compute_cams(model, x, "layer4"),
        "compute_cams autograd": lambda: compute_cams(model, x, "layer4", closed_form=False),
        "forward+backward": lambda: forward_backward(model, x),
    }
    for fn in runs.values():
        for _ in range(args.warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(seconds(fn, device))
    median = {name: statistics.median(t) for name, t in times.items()}

    ref_attrs = min(args.ref_outputs or args.outputs, args.outputs)
    reference_loop(model, x, 1)
    ref = [
        seconds(lambda: reference_loop(model, x, ref_attrs), device)
        for _ in range(args.ref_repeats)
    ]
    median["pytorch-grad-cam loop"] = statistics.median(ref) * args.outputs / ref_attrs

    print(
        f"\nresnet18, {args.outputs} outputs, batch {args.batch} at {args.size}x{args.size}, "
        f"target layer4, {device}, {torch.get_num_threads()} threads; median of {args.repeats} "
        f"(reference: {args.ref_repeats} run(s) on {ref_attrs} attributes"
        f"{', scaled linearly' if ref_attrs < args.outputs else ''})"
    )
    print(f"{'run':<28}{'seconds':>10}")
    for name, value in median.items():
        print(f"{name:<28}{value:>10.4f}")
    fb = median["forward+backward"]
    print(
        f"speed-up vs pytorch-grad-cam loop: "
        f"{median['pytorch-grad-cam loop'] / median['compute_cams closed form']:.1f}x (target >= 50)"
    )
    print(f"closed form / forward+backward: {median['compute_cams closed form'] / fb:.2f} (<= 1.5)")
    print(f"autograd / forward+backward: {median['compute_cams autograd'] / fb:.2f} (<= 1.5)")


def stream(images: int, args: argparse.Namespace, device: torch.device) -> None:
    """Worker: push ``images`` random images through compute_cams keeping only running sums."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=args.outputs).eval().to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    total, count = None, 0
    for start in range(0, images, args.stream_batch):
        n = min(args.stream_batch, images - start)
        x = torch.randn(n, 3, args.stream_size, args.stream_size, device=device, generator=gen)
        cams = compute_cams(model, x, "layer4").cams
        total = cams.sum(0) if total is None else total + cams.sum(0)
        count += n
    print(peak_rss_kib(), count)


def peak_rss_kib() -> int:
    """This process's peak resident memory. Linux's VmHWM, since ru_maxrss after fork+exec also
    counts the parent's memory at the fork; ru_maxrss elsewhere."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory(args: argparse.Namespace) -> None:
    peaks = {}
    for images in args.stream_images:
        cmd = [sys.executable, __file__, "--rss-worker", str(images), *sys.argv[1:]]
        start = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
        peaks[images] = (int(out[0]) / 1024, time.perf_counter() - start)
    print(
        f"\nstreaming at {args.stream_size}x{args.stream_size}, batch {args.stream_batch}, "
        f"{args.outputs} maps per image, running sums only (peak RSS per subprocess)"
    )
    print(f"{'images':>8}{'peak RSS MiB':>14}{'seconds':>10}")
    for images, (mib, secs) in peaks.items():
        print(f"{images:>8}{mib:>14.1f}{secs:>10.1f}")
    low, high = min(peaks), max(peaks)
    print(f"peak RSS {high} / {low} images: {peaks[high][0] / peaks[low][0]:.3f} (flat = 1.0)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--outputs", type=int, default=40, help="attributes (maps per image)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=128, help="input side for the speed part")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ref-repeats", type=int, default=3, help="runs of the reference loop")
    parser.add_argument(
        "--ref-outputs", type=int, default=None, help="time the reference on fewer attributes"
    )
    parser.add_argument("--stream-images", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--stream-size", type=int, default=64)
    parser.add_argument("--stream-batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip", choices=["speed", "memory"], action="append", default=[])
    parser.add_argument("--rss-worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.rss_worker is not None:
        stream(args.rss_worker, args, device)
        return
    if "speed" not in args.skip:
        speed(args, device)
    if "memory" not in args.skip:
        memory(args)


if __name__ == "__main__":
    main()
