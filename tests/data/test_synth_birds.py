"""SynthBirds: determinism across instances and batches, exact splits, masks that match the pixels."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from pytest_biascheck.data.synth_birds import SynthBirds
from pytest_biascheck.errors import BiascheckError

KEYS = ("image", "labels", "groups", "masks", "index")


def assert_batches_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for key in KEYS:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


def test_same_seed_gives_bit_identical_batches_across_instances() -> None:
    indices = [0, 7, 3, 19]
    first = SynthBirds(20, split="train", seed=4, image_size=32).render(indices)
    second = SynthBirds(20, split="train", seed=4, image_size=32).render(indices)
    assert_batches_equal(first, second)


def test_an_image_does_not_depend_on_the_batch_it_is_rendered_in() -> None:
    ds = SynthBirds(12, split="val", seed=2, image_size=64)
    alone = ds.render([5])
    inside = ds.render([3, 5, 9])
    assert_batches_equal(alone, {k: v[1:2] for k, v in inside.items()})
    item = ds[5]
    assert all(torch.equal(item[k], alone[k][0]) for k in KEYS)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(0, 15), min_size=1, max_size=6))
def test_any_batch_composition_matches_single_renders(indices: list[int]) -> None:
    ds = SynthBirds(16, split="test", seed=9, image_size=32)
    batch = ds.render(indices)
    for position, index in enumerate(indices):
        alone = ds.render([index])
        assert_batches_equal({k: v[position : position + 1] for k, v in batch.items()}, alone)


def test_dataloader_batches_agree_whatever_the_batch_size() -> None:
    ds = SynthBirds(10, split="train", seed=1, image_size=32)
    by_three = list(DataLoader(ds, batch_size=3))
    by_four = list(DataLoader(ds, batch_size=4))
    joined = {k: torch.cat([b[k] for b in by_three]) for k in KEYS}
    assert_batches_equal(joined, {k: torch.cat([b[k] for b in by_four]) for k in KEYS})
    assert_batches_equal(joined, ds.render(range(10)))
    assert joined["index"].tolist() == list(range(10))


def test_different_seeds_and_splits_give_different_images() -> None:
    base = SynthBirds(8, split="test", seed=0, image_size=32).render(range(8))["image"]
    other_seed = SynthBirds(8, split="test", seed=1, image_size=32).render(range(8))["image"]
    other_split = SynthBirds(8, split="val", seed=0, image_size=32).render(range(8))["image"]
    per_image = (base - other_seed).abs().flatten(1).amax(1)
    assert bool((per_image > 0.1).all())
    assert bool(((base - other_split).abs().flatten(1).amax(1) > 0.1).all())


@pytest.mark.parametrize("bias", [0.5, 0.8, 0.95, 1.0])
@pytest.mark.parametrize("n", [999, 1000])
def test_realised_training_bias_equals_the_request_up_to_rounding(bias: float, n: int) -> None:
    ds = SynthBirds(n, split="train", bias=bias, seed=3)
    waterbird, place = ds.labels[:, 0].long(), ds.groups[:, 0]
    on_usual_background = (waterbird == place).double().mean().item()
    assert abs(on_usual_background - bias) <= 0.5 / n + 1e-12  # rounded once, to the nearest bird
    for cls in (0, 1):
        members = waterbird == cls
        per_class = (place[members] == cls).double().mean().item()
        assert abs(per_class - bias) <= 1.0 / members.sum().item() + 1e-12
    assert ds.realised_bias() == pytest.approx(on_usual_background)
    assert abs(waterbird.sum().item() - 0.25 * n) <= 0.5
    counts = ds.group_counts()
    assert counts.sum().item() == n
    assert counts[1].sum().item() == waterbird.sum().item()
    assert counts[1, 1].item() == ((waterbird == 1) & (place == 1)).sum().item()


def test_training_groups_are_shuffled_and_p_waterbird_is_honoured() -> None:
    ds = SynthBirds(400, split="train", bias=0.9, p_waterbird=0.5, seed=0, image_size=32)
    assert ds.labels.sum().item() == 200
    rendered = ds.render(range(400))
    assert torch.equal(rendered["labels"], ds.labels)
    assert torch.equal(rendered["groups"], ds.groups)
    first_half = ds.labels[:200].mean().item()
    assert 0.35 < first_half < 0.65  # a seeded permutation, not blocks of one group
    reseeded = SynthBirds(400, split="train", bias=0.9, p_waterbird=0.5, seed=1)
    assert not torch.equal(ds.labels, reseeded.labels)


@pytest.mark.parametrize("split", ["val", "test"])
def test_val_and_test_hold_the_four_groups_in_equal_numbers(split: str) -> None:
    ds = SynthBirds(400, split=split, bias=0.99, seed=5)
    assert ds.group_counts().tolist() == [[100, 100], [100, 100]]
    assert ds.realised_bias() == 0.5
    odd = SynthBirds(10, split=split).group_counts()
    assert odd.max().item() - odd.min().item() <= 1


def test_mask_is_exactly_where_the_bird_changes_the_background() -> None:
    # The background does not depend on the bird's size, so two sizes of the same scene differ
    # only where one of the two birds lies: that is the bird mask, and nowhere else.
    indices = range(24)
    big = SynthBirds(24, split="test", seed=6, image_size=64).render(indices)
    tiny = SynthBirds(24, split="test", seed=6, image_size=64, bird_area=(0.01, 0.01)).render(
        indices
    )
    bird_big, bird_tiny = big["masks"][:, 0], tiny["masks"][:, 0]
    changed = (big["image"] != tiny["image"]).any(1)
    assert not bool((changed & ~(bird_big | bird_tiny)).any())
    only_big = bird_big & ~bird_tiny
    assert changed[only_big].float().mean().item() > 0.95
    contrast = (big["image"] - tiny["image"]).abs().sum(1)[only_big].mean().item()
    assert contrast > 0.1
    assert torch.equal(big["masks"][:, 1], ~bird_big)


def test_mask_area_lies_in_the_designed_range_and_is_not_a_class_cue() -> None:
    ds = SynthBirds(400, split="test", seed=7, image_size=32)
    masks = ds.render(range(400))["masks"][:, 0]
    area = masks.float().mean((1, 2))
    low, high = ds.bird_area
    assert area.max().item() <= high + 0.02
    assert (area >= low - 0.02).float().mean().item() > 0.95  # the longest birds shrink to fit
    waterbird = ds.labels[:, 0].bool()
    assert abs(area[waterbird].mean().item() - area[~waterbird].mean().item()) < 0.01
    border = torch.cat([masks[:, 0], masks[:, -1], masks[:, :, 0], masks[:, :, -1]], 1)
    assert not bool(border.any())


@pytest.mark.parametrize("size", [32, 64, 128])
def test_every_image_size_renders_with_matching_masks(size: int) -> None:
    ds = SynthBirds(6, split="val", seed=8, image_size=size)
    batch = ds.render(range(6))
    assert batch["image"].shape == (6, 3, size, size) and batch["image"].dtype == torch.float32
    assert batch["masks"].shape == (6, 2, size, size) and batch["masks"].dtype == torch.bool
    assert batch["labels"].shape == (6, 1) and batch["labels"].dtype == torch.float32
    assert batch["groups"].shape == (6, 1) and batch["groups"].dtype == torch.int64
    assert batch["image"].min().item() >= 0.0 and batch["image"].max().item() <= 1.0
    reference = SynthBirds(6, split="val", seed=8, image_size=128).render(range(6))["masks"][:, 0]
    coarse = torch.nn.functional.avg_pool2d(reference[:, None].float(), 128 // size)[:, 0] > 0.5
    mask = batch["masks"][:, 0]
    iou = (mask & coarse).sum((1, 2)).float() / (mask | coarse).sum((1, 2)).float()
    assert bool((iou > 0.8).all())  # the same bird at every resolution


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"bias": 0.4}, "bias"),
        ({"bias": 1.01}, "bias"),
        ({"split": "dev"}, "split"),
        ({"image_size": 16}, "image_size"),
        ({"image_size": 256}, "image_size"),
        ({"n": 0}, "n="),
        ({"p_waterbird": 1.0}, "p_waterbird"),
        ({"bird_area": (0.2, 0.1)}, "bird_area"),
        ({"shape_gap": 1.5}, "shape_gap"),
        ({"colour_gap": -0.1}, "colour_gap"),
        ({"noise": 0.9}, "noise"),
    ],
)
def test_bad_arguments_raise_one_line_naming_the_argument(kwargs: dict, named: str) -> None:
    args = {"n": 8, **kwargs}
    with pytest.raises(BiascheckError) as info:
        SynthBirds(**args)
    message = str(info.value)
    assert named in message and "\n" not in message


def test_out_of_range_indices_raise_index_error() -> None:
    ds = SynthBirds(4, image_size=32)
    with pytest.raises(IndexError, match=r"\[0, 4\)"):
        ds.render([1, 4])
    with pytest.raises(IndexError):
        ds[-1]


def test_class_reaches_the_pixels_only_through_the_shape_and_colour_gaps() -> None:
    # The same scenes with every bird's class swapped: identical images when both gaps are 0.
    def swapped_pair(**gaps: float) -> tuple[torch.Tensor, torch.Tensor]:
        ds = SynthBirds(12, split="test", image_size=32, **gaps)
        original = ds.render(range(12))["image"]
        ds.labels = 1.0 - ds.labels
        return original, ds.render(range(12))["image"]

    blind, blind_swapped = swapped_pair(shape_gap=0.0, colour_gap=0.0)
    assert torch.equal(blind, blind_swapped)
    for gaps in ({"shape_gap": 0.5, "colour_gap": 0.0}, {"shape_gap": 0.0, "colour_gap": 0.15}):
        seen, seen_swapped = swapped_pair(**gaps)
        assert bool(((seen - seen_swapped).abs().flatten(1).amax(1) > 0.05).all())


def test_corner_mark_agrees_with_the_class_in_training_and_is_balanced_in_test():
    train = SynthBirds(n=4000, split="train", bias=0.5, mark=0.9, seed=3)
    assert train.group_names == ("place", "mark") and train.region_names[-1] == "mark"
    agree = (train.groups[:, 1] == train.labels[:, 0].long()).double().mean().item()
    assert agree == 0.9  # exact: round(n * mark) images agree
    assert train.realised_bias() == 0.5  # the background shortcut is untouched
    test = SynthBirds(n=800, split="test", mark=0.9)
    cells = torch.bincount(
        4 * test.labels[:, 0].long() + 2 * test.groups[:, 0] + test.groups[:, 1], minlength=8
    )
    assert cells.tolist() == [100] * 8


def test_corner_mark_pixels_group_and_region_match():
    data = SynthBirds(n=16, split="test", mark=0.5, image_size=64)
    batch = data.render(range(16))
    marked = batch["groups"][:, 1].bool()
    region = batch["masks"][:, 2]
    assert torch.equal(region.flatten(1).any(1), marked)
    side = round(0.08 * 64)
    assert region[marked].sum((1, 2)).tolist() == [side * side] * int(marked.sum())
    magenta = batch["image"][marked][:, :, 2, 2]  # inside every mark, whatever the noise
    assert (magenta[:, 0] > 0.7).all() and (magenta[:, 1] < 0.35).all()
    assert not (batch["masks"][:, 0] & region).any()  # the bird mask never includes the mark
    plain = SynthBirds(n=16, split="test").render(range(16))
    unmarked = ~marked
    assert torch.equal(plain["image"][unmarked], batch["image"][unmarked])  # same images otherwise
