"""Rates of a K-way (softmax) head from a streamed confusion matrix, overall and per protected group:
top-1 and balanced accuracy, per-class accuracy, precision and one-vs-rest FNR/FPR, and worst-group
accuracy over the (true class x group value) cells, as Waterbirds-style evaluations report it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from pytest_biascheck.metrics.base import Accumulator
from pytest_biascheck.metrics.bootstrap import percentile_interval, resampled_histograms
from pytest_biascheck.metrics.group import (
    check_share,
    excluded_rows,
    excluded_table,
    kept,
    level_bins,
    nan_extremes,
    nan_spread,
)
from pytest_biascheck.metrics.inputs import (
    check_levels,
    level_onehot,
    level_slices,
    level_table,
    stack_groups,
)

CLASS_SUMMARY = ("worst_group_accuracy", "mean_group_accuracy", "accuracy_gap")


def as_classes(x: Tensor, name: str, batch: int, classes: int) -> Tensor:
    """Class indices as int64 ``[batch]`` in 0..classes-1 (labels or argmax predictions)."""
    if tuple(x.shape) != (batch,) or x.is_floating_point():
        raise ValueError(f"{name} must be an integer tensor of shape ({batch},)")
    if ((x < 0) | (x >= classes)).any():
        raise ValueError(f"{name} must hold class indices in 0..{classes - 1}")
    return x.long()


def class_rates(confusion: Tensor) -> dict[str, Tensor]:
    """Per-class rates from a confusion matrix ``[..., K (true), K (predicted)]``: ``n`` (support),
    ``accuracy`` (per-class accuracy: share of the class predicted as itself, i.e. recall),
    ``precision``, and the one-vs-rest ``fnr`` and ``fpr``; NaN where undefined."""
    tp = torch.diagonal(confusion, dim1=-2, dim2=-1)
    support, predicted = confusion.sum(-1), confusion.sum(-2)
    total = confusion.sum((-2, -1))[..., None]
    negatives = total - support
    return {
        "n": support,
        "predicted": predicted,
        "accuracy": tp / support,
        "precision": tp / predicted,
        "fnr": (support - tp) / support,
        "fpr": (predicted - tp) / negatives,
    }


def top1(confusion: Tensor) -> Tensor:
    """Top-1 accuracy of confusion matrices ``[..., K, K]``."""
    return torch.diagonal(confusion, dim1=-2, dim2=-1).sum(-1) / confusion.sum((-2, -1))


def class_summary_stats(
    counts: Tensor,
    groups: Mapping[str, int],
    keep_levels: Tensor | None = None,
    keep_cells: Tensor | None = None,
) -> dict[str, dict[str, Tensor]]:
    """Per protected attribute, from confusion matrices per group level ``[..., L, K, K]``: worst-
    and mean-group accuracy over the (true class x value) cells and the top-1 accuracy gap between
    values. ``keep_levels [L]`` / ``keep_cells [L, K]`` leave small groups out (see :func:`~pytest_biascheck.metrics.group.kept`)."""
    accuracy = top1(counts)  # [..., L]
    cells = class_rates(counts)["accuracy"]  # [..., L, K]
    if keep_levels is not None:
        accuracy = accuracy.masked_fill(~keep_levels, torch.nan)
    if keep_cells is not None:
        cells = cells.masked_fill(~keep_cells, torch.nan)
    out = {}
    for name, part in level_slices(groups):
        flat = cells[..., part, :].flatten(-2)
        out[name] = {
            "worst_group_accuracy": nan_extremes(flat)[0],
            "mean_group_accuracy": torch.nanmean(flat, -1),
            "accuracy_gap": nan_spread(accuracy[..., part]),
        }
    return out


class ClassRates(Accumulator):
    """Confusion matrix of a K-way head, overall and per value of each protected group.

    ``classes`` names the K outputs; ``groups`` declares each protected attribute's number of
    values (an intersection of several counts as one). ``compute()`` returns ``task`` (one row:
    ``n``, top-1 ``accuracy``, ``balanced_accuracy``), ``classes`` (per class: ``n``, ``predicted``,
    per-class ``accuracy``, ``precision``, one-vs-rest ``fnr``/``fpr``), ``confusion`` (K x K, rows
    true, columns predicted), ``groups`` (top-1 accuracy per group value), ``cells`` (per-class
    accuracy per value), ``summary`` (per group: worst/mean-group accuracy over the class x value
    cells, top-1 accuracy gap) and ``excluded`` (values and cells under ``min_share`` of the images,
    left out of the summary as in the Attention-IoU paper; ``label`` is the class, -1 for a value).
    """

    def __init__(
        self, classes: Sequence[str], groups: Mapping[str, int], min_share: float = 0.0
    ) -> None:
        super().__init__()
        self.classes = tuple(classes)
        if len(self.classes) < 2:
            raise ValueError("a multiclass head needs at least two classes")
        self.groups = check_levels(groups)
        self.min_share = check_share(min_share)
        k, levels = len(self.classes), sum(self.groups.values())
        self.add_state("confusion", torch.zeros(k, k, dtype=torch.float64), "sum")
        self.add_state("by_level", torch.zeros(levels, k, k, dtype=torch.float64), "sum")

    def update(
        self, labels: Tensor, predictions: Tensor, groups: Mapping[str, Tensor] | None = None
    ) -> None:
        """Fold in true and predicted class indices ``[B]`` and each group's values ``[B]``."""
        batch, k = labels.shape[0], len(self.classes)
        y = as_classes(labels, "labels", batch, k)
        p = as_classes(predictions, "predictions", batch, k).to(y.device)
        outcome = F.one_hot(y * k + p, k * k).to(torch.float64)  # [B, K*K]
        member = level_onehot(stack_groups(groups, self.groups, batch, y.device), self.groups)
        self.accumulate("confusion", outcome.sum(0).reshape(k, k))
        self.accumulate("by_level", (member.T @ outcome).reshape(-1, k, k))

    def compute(self) -> dict[str, pd.DataFrame]:
        """The tables described on the class."""
        confusion, counts = self.state("confusion"), self.state("by_level")
        total = confusion.sum()
        keep_levels, keep_cells = kept(counts, total, self.min_share)
        per_class = class_rates(confusion)
        names, values = level_table(self.groups)
        k, levels = len(self.classes), len(names)
        level_n = counts.sum((-2, -1))
        cells = class_rates(counts)
        stats = class_summary_stats(counts, self.groups, keep_levels, keep_cells)
        tables = {
            "task": pd.DataFrame(
                {
                    "n": [int(total)],
                    "accuracy": [float(top1(confusion))],
                    "balanced_accuracy": [float(torch.nanmean(per_class["accuracy"]))],
                }
            ),
            "classes": pd.DataFrame(
                {"class": self.classes, **{key: v.numpy() for key, v in per_class.items()}}
            ).astype({"n": np.int64, "predicted": np.int64}),
            "confusion": pd.DataFrame(
                confusion.numpy(),
                index=pd.Index(self.classes, name="true"),
                columns=list(self.classes),
            ),
            "groups": pd.DataFrame(
                {
                    "group": names,
                    "value": values,
                    "n": level_n.long().numpy(),
                    "accuracy": top1(counts).numpy(),
                    "excluded": (~keep_levels).numpy(),
                }
            )[(level_n > 0).numpy()],
            "cells": pd.DataFrame(
                {
                    "group": np.repeat(names, k),
                    "value": np.repeat(values, k),
                    "class": list(self.classes) * levels,
                    "n": cells["n"].flatten().long().numpy(),
                    "accuracy": cells["accuracy"].flatten().numpy(),
                    "excluded": (~keep_cells).flatten().numpy(),
                }
            ),
            "summary": pd.DataFrame(
                {
                    "group": list(stats),
                    **{s: [float(v[s]) for v in stats.values()] for s in CLASS_SUMMARY},
                }
            ),
            "excluded": excluded_table(
                [
                    excluded_rows(level_n, keep_levels, total, self.groups),
                    excluded_rows(cells["n"], keep_cells, total, self.groups),
                ]
            ),
        }
        tables["cells"] = tables["cells"][tables["cells"]["n"] > 0]
        for name in ("groups", "cells"):
            tables[name] = tables[name].reset_index(drop=True)
        return tables


