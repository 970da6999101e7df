"""How fast and how flat in memory compute_cams is: vs pytorch-grad-cam's per-attribute loop (with its
reshape_transform for vision transformers), vs one plain forward+backward, per architecture
(resnet18, vit_b_16, swin_t at their automatic target layers), and peak RSS when streaming many
images. Prints a table per architecture and the ratios."""

from __future__ import annotations

import argparse
import functools
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torchvision

from pytest_biascheck.cam import compute_cams
from pytest_biascheck.layers import (
    CHANNELS_LAST,
    TOKENS,
    Layout,
    candidate_layers,
    choose_target_layer,
)


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


def build(name: str, outputs: int, size: int, device: torch.device) -> torch.nn.Module:
    """A torchvision model with random weights (ViTs sized to ``size``; a random head, since
    torchvision starts a ViT's at zero and no layer would then matter), in eval mode."""
    torch.manual_seed(0)
    kwargs = {"image_size": size} if name.startswith("vit_") else {}
    model = torchvision.models.get_model(name, weights=None, num_classes=outputs, **kwargs)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.normal_(head.weight, std=head.in_features**-0.5)
    return model.eval().to(device)


def reference_transform(layout: Layout) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """pytorch-grad-cam's own reshape_transform for the layer's layout (None for a CNN map)."""
    from pytorch_grad_cam.utils.reshape_transforms import (
        swinT_reshape_transform,
        vit_reshape_transform,
    )

    height, width = layout.grid
    if layout.kind == TOKENS:
        return functools.partial(vit_reshape_transform, height=height, width=width)
    if layout.kind == CHANNELS_LAST:  # torchvision's Swin is [B, h, w, C]; timm's is [B, h*w, C]
        return lambda t: swinT_reshape_transform(t.flatten(1, 2), height, width)
    return None


def reference_loop(
    model: torch.nn.Module, layer: str, layout: Layout, x: torch.Tensor, attributes: int
) -> None:
    """The usual way: one pytorch-grad-cam GradCAM call (forward + backward) per attribute."""
    from pytorch_grad_cam import GradCAM

    target = [model.get_submodule(layer)]
    with GradCAM(model, target, reshape_transform=reference_transform(layout)) as cam:
        for a in range(attributes):
            cam(x, [AbsLogit(a)] * len(x))


def forward_backward(model: torch.nn.Module, x: torch.Tensor) -> None:
    """One plain forward + backward of the batch: the cost floor of any gradient-based map."""
    model.zero_grad(set_to_none=True)
    model(x).sum().backward()


def speed(name: str, args: argparse.Namespace, device: torch.device) -> float:
    """Print one architecture's table; return its speed-up over the pytorch-grad-cam loop."""
    model = build(name, args.outputs, args.size, device)
    found = candidate_layers(model, (3, args.size, args.size))
    layer = choose_target_layer(model, found)
    layout = next(info.layout for info in found if info.name == layer)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    closed = compute_cams(model, x[:1], layer).closed_form
    runs = {"compute_cams": lambda: compute_cams(model, x, layer)}
    if closed:
        runs["compute_cams autograd"] = lambda: compute_cams(model, x, layer, closed_form=False)
    runs["forward+backward"] = lambda: forward_backward(model, x)
    for fn in runs.values():
        for _ in range(args.warmup):
            fn()
    times: dict[str, list[float]] = {run: [] for run in runs}
    for _ in range(args.repeats):
        for run, fn in runs.items():
            times[run].append(seconds(fn, device))
    median = {run: statistics.median(t) for run, t in times.items()}

    ref_attrs = min(args.ref_outputs or args.outputs, args.outputs)
    reference_loop(model, layer, layout, x, 1)
    ref = [
        seconds(lambda: reference_loop(model, layer, layout, x, ref_attrs), device)
        for _ in range(args.ref_repeats)
    ]
    median["pytorch-grad-cam loop"] = statistics.median(ref) * args.outputs / ref_attrs

    print(
        f"\n{name}, {args.outputs} outputs, batch {args.batch} at {args.size}x{args.size}, "
        f"target {layer} ({layout.describe()}, {'closed form' if closed else 'autograd'}), "
        f"{device}, {torch.get_num_threads()} threads; median of {args.repeats} "
        f"(reference: {args.ref_repeats} run(s) on {ref_attrs} attributes"
        f"{', scaled linearly' if ref_attrs < args.outputs else ''})"
    )
    print(f"{'run':<28}{'seconds':>10}")
    for run, value in median.items():
        print(f"{run:<28}{value:>10.4f}")
    fb = median["forward+backward"]
    speedup = median["pytorch-grad-cam loop"] / median["compute_cams"]
    print(f"speed-up vs pytorch-grad-cam loop: {speedup:.1f}x")
    for run in runs:
        if run != "forward+backward":
            print(f"{run} / forward+backward: {median[run] / fb:.2f} (<= 1.5)")
    return speedup


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
    parser.add_argument(
        "--archs", nargs="+", default=["resnet18", "vit_b_16", "swin_t"], help="torchvision models"
    )
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
        speedups = {name: speed(name, args, device) for name in args.archs}
        print("\nspeed-up of all-attribute maps vs pytorch-grad-cam looping over attributes:")
        for name, value in speedups.items():
            print(f"{name:<20}{value:>8.1f}x")
    if "memory" not in args.skip:
        memory(args)


if __name__ == "__main__":
    main()
