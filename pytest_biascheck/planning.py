"""What to check and measure for a model: its evaluation data (``data_for``), the checked
attributes, protected groups and regions (``Scope``, for the checks) and the measurements one pass must
make (``Plan``, for ``evaluate``). The plugin, the CLI and the recipes all plan through here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pytest_biascheck.config import Settings
from pytest_biascheck.data.base import INTERSECTION, PROTECTED_LABELS, BiasDataset, group_parts
from pytest_biascheck.data.regions import UNSCORED_REGIONS
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.metrics.attention import DEFAULT_RESOLUTION
from pytest_biascheck.model import LoadedModel

#: Name of a multiclass head's K-way task when no ``label`` column names it.
DEFAULT_TASK = "class"


@dataclass(frozen=True)
class Plan:
    """What to measure: checked attributes, protected groups (with their number of values), and the
    region each attribute should be looked at in.

    For a multiclass head (``head="multiclass"``) ``attributes`` are its K classes, each measured
    one-vs-rest with its own map, and ``task`` names the K-way task (top-1 accuracy, worst-group
    accuracy over class x group cells); the true class comes from the data column ``label``, or
    from one-hot label columns named like the classes. ``min_group_share`` leaves smaller groups out
    of group statistics; ``levels`` names each protected group's values for reports.
    """

    attributes: tuple[str, ...]
    protected: dict[str, int]
    regions: dict[str, str]
    bootstrap: int = 1000
    seed: int = 0
    feature_probe: bool = False  # fit the feature probe (seconds of L-BFGS) only when asked for
    resolution: str = DEFAULT_RESOLUTION  # where the mask score check compares map and region
    head: str = "multilabel"
    task: str | None = None
    label: str | None = None
    min_group_share: float = 0.01
    levels: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def mapped(self) -> tuple[str, ...]:
        """The attributes that have a region: mask scores and energies are measured for these."""
        return tuple(a for a in self.attributes if a in self.regions)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """A plan from its ``dataclasses.asdict`` form after a JSON round trip (lists -> tuples)."""
        return cls(
            **{
                **data,
                "attributes": tuple(data["attributes"]),
                "levels": {k: tuple(v) for k, v in data.get("levels", {}).items()},
            }
        )


@dataclass(frozen=True)
class Scope:
    """What a model is checked on: attributes, protected groups (``"Male*Young"`` for an
    intersection), the region of each attribute, and which protected groups the model itself
    predicts (those have maps, for heatmap scores). For a multiclass head ``attributes`` are the
    checked classes and ``task`` names the K-way task."""

    attributes: Sequence[str]
    protected: Sequence[str]
    regions: dict[str, str]
    predicted_groups: Sequence[str] = ()
    positive_rates: dict[str, float] = field(default_factory=dict)
    head: str = "multilabel"
    task: str | None = None
    notes: Sequence[str] = ()  # what the run checks less of than a full scan, facts about the data

    @property
    def multiclass(self) -> bool:
        """Whether the model has a K-way (softmax) head."""
        return self.head == "multiclass"


def group_levels(dataset: BiasDataset, names: Sequence[str]) -> dict[str, int]:
    """Number of values of each protected group: 2 for a label, the dataset's declared levels for a
    group column, the product of its parts' for an intersection such as ``"Male*Young"``."""
    return {name: len(dataset.protected_levels(name)) for name in names}


def data_for(
    model: LoadedModel,
    settings: Settings,
    extra: Mapping[str, Any] | None = None,
    spec: str | None = None,
) -> tuple[str, BiasDataset]:
    """(spec, test split) a model is evaluated on: ``spec`` if given, else the model's setting, the
    global setting, or the synthetic set carrying its attributes; ``extra`` are plugin datasets.
    Group columns of a configured metadata CSV are joined on the image id."""
    from pytest_biascheck.data import default_spec

    spec = spec or settings.for_model(model.name).data or settings.data
    spec = spec or default_spec(model.spec.attributes)
    if spec is None:
        raise BiascheckError(
            f"no evaluation data for model {model.name}; pass --biascheck-data (pytest) or --data "
            f"(python -m pytest_biascheck), or set data under {settings.table('models', model.name)}"
        )
    return spec, open_for(model, settings, spec, "test", extra)


def open_for(
    model: LoadedModel,
    settings: Settings,
    spec: str,
    split: str,
    extra: Mapping[str, Any] | None = None,
) -> BiasDataset:
    """Split ``split`` of the data ``spec`` names, at the model's input size, with the group
    columns of the model's metadata CSV joined (the gate's evaluation data and the recipes'
    training data both open through here)."""
    from pytest_biascheck.data import open_data

    _, height, width = model.spec.input_size
    size = height if height == width else (height, width)
    dataset = open_data(spec, split, size, extra)
    metadata = settings.metadata_for(model.name)
    if metadata is not None:
        from pytest_biascheck.data.real import MetadataGroups

        dataset = MetadataGroups(dataset, *metadata)
    return dataset


