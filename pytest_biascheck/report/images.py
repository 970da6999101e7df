"""CAM overlays for the report: a hand-written colormap lookup table, batched alpha blending over
the images, and PNG data: URIs so the HTML needs no external files."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from pytest_biascheck.evaluate import Results
from pytest_biascheck.report.document import checked_attributes

#: Anchor colours (RGB in [0, 1]) of the heat colormap, from cold (0) to hot (1); luminance rises
#: monotonically so that the map also reads in grey.
ANCHORS = torch.tensor(
    [
        [0.02, 0.02, 0.12],
        [0.20, 0.05, 0.40],
        [0.50, 0.10, 0.45],
        [0.80, 0.22, 0.30],
        [0.96, 0.48, 0.10],
        [0.99, 0.78, 0.20],
        [1.00, 0.99, 0.72],
    ],
    dtype=torch.float64,
)

#: Blend weight of the colormap: ``MIN_ALPHA`` where the map is 0, ``MIN_ALPHA + ALPHA_RANGE`` at 1.
MIN_ALPHA, ALPHA_RANGE = 0.15, 0.6

#: Side in pixels of the overlays written into the report (small inputs are upsampled to it).
DISPLAY_SIZE = 112


def colormap(levels: int = 256) -> Tensor:
    """The lookup table ``[levels, 3]`` (float64 RGB in [0, 1]) interpolated linearly between ANCHORS."""
    position = torch.linspace(0, len(ANCHORS) - 1, levels, dtype=torch.float64)
    low = position.floor().long().clamp(max=len(ANCHORS) - 2)
    frac = (position - low)[:, None]
    return ANCHORS[low] * (1 - frac) + ANCHORS[low + 1] * frac


def overlay(images: Tensor, maps: Tensor, size: int = DISPLAY_SIZE) -> Tensor:
    """Blend colormapped ``maps [N, h, w]`` (values in [0, 1]) over ``images [N, 3, H, W]`` (in [0, 1]).

    Both are resized bilinearly to ``size`` x ``size``; returns ``[N, size, size, 3]`` uint8.
    """
    if images.ndim != 4 or maps.ndim != 3 or images.shape[0] != maps.shape[0]:
        raise ValueError(
            f"overlay needs images [N, 3, H, W] and maps [N, h, w], got {tuple(images.shape)} and {tuple(maps.shape)}"
        )
    side = (size, size)
    pictures = F.interpolate(images.double(), side, mode="bilinear", align_corners=False)
    heat = F.interpolate(maps.double()[:, None], side, mode="bilinear", align_corners=False)[:, 0]
    heat = heat.clamp(0, 1)
    lut = colormap()
    colours = lut[(heat * (len(lut) - 1)).round().long()]  # [N, S, S, 3]
    alpha = (MIN_ALPHA + ALPHA_RANGE * heat)[..., None]
    blended = (1 - alpha) * pictures.clamp(0, 1).permute(0, 2, 3, 1) + alpha * colours
    return (blended * 255).round().to(torch.uint8)


def png_data_uri(pixels: Tensor | np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI of one ``[H, W, 3]`` uint8 image (lossless)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def legend_uri(width: int = 256, height: int = 10) -> str:
    """The colormap as a horizontal bar, cold on the left."""
    lut = colormap(width)
    return png_data_uri((lut[None].expand(height, -1, -1) * 255).round().to(torch.uint8))


def model_figures(results: Results) -> dict[str, dict[str, Any]]:
    """Per checked attribute (each class of a multiclass head): mean CAM overlays on the mean
    image, split by predicted class and by protected-group value (``means``; no image where no
    image fell in the split), and the sample images' own overlays (``samples``). A multiclass head
    first gets its task: the map of each image's predicted class, as means per predicted class and
    on the samples. Each figure has a ``title``; each tile a ``caption``.

    Mean maps of one attribute share one colour scale (divided by their common maximum), so their
    intensities compare; each sample map is already min-max normalised by the CAM engine.
    """
    maps = results.maps
    attributes = checked_attributes(results)
    if "by_class" not in maps or not attributes:
        return {}
    mean_image = (maps["image_sum"] / maps["image_n"]).float()
    levels = results.plan.levels if results.plan else {}
    multiclass = results.head == "multiclass"
    panels, splits = _mean_panels(maps, levels)  # [A, P, h, w]; P (split, value, caption, n per A)
    scale = panels.flatten(1).amax(1).clamp_min(1e-12)[:, None, None, None]
    a, p = panels.shape[:2]
    tiles = overlay(mean_image.expand(a * p, -1, -1, -1), (panels / scale).flatten(0, 1))
    tiles = tiles.reshape(a, p, *tiles.shape[1:])
    samples = _sample_tiles(maps, results, attributes)
    figures = {results.plan.task: _task_figure(results, mean_image)} if multiclass else {}
    for i, name in enumerate(attributes):
        means = []
        for j, (split, value, caption, n) in enumerate(splits):
            if multiclass and not split:  # one-vs-rest: predicted this class, or another one
                caption = f"predicted {name}" if value else "predicted another class"
            uri = png_data_uri(tiles[i, j]) if n[i] > 0 else None
            means.append(
                {"split": split, "value": value, "caption": caption, "n": int(n[i]), "uri": uri}
            )
        figures[name] = {"title": name, "means": means, "samples": samples.get(name, [])}
    return figures


def _mean_panels(
    maps: dict[str, Tensor], levels: Mapping[str, Sequence[str]]
) -> tuple[Tensor, list[tuple[str, int, str, Tensor]]]:
    """Mean maps ``[A, P, h, w]`` (predicted 0, predicted 1, then each group value) and for each
    panel (split, value, caption, per-attribute image count ``[A]``); split "" is the prediction."""
    sums, counts = [maps["by_class"]], [maps["by_class_n"]]
    splits = [("", 0, "predicted 0"), ("", 1, "predicted 1")]
    for key in sorted(k for k in maps if k.startswith("group:")):
        name = key.split(":", 1)[1]
        group_n = maps[f"group_n:{name}"]
        sums.append(maps[key])
        counts.append(group_n[None].expand(maps[key].shape[0], -1))
        names = levels.get(name, ())
        splits += [
            (name, v, f"{name} = {names[v] if v < len(names) else v}") for v in range(len(group_n))
        ]
    total = torch.cat(sums, 1)
    n = torch.cat(counts, 1)
    means = total / n.clamp_min(1)[..., None, None]
    return means.float(), [(s, v, c, n[:, j]) for j, (s, v, c) in enumerate(splits)]


def _task_figure(results: Results, mean_image: Tensor) -> dict[str, Any]:
    """The map of each image's predicted class: its mean over the images predicted as each class
    (the class's map where it won), and on every sample image."""
    maps, classes, task = results.maps, results.plan.attributes, results.plan.task
    won, won_n = maps["by_class"][:, 1], maps["by_class_n"][:, 1]  # [K, h, w], [K]
    means = (won / won_n.clamp_min(1)[:, None, None]).float()
    scaled = means / means.max().clamp_min(1e-12)
    tiles = overlay(mean_image.expand(len(classes), -1, -1, -1), scaled)
    panels = [
        {"split": "", "value": k, "caption": f"predicted {c}", "n": int(won_n[k])}
        for k, c in enumerate(classes)
    ]
    for k, panel in enumerate(panels):
        panel["uri"] = png_data_uri(tiles[k]) if panel["n"] > 0 else None
    figure: dict[str, Any] = {"title": f"{task}: map of the predicted class", "means": panels}
    figure["samples"] = []
    if "sample_index" not in maps:
        return figure
    order = torch.argsort(maps["sample_index"])
    index = maps["sample_index"][order]
    position = results.frame.set_index("index").index.get_indexer(index.numpy())
    truth, guess = results.label(task)[position], results.predicted(task)[position]
    chosen = maps["sample_maps"][order][torch.arange(len(index)), torch.from_numpy(guess)]
    tiles = overlay(maps["sample_image"][order], chosen)
    for s, (i, y, z) in enumerate(zip(index.tolist(), truth, guess, strict=True)):
        figure["samples"].append(
            {
                "index": int(i),
                "label": classes[y],
                "predicted": classes[z],
                "correct": bool(y == z),
                "uri": png_data_uri(tiles[s]),
            }
        )
    return figure


def _sample_tiles(
    maps: dict[str, Tensor], results: Results, attributes: list[str]
) -> dict[str, list[dict]]:
    """Overlays of the kept sample images, in image order, captioned with label and prediction."""
    if "sample_index" not in maps:
        return {}
    order = torch.argsort(maps["sample_index"])
    index = maps["sample_index"][order]
    images, cams = maps["sample_image"][order], maps["sample_maps"][order]  # [k,3,H,W], [k,A,h,w]
    k, a = cams.shape[:2]
    tiles = overlay(images.repeat_interleave(a, 0), cams.flatten(0, 1))
    tiles = tiles.reshape(k, a, *tiles.shape[1:])
    position = results.frame.set_index("index").index.get_indexer(index.numpy())
    out: dict[str, list[dict]] = {}
    for j, name in enumerate(attributes):
        labels = results.label(name)[position]
        predicted = results.predicted(name)[position]
        out[name] = [
            {
                "index": int(i),
                "label": int(y),
                "predicted": int(z),
                "correct": bool(y == z),
                "uri": png_data_uri(tiles[s, j]),
            }
            for s, (i, y, z) in enumerate(zip(index.tolist(), labels, predicted, strict=True))
        ]
    return out
