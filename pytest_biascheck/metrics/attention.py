"""Attention-IoU (Serianni et al.) and its two bias scores: the mask score (CAM vs a ground-truth
region) and the heatmap score (CAM of an attribute vs CAM of a protected attribute)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from pytest_biascheck.metrics.maps import is_empty, mask_to_cam, upsample
from pytest_biascheck.metrics.scores import CellScores

Resize = Literal["mask_to_cam", "cam_to_mask"]


def attention_iou(m1: Tensor, m2: Tensor) -> Tensor:
    """Attention-IoU of two non-negative maps ``[..., h, w]``, batched over (broadcast) leading dims.

    As in the authors' code: each map is divided by its sum (``A``, ``M``) and the score is
    ``sum(A*M) / sum(((A+M)/2)**2)`` (sums in float64). It is 1 for proportional maps and 0 for
    disjoint ones; a map that is all zero scores 0 instead of NaN.
    """
    dtype = torch.promote_types(torch.promote_types(m1.dtype, m2.dtype), torch.float32)
    m1, m2 = m1.to(dtype), m2.to(dtype)
    if (m1 < 0).any() or (m2 < 0).any():
        raise ValueError("attention_iou needs non-negative maps; apply ReLU to CAMs first")
    a, m = _unit_sum(m1), _unit_sum(m2)
    intersection = (a * m).sum((-2, -1), dtype=torch.float64)
    union = ((a + m) / 2).square().sum((-2, -1), dtype=torch.float64)
    positive = union > 0
    return torch.where(positive, intersection / torch.where(positive, union, 1.0), 0.0)


def _unit_sum(maps: Tensor) -> Tensor:
    """Each map divided by its sum (float64 sum); an all-zero map stays zero."""
    total = maps.sum((-2, -1), keepdim=True, dtype=torch.float64).to(maps.dtype)
    return maps / torch.where(total > 0, total, 1.0)


class MaskScore(CellScores):
    """Attention-IoU mask score: each attribute's CAM against the region mask of that attribute.

    ``resize="mask_to_cam"`` (the authors' default for mask scores) brings masks to the CAM grid;
    ``"cam_to_mask"`` upsamples CAMs bilinearly to the mask size instead.
    """

    def __init__(
        self,
        attributes: Sequence[str],
        groups: Mapping[str, int] | None = None,
        resize: Resize = "mask_to_cam",
        n_resamples: int = 1000,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> None:
        if resize not in ("mask_to_cam", "cam_to_mask"):
            raise ValueError(f"resize must be 'mask_to_cam' or 'cam_to_mask', not {resize!r}")
        super().__init__(attributes, groups, n_resamples, confidence, seed)
        self.resize = resize

    def update(
        self,
        cams: Tensor,
        masks: Tensor,
        index: Tensor,
        labels: Tensor | None = None,
        groups: Mapping[str, Tensor] | None = None,
    ) -> None:
        """Score CAMs ``[B, A, h, w]`` against masks ``[B, A, H, W]`` (one region per attribute) or
        ``[B, H, W]`` (one region for all); ``labels [B, A]`` and ``groups`` enable the cell split."""
        if cams.ndim != 4 or masks.ndim not in (3, 4) or masks.shape[0] != cams.shape[0]:
            raise ValueError(
                "MaskScore.update needs cams [B, A, h, w], masks [B, A, H, W] or [B, H, W]"
            )
        regions = (masks if masks.ndim == 4 else masks[:, None]).to(cams.device)
        if self.resize == "mask_to_cam":
            regions = mask_to_cam(regions, tuple(cams.shape[-2:]))
        else:
            cams, regions = upsample(cams, tuple(regions.shape[-2:])), regions.float()
        scores = attention_iou(cams, regions)
        empty = is_empty(cams) | is_empty(regions)
        self.add_scores(scores, empty, index, labels, groups)


class HeatmapScore(CellScores):
    """Attention-IoU heatmap score: each attribute's CAM against a reference CAM on the same grid,
    usually the protected attribute's (for example Male's)."""

    def update(
        self,
        cams: Tensor,
        reference: Tensor,
        index: Tensor,
        labels: Tensor | None = None,
        groups: Mapping[str, Tensor] | None = None,
    ) -> None:
        """Score CAMs ``[B, A, h, w]`` against reference CAMs ``[B, h, w]`` or ``[B, A, h, w]``."""
        reference = (reference[:, None] if reference.ndim == 3 else reference).to(cams.device)
        if cams.ndim != 4 or reference.ndim != 4 or reference.shape[-2:] != cams.shape[-2:]:
            raise ValueError(
                "HeatmapScore.update needs cams [B, A, h, w], a reference on that grid"
            )
        scores = attention_iou(cams, reference)
        empty = is_empty(cams) | is_empty(reference)
        self.add_scores(scores, empty, index, labels, groups)
