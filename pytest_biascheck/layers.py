"""Which layer of a model to take class-activation maps at, and how its output becomes a feature map.

Layouts: ``map`` is [B, C, h, w] (CNNs); ``channels_last`` is [B, h, w, C] (Swin); ``tokens`` is
[B, P + N, D] with P leading class tokens and N patch tokens on the input's aspect ratio (ViT).
The layout comes from the module types: the last leaf module to run up to the layer's output, with an
output of as many dimensions, that fixes where the channels are (a Linear, a LayerNorm over the last
axis or a permute to channels-last -> channels at the end; a convolution, batch/group norm or pooling
-> channels first). P comes from the model (``num_prefix_tokens``, a ``class_token``/``cls_token``),
else from the token count.

Automatic target layer (a checkpoint that names none): the last module, in the order modules finish
in one forward pass, that runs once, gives a feature map on whose grid the outputs depend (non-zero
gradient on some patch or cell), is not a pooling, layout, dropout, identity or linear module (a
Linear inside a block is a projection, such as timm's fused attention ``qkv``), and finishes
before the head's global pool (the first global pool after which no larger grid follows). For CNNs
that is the last stage (``layer4``, ``features``); for Swin the final LayerNorm on the last stage
(``norm``); for ViT the last block's first LayerNorm (``encoder.layers.encoder_layer_11.ln_1``),
since the patch tokens of later outputs reach the head only through the class token (zero gradient);
timm's ViT and DeiT: ``blocks.11.norm1``; timm's ConvNeXt: ``stages``.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules import batchnorm, conv, pooling

MAP, CHANNELS_LAST, TOKENS = "map", "channels_last", "tokens"

_CHANNELS_FIRST = (
    conv._ConvNd,
    batchnorm._NormBase,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    pooling._MaxPoolNd,
    pooling._AvgPoolNd,
    pooling._AdaptiveAvgPoolNd,
    pooling._AdaptiveMaxPoolNd,
    nn.Upsample,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
)
_LAST_AXIS_NORMS = (nn.LayerNorm, nn.RMSNorm)
_NOT_TARGETS = (
    pooling._MaxPoolNd,
    pooling._AvgPoolNd,
    pooling._AdaptiveAvgPoolNd,
    pooling._AdaptiveMaxPoolNd,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    nn.modules.dropout._DropoutNd,
)


@dataclass(frozen=True)
class Layout:
    """How a layer's output [B, ...] becomes a [B, C, h, w] feature map on a ``grid`` of h x w."""

    kind: str
    grid: tuple[int, int]
    prefix: int = 0
    """Leading (class) tokens dropped from a token output."""

    def to_feature_map(self, output: Tensor) -> Tensor:
        """The output (or its gradients) as [B, C, h, w]: channels moved first, class tokens dropped."""
        if self.kind == MAP:
            return output
        if self.kind == TOKENS:
            output = output[:, self.prefix :].unflatten(1, self.grid)
        return output.permute(0, 3, 1, 2)

    def describe(self) -> str:
        """Short text for listings, e.g. ``4x4 tokens (1 dropped)``."""
        grid = f"{self.grid[0]}x{self.grid[1]}"
        if self.kind == TOKENS:
            return f"{grid} tokens ({self.prefix} dropped)" if self.prefix else f"{grid} tokens"
        return f"{grid} channels-last" if self.kind == CHANNELS_LAST else f"{grid} map"


@dataclass(frozen=True)
class LayerInfo:
    """A layer that can be a CAM target: its dotted name, module type, output for one image, layout."""

    name: str
    module: str
    shape: tuple[int, ...]
    layout: Layout


def permute_types() -> tuple[type, ...]:
    """torchvision's ``Permute`` module if torchvision is loaded (no model can hold one otherwise)."""
    permute = getattr(sys.modules.get("torchvision.ops.misc"), "Permute", None)
    return () if permute is None else (permute,)


