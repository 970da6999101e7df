"""Attention-IoU (Serianni et al.) and its two bias scores: the mask score (CAM vs a ground-truth
region) and the heatmap score (CAM of an attribute vs CAM of a protected attribute)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from pytest_biascheck.metrics.maps import is_empty, mask_to_cam, upsample
from pytest_biascheck.metrics.scores import CHANCE, CellScores

#: Where the mask score compares map and region: on the CAM grid (the region brought down to it, as
#: the Attention-IoU authors do) or at the input size (the CAM upsampled, as pytorch-grad-cam shows it).
Resolution = Literal["grid", "input"]
RESOLUTIONS: tuple[str, ...] = ("grid", "input")
#: The resolution the mask score check reads (chosen by the validity suite, docs/validity.md).
DEFAULT_RESOLUTION: Resolution = "grid"
#: Standard deviation of the centre prior, as a fraction of each side of the map.
CENTRE_SIGMA = 0.25


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


def uninformative_maps(size: tuple[int, int], device: torch.device | str = "cpu") -> Tensor:
    """The maps a model could produce without looking at the image, ``[len(CHANCE), h, w]``: a
    uniform map, and a centre prior (an isotropic Gaussian on the map's centre with standard
    deviation ``CENTRE_SIGMA`` of each side), the usual bias of attention maps towards the middle."""
    h, w = size
    ys = (torch.arange(h, dtype=torch.float64, device=device) + 0.5) / h - 0.5
    xs = (torch.arange(w, dtype=torch.float64, device=device) + 0.5) / w - 0.5
    centre = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * CENTRE_SIGMA**2))
    maps = {"uniform": torch.ones(h, w, dtype=torch.float64, device=device), "centre": centre}
    return torch.stack([maps[name] for name in CHANCE])


def chance_scores(reference: Tensor) -> Tensor:
    """Attention-IoU of every uninformative map with each reference map ``[..., h, w]`` (a region or
    another CAM), on the reference's grid: ``[..., len(CHANCE)]``.

    Computed from dot products (``IoU = 4 <A,M> / (|A|^2 + 2 <A,M> + |M|^2)`` for unit-sum maps),
    so memory stays that of the references, whatever the resolution."""
    chance = _unit_sum(uninformative_maps(tuple(reference.shape[-2:]), reference.device))
    m = _unit_sum(reference.to(torch.float64))
    dot = torch.einsum("...hw,khw->...k", m, chance)
    union = chance.square().sum((-2, -1)) + 2 * dot + m.square().sum((-2, -1))[..., None]
    return torch.where(union > 0, 4 * dot / torch.where(union > 0, union, 1.0), 0.0)


class MaskScore(CellScores):
    """Attention-IoU mask score: each attribute's CAM against the region mask of that attribute,
    beside what an uninformative map scores on the same region (the chance level) and as a lift over
    it.

    Only images whose region is present count (an image without eyeglasses has no eyeglasses score).
    ``resolution="grid"`` (the authors' choice) brings masks to the CAM grid; ``"input"`` upsamples
    CAMs bilinearly to the mask size instead.
    """

    def __init__(
        self,
        attributes: Sequence[str],
        groups: Mapping[str, int] | None = None,
        resolution: Resolution = "grid",
        n_resamples: int = 1000,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> None:
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, not {resolution!r}")
        super().__init__(attributes, groups, n_resamples, confidence, seed, chance=True)
        self.resolution = resolution

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
        present = ~is_empty(regions.expand(-1, cams.shape[1], -1, -1))
        if self.resolution == "grid":
            regions = mask_to_cam(regions, tuple(cams.shape[-2:]))
        else:
            cams, regions = upsample(cams, tuple(regions.shape[-2:])), regions.float()
        regions = regions.expand(-1, cams.shape[1], -1, -1)
        scores = attention_iou(cams, regions)
        self.add_scores(
            scores, is_empty(cams), index, labels, groups, chance_scores(regions), present
        )


class HeatmapScore(CellScores):
    """Attention-IoU heatmap score: each attribute's CAM against a reference CAM on the same grid,
    usually the protected attribute's (for example Male's), beside what an uninformative map scores
    against the same reference. Images whose reference map is empty have no score."""

    def __init__(
        self,
        attributes: Sequence[str],
        groups: Mapping[str, int] | None = None,
        n_resamples: int = 1000,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> None:
        super().__init__(attributes, groups, n_resamples, confidence, seed, chance=True)

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
        reference = reference.expand(-1, cams.shape[1], -1, -1)
        scores = attention_iou(cams, reference)
        self.add_scores(
            scores, is_empty(cams), index, labels, groups, chance_scores(reference),
            ~is_empty(reference),
        )  # fmt: skip
