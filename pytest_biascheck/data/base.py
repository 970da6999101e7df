"""The dataset schema every source (synthetic or real) yields, so checks and recipes never special-case one."""

from __future__ import annotations

from typing import TypedDict

import torch
from torch.utils.data import Dataset


class Sample(TypedDict, total=False):
    """One item. ``image`` and ``labels`` always exist; the rest when the source has them.

    - ``image``: float32 ``[C, H, W]`` in [0, 1] (models' normalisation is applied later).
    - ``labels``: float32 ``[A]`` in {0, 1}, ordered as ``dataset.attributes``.
    - ``groups``: int64 ``[G]``, protected attributes that are not labels (e.g. Waterbirds' place),
      ordered as ``dataset.group_names``; values may have more than two levels.
    - ``masks``: bool ``[R, H, W]`` regions, ordered as ``dataset.region_names``.
    - ``parts``: int64 ``[H, W]`` part label map (indices into ``regions.PART_NAMES``).
    - ``landmarks``: float32 ``[5, 2]`` (x, y) pixels: left eye, right eye, nose, left/right mouth corner.
    - ``index``: int64 scalar, position in the dataset (joins per-image results back to metadata).
    """

    image: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor
    masks: torch.Tensor
    parts: torch.Tensor
    landmarks: torch.Tensor
    index: torch.Tensor


class BiasDataset(Dataset):
    """Base class: subclasses set the name tuples and implement ``__len__`` and ``__getitem__``."""

    attributes: tuple[str, ...] = ()
    group_names: tuple[str, ...] = ()
    region_names: tuple[str, ...] = ()
    #: What ``pytest --biascheck`` checks on this data when the config says nothing: keys
    #: ``attributes``, ``protected`` and ``regions`` (attribute -> region name).
    default_scope: dict = {}  # noqa: RUF012 - read-only class default

    def attribute_index(self, name: str) -> int:
        """Position of a label ``name``; a clear error lists the available ones."""
        try:
            return self.attributes.index(name)
        except ValueError:
            raise KeyError(
                f"attribute {name!r} is not in this dataset; it has: {', '.join(self.attributes)}"
            ) from None
