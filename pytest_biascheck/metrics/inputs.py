"""Checks and encodings of metric inputs shared by the accumulators: binary labels, group values."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

from pytest_biascheck.errors import BiascheckError


def check_levels(groups: Mapping[str, int]) -> dict[str, int]:
    """Validate a ``{group name: number of values}`` declaration (values are coded 0..n-1)."""
    for name, levels in groups.items():
        if not isinstance(levels, int) or levels < 1:
            raise ValueError(f"groups[{name!r}] must be the number of values (an int >= 1)")
    return dict(groups)


def as_binary(x: Tensor, name: str, shape: tuple[int, ...]) -> Tensor:
    """``x`` as int64 0/1 of the given shape; bool, integer or float tensors of 0s and 1s are accepted."""
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    if x.dtype != torch.bool and ((x != 0) & (x != 1)).any():
        raise ValueError(f"{name} must hold only 0 and 1; threshold scores first (e.g. logits > 0)")
    return x.long()


def as_index(index: Tensor, batch: int) -> Tensor:
    """Image indices as int64 ``[batch]``; they order per-image states independently of sharding."""
    if tuple(index.shape) != (batch,) or index.is_floating_point():
        raise ValueError(f"index must be an integer tensor of shape ({batch},)")
    return index.long()


def stack_groups(
    groups: Mapping[str, Tensor] | None,
    levels: Mapping[str, int],
    batch: int,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Group values as int64 ``[batch, G]`` on ``device`` in the declared order, checking names,
    shapes and range (groups often come from the data loader while predictions are on the GPU)."""
    given = dict(groups or {})
    if set(given) != set(levels):
        raise ValueError(f"groups must have exactly the keys {list(levels)}, got {list(given)}")
    columns = [torch.zeros(batch, 0, dtype=torch.int64, device=device)]
    for name, count in levels.items():
        values = given[name]
        if tuple(values.shape) != (batch,) or values.is_floating_point():
            raise ValueError(f"groups[{name!r}] must be an integer tensor of shape ({batch},)")
        values = values.to(device=device, dtype=torch.int64)
        if ((values < 0) | (values >= count)).any():
            raise BiascheckError(
                f"group {name!r} has values outside 0..{count - 1}; declare its number of values "
                f"in groups={{{name!r}: N}} or recode it to 0..N-1"
            )
        columns.append(values[:, None])
    return torch.cat(columns, dim=1)


def level_onehot(values: Tensor, levels: Mapping[str, int]) -> Tensor:
    """One-hot ``[B, L]`` float64 over all declared levels of all groups, groups laid end to end."""
    counts = torch.tensor(list(levels.values()), dtype=torch.int64, device=values.device)
    offsets = torch.cumsum(counts, 0) - counts
    onehot = torch.zeros(
        values.shape[0], int(counts.sum()), dtype=torch.float64, device=values.device
    )
    return onehot.scatter_(1, values + offsets, 1.0)


def level_table(levels: Mapping[str, int]) -> tuple[list[str], list[int]]:
    """Group name and value of each position of :func:`level_onehot`'s last dimension."""
    names = [name for name, count in levels.items() for _ in range(count)]
    values = [value for count in levels.values() for value in range(count)]
    return names, values


def level_slices(levels: Mapping[str, int]) -> Iterator[tuple[str, slice]]:
    """Each protected attribute's slice of the group levels laid end to end (``levels``: name ->
    number of values, in order)."""
    start = 0
    for name, count in levels.items():
        yield name, slice(start, start + count)
        start += count
