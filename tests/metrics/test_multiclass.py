"""Multiclass rates against sklearn (confusion matrix, per-class recall/precision, one-vs-rest
counts, balanced accuracy) and fairlearn (top-1 accuracy per group), worst-group accuracy over
class x group cells by hand, the minimum-share rule, and the bootstrap against a plain loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fairlearn.metrics import MetricFrame
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    multilabel_confusion_matrix,
    precision_score,
    recall_score,
)

from pytest_biascheck.metrics.bootstrap import bootstrap_indices
from pytest_biascheck.metrics.group import kept
from pytest_biascheck.metrics.multiclass import (
    ClassRates,
    bootstrap_class_summary,
    class_summary_stats,
)

CLASSES = ("a", "b", "c", "d")
N = 500


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(11)
    labels = torch.multinomial(torch.tensor([0.4, 0.3, 0.2, 0.1]), N, True, generator=g)
    noise = torch.randint(0, 4, (N,), generator=g)
    predictions = torch.where(torch.rand(N, generator=g) < 0.6, labels, noise)
    groups = {
        "sex": torch.randint(0, 2, (N,), generator=g),
        "age": torch.randint(0, 3, (N,), generator=g),
    }
    metric = ClassRates(CLASSES, {"sex": 2, "age": 3})
    for start in range(0, N, 64):  # batches of 64, shards merged in reverse order
        part = ClassRates(CLASSES, {"sex": 2, "age": 3})
        piece = slice(start, start + 64)
        part.update(labels[piece], predictions[piece], {k: v[piece] for k, v in groups.items()})
        metric = part.merge(metric)
    return labels.numpy(), predictions.numpy(), {k: v.numpy() for k, v in groups.items()}, metric


def test_task_and_class_rates_match_sklearn(data) -> None:
    labels, predictions, _, metric = data
    tables = metric.compute()
    task = tables["task"].iloc[0]
    assert task["n"] == N
    assert task["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    assert task["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predictions))
    expected = confusion_matrix(labels, predictions, labels=range(4))
    np.testing.assert_array_equal(tables["confusion"].to_numpy(), expected)
    assert list(tables["confusion"].index) == list(tables["confusion"].columns) == list(CLASSES)
    classes = tables["classes"].set_index("class")
    recall = recall_score(labels, predictions, average=None)
    precision = precision_score(labels, predictions, average=None)
    np.testing.assert_allclose(classes["accuracy"], recall)
    np.testing.assert_allclose(classes["precision"], precision)
    ovr = multilabel_confusion_matrix(labels, predictions)  # per class [[tn, fp], [fn, tp]]
    tn, fp, fn, tp = ovr[:, 0, 0], ovr[:, 0, 1], ovr[:, 1, 0], ovr[:, 1, 1]
    np.testing.assert_allclose(classes["fnr"], fn / (fn + tp))
    np.testing.assert_allclose(classes["fpr"], fp / (fp + tn))
    np.testing.assert_array_equal(classes["n"], np.bincount(labels, minlength=4))


@pytest.mark.parametrize("group", ["sex", "age"])
def test_top1_accuracy_per_group_and_cells_match_fairlearn(data, group) -> None:
    labels, predictions, groups, metric = data
    tables = metric.compute()
    frame = MetricFrame(
        metrics=accuracy_score, y_true=labels, y_pred=predictions, sensitive_features=groups[group]
    )
    ours = tables["groups"][tables["groups"]["group"] == group].set_index("value")["accuracy"]
    np.testing.assert_allclose(ours.to_numpy(), frame.by_group.to_numpy())
    summary = tables["summary"].set_index("group").loc[group]
    assert summary["accuracy_gap"] == pytest.approx(frame.difference())
    # Cells: per-class accuracy (recall) of each group value, by sklearn on that value's images.
    cells = tables["cells"][tables["cells"]["group"] == group]
    expected = [
        recall_score(
            labels[groups[group] == v], predictions[groups[group] == v], labels=[k], average=None
        )[0]
        for v, k in zip(cells["value"], cells["class"].map(CLASSES.index), strict=True)
    ]
    np.testing.assert_allclose(cells["accuracy"], expected)
    assert summary["worst_group_accuracy"] == pytest.approx(min(expected))
    assert summary["mean_group_accuracy"] == pytest.approx(np.mean(expected))


def test_small_groups_are_left_out_and_listed() -> None:
    # 100 images: place 0 holds 97 (class 0: 60 right, class 1: 37 with 30 right), place 1 holds 3
    # (all wrong). With a 5% minimum share place 1 and its cells leave the summary.
    labels = torch.tensor([0] * 60 + [1] * 37 + [0, 1, 1])
    predictions = torch.tensor([0] * 60 + [1] * 30 + [0] * 7 + [1, 0, 0])
    place = torch.tensor([0] * 97 + [1] * 3)
    metric = ClassRates(["land", "water"], {"place": 2}, min_share=0.05)
    metric.update(labels, predictions, {"place": place})
    tables = metric.compute()
    row = tables["summary"].iloc[0]
    assert row["worst_group_accuracy"] == pytest.approx(30 / 37)
    assert row["mean_group_accuracy"] == pytest.approx((1 + 30 / 37) / 2)
    assert np.isnan(row["accuracy_gap"])  # one value left: no gap
    excluded = tables["excluded"]
    assert excluded[["group", "value", "label", "n"]].values.tolist() == [
        ["place", 1, -1, 3], ["place", 1, 0, 1], ["place", 1, 1, 2]
    ]  # fmt: skip
    assert excluded["share"].tolist() == pytest.approx([0.03, 0.01, 0.02])
    everything = ClassRates(["land", "water"], {"place": 2})
    everything.update(labels, predictions, {"place": place})
    assert everything.compute()["summary"].iloc[0]["worst_group_accuracy"] == 0.0


def test_bootstrap_matches_a_loop_over_resampled_images(data) -> None:
    labels, predictions, groups, _ = data
    levels = {"sex": 2, "age": 3}
    tensors = {k: torch.from_numpy(v) for k, v in groups.items()}
    y, p = torch.from_numpy(labels), torch.from_numpy(predictions)
    fast = bootstrap_class_summary(y, p, tensors, levels, 4, n_resamples=40, seed=2, min_share=0.05)
    full = ClassRates(CLASSES, levels)
    full.update(y, p, tensors)
    keep = kept(full.state("by_level"), torch.tensor(float(N)), 0.05)
    per_resample = []
    for chunk in bootstrap_indices(N, 40, seed=2):
        for index in chunk:
            one = ClassRates(CLASSES, levels)
            one.update(y[index], p[index], {k: v[index] for k, v in tensors.items()})
            stats = class_summary_stats(one.state("by_level"), levels, *keep)
            per_resample.append(
                [float(stats["age"]["worst_group_accuracy"]), float(stats["sex"]["accuracy_gap"])]
            )
    expected = np.nanquantile(np.array(per_resample), [0.025, 0.975], axis=0)
    np.testing.assert_allclose(
        fast["age"]["worst_group_accuracy"].numpy(), expected[:, 0], atol=1e-12
    )
    np.testing.assert_allclose(fast["sex"]["accuracy_gap"].numpy(), expected[:, 1], atol=1e-12)


def test_bad_class_indices_are_refused() -> None:
    metric = ClassRates(CLASSES, {})
    with pytest.raises(ValueError, match=r"class indices in 0\.\.3"):
        metric.update(torch.tensor([4]), torch.tensor([0]), {})
    with pytest.raises(ValueError, match="integer tensor"):
        metric.update(torch.tensor([0.0]), torch.tensor([0]), {})
    with pytest.raises(ValueError, match="at least two classes"):
        ClassRates(["only"], {})
    with pytest.raises(ValueError, match=r"min_share must be a fraction in \[0, 1\)"):
        ClassRates(CLASSES, {}, min_share=1.0)