def bootstrap_class_summary(
    labels: Tensor,
    predictions: Tensor,
    groups: Mapping[str, Tensor],
    levels: Mapping[str, int],
    classes: int,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    min_share: float = 0.0,
) -> dict[str, dict[str, Tensor]]:
    """Percentile intervals ``{group: {stat: Tensor [2] (low, high)}}`` of every
    :func:`class_summary_stats` value by resampling images; small groups are those of the full data."""
    levels = check_levels(levels)
    n = labels.shape[0]
    y = as_classes(labels, "labels", n, classes)
    p = as_classes(predictions, "predictions", n, classes)
    outcomes = classes * classes
    bins = level_bins(stack_groups(groups, levels, n), levels, (y * classes + p)[:, None], outcomes)
    size = sum(levels.values()) * outcomes
    full = torch.zeros(size, dtype=torch.float64).index_add_(
        0, bins.flatten(), torch.ones(bins.numel(), dtype=torch.float64)
    )
    keep_levels, keep_cells = kept(
        full.reshape(-1, classes, classes), torch.tensor(float(n)), check_share(min_share)
    )
    stats: dict[str, dict[str, list[Tensor]]] = {}
    for histogram in resampled_histograms(bins, size, n_resamples, seed):
        counts = histogram.reshape(histogram.shape[0], -1, classes, classes)
        for name, values in class_summary_stats(counts, levels, keep_levels, keep_cells).items():
            for key, value in values.items():
                stats.setdefault(name, {}).setdefault(key, []).append(value)
    return {
        name: {key: percentile_interval(torch.cat(v), confidence) for key, v in values.items()}
        for name, values in stats.items()
    }