def _channel_side(module: nn.Module) -> str | None:
    """Where a leaf module leaves the channels of a 4-D tensor, or None if it does not decide."""
    if isinstance(module, permute_types()):
        return {(0, 2, 3, 1): CHANNELS_LAST, (0, 3, 1, 2): MAP}.get(tuple(module.dims))
    if isinstance(module, _LAST_AXIS_NORMS):
        # torchvision's and timm's LayerNorm2d permute inside: channels stay first
        return MAP if type(module).__name__.endswith("2d") else CHANNELS_LAST
    if isinstance(module, nn.Linear):
        return CHANNELS_LAST
    return MAP if isinstance(module, _CHANNELS_FIRST) else None


def _prefix_options(model: nn.Module) -> list[int]:
    """Numbers of leading class tokens to try: the model's declared count first, then 0 and 1."""
    declared = getattr(model, "num_prefix_tokens", None)
    if not isinstance(declared, int):
        tokens = (getattr(model, n, None) for n in ("class_token", "cls_token"))
        declared = 1 if any(isinstance(t, Tensor) for t in tokens) else None
    return list(dict.fromkeys([*([declared] if declared is not None else []), 0, 1]))


def _token_grid(count: int, image_size: Sequence[int]) -> tuple[int, int] | None:
    """The h x w patch grid of ``count`` tokens with the input's aspect ratio, if there is one."""
    if count < 1:
        return None
    height, width = int(image_size[0]), int(image_size[1])
    h = max(1, round(math.sqrt(count * height / width)))
    return (h, count // h) if count % h == 0 else None


def output_layout(
    model: nn.Module,
    ran: Sequence[tuple[nn.Module, int]],
    shape: Sequence[int],
    image_size: Sequence[int],
) -> Layout | None:
    """The layout of a layer output of ``shape`` (batch first), given the leaf modules that ran up to
    it with their outputs' dimensions (``ran``, see :func:`tracing`) and the input's [H, W]; None
    when it is not a feature map."""
    sides = (_channel_side(m) for m, ndim in reversed(ran) if ndim == len(shape))
    side = next((s for s in sides if s is not None), None)
    if len(shape) == 4:
        first = Layout(MAP, (int(shape[2]), int(shape[3])))
        last = Layout(CHANNELS_LAST, (int(shape[1]), int(shape[2])))
        chosen, other = (last, first) if side == CHANNELS_LAST else (first, last)
        # a permute back outside any module (timm's ConvNeXt blocks) hides the side: the grid
        # with the input's aspect ratio is then the one to read
        if not _fits(chosen.grid, image_size) and _fits(other.grid, image_size):
            return other
        return chosen
    if len(shape) == 3 and side != MAP:
        for prefix in _prefix_options(model):
            grid = _token_grid(int(shape[1]) - prefix, image_size)
            if grid is not None:
                return Layout(TOKENS, grid, prefix)
    return None


def _fits(grid: tuple[int, int], image_size: Sequence[int]) -> bool:
    """Whether a grid has about the input's aspect ratio (within a factor of 1.5)."""
    ratio = (grid[0] / grid[1]) / (int(image_size[0]) / int(image_size[1]))
    return 1 / 1.5 < ratio < 1.5


def _leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if next(m.children(), None) is None]


