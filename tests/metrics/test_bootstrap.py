"""bootstrap_ci against a plain numpy percentile bootstrap on the same resample indices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytest_biascheck.metrics import bootstrap
from pytest_biascheck.metrics.bootstrap import bootstrap_ci, bootstrap_indices


def all_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    return torch.cat(list(bootstrap_indices(n, n_resamples, seed))).numpy()


def test_matches_numpy_percentile_bootstrap_with_the_same_indices() -> None:
    values = torch.randn(57, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    idx = all_indices(57, 500, seed=4)
    means = values.numpy()[idx].mean(1)
    mean, low, high = bootstrap_ci(values, n_resamples=500, confidence=0.9, seed=4)
    assert float(mean) == pytest.approx(values.numpy().mean(), abs=1e-12)
    assert [float(low), float(high)] == pytest.approx(np.percentile(means, [5, 95]), abs=1e-12)


def test_columns_and_member_weights_match_numpy_nanmean_per_cell() -> None:
    g = torch.Generator().manual_seed(5)
    values = torch.rand(40, 3, generator=g, dtype=torch.float64)
    members = torch.rand(40, 3, generator=g) > 0.3
    mean, low, high = bootstrap_ci(values, n_resamples=300, seed=1, weights=members)
    masked = np.where(members.numpy(), values.numpy(), np.nan)
    resampled = np.nanmean(masked[all_indices(40, 300, seed=1)], axis=1)  # [R, 3]
    assert mean.numpy() == pytest.approx(np.nanmean(masked, 0), abs=1e-12)
    expected = np.nanpercentile(resampled, [2.5, 97.5], axis=0)
    assert np.stack([low.numpy(), high.numpy()]) == pytest.approx(expected, abs=1e-12)


def test_deterministic_for_a_seed_and_contains_the_mean() -> None:
    values = torch.rand(100, dtype=torch.float64)
    first = bootstrap_ci(values, seed=7)
    assert [float(v) for v in first] == [float(v) for v in bootstrap_ci(values, seed=7)]
    assert float(first[1]) != float(bootstrap_ci(values, seed=8)[1])
    assert float(first[1]) < float(first[0]) < float(first[2])


def test_memory_chunking_does_not_change_the_interval(monkeypatch) -> None:
    values = torch.rand(30, dtype=torch.float64)
    whole = bootstrap_ci(values, n_resamples=200, seed=2)
    monkeypatch.setattr(bootstrap, "CHUNK_ELEMENTS", 64)  # two resamples per chunk
    assert len(list(bootstrap_indices(30, 200, 2))) == 100
    chunked = bootstrap_ci(values, n_resamples=200, seed=2)
    assert [float(v) for v in chunked] == pytest.approx([float(v) for v in whole], abs=1e-12)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(torch.ones(3), confidence=1.5)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci(torch.ones(0))


def test_resampled_histograms_count_the_drawn_images_in_each_bin() -> None:
    g = torch.Generator().manual_seed(9)
    bins = torch.randint(0, 7, (30, 3), generator=g)
    bins[:, 2] = 6  # two columns may share a bin: counts add
    got = torch.cat(list(bootstrap.resampled_histograms(bins, 7, 25, seed=5)))
    idx = all_indices(30, 25, seed=5)
    expected = np.stack([np.bincount(bins.numpy()[row].reshape(-1), minlength=7) for row in idx])
    np.testing.assert_array_equal(got.numpy(), expected)
