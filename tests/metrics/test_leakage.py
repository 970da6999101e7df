"""Leakage probe: near-perfect on separable features, near chance on noise, the same fit as
sklearn's multinomial logistic regression, and JLU's "% unlearned" on the paper's own table."""

from __future__ import annotations

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from pytest_biascheck.metrics.leakage import LeakageProbe, fit_probe, percent_unlearned


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
