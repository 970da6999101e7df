"""CAM overlays for the report: a hand-written colormap lookup table, batched alpha blending over
the images, and PNG data: URIs so the HTML needs no external files."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
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

#: Colour (RGB, 0-255) of a region's outline: cyan, apart from every colour of the heat colormap.
OUTLINE = (0, 229, 255)


def colormap(levels: int = 256) -> Tensor:
    """The lookup table ``[levels, 3]`` (float64 RGB in [0, 1]) interpolated linearly between ANCHORS."""
    position = torch.linspace(0, len(ANCHORS) - 1, levels, dtype=torch.float64)
    low = position.floor().long().clamp(max=len(ANCHORS) - 2)
    frac = (position - low)[:, None]
    return ANCHORS[low] * (1 - frac) + ANCHORS[low + 1] * frac


def overlay(
    images: Tensor, maps: Tensor, size: int = DISPLAY_SIZE, regions: Tensor | None = None
) -> Tensor:
    """Blend colormapped ``maps [N, h, w]`` (values in [0, 1]) over ``images [N, 3, H, W]`` (in [0, 1]),
    and draw the outline (:func:`outline`) of ``regions [N, H', W']`` (masks or mean masks) on top.

    All are resized bilinearly to ``size`` x ``size``; returns ``[N, size, size, 3]`` uint8.
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
    pixels = (blended * 255).round().to(torch.uint8)
    if regions is not None:
        pixels[outline(regions, size)] = torch.tensor(OUTLINE, dtype=torch.uint8)
    return pixels


def outline(regions: Tensor, size: int = DISPLAY_SIZE) -> Tensor:
    """The boundary pixels ``[N, size, size]`` (bool) of each region: inside (its mask, or mean mask,
    resized bilinearly to ``size`` is at least 0.5) with one of the four neighbours outside. The
    image's edge is not a boundary, so a region that fills the image has no outline."""
    side = (size, size)
    inside = F.interpolate(regions.double()[:, None], side, mode="bilinear", align_corners=False)
    inside = inside >= 0.5  # [N, 1, S, S]
    padded = F.pad(inside.double(), (1, 1, 1, 1), mode="replicate")[:, 0] > 0.5
    inside = inside[:, 0]
    interior = (
        padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    )
    return inside & ~interior


