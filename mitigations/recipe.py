"""What a recipe is: a name, the paper's training defaults, its own options, and how it turns a
loaded model and training data into a per-image loss. Plugins add recipes with the same type."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from pytest_biascheck.data.base import BiasDataset
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.evaluate import Results, class_reader
from pytest_biascheck.model import LoadedModel
from pytest_biascheck.planning import Plan, Scope

#: ``loss(module, inputs, batch) -> {"loss": [b], <component>: [b], ...}``: per-image values, so
#: the training loop can shard and micro-batch a global batch without changing the maths.
Loss = Callable[[nn.Module, Tensor, Mapping[str, Tensor]], dict[str, Tensor]]


@dataclass(frozen=True)
class Defaults:
    """The training settings a paper reports (every one is a command-line option)."""

    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 1
    clip_grad_norm: float | None = None
    """Not from the papers: a guard a recipe may need on small models (0 or unset: off)."""


@dataclass
class Job:
    """What every recipe starts from: the parent model, its training data, what the gate checks."""

    model: LoadedModel
    train_data: BiasDataset
    train_spec: str
    scope: Scope
    plan: Plan
    device: torch.device


@dataclass
class Setup:
    """What a recipe hands to the training loop and to the before/after report."""

    loss: Loss
    indices: Sequence[int] | None = None
    """Training images (positions in the training data); None = all of them."""
    reinitialise: bool = False
    """Train from freshly initialised weights (batch norm then learns its statistics)."""
    facts: dict[str, Any] = field(default_factory=dict)
    """Recipe-specific provenance (weights, counts), stored in the new checkpoint and the report."""
    measure: Callable[[Results], dict[str, Any]] | None = None
    """Extra numbers computed from each evaluation (e.g. ROI-IoU's E1/E2 accuracies)."""
    protected: Sequence[str] = ()
    """Groups the extra numbers need as columns of the evaluation, beyond the gate's own."""
    extra: nn.Module | None = None
    """Modules trained alongside the model but not saved (e.g. JLU's secondary heads): in the
    optimiser, moved to the device and kept in the resume state."""
    lr_factors: Mapping[str, float] = field(default_factory=dict)
    """Learning-rate multipliers by parameter-name prefix: the model's names as in its state dict,
    the extra modules' under ``extra``, e.g. ``{"fc": 10, "extra": 10}``; the rest train at --lr."""
    checks: Sequence[str] = ()
    """Checks of the catalogue the before/after report runs besides the configured ones."""
    compare: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None
    """Numbers from the before and the after ``measure`` together (e.g. JLU's % unlearned)."""


@dataclass(frozen=True)
class Recipe:
    """A mitigation: ``python -m mitigations NAME``. ``add_arguments`` adds its own options to an
    argparse parser (or argument group); ``prepare(args, job)`` validates them and returns the
    Setup (bad input: BiascheckError); ``defaults`` are the shared training options' defaults."""

    name: str
    summary: str
    defaults: Defaults
    add_arguments: Callable[[Any], None]
    prepare: Callable[[argparse.Namespace, Job], Setup]


def label_columns(model: LoadedModel, data: BiasDataset) -> Tensor:
    """Column of each model output in the data's labels; an error names outputs the data lacks."""
    missing = [a for a in model.spec.attributes if a not in data.attributes]
    if missing:
        raise BiascheckError(
            f"training data has no labels for {', '.join(missing)} predicted by {model.name}; "
            "pass --data with a dataset that labels every output"
        )
    return torch.tensor([data.attributes.index(a) for a in model.spec.attributes])


def label_column(data: BiasDataset, attribute: str) -> int:
    """Column of ``attribute`` in the data's labels; an error when the data does not label it."""
    if attribute not in data.attributes:
        raise BiascheckError(
            f"training data has no label {attribute!r}; pass --data with a dataset that has it"
        )
    return data.attributes.index(attribute)


def output_index(model: LoadedModel, attribute: str) -> int:
    """Position of ``attribute`` among the model's outputs; an error lists the ones it has."""
    if attribute not in model.spec.attributes:
        raise BiascheckError(
            f"model {model.name} does not predict {attribute!r}; choose --attribute from "
            f"{', '.join(model.spec.attributes)}"
        )
    return model.spec.attributes.index(attribute)


def dataset_labels(data: BiasDataset) -> Tensor:
    """All labels ``[n, A]``: the dataset's ``labels`` when it has them (cheap), else one pass."""
    labels = getattr(data, "labels", None)
    if isinstance(labels, Tensor):
        return labels.float()
    loader = torch.utils.data.DataLoader(data, batch_size=256)
    return torch.cat([batch["labels"] for batch in loader]).float()


def dataset_groups(data: BiasDataset) -> Tensor:
    """All group columns ``[n, G]``: the dataset's ``groups`` when it has them, else one pass."""
    groups = getattr(data, "groups", None)
    if isinstance(groups, Tensor):
        return groups
    loader = torch.utils.data.DataLoader(data, batch_size=256)
    return torch.cat([batch["groups"] for batch in loader])


def group_values(data: BiasDataset, name: str) -> Tensor:
    """Per-image values ``[n]`` of a label or a group of the data; an error lists what exists."""
    if name in data.attributes:
        return dataset_labels(data)[:, data.attributes.index(name)].long()
    if name in data.group_names:
        return dataset_groups(data)[:, data.group_names.index(name)].long()
    raise BiascheckError(
        f"{name!r} is neither a label nor a group of the training data; choose from "
        f"{', '.join(data.attributes + data.group_names)}"
    )


def is_multiclass(model: LoadedModel) -> bool:
    """Whether the model has a softmax head over classes (its attributes are the class names)."""
    return model.spec.head == "multiclass"


def training_targets(job: Job) -> Tensor:
    """What each training image's outputs are trained towards, read as the gate reads labels: the
    labels ``[n, A]`` (float, in output order) of a multilabel head, the true class ``[n]`` (long)
    of a multiclass head (one-hot label columns named like the classes, or the config's ``label``
    column). Recipes pick a batch's rows by its ``index``."""
    data, model = job.train_data, job.model
    if not is_multiclass(model):
        return dataset_labels(data)[:, label_columns(model, data)]
    batch = {"labels": dataset_labels(data), "index": torch.arange(len(data))}
    if data.group_names:
        batch["groups"] = dataset_groups(data)
    return class_reader(data, job.plan)(batch)