@contextlib.contextmanager
def tracing(model: nn.Module, layer: nn.Module) -> Iterator[list[tuple[nn.Module, int]]]:
    """Collects ``(leaf module, output dimensions)`` for every leaf of ``model`` that runs, in order,
    until ``layer`` finishes (a leaf ``layer`` included): what :func:`output_layout` reads."""
    ran: list[tuple[nn.Module, int]] = []
    done = False

    def on_leaf(module: nn.Module, args: tuple, output: object) -> None:
        if not done:
            ran.append((module, output.dim() if isinstance(output, Tensor) else -1))

    def on_layer(module: nn.Module, args: tuple, output: object) -> None:
        nonlocal done
        done = True

    handles = [m.register_forward_hook(on_leaf) for m in _leaves(model)]
    handles.append(layer.register_forward_hook(on_layer))
    try:
        yield ran
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def borrowed(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters while inside; every module's mode, each parameter's
    ``requires_grad`` and ``.grad`` restored on exit, also after an exception."""
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _, _ in params:
            p.requires_grad_(False)
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad


def _is_global_pool(module: nn.Module) -> bool:
    return isinstance(module, pooling._AdaptiveAvgPoolNd | pooling._AdaptiveMaxPoolNd) and (
        module.output_size in (1, (1, 1))
    )


def candidate_layers(model: nn.Module, input_size: Sequence[int], seed: int = 0) -> list[LayerInfo]:
    """Every layer that can be a CAM target, in the order the layers finish in one forward pass of a
    seeded random image of ``input_size`` [C, H, W]: runs once, gives a feature map (any layout)
    whose grid the outputs depend on, and finishes before the head's global pool."""
    names: dict[nn.Module, str] = {}
    for name, module in model.named_modules():
        if name:
            names.setdefault(module, name)
    leaves = set(_leaves(model))
    ran: list[tuple[nn.Module, int]] = []
    finished: list[tuple[nn.Module, Tensor, int]] = []
    calls: dict[nn.Module, int] = {}

    def on_forward(module: nn.Module, args: tuple, output: object) -> Tensor | None:
        calls[module] = calls.get(module, 0) + 1
        tensor = isinstance(output, Tensor)
        if module in leaves:
            ran.append((module, output.dim() if tensor else -1))
        if not tensor or not output.requires_grad:
            return None
        finished.append((module, output, len(ran)))
        return output.clone()  # later in-place operations edit the clone, not the kept output

    generator = torch.Generator().manual_seed(seed)
    image = torch.randn((1, *input_size), generator=generator)
    param = next(model.parameters(), None)
    if param is not None and param.is_floating_point():
        image = image.to(param.device, param.dtype)
    handles = [m.register_forward_hook(on_forward) for m in names]
    try:
        with borrowed(model), torch.enable_grad():
            logits = model(image.requires_grad_())
            finished = [f for f in finished if calls[f[0]] == 1]
            weights = torch.randn(logits.shape, generator=generator).to(logits)
            grads = torch.autograd.grad(
                (logits * weights).sum(), [f[1] for f in finished], allow_unused=True
            )
    finally:
        for handle in handles:
            handle.remove()
    found = []
    for (module, output, end), grad in zip(finished, grads, strict=True):
        layout = output_layout(model, ran[:end], output.shape, input_size[1:])
        if layout is not None and grad is not None and layout.to_feature_map(grad).ne(0).any():
            info = LayerInfo(names[module], type(module).__name__, tuple(output.shape[1:]), layout)
            found.append((module, info))
    return [info for _, info in _before_head_pool(found)]


def _before_head_pool(
    found: list[tuple[nn.Module, LayerInfo]],
) -> list[tuple[nn.Module, LayerInfo]]:
    """The candidates that finish before the head's global pool: the first global pool after which
    no candidate has a grid larger than 1x1 (global pools inside blocks, as in squeeze-excitation,
    are followed by larger grids)."""
    for i, (module, _) in enumerate(found):
        if _is_global_pool(module) and all(
            info.layout.grid == (1, 1) for _, info in found[i + 1 :]
        ):
            return found[:i]
    return found


def choose_target_layer(model: nn.Module, candidates: Sequence[LayerInfo]) -> str | None:
    """The automatic target layer among ``candidates`` of ``model`` (rule in the module docstring):
    the last one that is not a pooling, layout, dropout, identity or linear module; None if there
    is none."""
    skip = (*_NOT_TARGETS, nn.Linear, *permute_types())
    return next(
        (c.name for c in reversed(candidates) if not isinstance(model.get_submodule(c.name), skip)),
        None,
    )
