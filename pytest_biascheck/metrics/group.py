"""Error rates per attribute and per protected group from streaming confusion counts: accuracy, FNR,
FPR, TPR and selection rate, worst-/mean-group accuracy, gaps and fairlearn-style differences."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from pytest_biascheck.metrics.base import Accumulator
from pytest_biascheck.metrics.bootstrap import bootstrap_indices
from pytest_biascheck.metrics.inputs import (
    as_binary,
    check_levels,
    level_onehot,
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


def _extremes(values: Tensor) -> tuple[Tensor, Tensor]:
    """(min, max) over the last dim ignoring NaN; NaN where no value is defined."""
    defined = ~torch.isnan(values)
    low = torch.where(defined, values, torch.inf).amin(-1)
    high = torch.where(defined, values, -torch.inf).amax(-1)
    none = ~defined.any(-1)
    return low.masked_fill(none, torch.nan), high.masked_fill(none, torch.nan)


def _spread(values: Tensor) -> Tensor:
    """max - min over the last dim ignoring NaN (the gap between groups)."""
    low, high = _extremes(values)
    return high - low


class GroupRates(Accumulator):
    """Confusion counts per attribute, overall and per value of each protected group.

    ``groups`` declares each protected attribute and its number of values (coded 0..n-1; more than
    two are fine). ``compute()`` returns four tables: ``overall`` (per attribute), ``groups`` (per
    attribute, group, value), ``cells`` (accuracy per attribute, group, label, value) and ``summary``
    (per attribute and group: worst- and mean-group accuracy over the label x group cells, as in
    Crayon/Waterbirds; accuracy, FNR and FPR gaps (max - min over values); fairlearn's
    equalized-odds difference, max of the TPR and FPR gaps; and demographic-parity difference, the
    selection-rate gap). Undefined rates are NaN and are ignored by gaps and worst/mean accuracy.
    """

    def __init__(self, attributes: Sequence[str], groups: Mapping[str, int]) -> None:
        super().__init__()
        self.attributes = tuple(attributes)
        self.groups = check_levels(groups)
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
        """The ``overall``, ``groups``, ``cells`` and ``summary`` tables described on the class."""
        overall = rates(self.state("overall"))
        counts = self.state("by_level")
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
                }
            ),
        }
        tables["cells"] = tables["cells"][tables["cells"]["n"] > 0]
        tables["summary"] = self._summary()
        for name in ("overall", "groups", "cells"):
            tables[name] = tables[name].reset_index(drop=True).astype({"n": np.int64})
        return tables

    def _summary(self) -> pd.DataFrame:
        """Worst/mean-group accuracy, gaps and differences per attribute and group."""
        columns: dict[str, list] = {key: [] for key in SUMMARY}
        for name, stats in summary_stats(self.state("by_level"), self.groups).items():
            columns["attribute"] += list(self.attributes)
            columns["group"] += [name] * len(self.attributes)
            for key, value in stats.items():
                columns[key].extend(value.tolist())
        return pd.DataFrame(columns)


def summary_stats(counts: Tensor, groups: Mapping[str, int]) -> dict[str, dict[str, Tensor]]:
    """Per protected attribute: worst/mean-group accuracy, gaps and differences from confusion counts
    ``[..., L, 2, 2]`` over all group levels (the leading dims, e.g. attributes or resamples, stay)."""
    per_level = rates(counts)
    cell_accuracy = torch.diagonal(counts, dim1=-2, dim2=-1) / counts.sum(-1)
    out = {}
    start = 0
    for name, count in groups.items():  # one slice of levels per protected attribute
        part = slice(start, start + count)
        start += count
        cells = cell_accuracy[..., part, :].flatten(-2)
        gap = {k: _spread(per_level[k][..., part]) for k in RATES}
        out[name] = {
            "worst_group_accuracy": _extremes(cells)[0],
            "mean_group_accuracy": torch.nanmean(cells, -1),
            "accuracy_gap": gap["accuracy"],
            "fnr_gap": gap["fnr"],
            "fpr_gap": gap["fpr"],
            "equalized_odds_difference": torch.maximum(gap["tpr"], gap["fpr"]),
            "demographic_parity_difference": gap["selection_rate"],
        }
    return out


def bootstrap_summary(
    labels: Tensor,
    predictions: Tensor,
    groups: Mapping[str, Tensor],
    levels: Mapping[str, int],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Tensor]]:
    """Percentile intervals of every ``summary_stats`` value by resampling images.

    Returns ``{group: {stat: Tensor [A, 2] (low, high)}}``; each resample's confusion counts are one
    matrix product of resample counts with per-image one-hot outcomes.
    """
    levels = check_levels(levels)
    shape = (labels.shape[0], labels.shape[1])
    y = as_binary(labels, "labels", shape)
    p = as_binary(predictions, "predictions", shape)
    outcome = F.one_hot(2 * y + p, 4).to(torch.float64)  # [n, A, 4]
    member = level_onehot(stack_groups(groups, levels, shape[0]), levels)  # [n, L]
    per_image = torch.einsum("bl,bak->balk", member, outcome).reshape(shape[0], -1)
    stats: dict[str, dict[str, list[Tensor]]] = {}
    for index in bootstrap_indices(shape[0], n_resamples, seed):
        resample = torch.zeros(index.shape[0], shape[0], dtype=torch.float64)
        resample.scatter_add_(1, index, torch.ones_like(resample))
        counts = (resample @ per_image).reshape(index.shape[0], shape[1], -1, 2, 2)
        for name, values in summary_stats(counts, levels).items():
            for key, value in values.items():
                stats.setdefault(name, {}).setdefault(key, []).append(value)
    tail = (1 - confidence) / 2
    q = torch.tensor([tail, 1 - tail], dtype=torch.float64)
    return {
        name: {key: torch.nanquantile(torch.cat(v), q, dim=0).T for key, v in values.items()}
        for name, values in stats.items()
    }
