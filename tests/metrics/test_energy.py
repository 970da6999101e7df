"""Proportional energy: hand-computed cases, the zero-map rule, corner/edge shares, and the
predicted-class split with majority/minority roles against a pandas reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pytest_biascheck.metrics.attention import uninformative_maps
from pytest_biascheck.metrics.energy import (
    ProportionalEnergy,
    border_shares,
    chance_energy,
    proportional_energy,
)
from pytest_biascheck.metrics.scores import CHANCE


def energy(cam, region) -> float:
    return float(proportional_energy(torch.as_tensor(cam), torch.as_tensor(region)))


def test_hand_computed_energy_at_the_same_resolution() -> None:
    assert energy([[1.0, 0], [0, 3]], [[1, 0], [0, 0]]) == pytest.approx(0.25)
    # Negative activation is clamped to 0 before the ratio: 1 of the remaining 3 is inside.
    assert energy([[-5.0, 1], [1, 1]], [[1, 0], [0, 0]]) == 0.0
    assert energy([[-5.0, 1], [1, 1]], [[0, 1], [0, 0]]) == pytest.approx(1 / 3)


def test_hand_computed_energy_after_bilinear_upsampling() -> None:
    # 2 -> 4 bilinear (half-pixel centres): input pixel 0 weighs [1, .75, .25, 0] along each axis, so
    # the upsampled map is outer(u, u) with total 2 * 2 = 4 and (1 + .75)^2 in the top-left quadrant.
    region = torch.zeros(4, 4)
    region[:2, :2] = 1
    assert energy([[1.0, 0], [0, 0]], region) == pytest.approx(1.75**2 / 4)
    assert energy([[2.0, 2], [2, 2]], region) == pytest.approx(0.25)


def test_zero_map_scores_zero_and_larger_maps_are_refused() -> None:
    assert energy([[0.0, 0], [0, 0]], [[1, 0], [0, 0]]) == 0.0
    assert energy([[-1.0, -2], [0, 0]], [[1, 1], [1, 1]]) == 0.0
    with pytest.raises(ValueError, match="larger"):
        proportional_energy(torch.ones(8, 8), torch.ones(4, 4))


def test_hand_computed_edge_and_corner_shares() -> None:
    edge, corner = border_shares(torch.ones(4, 4))
    assert (float(edge), float(corner)) == pytest.approx((12 / 16, 4 / 16))
    grid = torch.arange(1.0, 10).reshape(3, 3)  # total 45, centre 5, corners 1 + 3 + 7 + 9
    edge, corner = border_shares(grid)
    assert (float(edge), float(corner)) == pytest.approx((40 / 45, 20 / 45))
    centre = torch.zeros(5, 5)
    centre[2, 2] = 1
    assert [float(v) for v in border_shares(torch.stack([centre, torch.zeros(5, 5)]))[0]] == [0, 0]


def reference(cams, regions, predictions, p) -> pd.DataFrame:
    """Per-image numpy energies grouped by attribute and predicted class."""
    c = cams.clamp_min(0).double().numpy()
    r = regions.double().numpy()
    total = c.sum((-2, -1))
    ring = np.ones(c.shape[-2:], bool)
    ring[1:-1, 1:-1] = False
    frame = pd.DataFrame(
        {
            "attribute": np.tile(["a", "b"], len(c)),
            "predicted": predictions.numpy().ravel(),
            "energy": np.where(
                total > 0, (c * r).sum((-2, -1)) / np.maximum(total, 1e-300), 0
            ).ravel(),
            "inactive": (total == 0).ravel(),
            "edge": np.where(
                total > 0, (c * ring).sum((-2, -1)) / np.maximum(total, 1e-300), np.nan
            ).ravel(),
        }
    )
    out = frame.groupby(["attribute", "predicted"]).agg(
        n=("energy", "size"),
        energy=("energy", "mean"),
        no_activation_rate=("inactive", "mean"),
        edge_share=("edge", "mean"),
    )
    rate = pd.Series(p, index=["a", "b"])
    out["role"] = ["majority" if (rate[a] > 0.5) == (k == 1) else "minority" for a, k in out.index]
    return out


def test_split_by_predicted_class_matches_a_pandas_reference() -> None:
    g = torch.Generator().manual_seed(4)
    cams = torch.rand(60, 2, 6, 6, generator=g) - 0.3
    cams[::7, 0] = -1.0  # no activation at all
    regions = torch.rand(60, 2, 6, 6, generator=g) > 0.5
    predictions = torch.randint(0, 2, (60, 2), generator=g)
    labels = torch.zeros(60, 2)
    labels[:45, 0] = 1  # p = 0.75 for "a", 0 for "b"
    metric = ProportionalEnergy(["a", "b"])
    for part in (slice(0, 25), slice(25, None)):
        metric.update(cams[part], regions[part], predictions[part], labels[part])
    result = metric.compute().set_index(["attribute", "predicted"]).sort_index()
    expected = reference(cams, regions, predictions, [0.75, 0.0]).sort_index()
    for column in ("n", "energy", "no_activation_rate", "edge_share"):
        assert result[column].to_numpy() == pytest.approx(expected[column].to_numpy(), abs=1e-9)
    assert result["role"].tolist() == expected["role"].tolist()
    assert result["positive_rate"].tolist() == [0.75, 0.75, 0.0, 0.0]
    assert result.loc[("a", 0), "no_activation_rate"] > 0


def test_given_training_frequency_overrides_labels_and_a_tie_is_balanced() -> None:
    metric = ProportionalEnergy(["a", "b"], positive_rate=[0.2, 0.5])
    metric.update(torch.rand(4, 2, 2, 2), torch.ones(4, 2, 2), torch.tensor([[1, 0]] * 4))
    result = metric.compute().set_index(["attribute", "predicted"])
    assert result.loc[("a", 1), "role"] == "minority" and result.loc[("a", 0), "role"] == "majority"
    assert set(result.loc["b", "role"]) == {"balanced"}
    assert result.loc[("a", 1), "n"] == 4 and np.isnan(result.loc[("a", 0), "energy"])


def test_chance_energy_is_the_area_share_for_the_uniform_map() -> None:
    regions = torch.zeros(3, 10, 10)
    regions[0, :5] = 1
    regions[1, :1, :1] = 1
    chance = chance_energy(regions)
    assert chance[:, CHANCE.index("uniform")].tolist() == pytest.approx([0.5, 0.01, 0.0])
    centre = uninformative_maps((10, 10))[CHANCE.index("centre")]
    assert chance[0, CHANCE.index("centre")] == pytest.approx(
        float(centre[:5].sum() / centre.sum())
    )
    flat = proportional_energy(torch.ones(3, 10, 10), regions)
    assert torch.allclose(flat, chance[:, CHANCE.index("uniform")])


def test_images_without_the_region_are_left_out() -> None:
    g = torch.Generator().manual_seed(5)
    cams = torch.rand(10, 1, 4, 4, generator=g)
    regions = torch.rand(10, 1, 4, 4, generator=g) > 0.5
    regions[:4] = False
    predictions = torch.ones(10, 1, dtype=torch.long)
    metric = ProportionalEnergy(["a"])
    metric.update(cams, regions, predictions)
    result = metric.compute().set_index("predicted")
    assert result.loc[1, "n"] == 6
    expected = proportional_energy(cams[4:, 0], regions[4:, 0]).mean()
    assert result.loc[1, "energy"] == pytest.approx(float(expected))