def plan_for(model: LoadedModel, dataset: BiasDataset, settings: Settings) -> tuple[Scope, Plan]:
    """What to check (Scope) and to measure (Plan) for a model: its configured attributes, groups
    and regions, else a full scan: every output the data labels, across every protected attribute
    the data has, each looked at in its region of the data's part map. The plugin and the CLI
    both plan through here."""
    own = settings.for_model(model.name)
    default = getattr(dataset, "default_scope", {})
    multiclass = model.spec.head == "multiclass"
    where = settings.table("models", model.name)
    task = _task_name(model, own.label, where)
    attributes = _checked(model, dataset, own.attributes, where)
    if multiclass:
        class_lookup(dataset, model.spec.attributes, own.label, where)
    defaults = [  # a multiclass head's classes (and its label column) are not protected groups
        g
        for g in dataset.default_protected()
        if not (multiclass and set(group_parts(g)) & {*model.spec.attributes, own.label})
    ]
    protected = [INTERSECTION.join(group_parts(g)) for g in own.protected or defaults]
    shared = dict.fromkeys(model.spec.attributes, own.regions[task]) if task in own.regions else {}
    scored = {a: r for a, r in default.get("regions", {}).items() if r not in UNSCORED_REGIONS}
    regions = {**scored, **shared, **own.regions}  # the task's: every class's
    notes = _notes(model, dataset, attributes, protected, own, where)
    scope = Scope(
        attributes=attributes,
        protected=protected,
        regions={a: regions[a] for a in attributes if a in regions},
        predicted_groups=[] if multiclass else [g for g in protected if g in model.spec.attributes],
        positive_rates=dict(model.provenance.get("positive_rates", {})),
        head=model.spec.head,
        task=task,
        notes=notes,
    )
    plan = Plan(
        attributes=tuple(model.spec.attributes if multiclass else scope.attributes),
        protected=group_levels(dataset, scope.protected),
        regions=scope.regions,
        bootstrap=settings.bootstrap,
        seed=settings.seed,
        feature_probe="feature_leakage" in (own.checks or settings.checks),
        resolution=settings.attention_resolution,
        head=model.spec.head,
        task=task,
        label=own.label,
        min_group_share=settings.min_share(model.name),
        levels={g: dataset.protected_levels(g) for g in scope.protected},
    )
    return scope, plan


def _task_name(model: LoadedModel, label: str | None, where: str) -> str | None:
    """A multiclass head's task name (its ``label`` column, else "class"); None for multilabel."""
    if model.spec.head != "multiclass":
        if label is not None:
            raise BiascheckError(
                f"model {model.name} has a multilabel head, so label (the class column of a "
                f"multiclass head) does not apply; remove it from {where}"
            )
        return None
    task = label or DEFAULT_TASK
    if task in model.spec.attributes:
        raise BiascheckError(
            f"model {model.name}: the task name {task!r} is also a class name; set label under "
            f"{where} to a column of another name"
        )
    return task


def _notes(
    model: LoadedModel,
    dataset: BiasDataset,
    attributes: Sequence[str],
    protected: Sequence[str],
    own: Any,
    where: str,
) -> tuple[str, ...]:
    """One line for each way a run checks less than a full scan of the model, and for each fact
    the data reports about itself (a synthetic set's realised correlations)."""
    notes = [f"{model.name}: data {line}" for line in dataset.notes()]
    if not protected:
        notes.append(
            f"{model.name}: the data has no protected attribute (no group column, none of "
            f"{', '.join(PROTECTED_LABELS)}), so no group or leakage check runs; set protected "
            f"under {where} or join a metadata CSV of group columns (metadata = ...)"
        )
    if not own.attributes and model.spec.head != "multiclass":
        unlabelled = [a for a in model.spec.attributes if a not in attributes]
        if unlabelled:
            notes.append(
                f"{model.name}: outputs {', '.join(unlabelled)} have no label in the data and "
                "are not checked"
            )
    return tuple(notes)


def _checked(
    model: LoadedModel,
    dataset: BiasDataset,
    configured: Sequence[str],
    where: str,
) -> list[str]:
    """The attributes (a multiclass head: classes) to check: configured, else every output the
    data labels (a multiclass head: all its classes); unknown names are errors."""
    if model.spec.head == "multiclass":
        unknown = [a for a in configured if a not in model.spec.attributes]
        if unknown:
            raise BiascheckError(
                f"model {model.name}: {unknown[0]!r} is not one of its classes "
                f"({', '.join(model.spec.attributes)}); fix {where} attributes"
            )
        return list(configured or model.spec.attributes)
    predicted = model.spec.attributes
    attributes = list(configured) or [a for a in predicted if a in dataset.attributes]
    for name in attributes:
        if name not in predicted or name not in dataset.attributes:
            raise BiascheckError(
                f"model {model.name}: attribute {name!r} is not predicted by the model or not "
                f"labelled in the data; fix {where} attributes"
            )
    return attributes


def class_lookup(
    dataset: BiasDataset, classes: Sequence[str], label: str | None, where: str = "the config"
) -> torch.Tensor | None:
    """How a multiclass head's true class is read from the data: None for one-hot label columns
    named like the classes, else a table from the codes of data column ``label`` to class indices
    (matched by name, or by position when its values are 0..K-1); a one-line error otherwise."""
    if label is None:
        missing = [c for c in classes if c not in dataset.attributes]
        if missing:
            raise BiascheckError(
                f"the data has no label column for class {missing[0]!r} of the multiclass model; "
                f'set label = "<column holding the class>" under {where}'
            )
        return None
    levels = dataset.protected_levels(label)
    if set(levels) <= set(classes):
        return torch.tensor([classes.index(v) for v in levels])
    if levels == tuple(str(i) for i in range(len(classes))):
        return torch.arange(len(classes))
    raise BiascheckError(
        f"values of label column {label!r} ({', '.join(levels)}) are neither the model's classes "
        f"({', '.join(classes)}) nor 0..{len(classes) - 1}; recode the column or fix {where} label"
    )
