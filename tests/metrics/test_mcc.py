"""MCC from streaming 2x2 counts against sklearn's matthews_corrcoef."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import matthews_corrcoef

from pytest_biascheck.metrics.mcc import PairwiseMCC, mcc, mcc_from_counts


def correlated(n: int = 300, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 2, (n, 1), generator=g)
    noise = torch.rand(n, 4, generator=g) < torch.tensor([0.0, 0.1, 0.3, 0.5])
    return base ^ noise.long()


def test_mcc_of_vectors_and_columns_matches_sklearn() -> None:
    x = correlated()
    assert float(mcc(x[:, 0], x[:, 2])) == pytest.approx(matthews_corrcoef(x[:, 0], x[:, 2]))
    assert float(mcc(x[:, 1], 1 - x[:, 1])) == pytest.approx(-1.0)
    table = mcc(x[:, :2], x[:, 2:]).numpy()
    expected = [[matthews_corrcoef(x[:, i], x[:, j]) for j in (2, 3)] for i in (0, 1)]
    assert table == pytest.approx(np.array(expected))


def test_degenerate_margins_follow_sklearn_and_no_counts_are_nan() -> None:
    constant = torch.ones(10, dtype=torch.long)
    other = torch.tensor([0, 1] * 5)
    assert float(mcc(constant, other)) == matthews_corrcoef(constant, other) == 0.0
    assert np.isnan(float(mcc_from_counts(torch.zeros(2, 2))))


def test_pairwise_accumulator_streams_labels_and_predictions() -> None:
    labels, predictions = correlated(seed=1), correlated(seed=2)
    metric = PairwiseMCC(["a", "b", "c", "d"])
    for start in range(0, 300, 64):
        part = slice(start, start + 64)
        metric.update(labels[part], predictions[part])
    result = metric.compute()
    for name, x in (("labels", labels), ("predictions", predictions)):
        expected = [[matthews_corrcoef(x[:, i], x[:, j]) for j in range(4)] for i in range(4)]
        assert result[name].to_numpy() == pytest.approx(np.array(expected))
    assert result["labels"].loc["a", "c"] == pytest.approx(
        matthews_corrcoef(labels[:, 0], labels[:, 2])
    )
    only_labels = PairwiseMCC(["a", "b", "c", "d"])
    only_labels.update(labels)
    assert only_labels.compute()["predictions"].isna().all().all()
