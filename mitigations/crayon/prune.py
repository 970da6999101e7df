"""Crayon-Pruning inside the saved architecture: a pruned channel of the target layer is cut where
the head reads it (its weights in the head's first Linear set to zero and held there by a
gradient mask), so the new checkpoint keeps its arch and format and the gate loads it as before."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.model import ModelSpec

#: Modules that may sit between the target layer and the Linear reading its channels.
_PASS_THROUGH = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Identity, nn.Dropout)


@dataclass(frozen=True)
class Head:
    """What runs after the target layer: the Linear reading its pooled channels, whether that
    Linear gives the logits itself, and every parameter of the head (what Pruning retrains)."""

    reader: nn.Linear
    gives_logits: bool
    parameters: tuple[nn.Parameter, ...]


def find_head(module: nn.Module, spec: ModelSpec) -> Head:
    """Trace one forward pass of a blank input and return the head after ``spec.target_layer``;
    a clear error when its channels do not reach a Linear through pooling alone."""
    layer = module.get_submodule(spec.target_layer)
    leaves = [m for m in module.modules() if next(m.children(), None) is None]
    seen: list[nn.Module] = []
    shapes: list[torch.Size] = []
    hooks = [layer.register_forward_hook(lambda m, a, out: shapes.append(out.shape))]
    hooks += [
        m.register_forward_hook(lambda m, a, out: seen.append(m) if shapes else None)
        for m in leaves
        if m is not layer
    ]
    param = next(module.parameters())
    try:
        with torch.no_grad():
            module(torch.zeros(1, *spec.input_size, dtype=param.dtype, device=param.device))
    finally:
        for hook in hooks:
            hook.remove()
    linears = [i for i, m in enumerate(seen) if isinstance(m, nn.Linear)]
    first = linears[0] if linears else None
    if (
        len(shapes[0]) != 4
        or first is None
        or not all(isinstance(m, _PASS_THROUGH) for m in seen[:first])
        or seen[first].in_features != shapes[0][1]
    ):
        raise BiascheckError(
            f"Crayon-Pruning needs the channels of target layer {spec.target_layer!r} to reach a "
            "Linear through global pooling; use --mode attention for this model"
        )
    params = tuple(p for m in seen for p in m.parameters(recurse=False))
    return Head(seen[first], first == len(seen) - 1, params)


def prune_mask(head: Head, pruned: Tensor, rows: list[int]) -> Tensor:
    """0/1 mask of the reader's weight: pruned channels' columns are cut for output ``rows`` when
    the reader gives the logits (the other outputs keep every channel), else for every row."""
    mask = torch.ones_like(head.reader.weight)
    cut = pruned.to(mask.device)
    target = torch.tensor(rows, device=mask.device) if head.gives_logits else slice(None)
    mask[target, :] = torch.where(cut, 0.0, 1.0).to(mask.dtype)
    return mask


def hold_pruned(head: Head, mask: Tensor) -> None:
    """Mask the reader's weight gradients, so no optimiser step moves a pruned weight off zero."""
    head.reader.weight.register_hook(lambda grad: grad * mask)


def cut(head: Head, mask: Tensor) -> None:
    """Zero the pruned weights (idempotent; the recipe calls it before each training forward, so
    the parent is still measured whole before training)."""
    with torch.no_grad():
        head.reader.weight.mul_(mask)


def train_only_head(module: nn.Module, head: Head) -> None:
    """Freeze everything but the head (the training loop trains what requires grad)."""
    keep = {id(p) for p in head.parameters}
    for p in module.parameters():
        p.requires_grad_(id(p) in keep)
