"""SynthBirds: Waterbirds-style landbirds and waterbirds drawn on land or water, with bird masks.

The bird (small, varied, subtle class cues) is made harder to see than the background, so a model
trained at a high ``bias`` really takes the background shortcut; difficulty knobs set how much harder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from pytest_biascheck.data.base import BiasDataset, Sample
from pytest_biascheck.data.synth_common import (
    SPLITS,
    col,
    ellipse,
    grid,
    image_rngs,
    paint,
    pixel_noise,
    smooth_noise,
)
from pytest_biascheck.errors import BiascheckError

#: Plumage at full colour gap; a bird's colour lies between these, by class, plus per-image jitter.
LANDBIRD_RGB = np.array([0.78, 0.52, 0.22])
WATERBIRD_RGB = np.array([0.90, 0.90, 0.92])
BEAK_RGB = (0.22, 0.20, 0.18)
SKY_RGB = np.array([0.72, 0.83, 0.93])
GRASS_RGB = torch.tensor([0.32, 0.52, 0.20]).view(1, 3, 1, 1)
SOIL_RGB = torch.tensor([0.52, 0.40, 0.24]).view(1, 3, 1, 1)
CROWN_RGB = torch.tensor([0.12, 0.32, 0.10]).view(1, 3, 1, 1)
TRUNK_RGB = (0.30, 0.20, 0.10)
SEA_RGB = np.array([0.18, 0.42, 0.66])
MARK_RGB = (0.95, 0.10, 0.85)
MARK_SIZE = 0.08  # side of the corner mark, as a fraction of the image side

#: Per-image uniform draws, in stream order (changing the order changes every image).
_FIELDS = (
    "morph",
    "red",
    "green",
    "blue",
    "bright",
    "area",
    "turn",
    "flip",
    "x",
    "y",
    "horizon",
    "sky",
    "soil",
    "sea",
    "wave_freq",
    "wave_phase",
)
_TREE_FIELDS = ("present", "x", "base", "trunk", "crown", "height")
_TREES = 3
_MARGIN = 0.03  # gap kept between the bird and the image border, as a fraction of the image
_CANON = 96  # resolution of the bird-local grid used to size and place each bird
_CANON_HALF = 2.4  # that grid spans [-2.4, 2.4] bird units, enough for the longest bird


class SynthBirds(BiasDataset):
    """Landbird (0) or waterbird (1) on land (place 0) or water (place 1); Waterbirds' splits.

    ``bias`` is the fraction of training birds on their class's usual background and
    ``p_waterbird`` the training share of waterbirds; val and test hold the four (class, place)
    groups in equal numbers. Group sizes are exact (rounded), placed by a seeded permutation.
    Difficulty knobs: ``bird_area`` (mask area range as a fraction of the image), ``shape_gap``
    and ``colour_gap`` (0 = classes drawn alike, 1 = as different as the palette allows) and
    ``noise`` (pixel noise standard deviation). Each image is a pure function of (seed, split,
    index) and the settings, whatever the batch it is rendered in.

    ``mark`` adds a second shortcut of another nature: a small magenta square in the top-left
    corner (about 0.6% of the image), present with P(mark == Waterbird) = ``mark`` in the training
    split and on exactly half of every (class, place) group in val/test. It becomes a group column
    ``mark`` and a region ``mark``, so a model that reads the mark instead of the bird shows in the
    group checks across ``mark`` and in the bird's mask score.
    """

    attributes = ("Waterbird",)
    group_names = ("place",)
    region_names = ("bird", "background")
    default_scope = {  # noqa: RUF012 - read-only class default
        "protected": ["place"],
        "regions": {"Waterbird": "bird"},
    }

    def __init__(
        self,
        n: int,
        split: str = "train",
        bias: float = 0.95,
        seed: int = 0,
        image_size: int = 64,
        *,
        p_waterbird: float = 0.25,
        bird_area: tuple[float, float] = (0.10, 0.18),
        shape_gap: float = 0.5,
        colour_gap: float = 0.15,
        noise: float = 0.05,
        mark: float | None = None,
    ) -> None:
        _check_args(
            n, split, bias, image_size, p_waterbird, bird_area, shape_gap, colour_gap, noise
        )
        if mark is not None and not 0.0 <= mark <= 1.0:
            raise BiascheckError(
                f"SynthBirds: mark={mark!r} must lie in [0, 1] (P(mark == Waterbird))"
            )
        self.n, self.split, self.bias, self.seed, self.image_size = n, split, bias, seed, image_size
        self.p_waterbird, self.bird_area = p_waterbird, (float(bird_area[0]), float(bird_area[1]))
        self.shape_gap, self.colour_gap, self.noise = shape_gap, colour_gap, noise
        waterbird, place = _assign_groups(n, split, bias, p_waterbird, seed)
        #: All labels ``[n, 1]`` float32 and groups ``[n, 1]`` int64, without rendering an image.
        self.labels = torch.from_numpy(waterbird).float().unsqueeze(1)
        self.groups = torch.from_numpy(place).unsqueeze(1)
        self.mark = mark
        if mark is not None:
            marked = _assign_marks(waterbird, split, mark, seed)
            self.groups = torch.cat([self.groups, torch.from_numpy(marked).unsqueeze(1)], 1)
            self.group_names = ("place", "mark")
            self.region_names = ("bird", "background", "mark")

    def __len__(self) -> int:
        return self.n

    def group_counts(self) -> torch.Tensor:
        """Realised counts ``[2, 2]`` indexed ``[Waterbird, place]``."""
        codes = 2 * self.labels[:, 0].long() + self.groups[:, 0]
        return torch.bincount(codes, minlength=4).view(2, 2)

    def realised_bias(self) -> float:
        """Fraction of birds on their class's usual background (the requested ``bias`` after rounding)."""
        return float((self.labels[:, 0].long() == self.groups[:, 0]).double().mean())

    def render(self, indices: Sequence[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        """A batch as tensors: image ``[B,3,H,W]``, labels ``[B,1]``, groups ``[B,1]``,
        masks ``[B,2,H,W]`` (bird, background) and index ``[B]``."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError("SynthBirds.render: indices is empty; pass at least one index")
        if idx.min() < 0 or idx.max() >= self.n:
            raise IndexError(
                f"SynthBirds.render: indices must lie in [0, {self.n}); got {idx.tolist()}"
            )
        size = self.image_size
        rngs = image_rngs(self.seed, self.split, idx.tolist())
        draws = np.stack([r.random(len(_FIELDS) + _TREES * len(_TREE_FIELDS)) for r in rngs])
        params = dict(zip(_FIELDS, draws[:, : len(_FIELDS)].T, strict=True))
        trees = draws[:, len(_FIELDS) :].reshape(-1, _TREES, len(_TREE_FIELDS))
        texture = {
            "soil": smooth_noise(rngs, size, size, cells=5),
            "detail": smooth_noise(rngs, size, size, cells=16),
            "waves": smooth_noise(rngs, size, size, cells=6),
        }
        waterbird = self.labels[idx, 0].numpy()
        place = self.groups[idx, :1]
        background = torch.where(
            place.view(-1, 1, 1, 1).bool(),
            _water(params, texture, size),
            _land(params, trees, texture, size),
        )
        bird, wing, beak = self._bird(params, waterbird, size)
        masks = [bird, ~bird]
        if self.mark is not None:
            mark = _mark_mask(size) & self.groups[idx, 1].view(-1, 1, 1).bool()
            bird, wing, beak = bird & ~mark, wing & ~mark, beak & ~mark
            masks = [bird, ~bird & ~mark, mark]
        image = torch.where(
            bird.unsqueeze(1), self._plumage(params, waterbird, texture), background
        )
        image = torch.where(wing.unsqueeze(1), image * 0.72, image)
        image = paint(image, beak, torch.tensor(BEAK_RGB).expand(len(idx), 3))
        if self.mark is not None:
            image = paint(image, masks[2], torch.tensor(MARK_RGB).expand(len(idx), 3))
        image = (image + pixel_noise(rngs, size, size, [self.noise] * len(idx))).clamp(0.0, 1.0)
        return {
            "image": image,
            "labels": self.labels[idx].clone(),
            "groups": self.groups[idx].clone(),
            "masks": torch.stack(masks, dim=1),
            "index": torch.from_numpy(idx),
        }

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        """A batch as a list of samples, rendered in one vectorised pass (used by DataLoader)."""
        batch = self.render(indices)
        keys = tuple(batch)
        return [
            Sample(zip(keys, item, strict=True))
            for item in zip(*(batch[k] for k in keys), strict=True)
        ]

    def __getitem__(self, index: int) -> Sample:
        """One sample, bit-identical to the same index rendered inside any batch."""
        return self.__getitems__([int(index)])[0]

    def _morph(self, params: dict[str, np.ndarray], waterbird: np.ndarray) -> torch.Tensor:
        """Silhouette morph per image, 0 = landbird .. 1 = waterbird: class centre plus jitter."""
        morph = 0.5 + self.shape_gap * (waterbird - 0.5) + 0.3 * (params["morph"] - 0.5)
        return col(np.clip(morph, 0.0, 1.0))

    def _bird(
        self, params: dict[str, np.ndarray], waterbird: np.ndarray, size: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bird, wing and beak masks ``[B, H, W]``: sized to the drawn area, turned, flipped, placed."""
        morph = self._morph(params, waterbird)
        span = 1.0 - 2.0 * _MARGIN
        gx, gy = grid(_CANON, _CANON)
        cu, cv = (gx - 0.5) * 2 * _CANON_HALF, (0.5 - gy) * 2 * _CANON_HALF
        canon = _bird_parts(cu, cv, morph)[0]
        cell = 2 * _CANON_HALF / _CANON
        unit_area = canon.flatten(1).sum(1).double().numpy() * cell**2
        turn = (params["turn"] - 0.5) * 0.7
        cos, sin = col(np.cos(turn)), col(np.sin(turn))
        flip = col(np.where(params["flip"] < 0.5, -1.0, 1.0))
        # Extent, in image axes (y down) at unit scale, of the bird's points, padded by a cell.
        ox, oy = cos * flip * cu + sin * cv, sin * flip * cu - cos * cv
        inf = torch.tensor(math.inf)
        x0, y0 = (torch.where(canon, o, inf).amin((1, 2)).numpy() - cell for o in (ox, oy))
        x1, y1 = (torch.where(canon, o, -inf).amax((1, 2)).numpy() + cell for o in (ox, oy))
        lo, hi = self.bird_area
        area = lo + (hi - lo) * params["area"]
        scale = np.minimum(np.sqrt(area / unit_area), span / np.maximum(x1 - x0, y1 - y0))
        cx = _MARGIN - x0 * scale + (span - (x1 - x0) * scale) * params["x"]
        cy = _MARGIN - y0 * scale + (span - (y1 - y0) * scale) * params["y"]
        x, y = grid(size, size)
        dx, dy = x - col(cx), y - col(cy)
        scale_t = col(scale)
        u = flip * (cos * dx + sin * dy) / scale_t
        v = (sin * dx - cos * dy) / scale_t
        return _bird_parts(u, v, morph)

    def _plumage(
        self, params: dict[str, np.ndarray], waterbird: np.ndarray, texture: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Textured bird colour ``[B, 3, H, W]``: class colour at ``colour_gap``, jittered per image."""
        centre = (LANDBIRD_RGB + WATERBIRD_RGB) / 2 + self.colour_gap * np.outer(
            waterbird - 0.5, WATERBIRD_RGB - LANDBIRD_RGB
        )
        jitter = 0.16 * (np.stack([params["red"], params["green"], params["blue"]], 1) - 0.5)
        rgb = (centre + jitter) * (0.85 + 0.25 * params["bright"])[:, None]
        return col(rgb.reshape(-1)).view(-1, 3, 1, 1) * (1.0 + 0.1 * texture["detail"])


def _bird_parts(
    u: torch.Tensor, v: torch.Tensor, morph: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bird, wing and beak masks in bird-local units (body half-length 1, facing +u, v up).

    Landbirds (morph 0) are plump and perched, with a short neck, big head, short beak and long
    drooping tail; waterbirds (morph 1) are long and level, with a long neck, small head, long bill
    and short upturned tail. Every part moves continuously with ``morph [B, 1, 1]``.
    """

    def lerp(land: float, water: float) -> torch.Tensor:
        return land + (water - land) * morph

    def along(angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cos(angle), torch.sin(angle)

    body_h, tilt = lerp(0.62, 0.38), lerp(0.55, 0.0)
    ex, ey = along(tilt)
    body = ellipse(u, v, 0.0, 0.0, 1.0, body_h, tilt)
    wing = ellipse(
        u,
        v,
        -0.1 * ex - 0.15 * body_h * ey,
        -0.1 * ey + 0.15 * body_h * ex,
        0.6,
        0.55 * body_h,
        tilt - 0.1,
    )
    neck_x, neck_y = 0.75 * ex - 0.4 * body_h * ey, 0.75 * ey + 0.4 * body_h * ex
    neck_dir, neck_len, neck_w = lerp(1.05, 1.35), lerp(0.30, 0.95), lerp(0.30, 0.16)
    nx, ny = along(neck_dir)
    neck = ellipse(
        u,
        v,
        neck_x + nx * neck_len / 2,
        neck_y + ny * neck_len / 2,
        (neck_len + neck_w) / 2,
        neck_w / 2,
        neck_dir,
    )
    head_x, head_y, head_r = neck_x + nx * neck_len, neck_y + ny * neck_len, lerp(0.34, 0.24)
    head = ellipse(u, v, head_x, head_y, head_r, head_r)
    beak_dir, beak_len, beak_w = lerp(-0.15, -0.30), lerp(0.28, 0.70), lerp(0.14, 0.08)
    bx, by = along(beak_dir)
    reach = 0.7 * head_r + beak_len / 2
    beak = ellipse(
        u, v, head_x + bx * reach, head_y + by * reach, beak_len / 2, beak_w / 2, beak_dir
    )
    tail_dir, tail_len, tail_w = (
        tilt + math.pi + lerp(0.35, -0.30),
        lerp(0.75, 0.30),
        lerp(0.26, 0.18),
    )
    tx, ty = along(tail_dir)
    tail = ellipse(
        u,
        v,
        -0.85 * ex + tx * tail_len / 2,
        -0.85 * ey + ty * tail_len / 2,
        tail_len / 2 + tail_w / 4,
        tail_w / 2,
        tail_dir,
    )
    bird = body | wing | neck | head | beak | tail
    return bird, wing, beak


def _horizon(params: dict[str, np.ndarray]) -> torch.Tensor:
    """Horizon height per image ``[B, 1, 1]``, drawn alike for both places."""
    return col(0.15 + 0.25 * params["horizon"])


def _sky(params: dict[str, np.ndarray], size: int) -> torch.Tensor:
    """Pale sky ``[B, 3, H, W]``, lighter towards the horizon."""
    rgb = col((SKY_RGB + 0.08 * (params["sky"][:, None] - 0.5)).reshape(-1)).view(-1, 3, 1, 1)
    _, y = grid(size, size)
    return rgb * (0.9 + 0.15 * (y / _horizon(params)).clamp(max=1.0)).unsqueeze(1)


def _land(
    params: dict[str, np.ndarray], trees: np.ndarray, texture: dict[str, torch.Tensor], size: int
) -> torch.Tensor:
    """Grass and soil under the sky, mottled by smooth noise, with up to three trees."""
    x, y = grid(size, size)
    horizon = _horizon(params)
    mix = (0.5 + 0.5 * texture["soil"] + 0.6 * (col(params["soil"]) - 0.5).unsqueeze(1)).clamp(0, 1)
    ground = (GRASS_RGB + (SOIL_RGB - GRASS_RGB) * mix) * (1.0 + 0.15 * texture["detail"])
    image = torch.where((y < horizon).unsqueeze(1), _sky(params, size), ground)
    crown_rgb = CROWN_RGB * (1.0 + 0.2 * texture["detail"])
    for k in range(_TREES):
        present, tx, base, trunk, crown, height = (col(c) for c in trees[:, k].T)
        base = horizon + (0.05 + 0.4 * base) * (1.0 - horizon)
        top = base - 0.12 - 0.16 * height
        trunk_mask = (
            ((x - tx).abs() < 0.01 + 0.012 * trunk) & (y < base) & (y > top) & (present < 0.7)
        )
        image = paint(image, trunk_mask, torch.tensor(TRUNK_RGB).expand(len(trees), 3))
        radius = 0.06 + 0.07 * crown
        crown_mask = ellipse(x, y, tx, top, radius, 0.9 * radius) & (present < 0.7)
        image = torch.where(crown_mask.unsqueeze(1), crown_rgb, image)
    return image


def _water(
    params: dict[str, np.ndarray], texture: dict[str, torch.Tensor], size: int
) -> torch.Tensor:
    """Blue water under the sky, darker with depth, with irregular bands of waves."""
    _, y = grid(size, size)
    horizon = _horizon(params)
    rgb = col((SEA_RGB + 0.1 * (params["sea"][:, None] - 0.5)).reshape(-1)).view(-1, 3, 1, 1)
    depth = ((y - horizon) / (1.0 - horizon)).clamp(0.0, 1.0)
    phase = col(params["wave_phase"]) + (10.0 + 10.0 * col(params["wave_freq"])) * depth
    phase = phase.unsqueeze(1) + 0.8 * texture["waves"]
    wave = 4.0 * (phase - phase.floor() - 0.5).abs() - 1.0  # triangle wave in [-1, 1]
    water = rgb * (1.15 - 0.35 * depth).unsqueeze(1) * (1.0 + 0.1 * wave)
    return torch.where((y < horizon).unsqueeze(1), _sky(params, size), water)


def _assign_groups(
    n: int, split: str, bias: float, p_waterbird: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class and place per index: training group sizes rounded so the overall bias is within half
    a bird of the request, placed by a seeded permutation; val/test cycle the four groups by index."""
    if split != "train":
        codes = np.arange(n) % 4
    else:
        waterbirds = int(n * p_waterbird + 0.5)
        landbirds = n - waterbirds
        usual_water = int(waterbirds * bias + 0.5)
        usual_land = min(max(int(n * bias + 0.5) - usual_water, 0), landbirds)  # total rounds once
        counts = [usual_land, landbirds - usual_land, waterbirds - usual_water, usual_water]
        codes = np.repeat(np.arange(4), counts)  # code = 2 * waterbird + place
        codes = np.random.default_rng([seed, 1000 + SPLITS.index(split)]).permutation(codes)
    return codes // 2, codes % 2


def _assign_marks(waterbird: np.ndarray, split: str, mark: float, seed: int) -> np.ndarray:
    """Mark per index: in training, exactly round(n * mark) images have mark == class, placed by
    a seeded permutation of their own; in val/test, every other image of each (class, place) group
    (the groups cycle by index), so the mark is independent of class and place."""
    n = len(waterbird)
    if split != "train":
        return (np.arange(n) // 4) % 2
    agree = np.zeros(n, dtype=np.int64)
    agree[: int(n * mark + 0.5)] = 1
    agree = np.random.default_rng([seed, 2000 + SPLITS.index(split)]).permutation(agree)
    return np.where(agree == 1, waterbird, 1 - waterbird)


def _mark_mask(size: int) -> torch.Tensor:
    """The corner mark's pixels ``[1, H, W]``: a square of side ``MARK_SIZE`` one pixel from the
    top-left corner (at least 3 pixels, so it survives any image size)."""
    side = max(3, round(MARK_SIZE * size))
    mask = torch.zeros(1, size, size, dtype=torch.bool)
    mask[:, 1 : 1 + side, 1 : 1 + side] = True
    return mask


def _check_args(
    n: int,
    split: str,
    bias: float,
    image_size: int,
    p_waterbird: float,
    bird_area: tuple[float, float],
    shape_gap: float,
    colour_gap: float,
    noise: float,
) -> None:
    """Refuse settings the generator cannot honour, naming the argument and the valid range."""
    checks = (
        (isinstance(n, (int, np.integer)) and n >= 1, f"n={n!r} must be a positive integer"),
        (split in SPLITS, f"split={split!r} is unknown; use one of {', '.join(SPLITS)}"),
        (
            0.5 <= bias <= 1.0,
            f"bias={bias!r} must lie in [0.5, 1] (fraction of birds on their usual background)",
        ),
        (
            isinstance(image_size, (int, np.integer)) and 32 <= image_size <= 224,
            f"image_size={image_size!r} must be an integer in 32..224",
        ),
        (0.0 < p_waterbird < 1.0, f"p_waterbird={p_waterbird!r} must lie in (0, 1)"),
        (
            len(bird_area) == 2 and 0.0 < bird_area[0] <= bird_area[1] <= 0.3,
            f"bird_area={bird_area!r} must be (low, high) with 0 < low <= high <= 0.3",
        ),
        (0.0 <= shape_gap <= 1.0, f"shape_gap={shape_gap!r} must lie in [0, 1]"),
        (0.0 <= colour_gap <= 1.0, f"colour_gap={colour_gap!r} must lie in [0, 1]"),
        (0.0 <= noise <= 0.5, f"noise={noise!r} must lie in [0, 0.5]"),
    )
    for ok, message in checks:
        if not ok:
            raise BiascheckError(f"SynthBirds: {message}")
