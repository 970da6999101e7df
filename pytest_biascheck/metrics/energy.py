"""Proportional energy of CAMs inside a region, split by predicted class as in the binary-CAM paper
(majority vs minority class), with the no-activation rate and the corner/edge collapse symptom."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from pytest_biascheck.metrics.base import Accumulator
from pytest_biascheck.metrics.inputs import as_binary
from pytest_biascheck.metrics.maps import is_empty, upsample


def _ratio(part: Tensor, total: Tensor) -> Tensor:
    """``part / total``, and 0 where ``total`` is 0 (the paper's rule for maps with no activation)."""
    positive = total > 0
    return torch.where(positive, part / torch.where(positive, total, 1.0), 0.0)


def proportional_energy(maps: Tensor, regions: Tensor) -> Tensor:
    """Share of a map's activation inside a region: ``sum(A* B) / sum(A*)`` over the last two dims.

    Negative values are clamped to 0; maps smaller than the region are upsampled bilinearly to its
    size first (``A*`` of the paper). A map without activation scores 0. Batched over leading dims
    (``maps [..., h, w]``, ``regions [..., H, W]``, broadcast).
    """
    size = tuple(regions.shape[-2:])
    if maps.shape[-2] > size[0] or maps.shape[-1] > size[1]:
        raise ValueError(f"maps {tuple(maps.shape[-2:])} are larger than the regions {size}")
    maps = upsample(maps.clamp_min(0), size)
    inside = (maps * regions).sum((-2, -1), dtype=torch.float64)
    return _ratio(inside, maps.sum((-2, -1), dtype=torch.float64))


def chance_energy(regions: Tensor) -> Tensor:
    """Proportional energy every uninformative map of ``attention.CHANCE`` (uniform: the region's
    area share; centre prior) puts inside each region ``[..., H, W]``: ``[..., len(CHANCE)]``."""
    from pytest_biascheck.metrics.attention import uninformative_maps

    chance = uninformative_maps(tuple(regions.shape[-2:]), regions.device)
    inside = torch.einsum("...hw,khw->...k", regions.to(torch.float64), chance)
    return inside / chance.sum((-2, -1))


def border_shares(maps: Tensor) -> tuple[Tensor, Tensor]:
    """Share of each map's activation in the outer ring of cells and in the four corner cells of its
    own grid (no resizing); 0 for a map without activation."""
    maps = maps.clamp_min(0)
    h, w = maps.shape[-2:]
    ring = torch.ones(h, w, dtype=torch.bool, device=maps.device)
    ring[1 : h - 1, 1 : w - 1] = False
    corners = torch.zeros(h, w, dtype=torch.bool, device=maps.device)
    corners[[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]] = True
    total = maps.sum((-2, -1), dtype=torch.float64)
    edge = (maps * ring).sum((-2, -1), dtype=torch.float64)
    corner = (maps * corners).sum((-2, -1), dtype=torch.float64)
    return _ratio(edge, total), _ratio(corner, total)


class ProportionalEnergy(Accumulator):
    """Proportional energy per attribute, split by predicted class (fixed-size float64 sums).

    ``positive_rate`` (one per attribute) decides which predicted class is the majority class; the
    binary-CAM paper uses the training-set frequency. Without it, the frequency of positive labels
    seen in ``update`` is used. ``compute()`` gives one row per (attribute, predicted) with ``n``,
    ``energy`` (mean, zero maps counted as 0), ``no_activation_rate``, ``edge_share`` and
    ``corner_share`` (means over maps with activation), ``positive_rate`` and ``role`` ("majority",
    "minority", "balanced" when the rate is exactly 0.5, "" when unknown).
    """

    def __init__(
        self, attributes: Sequence[str], positive_rate: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        self.attributes = tuple(attributes)
        a = len(self.attributes)
        if positive_rate is not None and len(positive_rate) != a:
            raise ValueError(f"positive_rate needs one value per attribute ({a})")
        self.positive_rate = None if positive_rate is None else list(map(float, positive_rate))
        for name in ("count", "energy", "inactive", "edge", "corner"):
            self.add_state(name, torch.zeros(a, 2, dtype=torch.float64), "sum")
        self.add_state("positives", torch.zeros(a, dtype=torch.float64), "sum")
        self.add_state("labelled", torch.zeros(a, dtype=torch.float64), "sum")

    def update(
        self, cams: Tensor, regions: Tensor, predictions: Tensor, labels: Tensor | None = None
    ) -> None:
        """Fold in CAMs ``[B, A, h, w]``, regions ``[B, A, H, W]`` or ``[B, H, W]`` at input size,
        predicted classes ``[B, A]`` (0/1) and, optionally, labels ``[B, A]``. Images whose region
        is absent are left out for that attribute (their energy is undefined)."""
        if cams.ndim != 4 or regions.ndim not in (3, 4):
            raise ValueError(
                "ProportionalEnergy.update needs cams [B, A, h, w], regions [B, A?, H, W]"
            )
        shape = tuple(cams.shape[:2])
        predicted = as_binary(predictions, "predictions", shape)
        known = None if labels is None else as_binary(labels, "labels", shape)
        regions = (regions if regions.ndim == 4 else regions[:, None]).to(cams.device)
        present = ~is_empty(regions.expand(-1, shape[1], -1, -1))
        by_class = F.one_hot(predicted, 2).to(cams.device, torch.float64) * present[..., None]
        energy = proportional_energy(cams, regions)
        edge, corner = border_shares(cams)
        inactive = is_empty(cams)
        for name, value in (("energy", energy), ("edge", edge), ("corner", corner)):
            self.accumulate(name, (value[..., None] * by_class).sum(0))
        self.accumulate("inactive", (inactive[..., None] * by_class).sum(0))
        self.accumulate("count", by_class.sum(0))
        if known is not None:
            self.accumulate("positives", known.sum(0))
            self.accumulate("labelled", torch.full(shape[1:], shape[0]))

    def compute(self) -> pd.DataFrame:
        """Energy per attribute and predicted class, with majority/minority roles."""
        count, inactive = self.state("count"), self.state("inactive")
        active = count - inactive
        if self.positive_rate is not None:
            rate = torch.tensor(self.positive_rate, dtype=torch.float64)
        else:
            rate = self.state("positives") / self.state("labelled")
        order = torch.tensor([1, 0])  # state column = predicted class; rows come out positive first

        def rows(per_class: Tensor) -> np.ndarray:
            return per_class[:, order].flatten().numpy()

        predicted = np.tile(order.numpy(), len(self.attributes))
        p = rate.repeat_interleave(2).numpy()
        majority = np.where(predicted == 1, p > 0.5, p < 0.5)
        minority = np.where(predicted == 1, p < 0.5, p > 0.5)
        return pd.DataFrame(
            {
                "attribute": [name for name in self.attributes for _ in range(2)],
                "predicted": predicted,
                "n": rows(count).astype(np.int64),
                "energy": rows(self.state("energy") / count),
                "no_activation_rate": rows(inactive / count),
                "edge_share": rows(self.state("edge") / active),
                "corner_share": rows(self.state("corner") / active),
                "positive_rate": p,
                "role": np.select(
                    [majority, minority, p == 0.5], ["majority", "minority", "balanced"], ""
                ),
            }
        )
