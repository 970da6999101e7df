"""Elementary operations on CAM-like maps ``[..., h, w]`` shared by the map metrics: emptiness,
bilinear upsampling to input size, and the Attention-IoU authors' mask downsampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def is_empty(maps: Tensor) -> Tensor:
    """True for each map without any positive value (no activation, or an empty mask)."""
    return ~(maps > 0).flatten(-2).any(-1)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Maps ``[..., h, w]`` resized bilinearly (half-pixel centres) to ``size``; no-op when equal."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    lead, grid = maps.shape[:-2], maps.shape[-2:]
    flat = maps.reshape(-1, 1, *grid).to(torch.promote_types(maps.dtype, torch.float32))
    return F.interpolate(flat, size=size, mode="bilinear").reshape(*lead, *size)


def mask_to_cam(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Masks ``[B, C, H, W]`` resized bilinearly (antialiased, as torchvision's tensor resize) to the
    CAM grid and divided by their max, as the authors' mask score does."""
    small = F.interpolate(masks.float(), size=size, mode="bilinear", antialias=True)
    peak = small.amax((-2, -1), keepdim=True)
    return torch.where(peak > 0, small / torch.where(peak > 0, peak, 1.0), 0.0)
