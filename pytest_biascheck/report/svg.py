"""Geometry of the report's inline SVG charts: data in, pixel positions out. The template draws the
shapes, so every label passes through the template's HTML escaping."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: Scatter plot margins (left, right, top, bottom) and bar chart sizes, in pixels.
SCATTER_MARGIN = (56, 20, 16, 46)
BAR_ROW, BAR_LABEL, BAR_TOP, BAR_BOTTOM, BAR_RIGHT = 20, 190, 8, 36, 56
TICKS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
#: Space a scatter point's label takes, for keeping labels apart.
LABEL_WIDTH, LABEL_HEIGHT = 120, 13


def scale(value: float, low: float, high: float, start: float, end: float) -> float:
    """Map ``value`` from the domain [low, high] to pixels [start, end], clamped to that range."""
    share = min(max((value - low) / (high - low), 0.0), 1.0)
    return round(start + share * (end - start), 2)


def scatter(
    points: Sequence[Mapping[str, Any]],
    x: str,
    y: str,
    threshold: float | None = None,
    width: int = 440,
    height: int = 320,
) -> dict[str, Any]:
    """A unit-square scatter plot of ``points[i][x]`` against ``points[i][y]``, with vertical interval
    bars from ``low``/``high`` when given and an optional horizontal threshold line.

    Points with a missing coordinate are left out (listed under ``missing``).
    """
    left, right, top, bottom = SCATTER_MARGIN
    x0, x1, y0, y1 = left, width - right, height - bottom, top

    def px(v: float) -> float:
        return scale(v, 0.0, 1.0, x0, x1)

    def py(v: float) -> float:
        return scale(v, 0.0, 1.0, y0, y1)

    drawn = [p for p in points if p.get(x) is not None and p.get(y) is not None]
    placed = [
        {
            "x": px(p[x]),
            "y": py(p[y]),
            "low": py(p["low"]) if p.get("low") is not None else None,
            "high": py(p["high"]) if p.get("high") is not None else None,
            "point": p,
        }
        for p in drawn
    ]
    return {
        "width": width,
        "height": height,
        "plot": {"x0": x0, "x1": x1, "y0": y0, "y1": y1},
        "xticks": [{"at": px(t), "label": f"{t:.1f}"} for t in TICKS],
        "yticks": [{"at": py(t), "label": f"{t:.1f}"} for t in TICKS],
        "points": label_points(placed),
        "missing": [p for p in points if p not in drawn],
        "threshold": py(threshold) if threshold is not None else None,
    }


def label_points(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each placed point a ``label_y`` (its label sits to its right), moved down where it would
    overlap the label of a point nearby (within ``LABEL_WIDTH`` across, ``LABEL_HEIGHT`` down)."""
    taken: list[tuple[float, float]] = []
    out = []
    for point in sorted(points, key=lambda p: (p["y"], p["x"])):
        label_y = point["y"] + 4
        while any(
            abs(x - point["x"]) < LABEL_WIDTH and abs(y - label_y) < LABEL_HEIGHT for x, y in taken
        ):
            label_y += LABEL_HEIGHT
        taken.append((point["x"], label_y))
        out.append({**point, "label_y": label_y})
    return out


def bars(
    rows: Sequence[Mapping[str, Any]], threshold: float | None = None, width: int = 440
) -> dict[str, Any]:
    """Horizontal bars on [0, 1] for ``rows`` (``value``, optional ``low``/``high``, ``label``), one
    per line, with an optional vertical threshold line; bars under it are flagged ``below``. A row
    may carry its own ``chance`` level and the value it ``needs`` (ticks on its bar; a bar under
    ``needs`` is flagged too). A missing value draws no bar."""
    x0, x1 = BAR_LABEL, width - BAR_RIGHT
    height = BAR_TOP + BAR_ROW * len(rows) + BAR_BOTTOM

    def px(v: float | None) -> float | None:
        return None if v is None else scale(v, 0.0, 1.0, x0, x1)

    return {
        "width": width,
        "height": height,
        "plot": {"x0": x0, "x1": x1, "y0": BAR_TOP, "y1": height - BAR_BOTTOM},
        "xticks": [{"at": px(t), "label": f"{t:.1f}"} for t in TICKS],
        "bars": [
            {
                "y": BAR_TOP + i * BAR_ROW,
                "mid": BAR_TOP + i * BAR_ROW + BAR_ROW / 2,
                "end": px(row.get("value")),
                "low": px(row.get("low")),
                "high": px(row.get("high")),
                "below": row.get("value") is not None
                and any(
                    limit is not None and row["value"] < limit
                    for limit in (threshold, row.get("needs"))
                ),
                "chance": px(row.get("chance")),
                "needs": px(row.get("needs")),
                "row": row,
            }
            for i, row in enumerate(rows)
        ],
        "threshold": px(threshold),
    }
