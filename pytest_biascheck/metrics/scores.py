"""Per-image scores kept with their image index, labels and groups, summarised as means with bootstrap
intervals overall, per target label and per (target label x group value) cell."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor

from pytest_biascheck.metrics.base import Accumulator
from pytest_biascheck.metrics.bootstrap import bootstrap_ci
from pytest_biascheck.metrics.inputs import as_binary, as_index, check_levels, stack_groups

#: ``label`` / ``group_value`` of a row that does not split on them; ``group`` is then "".
ANY = -1


class CellScores(Accumulator):
    """One score per image and attribute (``score [n, A]``), with a flag for scores that are 0 only
    because a map was empty. Per-image rows are the state (they feed the bootstrap), so memory grows
    with the number of images: 8 bytes per image and attribute.

    ``compute()`` returns one row per (attribute, group, label, group_value) with ``n``, ``n_empty``,
    ``mean``, ``low`` and ``high``: the overall row has ``group == ""`` and ``label == group_value ==
    -1``; label rows appear once labels were given; cell rows split every declared group by label
    (or by group value only when no labels were given). Empty cells are left out.
    """

    def __init__(
        self,
        attributes: Sequence[str],
        groups: Mapping[str, int] | None = None,
        n_resamples: int = 1000,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.attributes = tuple(attributes)
        self.groups = check_levels(groups or {})
        self.n_resamples, self.confidence, self.seed = n_resamples, confidence, seed
        a, g = len(self.attributes), len(self.groups)
        self.add_state("index", torch.zeros(0, dtype=torch.int64), "cat")
        self.add_state("score", torch.zeros(0, a, dtype=torch.float64), "cat")
        self.add_state("empty", torch.zeros(0, a, dtype=torch.bool), "cat")
        self.add_state("labels", torch.zeros(0, a, dtype=torch.int8), "cat")
        self.add_state("groups", torch.zeros(0, g, dtype=torch.int64), "cat")

    def add_scores(
        self,
        scores: Tensor,
        empty: Tensor,
        index: Tensor,
        labels: Tensor | None = None,
        groups: Mapping[str, Tensor] | None = None,
    ) -> None:
        """Append a batch of per-image scores ``[B, A]`` and empty-map flags ``[B, A]``."""
        batch = scores.shape[0]
        shape = (batch, len(self.attributes))
        if tuple(scores.shape) != shape:
            raise ValueError(
                f"scores must have shape {shape} (one per attribute), got {scores.shape}"
            )
        index = as_index(index, batch)
        known = None if labels is None else as_binary(labels, "labels", shape)
        values = stack_groups(groups, self.groups, batch)
        self.accumulate("index", index)
        self.accumulate("score", scores)
        self.accumulate("empty", empty)
        self.accumulate("labels", torch.full(shape, ANY) if known is None else known)
        self.accumulate("groups", values)

    def compute(self) -> pd.DataFrame:
        """Mean score with a percentile-bootstrap interval per attribute and per label x group cell."""
        order = self.image_order()
        index = self.state("index")[order]
        score, empty = self.state("score")[order], self.state("empty")[order]
        members, meta = self._cells(self.state("labels")[order].long(), self.state("groups")[order])
        n_cells = members.shape[-1]
        values = score[:, :, None].expand(-1, -1, n_cells).reshape(len(index), -1)
        weights = members.reshape(len(index), -1)
        count = weights.sum(0)
        seen = count > 0
        mean, low, high = bootstrap_ci(
            values[:, seen], self.n_resamples, self.confidence, self.seed, weights=weights[:, seen]
        )
        n_empty = (empty[:, :, None] & members).reshape(len(index), -1).sum(0)
        attribute = [name for name in self.attributes for _ in range(n_cells)]
        rows = pd.DataFrame(
            {
                "attribute": attribute,
                "group": meta["group"] * len(self.attributes),
                "label": meta["label"] * len(self.attributes),
                "group_value": meta["group_value"] * len(self.attributes),
                "n": count.long().numpy(),
                "n_empty": n_empty.numpy(),
            }
        )[seen.numpy()].reset_index(drop=True)
        return rows.assign(mean=mean.numpy(), low=low.numpy(), high=high.numpy())

    def _cells(self, labels: Tensor, groups: Tensor) -> tuple[Tensor, dict[str, list]]:
        """Membership ``[n, A, K]`` (bool) of every image in every cell, and each cell's description."""
        n, a = labels.shape
        labelled = bool((labels != ANY).any())
        splits = [torch.ones(n, a, 1, dtype=torch.bool)]
        meta = {"group": [""], "label": [ANY], "group_value": [ANY]}
        label_values = torch.tensor([0, 1]) if labelled else torch.tensor([ANY])
        by_label = labels[:, :, None] == label_values if labelled else splits[0]
        if labelled:
            splits.append(by_label)
            meta["group"] += ["", ""]
            meta["label"] += [0, 1]
            meta["group_value"] += [ANY, ANY]
        for column, (name, count) in enumerate(self.groups.items()):
            by_value = groups[:, column, None] == torch.arange(count)
            cells = by_label[:, :, :, None] & by_value[:, None, None, :]
            splits.append(cells.reshape(n, a, -1))
            meta["group"] += [name] * (len(label_values) * count)
            meta["label"] += [int(y) for y in label_values for _ in range(count)]
            meta["group_value"] += list(range(count)) * len(label_values)
        return torch.cat(splits, dim=2), meta
