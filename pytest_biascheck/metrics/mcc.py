"""Matthews correlation (MCC) between binary attributes from 2x2 counts, streamed over batches; the
Attention-IoU paper measures how strongly an attribute goes with a protected one this way."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from pytest_biascheck.metrics.base import Accumulator
from pytest_biascheck.metrics.inputs import as_binary


def mcc_from_counts(counts: Tensor) -> Tensor:
    """MCC from 2x2 counts ``[..., 2, 2]`` (rows: first variable 0/1, columns: second); 0 when a
    margin is empty (sklearn's convention), NaN when there are no counts at all."""
    c = counts.to(torch.float64)
    tn, fp, fn, tp = c[..., 0, 0], c[..., 0, 1], c[..., 1, 0], c[..., 1, 1]
    margins = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    positive = margins > 0
    value = torch.where(
        positive, (tp * tn - fp * fn) / torch.where(positive, margins, 1.0).sqrt(), 0.0
    )
    return value.masked_fill(c.sum((-2, -1)) == 0, torch.nan)


def pair_counts(a: Tensor, b: Tensor) -> Tensor:
    """2x2 counts ``[A, B, 2, 2]`` between every column of ``a [n, A]`` and of ``b [n, B]`` (0/1)."""
    onehot_a = F.one_hot(a.long(), 2).to(torch.float64)
    onehot_b = F.one_hot(b.long(), 2).to(torch.float64)
    return torch.einsum("nix,njy->ijxy", onehot_a, onehot_b)


def mcc(a: Tensor, b: Tensor) -> Tensor:
    """MCC between two binary vectors ``[n]``, or between every column pair of ``[n, A]``, ``[n, B]``."""
    vectors = a.ndim == 1
    counts = pair_counts(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1))
    value = mcc_from_counts(counts)
    return value[0, 0] if vectors else value


class PairwiseMCC(Accumulator):
    """MCC between every pair of attributes, for labels and (when given) predictions.

    Append protected attributes as extra columns to get their MCC with each attribute. ``compute()``
    returns ``{"labels": frame, "predictions": frame}``, square frames indexed by attribute name.
    """

    def __init__(self, attributes: Sequence[str]) -> None:
        super().__init__()
        self.attributes = tuple(attributes)
        a = len(self.attributes)
        self.add_state("labels", torch.zeros(a, a, 2, 2, dtype=torch.float64), "sum")
        self.add_state("predictions", torch.zeros(a, a, 2, 2, dtype=torch.float64), "sum")

    def update(self, labels: Tensor, predictions: Tensor | None = None) -> None:
        """Fold in labels and, optionally, predicted classes ``[B, A]`` (0/1)."""
        shape = (labels.shape[0], len(self.attributes))
        y = as_binary(labels, "labels", shape)
        p = None if predictions is None else as_binary(predictions, "predictions", shape)
        self.accumulate("labels", pair_counts(y, y))
        if p is not None:
            self.accumulate("predictions", pair_counts(p, p))

    def compute(self) -> dict[str, pd.DataFrame]:
        """Square MCC tables for labels and predictions (NaN where nothing was seen)."""
        return {
            name: pd.DataFrame(
                mcc_from_counts(self.state(name)).numpy(),
                index=list(self.attributes),
                columns=list(self.attributes),
            )
            for name in ("labels", "predictions")
        }
