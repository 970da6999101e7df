"""Crayon's explanations of the original model: Grad-CAM of the labelled class against a textbook
Grad-CAM, the streamed top-k patches against a brute-force sort, and the patch geometry against
adaptive average pooling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mitigations.cam_target import score_sign
from mitigations.crayon.explain import (
    Patches,
    cell_boxes,
    original_maps,
    patch_coverage,
    top_patches,
)
from pytest_biascheck.data.synth_faces import SynthFaces
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.model import load_checkpoint


@pytest.fixture
def tiny(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


@pytest.fixture
def faces():
    return SynthFaces(n=7, split="train", image_size=32)


def textbook_gradcam(module, images, layer, output, signs):
    """Grad-CAM by hand: gradients of sign * z at the layer, spatial mean, weighted sum, ReLU."""
    captured = []
    handle = module.get_submodule(layer).register_forward_hook(lambda m, a, o: captured.append(o))
    with torch.enable_grad():
        logits = module(images)
        (grads,) = torch.autograd.grad((signs * logits[:, output]).sum(), captured[0])
    handle.remove()
    return (grads.mean((2, 3), keepdim=True) * captured[0]).sum(1).clamp_min(0).detach()


@pytest.mark.parametrize("target", ["label", "predicted", "positive"])
def test_original_maps_match_a_textbook_gradcam(tiny, faces, target):
    output, column = 1, faces.attributes.index("Male")
    maps, energy = original_maps(
        tiny.module, tiny.spec, faces, output, column, target=target, batch_size=3
    )
    batch = faces.render(range(len(faces)))
    images = tiny.spec.normalize(batch["image"])
    logits = tiny.module(images).detach()[:, output]
    signs = score_sign(logits, batch["labels"][:, column], target)
    expected = textbook_gradcam(tiny.module, images, "layer4", output, signs)
    assert energy is None
    assert maps.shape == (7, 4, 4) and maps.abs().sum() > 0
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-6)


def test_original_maps_energy_and_batch_size_independence(tiny, faces):
    mouth = faces.region_names.index("mouth")
    one = original_maps(tiny.module, tiny.spec, faces, 0, 0, region=mouth, batch_size=1)
    all_ = original_maps(tiny.module, tiny.spec, faces, 0, 0, region=mouth, batch_size=64)
    torch.testing.assert_close(one[0], all_[0], rtol=1e-5, atol=1e-7)
    masks = faces.render(range(len(faces)))["masks"][:, mouth].float()
    up = F.interpolate(all_[0][:, None], size=(32, 32), mode="bilinear")[:, 0]
    share = (up * masks).sum((1, 2)) / up.sum((1, 2)).clamp_min(1e-12)
    torch.testing.assert_close(all_[1], share, rtol=1e-4, atol=1e-6)


def brute_force_top(module, spec, data, k):
    """Every image's activations at once, then a stable descending sort per channel."""
    captured = []
    layer = module.get_submodule(spec.target_layer)
    handle = layer.register_forward_hook(lambda m, a, o: captured.append(o))
    with torch.no_grad():
        module(spec.normalize(data.render(range(len(data)))["image"]))
    handle.remove()
    acts = captured[0].flatten(2)  # [n, C, hw]
    peak = acts.amax(2).T  # [C, n]
    images = torch.sort(peak, dim=1, descending=True, stable=True).indices[:, :k]
    cells = acts.argmax(2).T.gather(1, images)
    return images, cells


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_top_patches_match_a_brute_force_sort(tiny, faces, batch_size):
    patches = top_patches(tiny.module, tiny.spec, faces, 3, batch_size=batch_size)
    images, cells = brute_force_top(tiny.module, tiny.spec, faces, 3)
    assert patches.grid == (4, 4)
    assert torch.equal(patches.images, images)
    assert torch.equal(patches.cells, cells)
    assert (patches.activations[:, :-1] >= patches.activations[:, 1:]).all()
    with pytest.raises(BiascheckError, match="--top-k must be between 1 and the 7"):
        top_patches(tiny.module, tiny.spec, faces, 8)


def test_unique_patches_share_one_item():
    patches = Patches(
        images=torch.tensor([[0, 1], [0, 2], [2, 0]]),
        cells=torch.tensor([[5, 3], [5, 7], [7, 4]]),
        activations=torch.zeros(3, 2),
        grid=(4, 4),
    )
    distinct, slot = patches.unique()
    assert distinct.tolist() == [[0, 4], [0, 5], [1, 3], [2, 7]]
    assert slot.tolist() == [[1, 2], [1, 3], [3, 0]]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 5), st.integers(5, 23), st.integers(5, 23), st.data())
def test_cell_boxes_hold_the_pixels_adaptive_pooling_averages(h, w, height, width, data):
    row, col = data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))
    top, left, bottom, right = cell_boxes(torch.tensor(row * w + col), (h, w), (height, width))
    # pool an image of ones at each pixel separately: a pixel feeds the cell iff it is in its box
    eye = torch.eye(height * width).view(-1, 1, height, width)
    feeds = F.adaptive_avg_pool2d(eye, (h, w))[:, 0, row, col].view(height, width) > 0
    box = torch.zeros(height, width, dtype=torch.bool)
    box[top:bottom, left:right] = True
    assert torch.equal(feeds, box)


def test_patch_coverage_by_hand():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :, :2] = True  # left half
    masks[1, 0, 3] = True  # one pixel of the top-right cell
    cells = torch.tensor([0, 1])  # image 0: left cell; image 1: right cell of a 1x2 grid
    torch.testing.assert_close(patch_coverage(masks, cells, (1, 2)), torch.tensor([1.0, 0.125]))
