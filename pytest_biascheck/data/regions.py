"""Face part and region vocabulary: CelebAMask-HQ part names, the Attention-IoU grouping, ROI-IoU rectangles."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pytest_biascheck.errors import BiascheckError

#: CelebAMask-HQ part names; a part label map stores the index into this tuple (0 = background).
PART_NAMES: tuple[str, ...] = (
    "background",
    "skin",
    "nose",
    "eye_g",
    "l_eye",
    "r_eye",
    "l_brow",
    "r_brow",
    "l_ear",
    "r_ear",
    "mouth",
    "u_lip",
    "l_lip",
    "hair",
    "hat",
    "ear_r",
    "neck_l",
    "neck",
    "cloth",
)

#: Regions as the Attention-IoU paper groups the parts.
REGION_PARTS: dict[str, tuple[str, ...]] = {
    "background": ("background",),
    "skin": ("skin",),
    "nose": ("nose",),
    "eyeglasses": ("eye_g",),
    "eyes": ("l_eye", "r_eye"),
    "eyebrows": ("l_brow", "r_brow"),
    "ears": ("l_ear", "r_ear"),
    "mouth": ("mouth", "u_lip", "l_lip"),
    "hair": ("hair",),
    "hat": ("hat",),
    "earrings": ("ear_r",),
    "necklace": ("neck_l",),
    "neck": ("neck",),
    "cloth": ("cloth",),
}
REGION_NAMES: tuple[str, ...] = tuple(REGION_PARTS)

#: The region of each CelebA attribute that has one of its own in CelebAMask-HQ's part maps: what a
#: model should look at for it (the default regions of mask scores on CelebAMask-HQ). Bangs are
#: left out: they fill only a strip of the hair region.
CELEBA_REGIONS: dict[str, str] = {
    "Smiling": "mouth", "Mouth_Slightly_Open": "mouth", "Wearing_Lipstick": "mouth",
    "Big_Lips": "mouth", "Eyeglasses": "eyeglasses", "Narrow_Eyes": "eyes",
    "Bags_Under_Eyes": "eyes", "Arched_Eyebrows": "eyebrows", "Bushy_Eyebrows": "eyebrows",
    "Big_Nose": "nose", "Pointy_Nose": "nose", "Black_Hair": "hair", "Blond_Hair": "hair",
    "Brown_Hair": "hair", "Gray_Hair": "hair", "Wavy_Hair": "hair",
    "Straight_Hair": "hair", "Wearing_Hat": "hat", "Wearing_Earrings": "earrings",
    "Wearing_Necklace": "necklace",
}  # fmt: skip

#: Regions the Attention-IoU paper leaves out of mask scores (too large or uninformative): no
#: attribute gets one by default (the config may still name one). On a region as large as the skin
#: even a centre-prior map that ignores the image scores 0.87 (measured on SynthFaces' 16x16 grid).
UNSCORED_REGIONS: frozenset[str] = frozenset({"background", "skin", "cloth"})

#: The ten rectangular facial regions of the ROI-IoU paper on the aligned template face, as
#: (x0, y0, x1, y1) fractions of the image. The paper names no coordinates; these follow the
#: SynthFaces/CelebA-aligned template (eyes at y~0.42, mouth at y~0.72).
TEMPLATE_BOXES: dict[str, tuple[float, float, float, float]] = {
    "forehead": (0.28, 0.16, 0.72, 0.32),
    "left_eyebrow": (0.24, 0.30, 0.48, 0.38),
    "right_eyebrow": (0.52, 0.30, 0.76, 0.38),
    "left_eye": (0.26, 0.37, 0.47, 0.47),
    "right_eye": (0.53, 0.37, 0.74, 0.47),
    "nose": (0.42, 0.44, 0.58, 0.62),
    "left_cheek": (0.22, 0.50, 0.40, 0.68),
    "right_cheek": (0.60, 0.50, 0.78, 0.68),
    "mouth": (0.34, 0.64, 0.66, 0.80),
    "chin": (0.36, 0.80, 0.64, 0.92),
}


def parts_to_regions(parts: torch.Tensor) -> torch.Tensor:
    """Turn part label maps ``[..., H, W]`` (indices into PART_NAMES) into boolean regions ``[..., R, H, W]``."""
    region_of_part = torch.empty(len(PART_NAMES), dtype=torch.int64)
    for r, members in enumerate(REGION_PARTS.values()):
        for part in members:
            region_of_part[PART_NAMES.index(part)] = r
    regions = region_of_part[parts.long()].unsqueeze(-3)
    shape = (*parts.shape[:-2], len(REGION_NAMES), *parts.shape[-2:])
    # One-hot by scatter: about twice as fast as comparing against every region index.
    return torch.zeros(shape, dtype=torch.bool).scatter_(-3, regions, True)


def template_box_mask(name: str, height: int, width: int) -> torch.Tensor:
    """Boolean ``[height, width]`` mask of a template rectangle on any grid (a CAM grid or the image).

    A cell belongs to the box when its centre lies inside it; a box always covers at least one cell.
    """
    if name not in TEMPLATE_BOXES:
        raise KeyError(
            f"unknown template region {name!r}; choose one of {', '.join(TEMPLATE_BOXES)}"
        )
    x0, y0, x1, y1 = TEMPLATE_BOXES[name]
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    rows = (ys >= y0) & (ys < y1)
    cols = (xs >= x0) & (xs < x1)
    if not rows.any():
        rows[min(int((y0 + y1) / 2 * height), height - 1)] = True
    if not cols.any():
        cols[min(int((x0 + x1) / 2 * width), width - 1)] = True
    return rows[:, None] & cols[None, :]


#: Prefix that asks for a template rectangle instead of a region of the data's part maps.
BOX_PREFIX = "box:"


def resolve_region(region: str, part_regions: Sequence[str], what: str) -> tuple[str, str]:
    """``("mask", name)`` for a region of the data's part maps, ``("box", name)`` for a template
    rectangle asked for as ``box:NAME``: a plain name never falls back to a rectangle, so a map
    is never silently scored against a box the face may not fill. ``what`` names the use
    ("region of 'Smiling'") in errors."""
    if region.startswith(BOX_PREFIX):
        box = region.removeprefix(BOX_PREFIX)
        if box in TEMPLATE_BOXES:
            return "box", box
        raise BiascheckError(
            f"{what} {region!r} is no template box; choose from "
            f"{', '.join(BOX_PREFIX + b for b in TEMPLATE_BOXES)}"
        )
    if region in part_regions:
        return "mask", region
    found = (
        f"the data's part maps have no region {region!r} ({', '.join(part_regions)})"
        if part_regions
        else f"the data has no part maps, so no region {region!r}"
    )
    if region in TEMPLATE_BOXES:
        raise BiascheckError(
            f"{what} {region!r}: {found}; to score against the ROI-IoU paper's template "
            f"rectangle instead, name it {BOX_PREFIX}{region}"
        )
    boxes = ", ".join(BOX_PREFIX + b for b in TEMPLATE_BOXES)
    raise BiascheckError(f"{what} {region!r}: {found}; choose a part-map region or one of {boxes}")


def region_source(region: str) -> str:
    """How a resolved region is drawn, for reports: ``"template box"`` or ``"part map"``."""
    return "template box" if region.startswith(BOX_PREFIX) else "part map"
