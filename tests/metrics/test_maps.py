"""Map helpers against torchvision's resize and a hand-computed bilinear profile."""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF

from pytest_biascheck.metrics.maps import is_empty, mask_to_cam, upsample


def test_mask_to_cam_matches_torchvision_resize_divided_by_max() -> None:
    masks = torch.rand(2, 3, 32, 24) > 0.7
    masks[1, 2] = False
    expected = TF.resize(masks.float(), [8, 6], antialias=True)
    expected = expected / expected.amax((-2, -1), keepdim=True)
    result = mask_to_cam(masks, (8, 6))
    assert torch.allclose(result[:1], expected[:1], atol=1e-6)
    assert result[1, 2].eq(0).all() and torch.allclose(result[1, :2], expected[1, :2], atol=1e-6)


def test_upsample_uses_half_pixel_bilinear_weights_over_any_leading_dims() -> None:
    # 2 -> 4 with half-pixel centres: input pixel 0 weighs [1, .75, .25, 0] along each axis.
    profile = torch.tensor([1.0, 0.75, 0.25, 0.0])
    maps = torch.zeros(3, 2, 2, 2)
    maps[..., 0, 0] = 1
    assert torch.allclose(upsample(maps, (4, 4)), torch.outer(profile, profile).expand(3, 2, 4, 4))
    assert upsample(maps, (2, 2)) is maps


def test_is_empty_flags_maps_without_positive_values() -> None:
    maps = torch.tensor([[[0.0, 0]], [[-1.0, 0]], [[0.0, 1e-9]]])
    assert is_empty(maps).tolist() == [True, True, False]
