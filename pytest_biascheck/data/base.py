"""The dataset schema every source (synthetic or real) yields, so checks and recipes never special-case one,
and how a protected group (a label, a group column, or an intersection of several) is coded."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import TypedDict

import numpy as np
import torch
from torch.utils.data import Dataset

from pytest_biascheck.errors import BiascheckError

#: Joins the attributes of an intersectional protected group: ``"Male*Young"``.
INTERSECTION = "*"
#: Most values an intersection may have (beyond this nearly every group falls under any share).
MAX_LEVELS = 4096
#: Labels that are protected attributes wherever a dataset has them: CelebA's demographic labels,
#: as the Attention-IoU and JLU papers use them.
PROTECTED_LABELS: tuple[str, ...] = ("Male", "Young")


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
    #: Names of the values of each group column (codes 0..n-1); a column not listed has two, 0 and 1.
    group_levels: dict[str, tuple] = {}  # noqa: RUF012 - read-only class default
    #: What ``pytest --biascheck`` checks on this data when the config says nothing: keys
    #: ``protected`` (the data's known nuisances) and ``regions`` (attribute -> region name).
    default_scope: dict = {}  # noqa: RUF012 - read-only class default

    def default_protected(self) -> tuple[str, ...]:
        """Protected attributes checked when the config names none: the data's known nuisances
        (``default_scope["protected"]``), else the labels of ``PROTECTED_LABELS`` it has; plus
        every group column (a Waterbirds place, a CSV's or a metadata file's group columns)."""
        known = self.default_scope.get("protected")
        if known is None:
            known = [a for a in PROTECTED_LABELS if a in self.attributes]
        return tuple(dict.fromkeys([*known, *self.group_names]))

    def notes(self) -> list[str]:
        """Lines the run should print about this data (none unless a dataset has something to say)."""
        return []

    def image_ids(self) -> np.ndarray:
        """The id of every image, in order, that a metadata CSV is joined on (here the index)."""
        return np.arange(len(self)).astype(str)

    def protected_levels(self, name: str) -> tuple[str, ...]:
        """Names of the values of a protected group: ``0, 1`` for a label, a group column's declared
        levels, or for an intersection ``"A*B"`` every combination (the first attribute varies
        slowest), its parts' names joined by ``*``; a clear error for an unknown name."""
        per_part = [self._levels_of(part, name) for part in group_parts(name)]
        if math.prod(len(p) for p in per_part) > MAX_LEVELS:
            raise BiascheckError(
                f"protected group {name!r} has more than {MAX_LEVELS} values; intersect fewer "
                "attributes or recode them into fewer values"
            )
        return tuple(INTERSECTION.join(combo) for combo in itertools.product(*per_part))

    def protected_values(self, batch: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
        """Codes ``[B]`` (int64, in the order of :meth:`protected_levels`) of a protected group for a
        batch of samples; an intersection's code counts its parts' codes in mixed radix."""
        code = torch.zeros(batch["labels"].shape[0], dtype=torch.int64)
        for part in group_parts(name):
            code = code * len(self._levels_of(part, name)) + self._column(batch, part)
        return code

    def _levels_of(self, part: str, name: str) -> tuple[str, ...]:
        if part in self.attributes:
            return ("0", "1")
        if part in self.group_names:
            return tuple(str(v) for v in self.group_levels.get(part, (0, 1)))
        have = ", ".join(self.attributes + self.group_names)
        raise BiascheckError(
            f"protected group {name!r}: {part!r} is neither a label nor a group of the data; "
            f"choose from {have}"
        )

    def _column(self, batch: Mapping[str, torch.Tensor], part: str) -> torch.Tensor:
        if part in self.attributes:
            return batch["labels"][:, self.attributes.index(part)].long()
        return batch["groups"][:, self.group_names.index(part)].long()

    def attribute_index(self, name: str) -> int:
        """Position of a label ``name``; a clear error lists the available ones."""
        try:
            return self.attributes.index(name)
        except ValueError:
            raise KeyError(
                f"attribute {name!r} is not in this dataset; it has: {', '.join(self.attributes)}"
            ) from None


def group_parts(name: str) -> tuple[str, ...]:
    """The attributes a protected group names: ``"Male*Young"`` -> ("Male", "Young")."""
    parts = tuple(p.strip() for p in name.split(INTERSECTION))
    if not all(parts) or len(set(parts)) != len(parts):
        raise BiascheckError(
            f"protected group {name!r} is not a name or an intersection of distinct names such as "
            f"'Male{INTERSECTION}Young'; fix protected in the config"
        )
    return parts
