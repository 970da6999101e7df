"""Primitives shared by the synthetic generators: per-image random streams and vectorised drawing.

Every image is a pure function of (seed, split, index): its random numbers come from its own
``numpy.random.Generator`` seeded with those three, so the same image is produced whatever the batch
it is rendered in, the worker that renders it, or the machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

SPLITS = ("train", "val", "test")


def image_rngs(seed: int, split: str, indices: Sequence[int]) -> list[np.random.Generator]:
    """One independent generator per image, keyed by (seed, split, index)."""
    tag = SPLITS.index(split) if split in SPLITS else sum(map(ord, split))
    return [np.random.default_rng([seed, tag, int(i)]) for i in indices]


def grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates ``(x, y)``, each ``[1, H, W]`` in [0, 1]."""
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    return xs.view(1, 1, width).expand(1, height, width), ys.view(1, height, 1).expand(
        1, height, width
    )


def col(values: Sequence[float] | np.ndarray) -> torch.Tensor:
    """Per-image scalars as a ``[B, 1, 1]`` float tensor, ready to broadcast against ``grid()``."""
    return torch.as_tensor(np.asarray(values, dtype=np.float32)).view(-1, 1, 1)


def ellipse(
    x: torch.Tensor,
    y: torch.Tensor,
    cx: torch.Tensor,
    cy: torch.Tensor,
    rx: torch.Tensor,
    ry: torch.Tensor,
    angle: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Boolean ``[B, H, W]`` inside an (optionally rotated) ellipse with per-image parameters."""
    angle = torch.as_tensor(angle, dtype=torch.float32)
    dx, dy = x - cx, y - cy
    c, s = torch.cos(angle), torch.sin(angle)
    u, v = dx * c + dy * s, -dx * s + dy * c
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def paint(canvas: torch.Tensor, mask: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """Set ``canvas [B, 3, H, W]`` to per-image colours ``rgb [B, 3]`` where ``mask [B, H, W]``."""
    return torch.where(mask.unsqueeze(1), rgb.view(-1, 3, 1, 1).to(canvas.dtype), canvas)


def smooth_noise(
    rngs: Sequence[np.random.Generator], height: int, width: int, cells: int = 8
) -> torch.Tensor:
    """Low-frequency texture ``[B, 1, H, W]`` in about [-1, 1]: a coarse random grid, bilinearly upsampled."""
    coarse = np.stack([r.standard_normal((cells, cells)) for r in rngs]).astype(np.float32)
    up = torch.nn.functional.interpolate(
        torch.from_numpy(coarse).unsqueeze(1),
        size=(height, width),
        mode="bilinear",
        align_corners=False,
    )
    return up.clamp(-2.5, 2.5) / 2.5


def pixel_noise(
    rngs: Sequence[np.random.Generator], height: int, width: int, sigma: Sequence[float]
) -> torch.Tensor:
    """Per-pixel noise ``[B, 3, H, W]``, uniform with per-image standard deviation ``sigma``.

    Uniform rather than Gaussian because it is several times cheaper to draw and serves the same
    purpose here: pixel values a model cannot memorise.
    """
    noise = np.empty((len(rngs), 3, height, width), dtype=np.float32)
    for r, out in zip(rngs, noise, strict=True):
        r.random(out=out, dtype=np.float32)
    scale = np.sqrt(3.0, dtype=np.float32) * np.asarray(sigma, dtype=np.float32)
    noise *= 2
    noise -= 1
    noise *= scale.reshape(-1, 1, 1, 1)
    return torch.from_numpy(noise)
