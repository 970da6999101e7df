"""Error rates per attribute and per protected group from streaming confusion counts: accuracy, FNR,
FPR, TPR and selection rate, worst-/mean-group accuracy, gaps and fairlearn-style differences, with
the Attention-IoU paper's rule of leaving out groups smaller than a minimum share of the images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from pytest_biascheck.metrics.base import Accumulator
from pytest_biascheck.metrics.bootstrap import percentile_interval, resampled_histograms
from pytest_biascheck.metrics.inputs import (
    as_binary,
    check_levels,
    level_onehot,
    level_slices,
    level_table,
    stack_groups,
)

RATES = ("accuracy", "tpr", "fnr", "fpr", "selection_rate")
SUMMARY = (
    "attribute",
    "group",
    "worst_group_accuracy",
    "mean_group_accuracy",
    "accuracy_gap",
    "fnr_gap",
    "fpr_gap",
    "equalized_odds_difference",
    "demographic_parity_difference",
)


def rates(counts: Tensor) -> dict[str, Tensor]:
    """Rates from confusion counts ``[..., 2 (label), 2 (prediction)]``; NaN where undefined."""
    tn, fp = counts[..., 0, 0], counts[..., 0, 1]
    fn, tp = counts[..., 1, 0], counts[..., 1, 1]
    n = counts.sum((-2, -1))
    return {
        "n": n,
        "accuracy": (tp + tn) / n,
        "tpr": tp / (tp + fn),
        "fnr": fn / (tp + fn),
        "fpr": fp / (fp + tn),
        "selection_rate": (tp + fp) / n,
    }


def nan_extremes(values: Tensor) -> tuple[Tensor, Tensor]:
    """(min, max) over the last dim ignoring NaN; NaN where no value is defined."""
    defined = ~torch.isnan(values)
    low = torch.where(defined, values, torch.inf).amin(-1)
    high = torch.where(defined, values, -torch.inf).amax(-1)
    none = ~defined.any(-1)
    return low.masked_fill(none, torch.nan), high.masked_fill(none, torch.nan)


def nan_spread(values: Tensor) -> Tensor:
    """max - min over the last dim ignoring NaN (the gap between groups); NaN with fewer than two
    defined values, for there is no gap to measure."""
    low, high = nan_extremes(values)
    return (high - low).masked_fill((~torch.isnan(values)).sum(-1) < 2, torch.nan)


def check_share(min_share: float) -> float:
    """Validate a minimum group share: a fraction of the images in [0, 1)."""
    if not 0 <= min_share < 1:
        raise ValueError(f"min_share must be a fraction in [0, 1), got {min_share}")
    return float(min_share)


def kept(counts: Tensor, total: Tensor, min_share: float) -> tuple[Tensor, Tensor]:
    """Which group values ``[..., L]`` and which label x group cells ``[..., L, K]`` of confusion
    counts ``[..., L, K (label), K]`` hold images, and at least ``min_share`` of ``total`` (broadcast
    to ``[..., 1]``): as in the Attention-IoU paper, smaller groups are left out of consideration."""
    least = min_share * total
    level_n, cell_n = counts.sum((-2, -1)), counts.sum(-1)
    return (level_n > 0) & (level_n >= least), (cell_n > 0) & (cell_n >= least[..., None])


EXCLUDED = {"group": str, "value": np.int64, "label": np.int64, "n": np.int64, "share": np.float64}


def excluded_rows(
    counts: Tensor, keep: Tensor, total: Tensor, levels: Mapping[str, int]
) -> dict[str, list]:
    """Columns ``group, value, label, n, share`` of the seen group values (``counts [L]``, label -1)
    or cells (``counts [L, K]``, label = the cell's class) that ``keep`` leaves out."""
    names, values = level_table(levels)
    left_out = (counts > 0) & ~keep
    where = left_out.nonzero()
    level = where[:, 0].tolist()
    label = where[:, 1].tolist() if counts.ndim == 2 else [-1] * len(level)
    n = counts[left_out]
    return {
        "group": [names[i] for i in level],
        "value": [values[i] for i in level],
        "label": label,
        "n": n.long().tolist(),
        "share": (n / total).tolist(),
    }


def excluded_table(parts: Sequence[Mapping[str, list]], **columns: Any) -> pd.DataFrame:
    """One table of :func:`excluded_rows` parts, ``columns`` (e.g. the attribute) first."""
    merged = {name: [v for part in parts for v in part[name]] for name in EXCLUDED}
    size = len(merged["n"])
    lead = {name: [value] * size for name, value in columns.items()}
    return pd.DataFrame({**lead, **merged}).astype({**dict.fromkeys(columns, str), **EXCLUDED})


class GroupRates(Accumulator):
    """Confusion counts per attribute, overall and per value of each protected group.

    ``groups`` declares each protected attribute and its number of values (coded 0..n-1; more than
    two are fine, and so is an intersection of several attributes coded as one). ``compute()``
    returns five tables: ``overall`` (per attribute), ``groups`` (per attribute, group, value),
    ``cells`` (accuracy per attribute, group, label, value), ``summary`` (per attribute and group:
    worst- and mean-group accuracy over the label x group cells, as in Crayon/Waterbirds; accuracy,
    FNR and FPR gaps (max - min over values); fairlearn's equalized-odds difference, max of the TPR
    and FPR gaps; and demographic-parity difference, the selection-rate gap) and ``excluded``.
    Undefined rates are NaN and are ignored by gaps and worst/mean accuracy.

    ``min_share`` applies the Attention-IoU paper's rule: a label x group cell with fewer than that
    share of the images is left out of worst/mean-group accuracy and of the gaps of the rates it
    defines (label 1: TPR/FNR, label 0: FPR), a group value that small out of the accuracy and
    selection-rate gaps; ``excluded`` lists them (``label`` -1 for a group value).
    """

    def __init__(
        self, attributes: Sequence[str], groups: Mapping[str, int], min_share: float = 0.0
    ) -> None:
        super().__init__()
        self.attributes = tuple(attributes)
        self.groups = check_levels(groups)
        self.min_share = check_share(min_share)
        a, levels = len(self.attributes), sum(self.groups.values())
        self.add_state("overall", torch.zeros(a, 2, 2, dtype=torch.float64), "sum")
        self.add_state("by_level", torch.zeros(a, levels, 2, 2, dtype=torch.float64), "sum")

    def update(
        self, labels: Tensor, predictions: Tensor, groups: Mapping[str, Tensor] | None = None
    ) -> None:
        """Fold in labels and predicted classes ``[B, A]`` (0/1) and each group's values ``[B]``."""
        shape = (labels.shape[0], len(self.attributes))
        y = as_binary(labels, "labels", shape)
        p = as_binary(predictions, "predictions", shape).to(y.device)
        outcome = F.one_hot(2 * y + p, 4).to(torch.float64)  # [B, A, (label, prediction)]
        values = stack_groups(groups, self.groups, shape[0], outcome.device)
        member = level_onehot(values, self.groups)
        self.accumulate("overall", outcome.sum(0).reshape(-1, 2, 2))
        by_level = torch.einsum("bl,bak->alk", member, outcome)
        self.accumulate("by_level", by_level.reshape(shape[1], -1, 2, 2))

    def compute(self) -> dict[str, pd.DataFrame]:
        """The ``overall``, ``groups``, ``cells``, ``summary`` and ``excluded`` tables (see the class)."""
        overall = rates(self.state("overall"))
        counts = self.state("by_level")
        total = overall["n"][:, None]
        keep_levels, keep_cells = kept(counts, total, self.min_share)
        per_level = rates(counts)
        cell_n = counts.sum(-1)  # [A, L, label]
        cell_accuracy = torch.diagonal(counts, dim1=-2, dim2=-1) / cell_n
        names, values = level_table(self.groups)
        a, levels = len(self.attributes), len(names)
        attribute_by_level = np.repeat(self.attributes, levels)
        seen = (per_level["n"] > 0).flatten().numpy()
        tables = {
            "overall": pd.DataFrame(
                {"attribute": self.attributes, **{k: v.numpy() for k, v in overall.items()}}
            ),
            "groups": pd.DataFrame(
                {
                    "attribute": attribute_by_level,
                    "group": names * a,
                    "value": values * a,
                    **{k: v.flatten().numpy() for k, v in per_level.items()},
                    "excluded": (~keep_levels).flatten().numpy(),
                }
            )[seen],
            "cells": pd.DataFrame(
                {
                    "attribute": np.repeat(self.attributes, levels * 2),
                    "group": np.repeat(names, 2).tolist() * a,
                    "label": [0, 1] * (levels * a),
                    "value": np.repeat(values, 2).tolist() * a,
                    "n": cell_n.flatten().numpy(),
                    "accuracy": cell_accuracy.flatten().numpy(),
                    "excluded": (~keep_cells).flatten().numpy(),
                }
            ),
        }
        tables["cells"] = tables["cells"][tables["cells"]["n"] > 0]
        tables["summary"] = self._summary(keep_levels, keep_cells)
        tables["excluded"] = self._excluded(counts, keep_levels, keep_cells, total)
        for name in ("overall", "groups", "cells"):
            tables[name] = tables[name].reset_index(drop=True).astype({"n": np.int64})
        return tables

    def _summary(self, keep_levels: Tensor, keep_cells: Tensor) -> pd.DataFrame:
        """Worst/mean-group accuracy, gaps and differences per attribute and group."""
        columns: dict[str, list] = {key: [] for key in SUMMARY}
        counts = self.state("by_level")
        stats = summary_stats(counts, self.groups, keep_levels, keep_cells)
        for name, values in stats.items():
            columns["attribute"] += list(self.attributes)
            columns["group"] += [name] * len(self.attributes)
            for key, value in values.items():
                columns[key].extend(value.tolist())
        return pd.DataFrame(columns)

    def _excluded(
        self, counts: Tensor, keep_levels: Tensor, keep_cells: Tensor, total: Tensor
    ) -> pd.DataFrame:
        """Group values and label x group cells left out for holding under ``min_share``."""
        tables = [
            excluded_table(
                [
                    excluded_rows(counts[i].sum((-2, -1)), keep_levels[i], total[i], self.groups),
                    excluded_rows(counts[i].sum(-1), keep_cells[i], total[i], self.groups),
                ],
                attribute=attribute,
            )
            for i, attribute in enumerate(self.attributes)
        ]
        return pd.concat(tables, ignore_index=True)


def summary_stats(
    counts: Tensor,
    groups: Mapping[str, int],
    keep_levels: Tensor | None = None,
    keep_cells: Tensor | None = None,
) -> dict[str, dict[str, Tensor]]:
    """Per protected attribute: worst/mean-group accuracy, gaps and differences from confusion counts
    ``[..., L, 2, 2]`` over all group levels (the leading dims, e.g. attributes or resamples, stay).

    ``keep_levels [..., L]`` and ``keep_cells [..., L, 2]`` (from :func:`kept`) leave small groups
    out: a dropped cell's accuracy and the rates it defines, a dropped value's accuracy and
    selection rate."""
    per_level = rates(counts)
    cell_accuracy = torch.diagonal(counts, dim1=-2, dim2=-1) / counts.sum(-1)
    if keep_cells is not None:
        cell_accuracy = cell_accuracy.masked_fill(~keep_cells, torch.nan)
        for key, label in (("tpr", 1), ("fnr", 1), ("fpr", 0)):
            per_level[key] = per_level[key].masked_fill(~keep_cells[..., label], torch.nan)
    if keep_levels is not None:
        for key in ("accuracy", "selection_rate"):
            per_level[key] = per_level[key].masked_fill(~keep_levels, torch.nan)
    out = {}
    for name, part in level_slices(groups):
        cells = cell_accuracy[..., part, :].flatten(-2)
        gap = {k: nan_spread(per_level[k][..., part]) for k in RATES}
        out[name] = {
            "worst_group_accuracy": nan_extremes(cells)[0],
            "mean_group_accuracy": torch.nanmean(cells, -1),
            "accuracy_gap": gap["accuracy"],
            "fnr_gap": gap["fnr"],
            "fpr_gap": gap["fpr"],
            "equalized_odds_difference": torch.maximum(gap["tpr"], gap["fpr"]),
            "demographic_parity_difference": gap["selection_rate"],
        }
    return out


def level_bins(values: Tensor, levels: Mapping[str, int], outcome: Tensor, outcomes: int) -> Tensor:
    """Each image's bin ``[n, A * G]`` in a histogram laid out ``[A, L, outcomes]``: for every
    attribute (``outcome [n, A]`` in 0..outcomes-1) and every group (``values [n, G]``), the bin of
    its group value and outcome; feeds :func:`~pytest_biascheck.metrics.bootstrap.resampled_histograms`."""
    counts = torch.tensor(list(levels.values()), dtype=torch.int64)
    level = values + (torch.cumsum(counts, 0) - counts)  # [n, G], positions over all groups
    attribute = torch.arange(outcome.shape[1])[None, :, None]
    bins = (attribute * int(counts.sum()) + level[:, None, :]) * outcomes + outcome[:, :, None]
    return bins.reshape(values.shape[0], -1)


def bootstrap_summary(
    labels: Tensor,
    predictions: Tensor,
    groups: Mapping[str, Tensor],
    levels: Mapping[str, int],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    min_share: float = 0.0,
) -> dict[str, dict[str, Tensor]]:
    """Percentile intervals of every ``summary_stats`` value by resampling images.

    Returns ``{group: {stat: Tensor [A, 2] (low, high)}}``. Each resample's confusion counts come
    from one sparse matrix product; the groups left out for ``min_share`` are those of the full
    data, the same in every resample.
    """
    levels = check_levels(levels)
    n, a = labels.shape
    y = as_binary(labels, "labels", (n, a))
    p = as_binary(predictions, "predictions", (n, a))
    bins = level_bins(stack_groups(groups, levels, n), levels, 2 * y + p, 4)
    size = a * sum(levels.values()) * 4
    full = torch.zeros(size, dtype=torch.float64).index_add_(
        0, bins.flatten(), torch.ones(bins.numel(), dtype=torch.float64)
    )
    keep_levels, keep_cells = kept(
        full.reshape(a, -1, 2, 2), torch.tensor(float(n)), check_share(min_share)
    )
    stats: dict[str, dict[str, list[Tensor]]] = {}
    for histogram in resampled_histograms(bins, size, n_resamples, seed):
        counts = histogram.reshape(-1, a, size // (4 * a), 2, 2)
        for name, values in summary_stats(counts, levels, keep_levels, keep_cells).items():
            for key, value in values.items():
                stats.setdefault(name, {}).setdefault(key, []).append(value)
    return {
        name: {
            key: percentile_interval(torch.cat(v), confidence).movedim(0, -1)
            for key, v in values.items()
        }
        for name, values in stats.items()
    }
