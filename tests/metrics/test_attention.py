"""Attention-IoU: properties from the paper, hand-computed cases, and mask/heatmap scores against a
per-image reference built from the paper's equation and torchvision's resize."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pytest_biascheck.metrics.attention import (
    CENTRE_SIGMA,
    HeatmapScore,
    MaskScore,
    attention_iou,
    chance_scores,
    uninformative_maps,
)
from pytest_biascheck.metrics.maps import mask_to_cam
from pytest_biascheck.metrics.scores import CHANCE

shapes = st.tuples(st.integers(1, 6), st.integers(1, 6))
values = st.floats(0, 100, allow_subnormal=False)


@st.composite
def map_pairs(draw):
    shape = draw(shapes)
    return draw(arrays(np.float64, shape, elements=values)), draw(
        arrays(np.float64, shape, elements=values)
    )


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(attention_iou(torch.from_numpy(a), torch.from_numpy(b)))


def paper_iou(m1: np.ndarray, m2: np.ndarray) -> float:
    """Equation (1) of the paper, literally: L1-normalise, then <A, M> / ||(A + M) / 2||^2."""
    a, m = m1 / m1.sum(), m2 / m2.sum()
    return float((a * m).sum() / (((a + m) / 2) ** 2).sum())


@settings(max_examples=60, deadline=None)
@given(map_pairs())
def test_identical_maps_score_one(pair) -> None:
    m = pair[0]
    assert iou(m, m) == pytest.approx(1.0 if m.sum() > 0 else 0.0, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(map_pairs(), st.data())
def test_disjoint_supports_score_zero(pair, data) -> None:
    inside = data.draw(arrays(np.bool_, pair[0].shape))
    assert iou(pair[0] * inside, pair[1] * ~inside) == 0.0


@settings(max_examples=60, deadline=None)
@given(map_pairs(), st.floats(1e-3, 1e3), st.floats(1e-3, 1e3))
def test_symmetric_bounded_and_scale_invariant(pair, c1, c2) -> None:
    m1, m2 = pair
    score = iou(m1, m2)
    assert 0.0 <= score <= 1.0 + 1e-12
    assert iou(m2, m1) == pytest.approx(score, abs=1e-12)
    assert iou(c1 * m1, c2 * m2) == pytest.approx(score, abs=1e-9)
    if m1.sum() > 0 and m2.sum() > 0:
        assert score == pytest.approx(paper_iou(m1, m2), abs=1e-9)


def test_hand_computed_cases() -> None:
    # A = [1, 0, 0, 0], M = [.5, .5, 0, 0]: <A, M> = .5, ||(A+M)/2||^2 = .75^2 + .25^2 = .625.
    assert iou(np.array([[1.0, 0], [0, 0]]), np.array([[1.0, 1], [0, 0]])) == pytest.approx(0.8)
    # A = [.75, .25, 0, 0], M = [.25] * 4: .25 / (.5^2 + .25^2 + 2 * .125^2) = 8 / 11.
    assert iou(np.array([[3.0, 1], [0, 0]]), np.ones((2, 2))) == pytest.approx(8 / 11)


def test_zero_map_scores_zero_never_nan_and_batches_broadcast() -> None:
    maps = torch.rand(3, 2, 4, 4)
    maps[1, 0] = 0
    scores = attention_iou(maps, maps[:, :1])
    assert not scores.isnan().any() and scores[1].tolist() == [0.0, 0.0]
    single = torch.stack(
        [attention_iou(maps[i, j], maps[i, 0]) for i in range(3) for j in range(2)]
    )
    assert torch.allclose(scores.flatten(), single, atol=1e-12)
    with pytest.raises(ValueError, match="non-negative"):
        attention_iou(-maps, maps)


def make_batch(n: int = 12):
    g = torch.Generator().manual_seed(1)
    cams = torch.rand(n, 2, 4, 4, generator=g)
    cams[3, 1] = 0
    masks = torch.rand(n, 2, 16, 16, generator=g) > 0.5
    return cams, masks, torch.arange(n)


def test_mask_score_on_the_grid_matches_the_paper_per_image() -> None:
    cams, masks, index = make_batch()
    metric = MaskScore(["a", "b"], n_resamples=300)
    metric.update(cams, masks, index)
    small = TF.resize(masks.float(), [4, 4], antialias=True)
    small = small / small.amax((-2, -1), keepdim=True)
    expected = np.array(
        [
            [
                paper_iou(cams[i, j].double().numpy(), small[i, j].double().numpy())
                if cams[i, j].sum() > 0
                else 0.0  # the empty CAM scores 0, and is flagged
                for j in (0, 1)
            ]
            for i in range(len(index))
        ]
    )
    result = metric.compute().set_index("attribute")
    assert result.loc[["a", "b"], "mean"].to_numpy() == pytest.approx(expected.mean(0), abs=1e-6)
    assert result["n_empty"].tolist() == [0, 1] and result["n"].tolist() == [12, 12]
    assert (result["low"] <= result["mean"]).all() and (result["mean"] <= result["high"]).all()


def test_mask_score_at_input_size_upsamples_cams_to_one_shared_mask() -> None:
    cams, masks, index = make_batch()
    metric = MaskScore(["a", "b"], resolution="input", n_resamples=50)
    metric.update(cams, masks[:, 0], index)
    big = TF.resize(cams, [16, 16], antialias=True)
    region = masks[:, 0].double().numpy()
    expected = [
        np.mean(
            [
                paper_iou(big[i, j].double().numpy(), region[i]) if cams[i, j].sum() > 0 else 0.0
                for i in range(12)
            ]
        )
        for j in (0, 1)
    ]
    assert metric.compute()["mean"].to_numpy() == pytest.approx(expected, abs=1e-6)


def test_heatmap_score_compares_each_attribute_with_the_reference_map() -> None:
    cams, _, index = make_batch()
    reference = torch.rand(12, 4, 4, generator=torch.Generator().manual_seed(2))
    metric = HeatmapScore(["a", "b"], n_resamples=50)
    metric.update(cams, reference, index)
    expected = [
        np.mean(
            [
                paper_iou(cams[i, j].double().numpy(), reference[i].double().numpy())
                if cams[i, j].sum() > 0
                else 0.0
                for i in range(12)
            ]
        )
        for j in (0, 1)
    ]
    assert metric.compute()["mean"].to_numpy() == pytest.approx(expected, abs=1e-6)


def test_uniform_map_scores_four_f_over_three_f_plus_one_on_a_region_of_area_f() -> None:
    # A = 1/N everywhere, M = 1/(fN) on the region: <A,M> = 1/N, ||(A+M)/2||^2 = (3 + 1/f) / 4N.
    for rows in (1, 2, 4, 7):
        region = torch.zeros(8, 8)
        region[:rows] = 1
        f = rows / 8
        uniform = chance_scores(region)[CHANCE.index("uniform")]
        assert float(uniform) == pytest.approx(4 * f / (3 * f + 1), abs=1e-12)


def test_chance_scores_equal_attention_iou_of_the_uninformative_maps() -> None:
    reference = torch.rand(3, 2, 5, 7, generator=torch.Generator().manual_seed(4))
    reference[0, 1] = 0
    maps = uninformative_maps((5, 7))
    expected = attention_iou(maps, reference[..., None, :, :].double())
    assert torch.allclose(chance_scores(reference), expected, atol=1e-12)
    assert chance_scores(reference)[0, 1].tolist() == [0.0, 0.0]


def test_centre_prior_is_a_gaussian_on_the_centre() -> None:
    centre = uninformative_maps((9, 9))[CHANCE.index("centre")]
    assert centre.argmax().item() == 4 * 9 + 4 and centre.max().item() == pytest.approx(1.0)
    # one cell from the middle is 1/9 of the side away
    assert centre[4, 5].item() == pytest.approx(np.exp(-((1 / 9) ** 2) / (2 * CENTRE_SIGMA**2)))
    assert torch.allclose(centre, centre.T) and torch.allclose(centre, centre.flip(0))


@pytest.mark.parametrize("resolution", ["grid", "input"])
def test_lift_is_one_for_the_region_itself_zero_for_chance_and_negative_elsewhere(resolution):
    region = torch.zeros(6, 1, 32, 32, dtype=torch.bool)
    region[:, 0, :8, :8] = True  # in a corner: the uniform map is the better uninformative map
    grid = mask_to_cam(region, (8, 8))  # the region itself, as the score sees it on an 8x8 grid
    flat = torch.ones(6, 1, 8, 8)
    elsewhere = torch.zeros(6, 1, 8, 8)
    elsewhere[..., 7, 7] = 1
    results = {}
    for name, cams in (("region", grid), ("flat", flat), ("elsewhere", elsewhere)):
        metric = MaskScore(["a"], resolution=resolution, n_resamples=20)
        metric.update(cams, region, torch.arange(6))
        results[name] = metric.compute().iloc[0]
    if resolution == "grid":
        assert results["region"]["mean"] == pytest.approx(1.0)
        assert results["region"]["lift"] == pytest.approx(1.0)
    assert results["region"]["lift"] > 0.8
    flat_row = results["flat"]
    assert flat_row["chance_uniform"] > flat_row["chance_centre"]
    assert flat_row["chance"] == flat_row["chance_uniform"]
    assert flat_row["mean"] == pytest.approx(flat_row["chance_uniform"], abs=1e-6)  # float32 maps
    assert flat_row["lift"] == pytest.approx(0.0, abs=1e-6)
    assert results["elsewhere"]["lift"] < 0
    lifted = results["region"]
    assert lifted["lift_low"] <= lifted["lift"] <= lifted["lift_high"]


def test_images_without_the_region_do_not_count() -> None:
    cams, masks, index = make_batch()
    masks[:5, 1] = False  # the second attribute's region is absent in five images
    metric = MaskScore(["a", "b"], n_resamples=50)
    metric.update(cams, masks, index)
    overall = metric.compute().set_index("attribute")
    assert overall["n"].tolist() == [12, 7]
    alone = MaskScore(["b"], n_resamples=50)
    alone.update(cams[5:, 1:], masks[5:, 1:], index[5:])
    assert overall.loc["b", "mean"] == pytest.approx(alone.compute()["mean"].iloc[0], abs=1e-12)
