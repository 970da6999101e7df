"""Group rates against fairlearn (MetricFrame, equalized odds, demographic parity) and worst/mean
group accuracy against a hand-built Waterbirds-style case."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    false_negative_rate,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score

from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.metrics.group import GroupRates

N = 400
FAIRLEARN = {
    "accuracy": accuracy_score,
    "tpr": true_positive_rate,
    "fnr": false_negative_rate,
    "fpr": false_positive_rate,
    "selection_rate": selection_rate,
}


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(8)
    labels = torch.randint(0, 2, (N, 3), generator=g)
    flip = torch.rand(N, 3, generator=g) < torch.tensor([0.1, 0.3, 0.45])
    groups = {"Male": torch.randint(0, 2, (N,), generator=g)}
    groups["age"] = torch.randint(0, 4, (N,), generator=g)  # four values
    metric = GroupRates(["a", "b", "c"], {"Male": 2, "age": 4})
    predictions = labels ^ flip.long()
    for start in range(0, N, 37):
        part = slice(start, start + 37)
        metric.update(labels[part], predictions[part], {k: v[part] for k, v in groups.items()})
    return labels.numpy(), predictions.numpy(), {k: v.numpy() for k, v in groups.items()}, metric


@pytest.mark.parametrize("group", ["Male", "age"])
def test_rates_by_group_match_fairlearn_metric_frame(data, group) -> None:
    labels, predictions, groups, metric = data
    tables = metric.compute()
    for j, attribute in enumerate(["a", "b", "c"]):
        frame = MetricFrame(
            metrics=FAIRLEARN,
            y_true=labels[:, j],
            y_pred=predictions[:, j],
            sensitive_features=groups[group],
        )
        ours = tables["groups"]
        ours = ours[(ours["attribute"] == attribute) & (ours["group"] == group)].set_index("value")
        for name in FAIRLEARN:
            assert ours[name].to_numpy() == pytest.approx(frame.by_group[name].to_numpy())
            overall = tables["overall"].set_index("attribute").loc[attribute, name]
            assert overall == pytest.approx(frame.overall[name])


@pytest.mark.parametrize("group", ["Male", "age"])
def test_differences_match_fairlearn(data, group) -> None:
    labels, predictions, groups, metric = data
    summary = metric.compute()["summary"].set_index(["attribute", "group"])
    for j, attribute in enumerate(["a", "b", "c"]):
        y, p, s = labels[:, j], predictions[:, j], groups[group]
        row = summary.loc[(attribute, group)]
        assert row["equalized_odds_difference"] == pytest.approx(
            equalized_odds_difference(y, p, sensitive_features=s)
        )
        assert row["demographic_parity_difference"] == pytest.approx(
            demographic_parity_difference(y, p, sensitive_features=s)
        )
        for name, fn in (("accuracy", accuracy_score), ("fnr", false_negative_rate)):
            by_group = MetricFrame(metrics=fn, y_true=y, y_pred=p, sensitive_features=s)
            assert row[f"{name}_gap"] == pytest.approx(by_group.difference())


def test_worst_and_mean_group_accuracy_over_label_by_group_cells() -> None:
    # Waterbirds-style: label x place cells with 10 images each and 9, 8, 5, 2 correct.
    labels = torch.tensor([0] * 20 + [1] * 20)
    place = torch.tensor(([0] * 10 + [1] * 10) * 2)
    correct = torch.tensor(
        [1] * 9 + [0] + [1] * 8 + [0] * 2 + [1] * 5 + [0] * 5 + [1] * 2 + [0] * 8
    )
    predictions = torch.where(correct.bool(), labels, 1 - labels)
    metric = GroupRates(["landbird"], {"place": 2})
    metric.update(labels[:, None], predictions[:, None], {"place": place})
    tables = metric.compute()
    row = tables["summary"].iloc[0]
    assert row["worst_group_accuracy"] == pytest.approx(0.2)
    assert row["mean_group_accuracy"] == pytest.approx((0.9 + 0.8 + 0.5 + 0.2) / 4)
    cells = tables["cells"].set_index(["label", "value"])["accuracy"]
    assert cells.loc[(1, 0)] == pytest.approx(0.5) and cells.loc[(0, 1)] == pytest.approx(0.8)
    # Accuracy per place: (9 + 5) / 20 and (8 + 2) / 20.
    assert row["accuracy_gap"] == pytest.approx(0.7 - 0.5)


def test_unseen_values_are_left_out_and_out_of_range_values_refused() -> None:
    metric = GroupRates(["a"], {"place": 3})
    metric.update(
        torch.tensor([[0], [1]]), torch.tensor([[0], [0]]), {"place": torch.tensor([0, 1])}
    )
    tables = metric.compute()
    assert tables["groups"]["value"].tolist() == [0, 1]
    assert not np.isnan(tables["summary"]["accuracy_gap"].iloc[0])
    with pytest.raises(BiascheckError, match=r"outside 0\.\.2") as error:
        metric.update(torch.tensor([[0]]), torch.tensor([[0]]), {"place": torch.tensor([5])})
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="only 0 and 1"):
        metric.update(torch.tensor([[0.5]]), torch.tensor([[0]]), {"place": torch.tensor([0])})


def test_bootstrap_summary_matches_a_loop_over_resampled_images():
    from pytest_biascheck.metrics.bootstrap import bootstrap_indices
    from pytest_biascheck.metrics.group import bootstrap_summary

    gen = torch.Generator().manual_seed(3)
    n = 120
    labels = torch.randint(0, 2, (n, 2), generator=gen)
    predictions = torch.where(torch.rand(n, 2, generator=gen) < 0.8, labels, 1 - labels)
    groups = {"g": torch.randint(0, 3, (n,), generator=gen)}
    fast = bootstrap_summary(labels, predictions, groups, {"g": 3}, n_resamples=50, seed=7)
    per_resample = []
    for chunk in bootstrap_indices(n, 50, seed=7):
        for index in chunk:
            acc = GroupRates(["a", "b"], {"g": 3})
            acc.update(labels[index], predictions[index], {"g": groups["g"][index]})
            per_resample.append(acc.compute()["summary"]["worst_group_accuracy"].to_numpy())
    expected = np.nanquantile(np.stack(per_resample), [0.025, 0.975], axis=0).T
    np.testing.assert_allclose(fast["g"]["worst_group_accuracy"].numpy(), expected, atol=1e-12)
    assert (fast["g"]["accuracy_gap"][:, 0] <= fast["g"]["accuracy_gap"][:, 1]).all()


@pytest.fixture(scope="module")
def sparse_groups():
    """400 images; age value 3 holds 2 images (0.5%), age value 2 holds 60 with 2 positives of a."""
    g = torch.Generator().manual_seed(21)
    labels = torch.randint(0, 2, (N, 2), generator=g)
    age = torch.randint(0, 2, (N,), generator=g)
    age[:2], age[2:62] = 3, 2
    labels[2:62, 0] = 0
    labels[2:4, 0] = 1
    predictions = labels ^ (torch.rand(N, 2, generator=g) < 0.25).long()
    return labels, predictions, age


def test_groups_under_the_minimum_share_leave_the_gaps_as_if_absent(sparse_groups) -> None:
    labels, predictions, age = sparse_groups
    metric = GroupRates(["a", "b"], {"age": 4}, min_share=0.01)
    metric.update(labels, predictions, {"age": age})
    tables = metric.compute()
    summary = tables["summary"].set_index("attribute")
    y, p, s = labels.numpy(), predictions.numpy(), age.numpy()
    for j, attribute in enumerate(["a", "b"]):
        row = summary.loc[attribute]
        small_positives = [2] if attribute == "a" else []
        for name, fn, dropped in (
            ("accuracy", accuracy_score, [3]),
            ("fnr", false_negative_rate, [3, *small_positives]),
            ("fpr", false_positive_rate, [3]),
        ):
            keep = ~np.isin(s, dropped)
            frame = MetricFrame(
                metrics=fn, y_true=y[keep, j], y_pred=p[keep, j], sensitive_features=s[keep]
            )
            assert row[f"{name}_gap"] == pytest.approx(frame.difference()), (attribute, name)
        cells = [
            (y[members, j] == p[members, j]).mean()
            for label in (0, 1)
            for value in range(4)
            if (members := (y[:, j] == label) & (s == value)).sum() >= 0.01 * N
        ]
        assert row["worst_group_accuracy"] == pytest.approx(min(cells))
        assert row["mean_group_accuracy"] == pytest.approx(np.mean(cells))
    excluded = tables["excluded"]
    values = excluded[excluded["label"] == -1]
    assert values[["attribute", "group", "value", "n"]].values.tolist() == [
        ["a", "age", 3, 2], ["b", "age", 3, 2]
    ]  # fmt: skip
    # Attribute "a" only: age 2 has 2 positives (0.5%), so its FNR leaves the FNR gap.
    small = excluded[(excluded["label"] == 1) & (excluded["value"] == 2)]
    assert small[["attribute", "n"]].values.tolist() == [["a", 2]]
    assert set(tables["groups"][tables["groups"]["excluded"]]["value"]) == {3}
    everything = GroupRates(["a", "b"], {"age": 4})
    everything.update(labels, predictions, {"age": age})
    assert everything.compute()["excluded"].empty


def test_bootstrap_leaves_out_the_groups_of_the_full_data(sparse_groups) -> None:
    from pytest_biascheck.metrics.bootstrap import bootstrap_indices
    from pytest_biascheck.metrics.group import bootstrap_summary, kept, summary_stats

    labels, predictions, age = sparse_groups
    fast = bootstrap_summary(
        labels, predictions, {"age": age}, {"age": 4}, n_resamples=30, seed=4, min_share=0.01
    )
    full = GroupRates(["a", "b"], {"age": 4})
    full.update(labels, predictions, {"age": age})
    keep = kept(full.state("by_level"), full.state("overall").sum((-2, -1))[:, None], 0.01)
    per_resample = []
    for chunk in bootstrap_indices(N, 30, seed=4):
        for index in chunk:
            one = GroupRates(["a", "b"], {"age": 4})
            one.update(labels[index], predictions[index], {"age": age[index]})
            per_resample.append(
                summary_stats(one.state("by_level"), {"age": 4}, *keep)["age"]["fnr_gap"].numpy()
            )
    expected = np.nanquantile(np.stack(per_resample), [0.025, 0.975], axis=0).T
    np.testing.assert_allclose(fast["age"]["fnr_gap"].numpy(), expected, atol=1e-12)


def test_a_gap_needs_two_groups() -> None:
    metric = GroupRates(["a"], {"place": 2})
    metric.update(
        torch.tensor([[0], [1]]), torch.tensor([[0], [1]]), {"place": torch.tensor([0, 0])}
    )
    row = metric.compute()["summary"].iloc[0]
    assert np.isnan(row["accuracy_gap"]) and row["worst_group_accuracy"] == 1.0
