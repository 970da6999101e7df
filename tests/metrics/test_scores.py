"""Per-image score cells (overall, per label, per label x group value) against a pandas groupby."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.metrics.bootstrap import bootstrap_ci
from pytest_biascheck.metrics.scores import ANY, CHANCE, CellScores, lift

N = 90


def random_inputs():
    g = torch.Generator().manual_seed(11)
    scores = torch.rand(N, 2, generator=g, dtype=torch.float64)
    empty = torch.rand(N, 2, generator=g) > 0.8
    labels = torch.randint(0, 2, (N, 2), generator=g)
    place = torch.randint(0, 3, (N,), generator=g)
    return scores, empty, labels, place


def long_frame(scores, empty, labels, place) -> pd.DataFrame:
    return pd.concat(
        pd.DataFrame(
            {
                "attribute": name,
                "score": scores[:, j].numpy(),
                "empty": empty[:, j].numpy(),
                "label": labels[:, j].numpy(),
                "place": place.numpy(),
            }
        )
        for j, name in enumerate(("a", "b"))
    )


def test_cells_match_a_pandas_groupby() -> None:
    scores, empty, labels, place = random_inputs()
    metric = CellScores(["a", "b"], {"place": 3}, n_resamples=100)
    metric.add_scores(scores, empty, torch.arange(N), labels, {"place": place})
    result = metric.compute()
    frame = long_frame(scores, empty, labels, place)
    cells = result[result["group"] == "place"].set_index(["attribute", "label", "group_value"])
    expected = frame.groupby(["attribute", "label", "place"]).agg(
        n=("score", "size"), n_empty=("empty", "sum"), mean=("score", "mean")
    )
    expected.index.names = cells.index.names
    assert len(cells) == 2 * 2 * 3
    pd.testing.assert_frame_equal(
        cells[["n", "n_empty", "mean"]].sort_index(), expected.sort_index(), check_dtype=False
    )
    by_label = result[(result["group"] == "") & (result["label"] != ANY)]
    expected_label = frame.groupby(["attribute", "label"])["score"].mean().to_numpy()
    assert by_label["mean"].to_numpy() == pytest.approx(expected_label, abs=1e-12)
    overall = result[result["label"] == ANY].set_index("attribute")
    a_mean, a_low, a_high = bootstrap_ci(scores[:, 0], n_resamples=100)
    assert overall.loc["a", ["mean", "low", "high"]].tolist() == pytest.approx(
        [float(a_mean), float(a_low), float(a_high)], abs=1e-12
    )


def test_without_labels_cells_split_by_group_value_only_and_empty_cells_are_dropped() -> None:
    scores, empty, _, place = random_inputs()
    place = place.clamp(max=1)  # value 2 never occurs
    metric = CellScores(["a", "b"], {"place": 3}, n_resamples=50)
    metric.add_scores(scores, empty, torch.arange(N), groups={"place": place})
    result = metric.compute()
    cells = result[result["group"] == "place"]
    assert set(cells["label"]) == {ANY} and sorted(set(cells["group_value"])) == [0, 1]
    expected = np.array([scores[place == v, 0].mean().item() for v in (0, 1)])
    assert cells[cells["attribute"] == "a"]["mean"].to_numpy() == pytest.approx(expected)


def test_groups_must_match_the_declaration() -> None:
    scores, empty, labels, place = random_inputs()
    metric = CellScores(["a", "b"], {"place": 2})
    with pytest.raises(BiascheckError, match="place") as error:
        metric.add_scores(scores, empty, torch.arange(N), labels, {"place": place})
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="keys"):
        metric.add_scores(scores, empty, torch.arange(N), labels)


def test_lift_over_chance_and_its_interval_come_from_the_same_resamples() -> None:
    scores, empty, labels, place = random_inputs()
    g = torch.Generator().manual_seed(3)
    chance = torch.rand(N, 2, len(CHANCE), generator=g, dtype=torch.float64) * 0.5
    counted = torch.rand(N, 2, generator=g) > 0.2
    metric = CellScores(["a", "b"], {"place": 3}, n_resamples=200, chance=True)
    metric.add_scores(scores, empty, torch.arange(N), labels, {"place": place}, chance, counted)
    overall = metric.compute().query("label == -1 and group == ''").set_index("attribute")
    for j, name in enumerate(("a", "b")):
        keep = counted[:, j]
        row = overall.loc[name]
        assert row["n"] == int(keep.sum())
        assert row["mean"] == pytest.approx(float(scores[keep, j].mean()), abs=1e-12)
        means = chance[keep, j].mean(0)
        assert [row["chance_uniform"], row["chance_centre"]] == pytest.approx(means.tolist())
        level = float(means.max())
        assert row["chance"] == pytest.approx(level)
        assert row["lift"] == pytest.approx((row["mean"] - level) / (1 - level), abs=1e-12)
        assert row["lift_low"] < row["lift"] < row["lift_high"]
    assert float(lift(torch.tensor(0.5), torch.tensor(1.0))) != float(
        lift(torch.tensor(0.5), torch.tensor(1.0))
    )


def test_chance_scores_are_required_exactly_when_declared() -> None:
    scores, empty, *_ = random_inputs()
    with pytest.raises(ValueError, match="chance"):
        CellScores(["a", "b"], chance=True).add_scores(scores, empty, torch.arange(N))


def test_no_image_with_the_region_gives_an_empty_table_not_an_error() -> None:
    scores, empty, labels, place = random_inputs()
    chance = torch.rand(N, 2, len(CHANCE), dtype=torch.float64)
    nowhere = torch.zeros(N, 2, dtype=torch.bool)
    metric = CellScores(["a", "b"], {"place": 3}, n_resamples=20, chance=True)
    metric.add_scores(scores, empty, torch.arange(N), labels, {"place": place}, chance, nowhere)
    result = metric.compute()
    assert len(result) == 0 and {"lift", "lift_low", "chance"} <= set(result.columns)
