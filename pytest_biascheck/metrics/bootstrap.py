"""Percentile-bootstrap confidence intervals over images, vectorised and seeded.

Resamples are drawn as an index matrix from a seeded ``torch.Generator`` in row chunks (to bound
memory) and turned into per-resample counts, so every column of a ``[n, K]`` value matrix (every
attribute, every label x group cell) shares the same resamples and is computed with one matrix
product. Cells are handled as the Attention-IoU authors do: the whole set of images is resampled and
a cell's statistic is the mean over its members in the resample (resamples where a cell is empty
are left out of its interval).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch
from torch import Tensor

#: Upper bound on the elements of one chunk of the resample index matrix (and of its counts).
CHUNK_ELEMENTS = 1 << 21


def bootstrap_indices(n: int, n_resamples: int, seed: int = 0) -> Iterator[Tensor]:
    """The resample index matrix ``[n_resamples, n]`` in row chunks, drawn from ``seed`` only."""
    generator = torch.Generator().manual_seed(seed)
    rows = max(1, CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, n_resamples, rows):
        size = min(rows, n_resamples - start)
        yield torch.randint(n, (size, n), generator=generator)


def resample_counts(n: int, n_resamples: int, seed: int = 0) -> Iterator[Tensor]:
    """How often each image is drawn in each resample, ``[r, n]`` float64 per chunk of resamples
    (from :func:`bootstrap_indices`): one matrix product with per-image values sums every resample."""
    for index in bootstrap_indices(n, n_resamples, seed):
        counts = torch.zeros(index.shape[0], n, dtype=torch.float64)
        yield counts.scatter_add_(1, index, torch.ones_like(counts))


def resampled_histograms(
    bins: Tensor, size: int, n_resamples: int, seed: int = 0
) -> Iterator[Tensor]:
    """Per resample, how many drawn images fall in each of ``size`` bins, ``[r, size]`` float64 per
    chunk of resamples. ``bins [n, C]`` gives each image's bin in each of C columns (e.g. one per
    attribute and protected group); the image-to-bin matrix is sparse, so memory grows with
    ``n * C``, not with ``n * size`` (many intersecting groups make ``size`` large)."""
    n = bins.shape[0]
    images = torch.arange(n).repeat_interleave(bins.shape[1])
    coo = torch.sparse_coo_tensor(
        torch.stack([bins.reshape(-1).long(), images]),
        torch.ones(images.numel(), dtype=torch.float64),
        (size, n),
        check_invariants=True,
    ).coalesce()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        member = coo.to_sparse_csr()
    for counts in resample_counts(n, n_resamples, seed):
        yield (member @ counts.T).T


def percentile_interval(stats: Tensor, confidence: float = 0.95) -> Tensor:
    """``[2, ...]`` (low, high) percentile interval over the resamples in dim 0, ignoring NaN."""
    if stats.numel() == 0:  # no statistic (no cell had an image), or no resample
        return torch.full((2, *stats.shape[1:]), float("nan"), dtype=torch.float64)
    tail = (1 - confidence) / 2
    levels = torch.tensor([tail, 1 - tail], dtype=torch.float64)
    return torch.nanquantile(stats.to(torch.float64), levels, dim=0)


def resampled_means(values: Tensor, weights: Tensor, n_resamples: int, seed: int = 0) -> Tensor:
    """The weighted mean of every column of ``values [n, K]`` (``weights`` 0/1, same shape) in each
    resample, ``[n_resamples, K]``; NaN where a resample holds no member of a column. Several
    columns resampled together share the resamples, so statistics derived from them (a ratio, a
    lift over chance) get intervals from this one draw."""
    x, w = values.to(torch.float64), weights.to(torch.float64)
    wx = w * x
    return torch.cat(
        [(counts @ wx) / (counts @ w) for counts in resample_counts(x.shape[0], n_resamples, seed)]
    )


def bootstrap_ci(
    values: Tensor,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(mean, low, high) of the mean of ``values`` ``[n]`` or ``[n, K]`` with a percentile interval.

    ``weights`` (0/1, same shape) restricts each column to its member images; a column's mean is then
    taken over members only. Results are float64, shaped like one row of ``values``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if values.ndim not in (1, 2) or values.shape[0] == 0:
        raise ValueError("bootstrap_ci needs at least one value, as [n] or [n, K]")
    column = values.ndim == 1
    x = values.to(torch.float64).reshape(values.shape[0], -1)
    w = torch.ones_like(x) if weights is None else weights.to(torch.float64).reshape(x.shape)
    mean = (w * x).sum(0) / w.sum(0)
    low, high = percentile_interval(resampled_means(x, w, n_resamples, seed), confidence)
    if column:
        return mean[0], low[0], high[0]
    return mean, low, high
