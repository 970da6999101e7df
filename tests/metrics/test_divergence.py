"""KL between groups' prediction histograms against numpy.histogram and scipy.stats.entropy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import entropy

from pytest_biascheck.metrics.divergence import PredictionDivergence


def smoothed(values: np.ndarray, bins: int, eps: float) -> np.ndarray:
    counts, _ = np.histogram(values, bins=np.arange(bins + 1) / bins)
    return (counts / counts.sum() + eps) / (1 + bins * eps)


def test_kl_matches_numpy_histograms_and_scipy_entropy() -> None:
    g = torch.Generator().manual_seed(6)
    n = 500
    place = torch.randint(0, 3, (n,), generator=g)
    probabilities = torch.rand(n, 2, generator=g, dtype=torch.float64) ** (1 + place[:, None])
    probabilities[:6, 0] = torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], dtype=torch.float64)
    metric = PredictionDivergence(["a", "b"], {"place": 3}, bins=5, eps=1e-4)
    for start in range(0, n, 128):
        part = slice(start, start + 128)
        metric.update(probabilities[part], {"place": place[part]})
    result = metric.compute()
    assert len(result) == 2 * 3 * 2  # attributes x ordered pairs of distinct values
    for row in result.itertuples():
        j = ["a", "b"].index(row.attribute)
        p = smoothed(probabilities[place == row.value_p, j].numpy(), 5, 1e-4)
        q = smoothed(probabilities[place == row.value_q, j].numpy(), 5, 1e-4)
        assert row.kl == pytest.approx(entropy(p, q), abs=1e-12)
        assert row.n_p == int((place == row.value_p).sum())


def test_identical_distributions_have_zero_kl_and_different_ones_positive() -> None:
    same = torch.tensor([[0.1], [0.9], [0.1], [0.9]])
    metric = PredictionDivergence(["a"], {"Male": 2})
    metric.update(same, {"Male": torch.tensor([0, 0, 1, 1])})
    assert metric.compute()["kl"].tolist() == pytest.approx([0.0, 0.0], abs=1e-12)
    metric.update(torch.tensor([[0.95], [0.95]]), {"Male": torch.tensor([1, 1])})
    assert (metric.compute()["kl"] > 0.01).all()


def test_probabilities_outside_the_unit_interval_are_refused() -> None:
    metric = PredictionDivergence(["a"], {"Male": 2})
    with pytest.raises(ValueError, match="sigmoid"):
        metric.update(torch.tensor([[1.5]]), {"Male": torch.tensor([0])})


def test_within_label_kl_matches_per_label_histograms() -> None:
    g = torch.Generator().manual_seed(7)
    n = 600
    male = torch.randint(0, 2, (n,), generator=g)
    labels = torch.randint(0, 2, (n, 1), generator=g)
    probabilities = torch.rand(n, 1, generator=g, dtype=torch.float64) ** (1 + male[:, None])
    metric = PredictionDivergence(["a"], {"Male": 2}, bins=4, eps=1e-4)
    metric.update(probabilities, {"Male": male}, labels)
    result = metric.compute()
    assert sorted(set(result["label"])) == [-1, 0, 1]
    for row in result[result["label"] >= 0].itertuples():
        inside = labels[:, 0] == row.label
        p = smoothed(probabilities[inside & (male == row.value_p), 0].numpy(), 4, 1e-4)
        q = smoothed(probabilities[inside & (male == row.value_q), 0].numpy(), 4, 1e-4)
        assert row.kl == pytest.approx(entropy(p, q), abs=1e-12)


def test_predictions_from_the_label_alone_have_no_within_label_kl() -> None:
    # The label is far more common in one group (as Blond_Hair among women); the predictions read
    # the label only, so the groups' predictions differ overall but not within a label.
    labels = torch.tensor([[1]] * 80 + [[0]] * 20 + [[1]] * 20 + [[0]] * 80)
    male = torch.tensor([0] * 100 + [1] * 100)
    probabilities = torch.where(labels == 1, 0.9, 0.1).double()
    metric = PredictionDivergence(["a"], {"Male": 2})
    metric.update(probabilities, {"Male": male}, labels)
    result = metric.compute()
    assert (result[result["label"] == -1]["kl"] > 0.5).all()
    assert result[result["label"] >= 0]["kl"].tolist() == pytest.approx([0.0] * 4, abs=1e-12)
