"""SynthFaces: procedurally drawn aligned faces with CelebA attribute names, CelebAMask-HQ part masks,
5-point landmarks and tunable attribute correlations (shortcuts), rendered in vectorised batches.

Each attribute is drawn in its own part of the face, so a model has to look there to predict it, and
correlations between attributes let a model take a shortcut through another part instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from pytest_biascheck.data import synth_common as sc
from pytest_biascheck.data.base import BiasDataset, Sample
from pytest_biascheck.data.regions import PART_NAMES, REGION_NAMES, parts_to_regions

ATTRIBUTES: tuple[str, ...] = (
    "Smiling", "Mouth_Slightly_Open", "Wearing_Lipstick", "Heavy_Makeup", "High_Cheekbones",
    "Eyeglasses", "Bushy_Eyebrows", "Big_Nose", "Black_Hair", "Blond_Hair", "Brown_Hair",
    "Gray_Hair", "Bangs", "Wearing_Hat", "Double_Chin", "Chubby", "Male", "Young",
    "Wearing_Earrings", "Wearing_Necklace",
)  # fmt: skip

HAIR_COLOURS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")

#: Region where each attribute is drawn: what a model should look at (mask score / energy region).
ATTRIBUTE_REGIONS: dict[str, str] = {
    "Smiling": "mouth", "Mouth_Slightly_Open": "mouth", "Wearing_Lipstick": "mouth",
    "Heavy_Makeup": "skin", "High_Cheekbones": "skin", "Eyeglasses": "eyeglasses",
    "Bushy_Eyebrows": "eyebrows", "Big_Nose": "nose", "Black_Hair": "hair", "Blond_Hair": "hair",
    "Brown_Hair": "hair", "Gray_Hair": "hair", "Bangs": "hair", "Wearing_Hat": "hat",
    "Double_Chin": "skin", "Chubby": "skin", "Male": "skin", "Young": "skin",
    "Wearing_Earrings": "earrings", "Wearing_Necklace": "necklace",
}  # fmt: skip

#: The regions mask scores use when the config names none: an attribute's region unless its
#: drawing covers only a small part of it (bangs are a strip of the hair: a model looking right at
#: them scores a lift of 0.10 against the whole hair, against 0.15 for Smiling's mouth).
DEFAULT_REGIONS: dict[str, str] = {a: r for a, r in ATTRIBUTE_REGIONS.items() if a != "Bangs"}

DEFAULT_FREQUENCIES: dict[str, float] = {
    "Smiling": 0.5, "Mouth_Slightly_Open": 0.45, "Wearing_Lipstick": 0.45, "Heavy_Makeup": 0.4,
    "High_Cheekbones": 0.45, "Eyeglasses": 0.15, "Bushy_Eyebrows": 0.2, "Big_Nose": 0.25,
    "Bangs": 0.2, "Wearing_Hat": 0.1, "Double_Chin": 0.1, "Chubby": 0.1, "Male": 0.45,
    "Young": 0.75, "Wearing_Earrings": 0.2, "Wearing_Necklace": 0.15,
}  # fmt: skip

#: Hair colour is one category per face; its four labels are one-hot.
DEFAULT_HAIR: dict[str, float] = {
    "Black_Hair": 0.3,
    "Blond_Hair": 0.2,
    "Brown_Hair": 0.35,
    "Gray_Hair": 0.15,
}

#: Correlations of the biased preset: P(second == first) for each pair.
BIASED_CORRELATIONS: dict[tuple[str, str], float] = {
    ("Smiling", "Black_Hair"): 0.95,
    ("Heavy_Makeup", "Wearing_Lipstick"): 0.9,
    ("Chubby", "Double_Chin"): 0.9,
}
#: Frequencies of the biased preset: black hair as common as smiling, so that 95% agreement is
#: possible without changing either frequency.
BIASED_FREQUENCIES: dict[str, float] = {"Black_Hair": 0.5}


def _hair_weights(hair: Mapping[str, float], frequencies: Mapping[str, float]) -> dict[str, float]:
    """Hair-colour shares summing to 1; a colour given in ``frequencies`` gets exactly that share
    and the other colours share the rest in their given proportions."""
    unknown = set(hair) - set(HAIR_COLOURS)
    if unknown:
        raise ValueError(
            f"unknown hair colour {sorted(unknown)[0]!r}; use {', '.join(HAIR_COLOURS)}"
        )
    if any(v < 0 for v in hair.values()) or sum(hair.values()) <= 0:
        raise ValueError("hair colour shares must be non-negative and not all zero")
    total = sum(hair.values())
    weights = {h: hair[h] / total for h in HAIR_COLOURS}
    fixed = {h: float(v) for h, v in frequencies.items() if h in HAIR_COLOURS}
    for name, value in fixed.items():
        if not 0.0 < value < 1.0:
            raise ValueError(f"frequency of {name} must be in (0, 1), got {value}")
    rest = 1.0 - sum(fixed.values())
    free = sum(w for h, w in weights.items() if h not in fixed)
    if rest <= 0 or (free == 0 and rest > 1e-12):
        raise ValueError(
            f"hair colour frequencies {fixed} leave no valid share for the other colours"
        )
    return {h: fixed.get(h, weights[h] * rest / free if free else 0.0) for h in HAIR_COLOURS}


_HAIR_RGB = np.array(
    [[0.07, 0.06, 0.06], [0.92, 0.80, 0.45], [0.45, 0.28, 0.15], [0.68, 0.68, 0.70]]
)
_SKIN_LIGHT, _SKIN_DARK = np.array([0.96, 0.80, 0.69]), np.array([0.45, 0.30, 0.22])
_CANON_LANDMARKS = np.array([[0.39, 0.42], [0.61, 0.42], [0.5, 0.57], [0.42, 0.70], [0.58, 0.70]])


@dataclass
class Appearance:
    """Difficulty knobs: how visible each rendered attribute is (tune with the correlations)."""

    smile_curvature: float = 1.0  # mouth-corner lift (1 = corners 6% of the image above the centre)
    teeth: float = 0.5  # brightness of the teeth shown when smiling (0 = no teeth)
    lip_contrast: float = 0.5  # 1 = lips clearly darker than skin
    noise: float = 0.04  # pixel noise standard deviation
    pose: float = 1.0  # scale of shift/scale/rotation jitter
    glasses: float = 1.0  # contrast of the glasses' rims against the skin (1 = near black)
    extra: dict[str, float] = field(default_factory=dict)


class SynthFaces(BiasDataset):
    """Synthetic CelebA-like faces; image ``i`` is a pure function of (seed, split, i).

    ``correlations`` maps ``(first, second)`` to the agreement P(second == first) (below 0.5
    anti-correlates); ``mcc`` gives pairs a Matthews correlation instead. Either way each attribute
    keeps its own frequency (``frequencies``; hair colours from ``hair``): the second attribute is
    drawn given the first from the 2x2 table that has both marginals and the requested strength, so a
    shortcut can be added without changing how common either attribute is. A strength the two
    frequencies cannot reach is refused with the range they allow.
    """

    attributes = ATTRIBUTES
    region_names = REGION_NAMES
    default_scope = {  # noqa: RUF012 - read-only class default
        "protected": ["Male", "Young", "Black_Hair"],  # the nuisances: gender, age, hair colour
        "regions": DEFAULT_REGIONS,
    }

    def __init__(
        self,
        n: int = 2000,
        split: str = "test",
        seed: int = 0,
        image_size: int = 64,
        correlations: Mapping[tuple[str, str], float] | None = None,
        mcc: Mapping[tuple[str, str], float] | None = None,
        frequencies: Mapping[str, float] | None = None,
        hair: Mapping[str, float] | None = None,
        appearance: Appearance | None = None,
    ) -> None:
        if not 32 <= image_size <= 224:
            raise ValueError(f"image_size must be in 32..224, got {image_size}")
        if split not in sc.SPLITS:
            raise ValueError(f"split must be one of {sc.SPLITS}, got {split!r}")
        if n < 1:
            raise ValueError(f"n must be positive, got {n}")
        self.n, self.split, self.seed, self.image_size = n, split, seed, image_size
        self.appearance = appearance or Appearance()
        self.hair = _hair_weights({**DEFAULT_HAIR, **(hair or {})}, frequencies or {})
        self.frequencies = {
            **DEFAULT_FREQUENCIES,
            **{k: v for k, v in (frequencies or {}).items() if k not in HAIR_COLOURS},
        }
        for name, value in self.frequencies.items():
            if name not in ATTRIBUTES:
                raise ValueError(f"unknown attribute {name!r} in frequencies")
            if not 0.0 < value < 1.0:
                raise ValueError(f"frequency of {name} must be in (0, 1), got {value}")
        self.correlations = {**dict(correlations or {}), **dict(mcc or {})}
        self._joint = {
            pair: self._joint_rate(pair, value, pair in (mcc or {}))
            for pair, value in self.correlations.items()
        }
        self._labels = self._draw_labels()

    def __len__(self) -> int:
        return self.n

    @property
    def labels(self) -> torch.Tensor:
        """All labels ``[n, A]`` (cheap: drawn once at construction, images are drawn on demand)."""
        return self._labels

    def frequency(self, name: str) -> float:
        """The configured frequency of an attribute (a hair colour's share of faces)."""
        return self.hair[name] if name in HAIR_COLOURS else self.frequencies[name]

    def decorrelated(self, **overrides) -> SynthFaces:
        """The same data recipe with every correlation removed: the balanced counterpart."""
        params = dict(
            n=self.n, split=self.split, seed=self.seed, image_size=self.image_size,
            frequencies=self.frequencies, hair=self.hair, appearance=self.appearance,
        )  # fmt: skip
        return SynthFaces(**{**params, **overrides})

    def realised_correlations(self) -> dict[tuple[str, str], dict[str, float]]:
        """For each requested pair: the realised agreement P(second == first), Matthews correlation
        and both attributes' realised frequencies (which match the configured ones)."""
        out = {}
        for a, b in self.correlations:
            x = self._labels[:, ATTRIBUTES.index(a)].double()
            y = self._labels[:, ATTRIBUTES.index(b)].double()
            agree = (x == y).double().mean().item()
            cov = ((x - x.mean()) * (y - y.mean())).mean()
            denom = (x.std(unbiased=False) * y.std(unbiased=False)).item()
            out[(a, b)] = {
                "agreement": agree,
                "mcc": cov.item() / denom if denom > 0 else 0.0,
                "frequency_first": x.mean().item(),
                "frequency_second": y.mean().item(),
            }
        return out

    def notes(self) -> list[str]:
        """One line per requested correlation: requested and realised strength, kept frequencies."""
        lines = []
        for (a, b), real in self.realised_correlations().items():
            lines.append(
                f"{a}~{b}: requested {self.correlations[(a, b)]:g}, realised agreement "
                f"{real['agreement']:.3f} (MCC {real['mcc']:.3f}); frequencies {a} "
                f"{real['frequency_first']:.3f} (set {self.frequency(a):g}), {b} "
                f"{real['frequency_second']:.3f} (set {self.frequency(b):g})"
            )
        return lines

    def _joint_rate(self, pair: tuple[str, str], value: float, is_mcc: bool) -> float:
        """P(first = 1 and second = 1) that gives ``pair`` the requested agreement (or MCC) with both
        frequencies kept; a strength outside what the frequencies allow names the allowed range."""
        a, b = pair
        for name in pair:
            if name not in ATTRIBUTES:
                raise ValueError(f"unknown attribute {name!r} in correlations")
        if a == b:
            raise ValueError(f"correlation {a}~{b} pairs an attribute with itself")
        pa, pb = self.frequency(a), self.frequency(b)
        low, high = max(0.0, pa + pb - 1.0), min(pa, pb)
        spread = math.sqrt(pa * (1 - pa) * pb * (1 - pb))
        if is_mcc:
            joint = pa * pb + value * spread
            allowed = ((low - pa * pb) / spread, (high - pa * pb) / spread)
            kind = "MCC"
        else:
            joint = (pa + pb - (1.0 - value)) / 2.0
            allowed = (1.0 - pa - pb + 2.0 * low, 1.0 - pa - pb + 2.0 * high)
            kind = "agreement"
        if not low - 1e-12 <= joint <= high + 1e-12:
            raise ValueError(
                f"{kind} {value:g} for {a}~{b} is impossible with frequencies {a} {pa:g} and {b} "
                f"{pb:g}; they allow {allowed[0]:.3f}..{allowed[1]:.3f}: change the strength or a "
                f"frequency (e.g. freq={b}@{pa:g})"
            )
        return min(max(joint, low), high)

    def _draw_labels(self) -> torch.Tensor:
        tag = sc.SPLITS.index(self.split)
        rng = np.random.default_rng([self.seed, tag, 2**31 - 1])
        u = rng.random((self.n, len(ATTRIBUTES) + 1))
        labels = np.zeros((self.n, len(ATTRIBUTES)), dtype=np.int64)
        col = {name: i for i, name in enumerate(ATTRIBUTES)}
        for name, p in self.frequencies.items():
            labels[:, col[name]] = u[:, col[name]] < p
        hair_p = np.array([self.hair[h] for h in HAIR_COLOURS], dtype=np.float64)
        hair = np.searchsorted(np.cumsum(hair_p), u[:, -1], side="right")
        hair = np.minimum(hair, len(HAIR_COLOURS) - 1)
        hair_columns = [col[h] for h in HAIR_COLOURS]
        labels[:, hair_columns] = np.eye(len(HAIR_COLOURS), dtype=np.int64)[hair]
        for k, ((a, b), joint) in enumerate(self._joint.items()):
            # Each pair draws from its own stream: adding a pair leaves every other label as it was.
            pair_u = np.random.default_rng([self.seed, tag, 2**31 - 2, k]).random((self.n, 2))
            pa, pb = self.frequency(a), self.frequency(b)
            given = np.where(labels[:, col[a]] == 1, joint / pa, (pb - joint) / (1.0 - pa))
            value = (pair_u[:, 0] < given).astype(np.int64)
            if b in HAIR_COLOURS:
                hair = self._set_hair(hair, HAIR_COLOURS.index(b), value, pair_u[:, 1])
                labels[:, hair_columns] = np.eye(len(HAIR_COLOURS), dtype=np.int64)[hair]
            else:
                labels[:, col[b]] = value
        return torch.from_numpy(labels).float()

    def _set_hair(
        self, hair: np.ndarray, colour: int, value: np.ndarray, u: np.ndarray
    ) -> np.ndarray:
        """Force hair colour ``colour`` where ``value`` is 1; elsewhere redraw it among the others
        where it was that colour (so every other colour keeps its share)."""
        others = np.array([p if i != colour else 0.0 for i, p in enumerate(self.hair.values())])
        redraw = np.searchsorted(np.cumsum(others / others.sum()), u, side="right")
        redraw = np.minimum(redraw, len(HAIR_COLOURS) - 1)
        return np.where(value == 1, colour, np.where(hair == colour, redraw, hair))

    def __getitem__(self, index: int) -> Sample:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        batch = self.render(indices)
        return [{k: v[i] for k, v in batch.items()} for i in range(len(indices))]

    def render(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Draw a batch: ``image [B,3,H,W]``, ``labels``, ``masks [B,R,H,W]``, ``parts``, ``landmarks``."""
        idx = [int(i) for i in indices]
        for i in idx:
            if not 0 <= i < self.n:
                raise IndexError(f"index {i} out of range for SynthFaces of length {self.n}")
        labels = self._labels[idx]
        rngs = sc.image_rngs(self.seed, self.split, idx)
        image, parts, landmarks = _draw(labels, rngs, self.image_size, self.appearance)
        return {
            "image": image,
            "labels": labels.clone(),
            "masks": parts_to_regions(parts),
            "parts": parts,
            "landmarks": landmarks,
            "index": torch.tensor(idx, dtype=torch.int64),
        }


#: Drawing layers in painter's order: (layer name, CelebAMask-HQ part it belongs to). Several layers
#: may share a part (an iris is part of the eye), so colours and part masks come from one label map.
_LAYERS: tuple[tuple[str, str], ...] = (
    ("background", "background"), ("cloth", "cloth"), ("neck", "neck"), ("necklace", "neck_l"),
    ("hair_back", "hair"), ("l_ear", "l_ear"), ("r_ear", "r_ear"), ("earring", "ear_r"),
    ("skin", "skin"), ("double_chin", "skin"), ("stubble", "skin"), ("wrinkles", "skin"),
    ("cheekbones", "skin"), ("nose", "nose"), ("eye_shadow", "skin"), ("l_eye", "l_eye"),
    ("r_eye", "r_eye"), ("l_iris", "l_eye"), ("r_iris", "r_eye"), ("l_brow", "l_brow"),
    ("r_brow", "r_brow"), ("glasses", "eye_g"), ("u_lip", "u_lip"), ("l_lip", "l_lip"),
    ("mouth", "mouth"), ("teeth", "mouth"), ("bangs", "hair"), ("hat", "hat"),
)  # fmt: skip
Radius = float | torch.Tensor
_LAYER = {name: i for i, (name, _) in enumerate(_LAYERS)}
_PART_OF_LAYER = torch.tensor([PART_NAMES.index(part) for _, part in _LAYERS])
_GOLD, _WHITE, _PUPIL = (
    np.array([0.95, 0.85, 0.2]),
    np.array([0.97, 0.97, 0.97]),
    np.array([0.1, 0.1, 0.15]),
)


def _draw(
    labels: torch.Tensor, rngs: list[np.random.Generator], size: int, look: Appearance
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render faces for a batch of label rows; each image's nuisances come from its own generator.

    Shapes are painted into one layer-index map (painter's order), then coloured with a per-image
    palette in a single gather; part masks come from the same map, so they match the pixels exactly.
    """
    b = labels.shape[0]
    lab = {name: labels[:, i].bool() for i, name in enumerate(ATTRIBUTES)}
    params = np.stack([r.random(12) for r in rngs])  # per-image nuisances in [0, 1)
    shift = (params[:, 0:2] - 0.5) * 0.08 * look.pose
    scale = 1.0 + (params[:, 2] - 0.5) * 0.14 * look.pose
    angle = (params[:, 3] - 0.5) * math.radians(16) * look.pose
    skin = _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * params[:, 4:5]
    hair_idx = labels[:, [ATTRIBUTES.index(h) for h in HAIR_COLOURS]].argmax(1).numpy()
    hair = _HAIR_RGB[hair_idx] * (0.9 + 0.2 * params[:, 5:6])
    lipstick = labels[:, [ATTRIBUTES.index("Wearing_Lipstick")]].numpy() > 0
    lip_plain = skin * (1 - 0.35 * look.lip_contrast) + np.array([0.08, 0.0, 0.0])

    palette = np.zeros((b, len(_LAYERS), 3))
    colours = {
        "background": 0.25 + 0.6 * np.stack([r.random(3) for r in rngs]),
        "cloth": 0.2 + 0.6 * params[:, 6:9], "neck": skin * 0.9, "necklace": _GOLD,
        "hair_back": hair, "l_ear": skin * 0.95, "r_ear": skin * 0.95, "earring": _GOLD,
        "skin": skin, "double_chin": skin * 0.82, "stubble": skin * 0.7, "wrinkles": skin * 0.75,
        "cheekbones": np.minimum(skin * 1.12 + 0.05, 1.0), "nose": skin * 0.88,
        "eye_shadow": np.array([0.45, 0.25, 0.55]), "l_eye": _WHITE, "r_eye": _WHITE,
        "l_iris": _PUPIL, "r_iris": _PUPIL, "l_brow": hair * 0.8 + 0.02, "r_brow": hair * 0.8 + 0.02,
        "glasses": np.array([0.05, 0.05, 0.08]) * look.glasses + skin * (1 - look.glasses), "u_lip": np.where(lipstick, [[0.78, 0.08, 0.2]], lip_plain),
        "mouth": np.array([0.2, 0.05, 0.05]), "teeth": 0.2 + (np.array([0.95, 0.93, 0.88]) - 0.2) * look.teeth, "bangs": hair, "hat": 0.15 + 0.7 * params[:, 9:12],
    }  # fmt: skip
    colours["l_lip"] = colours["u_lip"]
    for name, rgb in colours.items():
        palette[:, _LAYER[name]] = rgb

    # Inverse pose: map each pixel to the canonical face frame, where all shapes are defined.
    gx, gy = sc.grid(size, size)
    cx, cy = 0.5 + sc.col(shift[:, 0]), 0.5 + sc.col(shift[:, 1])
    cos, sin = sc.col(np.cos(angle)), sc.col(np.sin(angle))
    s = sc.col(scale)
    dx, dy = gx - cx, gy - cy
    x = (dx * cos + dy * sin) / s + 0.5
    y = (-dx * sin + dy * cos) / s + 0.5
    texture = sc.smooth_noise(rngs, size, size)
    layer = torch.zeros(b, size, size, dtype=torch.uint8)  # byte-wide: painting is memory-bound
    max_angle, max_scale = math.radians(8) * look.pose, 1 + 0.07 * look.pose

    def rows(y0: float, y1: float, x_extent: float) -> slice:
        """Image rows that can hold canonical rows [y0, y1] within ``x_extent`` of the centre line."""
        margin = 0.04 * look.pose + (max_scale - 1) * max(abs(y0 - 0.5), abs(y1 - 0.5))
        margin += max_scale * (math.sin(max_angle) * x_extent + (1 - math.cos(max_angle)) * 0.5)
        r0 = max(int((y0 - margin) * size) - 1, 0)
        return slice(r0, max(min(math.ceil((y1 + margin) * size) + 1, size), r0))

    def paint(name: str, where: torch.Tensor, mask: torch.Tensor, band: slice) -> None:
        layer[:, band].masked_fill_(mask & where.view(-1, 1, 1), _LAYER[name])

    def scaled_square(coord: torch.Tensor, centre: float, radius: Radius) -> torch.Tensor:
        out = coord - centre  # in-place from here on: this is the generator's hot path
        out.mul_(1.0 / radius if isinstance(radius, float) else (1.0 / radius).view(-1, 1, 1))
        return out.square_()

    def ell(px: float, py: float, rx: Radius, ry: Radius, band: slice) -> torch.Tensor:
        return scaled_square(x[:, band], px, rx).add_(scaled_square(y[:, band], py, ry)) <= 1.0

    def shape_ell(
        name: str, where: torch.Tensor, px: float, py: float, rx: Radius, ry: Radius
    ) -> None:
        rx_max, ry_max = float(torch.as_tensor(rx).max()), float(torch.as_tensor(ry).max())
        band = rows(py - ry_max, py + ry_max, abs(px - 0.5) + rx_max)
        paint(name, where, ell(px, py, rx, ry, band), band)

    every = torch.ones(b, dtype=torch.bool)
    chubby = torch.where(lab["Chubby"], 0.035, 0.0)
    face_rx = 0.25 + chubby + torch.where(lab["Male"], 0.015, 0.0)
    full = slice(0, size)
    # Clothes, neck and necklace.
    shape_ell("cloth", every, 0.5, 1.12, 0.46, 0.24)
    band = rows(0.78, 0.95, 0.08)
    paint(
        "neck",
        every,
        ((x[:, band] - 0.5).abs() < 0.08) & (y[:, band] > 0.78) & (y[:, band] < 0.95),
        band,
    )
    band = rows(0.8, 0.92, 0.085)
    ring = (
        ell(0.5, 0.86, 0.085, 0.06, band)
        & ~ell(0.5, 0.86, 0.065, 0.045, band)
        & (y[:, band] > 0.86)
    )
    paint("necklace", lab["Wearing_Necklace"], ring, band)
    # Hair behind the head (a large, easy region), ears, earrings, then the face.
    paint("hair_back", every, ell(0.5, 0.46, 0.35, 0.37, full) & (y < 0.62), full)
    shape_ell("l_ear", every, 0.24, 0.48, 0.035, 0.06)
    shape_ell("r_ear", every, 0.76, 0.48, 0.035, 0.06)
    shape_ell("earring", lab["Wearing_Earrings"], 0.215, 0.56, 0.02, 0.02)
    shape_ell("earring", lab["Wearing_Earrings"], 0.785, 0.56, 0.02, 0.02)
    face = ell(0.5, 0.5, face_rx, 0.32, full)
    paint("skin", every, face, full)
    band = rows(0.75, 0.85, 0.13)
    chin = ell(0.5, 0.8, 0.13, 0.045, band) & ~ell(0.5, 0.79, 0.11, 0.03, band) & face[:, band]
    paint("double_chin", lab["Double_Chin"], chin, band)
    stubble = face & (y > 0.66) & ~ell(0.5, 0.7, 0.1, 0.05, full) & (texture[:, 0] > 0)
    paint("stubble", lab["Male"], stubble, full)
    band = rows(0.22, 0.3, 0.25)
    lines = (
        face[:, band]
        & (y[:, band] > 0.22)
        & (y[:, band] < 0.3)
        & (torch.sin(y[:, band] * 140) > 0.6)
    )
    paint("wrinkles", ~lab["Young"], lines, band)
    shape_ell("cheekbones", lab["High_Cheekbones"], 0.36, 0.58, 0.05, 0.03)
    shape_ell("cheekbones", lab["High_Cheekbones"], 0.64, 0.58, 0.05, 0.03)
    nose = torch.where(lab["Big_Nose"], 1.5, 1.0)
    shape_ell("nose", every, 0.5, 0.55, 0.028 * nose, 0.06 * nose)
    # Eyes, make-up, brows, glasses.
    brow_h = torch.where(lab["Bushy_Eyebrows"], 0.022, 0.01)
    for side, px in (("l", 0.39), ("r", 0.61)):
        shape_ell("eye_shadow", lab["Heavy_Makeup"], px, 0.405, 0.065, 0.04)
        shape_ell(f"{side}_eye", every, px, 0.42, 0.045, 0.024)
        shape_ell(f"{side}_iris", every, px, 0.42, 0.016, 0.016)
        band = rows(0.33, 0.38, abs(px - 0.5) + 0.06)
        brow = ((x[:, band] - px) / 0.06) ** 2 + (
            (y[:, band] - 0.355) / brow_h.view(-1, 1, 1)
        ) ** 2 <= 1
        paint(f"{side}_brow", every, brow, band)
    band = rows(0.37, 0.47, 0.18)
    rim = torch.zeros_like(x[:, band], dtype=torch.bool)
    for px in (0.39, 0.61):
        rim |= ell(px, 0.42, 0.07, 0.05, band) & ~ell(px, 0.42, 0.055, 0.037, band)
    rim |= ((x[:, band] - 0.5).abs() < 0.04) & (y[:, band] > 0.405) & (y[:, band] < 0.42)
    paint("glasses", lab["Eyeglasses"], rim, band)
    # Mouth: lips along a parabola whose corners lift when smiling.
    band = rows(0.64, 0.77, 0.1)
    xb, yb = x[:, band], y[:, band]
    u = ((xb - 0.5) / 0.09).clamp(-1.5, 1.5)
    lift = torch.where(lab["Smiling"], look.smile_curvature, -0.15 * look.smile_curvature).view(
        -1, 1, 1
    )
    centre = 0.705 - lift * 0.06 * (u**2 - 0.5)
    gap = torch.where(lab["Mouth_Slightly_Open"], 0.012, 0.0).view(-1, 1, 1)
    inside = (xb - 0.5).abs() < 0.09
    paint("u_lip", every, inside & (yb < centre - gap) & (yb > centre - gap - 0.02), band)
    paint("l_lip", every, inside & (yb >= centre + gap) & (yb < centre + gap + 0.024), band)
    paint("mouth", every, inside & (yb >= centre - gap) & (yb < centre + gap), band)
    teeth = inside & ((xb - 0.5).abs() < 0.06) & (yb >= centre - 0.008) & (yb < centre + 0.008)
    paint("teeth", lab["Smiling"] & (look.teeth > 0), teeth, band)
    # Hair in front: bangs and hat.
    band = rows(0.1, 0.3, 0.3)
    paint("bangs", lab["Bangs"], face[:, band] & (y[:, band] < 0.3), band)
    band = rows(0.06, 0.27, 0.4)
    crown = ell(0.5, 0.2, 0.3, 0.14, band)
    brim = (y[:, band] > 0.22) & ((x[:, band] - 0.5).abs() < 0.4)
    paint("hat", lab["Wearing_Hat"], (crown | brim) & (y[:, band] < 0.27), band)

    index = layer.long()
    rgb = torch.from_numpy(palette.astype(np.float32)).transpose(1, 2)  # [B, 3, layers]
    canvas = rgb.gather(2, index.view(b, 1, -1).expand(-1, 3, -1)).view(b, 3, size, size)
    canvas.mul_(texture.mul_(0.25).mul_(layer.unsqueeze(1) == 0).add_(1))  # textured background
    image = canvas.add_(sc.pixel_noise(rngs, size, size, [look.noise] * b)).clamp_(0.0, 1.0)
    parts = _PART_OF_LAYER[index]
    landmarks = _landmarks(shift, scale, angle) * size
    return image, parts, landmarks


def _landmarks(shift: np.ndarray, scale: np.ndarray, angle: np.ndarray) -> torch.Tensor:
    """Canonical 5-point landmarks moved by each image's pose, as (x, y) fractions ``[B, 5, 2]``."""
    d = _CANON_LANDMARKS[None] - 0.5
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
    x = (d[..., 0] * cos - d[..., 1] * sin) * scale[:, None] + 0.5 + shift[:, 0:1]
    y = (d[..., 0] * sin + d[..., 1] * cos) * scale[:, None] + 0.5 + shift[:, 1:2]
    return torch.from_numpy(np.stack([x, y], -1)).float()
