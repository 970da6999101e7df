"""SynthFaces: determinism, realised correlations, and attributes drawn only in their own region."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytest_biascheck.data import synth_common as sc
from pytest_biascheck.data.regions import (
    PART_NAMES,
    REGION_NAMES,
    TEMPLATE_BOXES,
    template_box_mask,
)
from pytest_biascheck.data.synth_faces import (
    ATTRIBUTE_REGIONS,
    ATTRIBUTES,
    BIASED_CORRELATIONS,
    BIASED_FREQUENCIES,
    HAIR_COLOURS,
    Appearance,
    SynthFaces,
    _draw,
)


def test_same_seed_gives_bit_identical_batches_whatever_the_batch():
    biased = {"correlations": BIASED_CORRELATIONS, "frequencies": BIASED_FREQUENCIES}
    a = SynthFaces(n=50, seed=3, **biased)
    b = SynthFaces(n=50, seed=3, **biased)
    alone = a.render([7])
    inside = b.render([2, 7, 30])
    for key in ("image", "labels", "masks", "parts", "landmarks", "index"):
        assert torch.equal(alone[key][0], inside[key][1]), key
    item = a[7]
    assert torch.equal(item["image"], alone["image"][0])
    assert len(a.__getitems__([1, 2])) == 2


def test_other_seed_or_split_differs():
    base = SynthFaces(n=10, seed=0).render([0])["image"]
    assert not torch.equal(base, SynthFaces(n=10, seed=1).render([0])["image"])
    assert not torch.equal(base, SynthFaces(n=10, seed=0, split="train").render([0])["image"])


def test_labels_do_not_depend_on_dataset_length():
    short, long = SynthFaces(n=100, seed=5).labels, SynthFaces(n=1000, seed=5).labels
    assert torch.equal(short, long[:100])


@pytest.mark.parametrize("q", [0.5, 0.8, 0.95, 0.99])
def test_realised_agreement_matches_request_and_both_frequencies_stay(q):
    ds = SynthFaces(
        n=20000,
        seed=1,
        correlations={("Smiling", "Black_Hair"): q},
        frequencies={"Black_Hair": 0.5},
    )
    realised = ds.realised_correlations()[("Smiling", "Black_Hair")]
    assert abs(realised["agreement"] - q) < 0.015
    smiling = ds.labels[:, ATTRIBUTES.index("Smiling")]
    black = ds.labels[:, ATTRIBUTES.index("Black_Hair")]
    assert abs(smiling.mean().item() - 0.5) < 0.02 and abs(black.mean().item() - 0.5) < 0.02


@pytest.mark.parametrize(
    ("first", "second", "q"), [("Eyeglasses", "Male", 0.9), ("Male", "Wearing_Hat", 0.8)]
)
def test_a_correlation_keeps_unequal_frequencies(first, second, q):
    """P(second == first) = q with P(first) and P(second) as configured: the 2x2 table is
    p11 = (p1 + p2 - (1 - q)) / 2, checked against the realised counts."""
    frequencies = {"Eyeglasses": 0.2, "Male": 0.25, "Wearing_Hat": 0.1}
    ds = SynthFaces(n=40000, seed=6, correlations={(first, second): q}, frequencies=frequencies)
    x = ds.labels[:, ATTRIBUTES.index(first)]
    y = ds.labels[:, ATTRIBUTES.index(second)]
    p1, p2 = frequencies[first], frequencies[second]
    assert abs(x.mean().item() - p1) < 0.01 and abs(y.mean().item() - p2) < 0.01
    assert abs((x * y).mean().item() - (p1 + p2 - (1 - q)) / 2) < 0.01
    assert abs((x == y).float().mean().item() - q) < 0.01
    others = [a for a in ATTRIBUTES if a not in (first, second, *HAIR_COLOURS)]
    plain = SynthFaces(n=40000, seed=6, frequencies=frequencies)
    for name in others:  # every other attribute is drawn exactly as without the correlation
        column = ATTRIBUTES.index(name)
        assert torch.equal(ds.labels[:, column], plain.labels[:, column]), name


def test_a_strength_the_frequencies_cannot_reach_names_the_allowed_range():
    with pytest.raises(ValueError, match=r"allow 0\.400\.\.0\.700.*freq=Male@0\.15"):
        SynthFaces(n=10, correlations={("Eyeglasses", "Male"): 0.95})
    with pytest.raises(ValueError, match="MCC"):
        SynthFaces(n=10, mcc={("Eyeglasses", "Male"): 0.9})


def test_mcc_target_and_decorrelated_counterpart():
    ds = SynthFaces(n=20000, seed=2, mcc={("Heavy_Makeup", "Wearing_Lipstick"): 0.6},
                    frequencies={"Heavy_Makeup": 0.5})  # fmt: skip
    assert abs(ds.realised_correlations()[("Heavy_Makeup", "Wearing_Lipstick")]["mcc"] - 0.6) < 0.03
    flat = ds.decorrelated()
    x = flat.labels[:, ATTRIBUTES.index("Heavy_Makeup")]
    y = flat.labels[:, ATTRIBUTES.index("Wearing_Lipstick")]
    assert abs(np.corrcoef(x.numpy(), y.numpy())[0, 1]) < 0.03


def test_hair_colours_are_one_hot_and_keep_their_shares_when_forced_by_a_correlation():
    ds = SynthFaces(
        n=20000,
        seed=0,
        correlations={("Smiling", "Black_Hair"): 0.9},
        frequencies={"Black_Hair": 0.5},
    )
    hair = ds.labels[:, [ATTRIBUTES.index(h) for h in HAIR_COLOURS]]
    assert torch.equal(hair.sum(1), torch.ones(20000))
    # Black_Hair takes 0.5, the other colours share the rest in their default proportions.
    rest = {h: w for h, w in ds.hair.items() if h != "Black_Hair"}
    assert ds.hair["Black_Hair"] == 0.5 and sum(ds.hair.values()) == pytest.approx(1.0)
    for colour, share in rest.items():
        assert abs(hair[:, HAIR_COLOURS.index(colour)].mean().item() - share) < 0.015, colour


def test_notes_report_requested_and_realised_strength():
    ds = SynthFaces(n=4000, seed=1, correlations={("Eyeglasses", "Male"): 0.7})
    (line,) = ds.notes()
    real = ds.realised_correlations()[("Eyeglasses", "Male")]
    assert line.startswith("Eyeglasses~Male: requested 0.7, realised agreement")
    assert f"{real['agreement']:.3f}" in line and f"{real['mcc']:.3f}" in line
    assert "(set 0.15)" in line and "(set 0.45)" in line


def test_frequencies_are_honoured():
    ds = SynthFaces(n=20000, seed=4, frequencies={"Eyeglasses": 0.3, "Young": 0.9})
    assert abs(ds.labels[:, ATTRIBUTES.index("Eyeglasses")].mean().item() - 0.3) < 0.015
    assert abs(ds.labels[:, ATTRIBUTES.index("Young")].mean().item() - 0.9) < 0.015


LOCAL = {
    "Smiling": {"mouth"}, "Mouth_Slightly_Open": {"mouth"}, "Wearing_Lipstick": {"mouth"},
    "Eyeglasses": {"eyeglasses", "eyes", "eyebrows"}, "Big_Nose": {"nose"}, "Wearing_Hat": {"hat", "hair"},
    "Wearing_Earrings": {"earrings"}, "Wearing_Necklace": {"necklace"}, "Bushy_Eyebrows": {"eyebrows"},
    "Bangs": {"hair"}, "Heavy_Makeup": {"eyes", "skin"}, "High_Cheekbones": {"skin"},
}  # fmt: skip


@pytest.mark.parametrize("attribute", sorted(LOCAL))
def test_an_attribute_changes_pixels_only_in_its_region(attribute):
    base = SynthFaces(n=16, seed=9).labels.clone()
    flipped = base.clone()
    column = ATTRIBUTES.index(attribute)
    flipped[:, column] = 1 - flipped[:, column]
    images, masks = [], []
    for labels in (base, flipped):
        image, parts, _ = _draw(labels, sc.image_rngs(9, "test", range(16)), 64, Appearance())
        images.append(image)
        region = torch.zeros_like(parts, dtype=torch.bool)
        for name in LOCAL[attribute]:
            region |= _region(parts, name)
        masks.append(region)
    changed = (images[0] != images[1]).any(1)
    assert changed.any(), f"{attribute} is not drawn at all"
    assert not (changed & ~(masks[0] | masks[1])).any(), (
        f"{attribute} changes pixels outside {LOCAL[attribute]}"
    )
    assert ATTRIBUTE_REGIONS[attribute] in LOCAL[attribute] | {"skin"}


def _region(parts: torch.Tensor, name: str) -> torch.Tensor:
    from pytest_biascheck.data.regions import REGION_PARTS

    ids = [PART_NAMES.index(p) for p in REGION_PARTS[name]]
    return torch.isin(parts, torch.tensor(ids))


@pytest.mark.parametrize("size", [32, 64, 128, 224])
def test_sizes_masks_and_landmarks_agree(size):
    batch = SynthFaces(n=8, seed=0, image_size=size).render(range(8))
    assert batch["image"].shape == (8, 3, size, size)
    assert batch["masks"].shape == (8, len(REGION_NAMES), size, size)
    assert torch.equal(batch["masks"].sum(1), torch.ones(8, size, size, dtype=torch.long))
    assert batch["image"].min() >= 0 and batch["image"].max() <= 1
    xy = batch["landmarks"].floor().long().clamp(0, size - 1)
    rows = torch.arange(8)
    eyes = batch["masks"][:, REGION_NAMES.index("eyes")]
    mouth = batch["masks"][:, REGION_NAMES.index("mouth")]
    assert eyes[rows, xy[:, 0, 1], xy[:, 0, 0]].all() and eyes[rows, xy[:, 1, 1], xy[:, 1, 0]].all()
    near_mouth = torch.nn.functional.max_pool2d(
        mouth.float().unsqueeze(1), 2 * (size // 16) + 1, 1, size // 16
    )
    assert near_mouth[rows, 0, xy[:, 3, 1], xy[:, 3, 0]].all()


def test_template_boxes_cover_the_drawn_parts_on_average():
    batch = SynthFaces(n=64, seed=0, image_size=64).render(range(64))
    for box, region in (("mouth", "mouth"), ("nose", "nose"), ("left_eye", "eyes")):
        inside = template_box_mask(box, 64, 64)
        mask = batch["masks"][:, REGION_NAMES.index(region)]
        share = (mask & inside).sum() / mask.sum()
        assert share > 0.45, (box, float(share))
    assert len(TEMPLATE_BOXES) == 10
    assert template_box_mask("mouth", 2, 2).sum() >= 1


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="image_size"):
        SynthFaces(image_size=16)
    with pytest.raises(ValueError, match="split"):
        SynthFaces(split="dev")
    with pytest.raises(ValueError, match="unknown attribute 'Smile'"):
        SynthFaces(correlations={("Smile", "Male"): 0.9})
    with pytest.raises(ValueError, match=r"agreement 1.5 .* impossible .* allow 0.050..0.950"):
        SynthFaces(correlations={("Smiling", "Male"): 1.5})
    with pytest.raises(ValueError, match="with itself"):
        SynthFaces(correlations={("Male", "Male"): 0.9})
    with pytest.raises(ValueError, match=r"frequency of Male must be in \(0, 1\)"):
        SynthFaces(frequencies={"Male": 1.0})
    with pytest.raises(IndexError):
        SynthFaces(n=3).render([3])
