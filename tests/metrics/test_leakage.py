"""Leakage probe: near-perfect on separable features, near chance on noise, the same fit as
sklearn's multinomial logistic regression, and JLU's "% unlearned" on the paper's own table."""

from __future__ import annotations

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from pytest_biascheck.metrics.leakage import (
    LeakageProbe,
    fit_probe,
    percent_unlearned,
    prediction_leakage,
)


def probe(features: torch.Tensor, group: torch.Tensor, **kwargs) -> dict:
    metric = LeakageProbe(features.shape[1], {"Male": int(group.max()) + 1}, **kwargs)
    for start in range(0, len(group), 100):
        part = slice(start, start + 100)
        metric.update(features[part], {"Male": group[part]}, torch.arange(len(group))[part])
    return metric.compute().iloc[0].to_dict()


def test_separable_features_give_a_near_perfect_probe() -> None:
    g = torch.Generator().manual_seed(0)
    group = torch.randint(0, 2, (500,), generator=g)
    features = torch.randn(500, 6, generator=g)
    features[:, 2] += 4 * (2 * group - 1)
    row = probe(features, group)
    assert row["accuracy"] >= 0.98 and row["n_test"] == 100 and row["n_train"] == 400
    test_group = group[torch.arange(500) % 5 == 0]
    assert row["chance"] == pytest.approx(
        max(test_group.float().mean(), 1 - test_group.float().mean())
    )


def test_independent_noise_gives_chance_level() -> None:
    g = torch.Generator().manual_seed(1)
    group = (torch.rand(1000, generator=g) < 0.7).long()
    row = probe(torch.randn(1000, 5, generator=g), group)
    assert abs(row["accuracy"] - row["chance"]) <= 0.06


def test_fit_matches_sklearn_multinomial_logistic_regression() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 4, generator=g, dtype=torch.float64)
    score = x[:, 0] + x[:, 1] ** 2 + 0.5 * torch.randn(300, generator=g, dtype=torch.float64)
    y = torch.bucketize(score, torch.tensor([0.0, 1.5], dtype=torch.float64))
    l2 = 0.05
    weight, bias = fit_probe(x, y, 3, l2=l2, iterations=200)
    # sklearn minimises 0.5 |W|^2 + C * sum(loss); ours mean(loss) + 0.5 * l2 * |W|^2.
    reference = LogisticRegression(C=1 / (l2 * 300), tol=1e-12, max_iter=10_000).fit(x, y)
    logits = x @ weight + bias
    expected = torch.from_numpy(reference.decision_function(x.numpy()))
    centred = logits - logits.mean(1, keepdim=True)
    assert torch.allclose(centred, expected - expected.mean(1, keepdim=True), atol=1e-5)


def test_percent_unlearned_reproduces_the_jlu_table() -> None:
    # Table 1 of the JLU paper: (baseline, blind, chance) -> % unlearned.
    assert round(percent_unlearned(0.56, 0.99, 0.50)) == 88
    assert round(percent_unlearned(0.24, 0.66, 0.20)) == 91
    assert round(percent_unlearned(0.25, 0.83, 0.25)) == 100
    assert round(percent_unlearned(0.39, 0.88, 0.25)) == 78
    assert percent_unlearned(0.5, 0.5, 0.5) != percent_unlearned(0.5, 0.5, 0.5)  # NaN


def test_reference_accuracy_gives_percent_unlearned_column() -> None:
    g = torch.Generator().manual_seed(3)
    group = torch.randint(0, 2, (200,), generator=g)
    row = probe(torch.randn(200, 3, generator=g), group, reference={"Male": 0.95})
    expected = percent_unlearned(row["accuracy"], 0.95, row["chance"])
    assert row["percent_unlearned"] == pytest.approx(expected)


# --- leakage into the predictions --------------------------------------------------------------


def test_predictions_that_ignore_the_group_leak_nothing_even_when_the_label_does() -> None:
    g = torch.Generator().manual_seed(9)
    n = 4000
    label = torch.randint(0, 2, (n,), generator=g)
    # The group agrees with the label in 90% of images (as real data can), the prediction reads
    # the label only: the groups' mean predictions differ by 0.6 overall, not within a label.
    group = torch.where(torch.rand(n, generator=g) < 0.9, label, 1 - label)
    p = torch.sigmoid(3.0 * (2 * label - 1) + torch.randn(n, generator=g, dtype=torch.float64))
    value, low, high, counted = prediction_leakage(p, label, group, n_resamples=200)
    assert value < 0.02 and low <= value <= high and counted == n
    assert abs(p[group == 1].mean() - p[group == 0].mean()) > 0.6


def test_the_value_is_the_largest_gap_in_mean_probability_within_a_label() -> None:
    g = torch.Generator().manual_seed(10)
    n = 3000
    label, group = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)
    p = torch.rand(n, generator=g, dtype=torch.float64) * 0.2 + 0.3 * (group == 1) * label
    value, low, high, _ = prediction_leakage(p, label, group, n_resamples=300)
    by_hand = max(
        max(p[(label == y) & (group == v)].mean().item() for v in range(3))
        - min(p[(label == y) & (group == v)].mean().item() for v in range(3))
        for y in (0, 1)
    )
    assert value == pytest.approx(by_hand, abs=1e-12)
    assert low < value < high and 0.25 < value < 0.35
    only_group = prediction_leakage(group.eq(2).double(), label, group, n_resamples=50)
    assert only_group[0] == 1.0  # the group alone decides the prediction


def test_cells_under_the_minimum_count_are_left_out() -> None:
    label = torch.tensor([0] * 50 + [1] * 50)
    group = torch.tensor([0] * 48 + [1] * 2 + [0] * 25 + [1] * 25)
    p = torch.cat([torch.zeros(48), torch.ones(2), torch.full((25,), 0.2), torch.full((25,), 0.7)])
    value, _, _, counted = prediction_leakage(p, label, group, min_count=5, n_resamples=20)
    assert counted == 50  # label 0 holds only 2 images of group 1: it cannot be compared
    assert value == pytest.approx(0.5)  # label 1: 0.7 against 0.2; label 0's gap of 1 is left out
    none = prediction_leakage(p, label, group, min_count=60, n_resamples=20)
    assert none[3] == 0 and none[0] != none[0]  # NaN: nothing measurable
