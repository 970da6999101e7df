"""One pass of a model over evaluation data -> Results: per-image predictions, labels and groups."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from pytest_biascheck.data.base import BiasDataset
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.model import LoadedModel


@dataclass
class Results:
    """What one evaluation pass measured. ``frame`` has one row per image, ordered by image index:
    ``y:<attr>`` labels, ``z:<attr>`` logits and ``g:<group>`` protected-group values."""

    model: str
    sha256: str
    data: str
    attributes: tuple[str, ...]
    frame: pd.DataFrame
    tables: dict[str, Any] = field(default_factory=dict)

    def column(self, kind: str, name: str) -> np.ndarray:
        """A per-image column, e.g. ``column("y", "Smiling")``; a clear error names what exists."""
        key = f"{kind}:{name}"
        if key not in self.frame:
            have = sorted(c.split(":", 1)[1] for c in self.frame if c.startswith(f"{kind}:"))
            raise BiascheckError(
                f"{self.model}: no {kind!r} column for {name!r}; available: {', '.join(have)}"
            )
        return self.frame[key].to_numpy()


def resolve_device(name: str | None) -> torch.device:
    """``auto``/None -> CUDA when available, else CPU; anything else is passed to torch."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate(
    loaded: LoadedModel,
    dataset: BiasDataset,
    data_spec: str,
    batch_size: int = 64,
    device: str | None = None,
) -> Results:
    """Run the model once over ``dataset`` and keep logits, labels and group values per image."""
    dev = resolve_device(device)
    module = loaded.module.to(dev).eval()
    names = dataset.attributes
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    columns: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for batch in loader:
            logits = module(loaded.spec.normalize(batch["image"].to(dev))).float().cpu()
            _append(columns, "index", batch["index"])
            for i, name in enumerate(loaded.spec.attributes):
                _append(columns, f"z:{name}", logits[:, i])
            for i, name in enumerate(names):
                _append(columns, f"y:{name}", batch["labels"][:, i])
            for i, name in enumerate(dataset.group_names):
                _append(columns, f"g:{name}", batch["groups"][:, i])
    if not columns:
        raise BiascheckError(
            f"evaluation data {data_spec!r} is empty; choose a split or spec with images"
        )
    frame = pd.DataFrame({k: np.concatenate(v) for k, v in columns.items()})
    frame = frame.sort_values("index", kind="stable").reset_index(drop=True)
    return Results(loaded.name, loaded.sha256, data_spec, loaded.spec.attributes, frame)


def _append(columns: dict[str, list[np.ndarray]], key: str, values: torch.Tensor) -> None:
    columns.setdefault(key, []).append(values.numpy())
