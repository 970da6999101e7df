"""Leakage probe: near-perfect on separable features, near chance on noise, the same fit as
sklearn's multinomial logistic regression, and JLU's "% unlearned" on the paper's own table."""

from __future__ import annotations

import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from pytest_biascheck.metrics.leakage import (
    LeakageProbe,
    fit_probe,
    percent_unlearned,
    prediction_leakage,
    weighted_auc,
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


def test_weighted_auc_matches_sklearn_with_ties_and_weights() -> None:
    g = torch.Generator().manual_seed(8)
    scores = torch.randint(0, 12, (400,), generator=g).double()  # many ties
    positive = torch.rand(400, generator=g) < 0.3
    weights = torch.randint(0, 4, (3, 400), generator=g).double()  # three resamples at once
    got = weighted_auc(scores, positive, weights)
    for row, w in zip(got, weights, strict=True):
        expected = roc_auc_score(positive.numpy(), scores.numpy(), sample_weight=w.numpy())
        assert float(row) == pytest.approx(expected, abs=1e-12)
    assert torch.isnan(weighted_auc(scores, torch.zeros(400, dtype=torch.bool), weights)).all()


def test_scores_that_ignore_the_group_leak_nothing_even_when_the_label_does() -> None:
    g = torch.Generator().manual_seed(9)
    n = 4000
    label = torch.randint(0, 2, (n,), generator=g)
    # The group agrees with the label in 90% of images (as real data can), the score reads the
    # label only: the unconditional AUC of the score for the group would be far from 0.5.
    group = torch.where(torch.rand(n, generator=g) < 0.9, label, 1 - label)
    score = 3.0 * label + torch.randn(n, generator=g, dtype=torch.float64)
    value, low, high, counted = prediction_leakage(score, label, group, n_resamples=200)
    assert value < 0.08 and low <= value <= high and counted == n
    unconditional = abs(2 * roc_auc_score(group.numpy(), score.numpy()) - 1)
    assert unconditional > 0.6


def test_scores_that_read_the_group_leak_in_proportion() -> None:
    g = torch.Generator().manual_seed(10)
    n = 4000
    label, group = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)
    noise = torch.randn(n, generator=g, dtype=torch.float64)
    perfect = prediction_leakage(label + 10.0 * (group == 2), label, group, n_resamples=50)
    assert perfect[0] == pytest.approx(1.0)  # value 2 against the rest: separated in each label
    weak = prediction_leakage(noise + 0.5 * (group == 1), label, group, n_resamples=200)[0]
    strong = prediction_leakage(noise + 1.5 * (group == 1), label, group, n_resamples=200)[0]
    assert 0.1 < weak < strong < 1.0
    # By hand: within each label, |2 AUC - 1| of group value 1 against the rest, label-weighted.
    hand = (
        sum(
            (label == y).sum().item()
            * abs(
                2
                * roc_auc_score(
                    (group[label == y] == 1).numpy(),
                    (noise + 1.5 * (group == 1))[label == y].numpy(),
                )
                - 1
            )
            for y in (0, 1)
        )
        / n
    )
    assert strong == pytest.approx(hand, abs=1e-12)  # value 1 is the worst and is reported


def test_cells_under_the_minimum_count_are_left_out() -> None:
    label = torch.tensor([0] * 50 + [1] * 50)
    group = torch.tensor([0] * 48 + [1] * 2 + [0] * 25 + [1] * 25)
    score = torch.arange(100).double()
    value, _, _, counted = prediction_leakage(score, label, group, min_count=5, n_resamples=20)
    assert counted == 50  # label 0 holds only 2 images of group 1
    assert value == 1.0  # in label 1 the scores of group 1 are all above those of group 0
    none = prediction_leakage(score, label, group, min_count=60, n_resamples=20)
    assert none[3] == 0 and none[0] != none[0]  # NaN: nothing measurable
