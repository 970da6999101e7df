"""KL divergence between the prediction distributions of protected groups, as the JLU paper uses it.

The JLU paper compares the distribution of predicted outputs for women and for men (a network that
ignores gender predicts alike for both) and reports their KL divergence. Predictions here are the
per-attribute probabilities of a binary head, so each group's distribution is a histogram of them
with ``bins`` equal bins ``[k/bins, (k+1)/bins)`` on [0, 1], the last one closed.
Streaming: only the histograms are kept. To keep KL finite when a bin is empty, each distribution
is smoothed as ``(P + eps) / (1 + bins * eps)`` before ``KL(P || Q) = sum P log(P / Q)``.

When the true labels are given, the histograms are also kept per label, and KL is reported within
each label too: a model that predicts alike for both groups among images of the same class has
zero KL there even where the class itself is more common in one group (real data), which the
unconditional KL of the paper charges to the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from pytest_biascheck.metrics.base import Accumulator
from pytest_biascheck.metrics.inputs import (
    as_binary,
    check_levels,
    level_onehot,
    level_slices,
    stack_groups,
)


def smoothed(histogram: Tensor, eps: float) -> Tensor:
    """Histogram counts ``[..., bins]`` as probabilities with additive smoothing ``eps``."""
    bins = histogram.shape[-1]
    p = histogram / histogram.sum(-1, keepdim=True)
    return (p + eps) / (1 + bins * eps)


def kl_matrix(p: Tensor) -> Tensor:
    """``KL(p_i || p_j)`` for every pair of distributions ``p [..., V, bins]``: ``[..., V, V]``."""
    log_p = p.log()
    return (p * log_p).sum(-1)[..., :, None] - torch.einsum("...ik,...jk->...ij", p, log_p)


class PredictionDivergence(Accumulator):
    """Histograms of predicted probabilities per attribute and group value; KL between group values.

    ``compute()`` returns one row per attribute, group and ordered pair of values ``(p, q)`` seen,
    with ``n_p``, ``n_q`` and ``kl = KL(P_p || Q_q)`` (asymmetric: both orders are listed).
    """

    def __init__(
        self,
        attributes: Sequence[str],
        groups: Mapping[str, int],
        bins: int = 10,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if bins < 1 or eps <= 0:
            raise ValueError("bins must be >= 1 and eps > 0")
        self.attributes = tuple(attributes)
        self.groups = check_levels(groups)
        self.bins, self.eps = bins, eps
        levels = sum(self.groups.values())
        a = len(self.attributes)
        self.add_state("histogram", torch.zeros(a, levels, bins, dtype=torch.float64), "sum")
        self.add_state("by_label", torch.zeros(a, levels, 2, bins, dtype=torch.float64), "sum")

    def update(
        self, probabilities: Tensor, groups: Mapping[str, Tensor], labels: Tensor | None = None
    ) -> None:
        """Fold in predicted probabilities ``[B, A]`` in [0, 1], each group's values ``[B]`` and,
        optionally, the true labels ``[B, A]`` (0/1) for the per-label KL."""
        shape = (probabilities.shape[0], len(self.attributes))
        if tuple(probabilities.shape) != shape:
            raise ValueError(f"probabilities must have shape {shape}, got {probabilities.shape}")
        p = probabilities.to(torch.float64)
        if not ((p >= 0) & (p <= 1)).all():
            raise ValueError("probabilities must lie in [0, 1]; apply sigmoid to logits first")
        inner = torch.arange(1, self.bins, dtype=torch.float64, device=p.device) / self.bins
        which = torch.bucketize(p, inner, right=True)
        onehot = torch.nn.functional.one_hot(which, self.bins).to(torch.float64)
        values = stack_groups(groups, self.groups, shape[0], p.device)
        member = level_onehot(values, self.groups)
        self.accumulate("histogram", torch.einsum("bl,bak->alk", member, onehot))
        if labels is not None:
            by_label = F.one_hot(as_binary(labels.to(p.device), "labels", shape), 2).to(p.dtype)
            self.accumulate("by_label", torch.einsum("bl,bay,bak->alyk", member, by_label, onehot))

    def compute(self) -> pd.DataFrame:
        """KL divergence for every ordered pair of seen values of every group, per attribute: over
        all images (``label`` -1) and, when labels were given, within each true label (0, 1)."""
        histogram, by_label = self.state("histogram"), self.state("by_label")
        splits = [(-1, histogram)] + [(y, by_label[:, :, y]) for y in (0, 1)]
        frames = [
            self._pairs(name, label, block[:, part])
            for label, block in splits
            for name, part in level_slices(self.groups)
        ]
        columns = ["attribute", "group", "label", "value_p", "value_q", "n_p", "n_q", "kl"]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)

    def _pairs(self, name: str, label: int, block: Tensor) -> pd.DataFrame:
        """Rows of ``KL(P_p || Q_q)`` for one group's histograms ``[A, V, bins]``."""
        count = block.shape[1]
        n = block.sum(-1)  # [A, V]
        kl = kl_matrix(smoothed(block, self.eps))  # [A, V, V]
        a, i, j = (
            axis.flatten()
            for axis in torch.meshgrid(
                torch.arange(len(self.attributes)),
                torch.arange(count),
                torch.arange(count),
                indexing="ij",
            )
        )
        keep = ((i != j) & (n[a, i] > 0) & (n[a, j] > 0)).numpy()
        return pd.DataFrame(
            {
                "attribute": np.asarray(self.attributes)[a.numpy()],
                "group": name,
                "label": label,
                "value_p": i.numpy(),
                "value_q": j.numpy(),
                "n_p": n[a, i].long().numpy(),
                "n_q": n[a, j].long().numpy(),
                "kl": kl[a, i, j].numpy(),
            }
        )[keep]