def png_data_uri(pixels: Tensor | np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI of one ``[H, W, 3]`` uint8 image (lossless)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def legend_uri(width: int = 256, height: int = 10) -> str:
    """The colormap as a horizontal bar, cold on the left."""
    lut = colormap(width)
    return png_data_uri((lut[None].expand(height, -1, -1) * 255).round().to(torch.uint8))


def model_figures(
    results: Results,
    cells: Mapping[str, Mapping[str, Any]] | None = None,
    samples: Mapping[str, Tensor] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per checked attribute (each class of a multiclass head): mean CAM overlays on the mean image
    by predicted class (``means``) and, for an attribute with a region, by label x protected-group
    cell (``cells``, one grid per group); and the overlays of its sample images (``samples``: the
    images of ``cells[name]`` as ``report.cells.sample_cells`` chose them, their maps and regions in
    ``samples`` as ``evaluate.sample_maps`` computed them). A multiclass head first gets its task:
    the map of each image's predicted class, as means per predicted class and on its samples.
    Every overlay of an attribute with a region carries its outline: the sample's own region, on a
    mean map where the region lies in at least half the images that have it.

    Mean maps of one attribute share one colour scale (divided by their common maximum), so their
    intensities compare; each sample map is already min-max normalised by the CAM engine.
    """
    maps = results.maps
    attributes = checked_attributes(results)
    if "by_class" not in maps or not attributes:
        return {}
    plan = results.plan
    cells, samples = cells or {}, samples or {}
    mean_image = (maps["image_sum"] / maps["image_n"]).float()
    multiclass = results.head == "multiclass"
    figures = {plan.task: _task_figure(results, mean_image, cells, samples)} if multiclass else {}
    mapped = list(plan.mapped) if plan else []
    for i, name in enumerate(attributes):
        region = None
        if name in mapped:
            j = mapped.index(name)
            region = maps["region_sum"][j] / maps["region_n"][j].clamp_min(1)
        predicted = maps["by_class"][i] / maps["by_class_n"][i].clamp_min(1)[:, None, None]
        grids = _cell_means(maps, i) if region is not None else []
        panels = torch.cat([predicted, *(g for _, g, _ in grids)]).float()
        scale = panels.amax().clamp_min(1e-12)
        masks = None if region is None else region[None].expand(len(panels), -1, -1)
        tiles = overlay(mean_image.expand(len(panels), -1, -1, -1), panels / scale, regions=masks)
        n_predicted = maps["by_class_n"][i].long().tolist()
        means = [
            {"caption": _predicted_caption(name, k, multiclass), "n": n,
             "uri": png_data_uri(tiles[k]) if n else None}
            for k, n in enumerate(n_predicted)
        ]  # fmt: skip
        figures[name] = {
            "title": name,
            "region": plan.regions.get(name) if plan else None,
            "means": means,
            "cells": _cell_tiles(name, grids, tiles[2:], plan),
            "samples": sample_tiles(name, results, cells.get(name), samples),
            "sample_cell": cells.get(name),
        }
    return figures


def _predicted_caption(name: str, value: int, multiclass: bool) -> str:
    if multiclass:  # one-vs-rest: predicted this class, or another one
        return f"predicted {name}" if value else "predicted another class"
    return f"predicted {value}"


def _cell_means(maps: Mapping[str, Tensor], i: int) -> list[tuple[str, Tensor, Tensor]]:
    """Per protected group: its name, the mean maps of attribute ``i`` in each label x value cell
    ``[2 * V, h, w]`` (label-major) and their image counts ``[2, V]``."""
    out = []
    for key in sorted(k for k in maps if k.startswith("cell:")):
        sums, n = maps[key][i], maps[f"cell_n:{key.split(':', 1)[1]}"][i]  # [2, V, h, w], [2, V]
        means = sums / n.clamp_min(1)[..., None, None]
        out.append((key.split(":", 1)[1], means.flatten(0, 1), n))
    return out


def _cell_tiles(
    name: str, grids: list[tuple[str, Tensor, Tensor]], tiles: Tensor, plan: Any
) -> list[dict[str, Any]]:
    """The label x value grid of each group, each tile with its caption, count and overlay."""
    out, start = [], 0
    for group, _, n in grids:
        levels = plan.levels.get(group, ()) if plan else ()
        values = n.shape[1]
        rows = []
        for label in range(2):
            row = []
            for value in range(values):
                count = int(n[label, value])
                tile = tiles[start + label * values + value]
                level = levels[value] if value < len(levels) else str(value)
                row.append({"value": value, "level": level, "n": count,
                            "uri": png_data_uri(tile) if count else None})  # fmt: skip
            rows.append({"label": label, "caption": f"{name} = {label}", "tiles": row})
        out.append({"group": group, "levels": [t["level"] for t in rows[0]["tiles"]], "rows": rows})
        start += 2 * values
    return out


def sample_tiles(
    name: str, results: Results, cell: Mapping[str, Any] | None, samples: Mapping[str, Tensor]
) -> list[dict[str, Any]]:
    """Overlays of the images of ``cell`` (``report.cells.sample_cells``), drawn from ``samples``
    (``evaluate.sample_maps``), captioned with label and prediction: each with ``name``'s map (a
    multiclass task: the predicted class's) and, for an attribute with a region, the outline of
    the image's own region."""
    if cell is None or not cell["indices"] or "index" not in samples:
        return []
    plan = results.plan
    where = {int(x): k for k, x in enumerate(samples["index"].tolist())}
    rows = [where[x] for x in cell["indices"]]
    position = results.frame.set_index("index").index.get_indexer(cell["indices"])
    truth, guess = results.label(name)[position], results.predicted(name)[position]
    maps = samples["maps"][rows]
    task = results.head == "multiclass" and name == plan.task
    if task:
        chosen = maps[torch.arange(len(rows)), torch.from_numpy(guess)]
    else:
        chosen = maps[:, list(plan.attributes).index(name)]
    regions = None
    if name in plan.mapped and "regions" in samples:
        regions = samples["regions"][rows][:, list(plan.mapped).index(name)]
    tiles = overlay(samples["image"][rows], chosen, regions=regions)
    shown = []
    for s, (x, y, z) in enumerate(zip(cell["indices"], truth, guess, strict=True)):
        label, predicted = (plan.attributes[y], plan.attributes[z]) if task else (int(y), int(z))
        shown.append({"index": int(x), "label": label, "predicted": predicted,
                      "correct": bool(y == z), "uri": png_data_uri(tiles[s])})  # fmt: skip
    return shown


def _task_figure(
    results: Results,
    mean_image: Tensor,
    cells: Mapping[str, Mapping[str, Any]],
    samples: Mapping[str, Tensor],
) -> dict[str, Any]:
    """The map of each image's predicted class: its mean over the images predicted as each class
    (the class's map where it won), and on the task's sample images."""
    maps, classes, task = results.maps, results.plan.attributes, results.plan.task
    won, won_n = maps["by_class"][:, 1], maps["by_class_n"][:, 1]  # [K, h, w], [K]
    means = (won / won_n.clamp_min(1)[:, None, None]).float()
    scaled = means / means.max().clamp_min(1e-12)
    tiles = overlay(mean_image.expand(len(classes), -1, -1, -1), scaled)
    panels = [
        {"caption": f"predicted {c}", "n": int(won_n[k]),
         "uri": png_data_uri(tiles[k]) if won_n[k] > 0 else None}
        for k, c in enumerate(classes)
    ]  # fmt: skip

    return {
        "title": f"{task}: map of the predicted class",
        "region": None,
        "means": panels,
        "cells": [],
        "samples": sample_tiles(task, results, cells.get(task), samples),
        "sample_cell": cells.get(task),
    }
