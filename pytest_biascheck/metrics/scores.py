"""Per-image scores kept with their image index, labels and groups, summarised as means with bootstrap
intervals overall, per target label and per (target label x group value) cell; optionally beside
what uninformative maps score on the same images, and as a lift over that chance level."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor

from pytest_biascheck.metrics.base import Accumulator
from pytest_biascheck.metrics.bootstrap import percentile_interval, resampled_means
from pytest_biascheck.metrics.inputs import as_binary, as_index, check_levels, stack_groups

#: ``label`` / ``group_value`` of a row that does not split on them; ``group`` is then "".
ANY = -1
#: The uninformative maps a score is calibrated against, in the order of the ``chance`` input.
CHANCE = ("uniform", "centre")


def lift(score: Tensor, chance: Tensor) -> Tensor:
    """``(score - chance) / (1 - chance)``: 0 where a score is what an uninformative map gets, 1 at a
    perfect score, negative below chance; NaN where chance is already perfect."""
    room = 1.0 - chance
    return torch.where(
        room > 1e-9, (score - chance) / torch.where(room > 1e-9, room, 1.0), torch.nan
    )


class CellScores(Accumulator):
    """One score per image and attribute (``score [n, A]``), with a flag for scores that are 0 only
    because a map was empty, and a flag for images that count at all (``counted``: an image whose
    region is absent has no score for that attribute and is left out of every mean and ``n``).
    Per-image rows are the state (they feed the bootstrap), so memory grows with the number of
    images.

    With ``chance=True`` each image also brings what every uninformative map of :data:`CHANCE`
    scores on the same region and grid. A cell's chance level is the higher of those maps' mean
    scores (the best a map that knows nothing about the image gets), and its ``lift`` is
    ``(mean - chance) / (1 - chance)``, with a bootstrap interval from the same resamples.

    ``compute()`` returns one row per (attribute, group, label, group_value) with ``n``, ``n_empty``,
    ``mean``, ``low`` and ``high`` (and ``chance_uniform``, ``chance_centre``, ``chance``, ``lift``,
    ``lift_low``, ``lift_high`` with chance): the overall row has ``group == ""`` and ``label ==
    group_value == -1``; label rows appear once labels were given; cell rows split every declared
    group by label (or by group value only when no labels were given). Empty cells are left out.
    """

    def __init__(
        self,
        attributes: Sequence[str],
        groups: Mapping[str, int] | None = None,
        n_resamples: int = 1000,
        confidence: float = 0.95,
        seed: int = 0,
        chance: bool = False,
    ) -> None:
        super().__init__()
        self.attributes = tuple(attributes)
        self.groups = check_levels(groups or {})
        self.n_resamples, self.confidence, self.seed = n_resamples, confidence, seed
        self.chance = chance
        a, g = len(self.attributes), len(self.groups)
        self.add_state("index", torch.zeros(0, dtype=torch.int64), "cat")
        self.add_state("score", torch.zeros(0, a, dtype=torch.float64), "cat")
        self.add_state("empty", torch.zeros(0, a, dtype=torch.bool), "cat")
        self.add_state("counted", torch.zeros(0, a, dtype=torch.bool), "cat")
        self.add_state("labels", torch.zeros(0, a, dtype=torch.int8), "cat")
        self.add_state("groups", torch.zeros(0, g, dtype=torch.int64), "cat")
        if chance:
            self.add_state("chance", torch.zeros(0, a, len(CHANCE), dtype=torch.float64), "cat")

    def add_scores(
        self,
        scores: Tensor,
        empty: Tensor,
        index: Tensor,
        labels: Tensor | None = None,
        groups: Mapping[str, Tensor] | None = None,
        chance: Tensor | None = None,
        counted: Tensor | None = None,
    ) -> None:
        """Append a batch of per-image scores ``[B, A]``, empty-map flags ``[B, A]``, and (with
        ``chance=True``) the uninformative maps' scores ``[B, A, len(CHANCE)]``; ``counted [B, A]``
        (default: all) marks the scores that exist."""
        batch = scores.shape[0]
        shape = (batch, len(self.attributes))
        if tuple(scores.shape) != shape:
            raise ValueError(
                f"scores must have shape {shape} (one per attribute), got {scores.shape}"
            )
        if self.chance != (chance is not None):
            raise ValueError("chance scores are needed exactly when CellScores(chance=True)")
        if chance is not None and tuple(chance.shape) != (*shape, len(CHANCE)):
            raise ValueError(f"chance must have shape {(*shape, len(CHANCE))}, got {chance.shape}")
        index = as_index(index, batch)
        known = None if labels is None else as_binary(labels, "labels", shape)
        values = stack_groups(groups, self.groups, batch)
        self.accumulate("index", index)
        self.accumulate("score", scores)
        self.accumulate("empty", empty)
        self.accumulate(
            "counted", torch.ones(shape, dtype=torch.bool) if counted is None else counted
        )
        self.accumulate("labels", torch.full(shape, ANY) if known is None else known)
        self.accumulate("groups", values)
        if chance is not None:
            self.accumulate("chance", chance)

    def compute(self) -> pd.DataFrame:
        """Mean score with a percentile-bootstrap interval per attribute and per label x group cell
        (and, with chance, the chance levels and the lift over chance with its interval)."""
        order = self.image_order()
        index = self.state("index")[order]
        n = len(index)
        score, empty = self.state("score")[order], self.state("empty")[order]
        counted = self.state("counted")[order]
        members, meta = self._cells(self.state("labels")[order].long(), self.state("groups")[order])
        members = members & counted[:, :, None]
        n_cells = members.shape[-1]

        def per_cell(per_image: Tensor) -> Tensor:
            return per_image[:, :, None].expand(-1, -1, n_cells).reshape(n, -1)

        weights = members.reshape(n, -1)
        count = weights.sum(0)
        seen = count > 0
        columns = [per_cell(score)]
        if self.chance:
            chance = self.state("chance")[order]
            columns += [per_cell(chance[:, :, k]) for k in range(len(CHANCE))]
        values = torch.cat([c[:, seen] for c in columns], 1)
        w = weights[:, seen].repeat(1, len(columns)).double()
        means = (w * values).sum(0) / w.sum(0)
        resampled = resampled_means(values, w, self.n_resamples, self.seed)
        k = int(seen.sum())
        low, high = percentile_interval(resampled[:, :k], self.confidence)
        n_empty = (empty[:, :, None] & members).reshape(n, -1).sum(0)
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
        rows = rows.assign(mean=means[:k].numpy(), low=low.numpy(), high=high.numpy())
        if not self.chance:
            return rows
        uniform, centre = means[k : 2 * k], means[2 * k :]
        level = torch.maximum(uniform, centre)
        level_r = torch.maximum(resampled[:, k : 2 * k], resampled[:, 2 * k :])
        lift_low, lift_high = percentile_interval(lift(resampled[:, :k], level_r), self.confidence)
        return rows.assign(
            chance_uniform=uniform.numpy(),
            chance_centre=centre.numpy(),
            chance=level.numpy(),
            lift=lift(means[:k], level).numpy(),
            lift_low=lift_low.numpy(),
            lift_high=lift_high.numpy(),
        )

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
