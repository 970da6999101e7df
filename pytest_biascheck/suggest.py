"""The fix a failing check suggests: its recipe's command, filled in with what makes it work on the
gated model and data — the training data the model learned from (so the recipe meets the same
shortcut), the protected group its predictions lean on, a batch size and a step count sized to the
data — or, where no recipe fits, why not."""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_biascheck.data.base import group_parts

#: The batch of every suggested fine-tune: small enough for a CPU, large enough for batch norm.
BATCH = 32
#: Bounds of a suggested fine-tune's steps (one pass over the training images, in batches of BATCH).
STEPS = (60, 250)


@dataclass(frozen=True)
class Fix:
    """What a suggestion is filled in with for one model: its file and stem, the gated data spec,
    the training data spec and size when known, and per attribute the group its predictions
    depend on most (:func:`shortcut_groups`)."""

    model: str
    stem: str
    data: str
    train: str
    train_images: int | None = None
    groups: Mapping[str, str] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        """One pass over the training images at :data:`BATCH`, within :data:`STEPS` (the upper
        bound when the size is unknown)."""
        if self.train_images is None:
            return STEPS[1]
        return min(max(math.ceil(self.train_images / BATCH), STEPS[0]), STEPS[1])


@dataclass(frozen=True)
class Remedy:
    """A recipe and its options, as templates over the fields of :meth:`fields`. An option naming
    ``{group}`` needs the attribute's shortcut group: optional options are dropped without it,
    and a remedy whose ``needs`` are missing says why there is no fix (``unfixable``)."""

    recipe: str
    suffix: str
    options: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    needs_group: bool = False
    unfixable: str = ""

    def command(self, fields: Mapping[str, str]) -> str:
        if not self.recipe:
            return f"no recipe fixes this check: {self.unfixable}"
        if self.needs_group and not fields["group"]:
            return (
                f"no recipe fixes this check here: {self.recipe} needs a binary protected group "
                f"that {fields['attribute']}'s predictions depend on, and the scope has none"
            )
        options = [*self.options, *(o for o in self.optional if fields["group"])]
        parts = [
            f"python -m mitigations {self.recipe} --model {{model}} --out {{stem}}_{self.suffix}.pt",
            "--data {train} --eval-data {data}",
            *options,
            "--batch-size {batch} --max-steps {steps}",
        ]
        return " ".join(parts).format(**fields)


def fix_for(model: Any, data: str, results: Any) -> Fix:
    """The :class:`Fix` of a loaded model evaluated on ``data`` with ``results``."""
    train, size = training_spec(model.provenance, data)
    return Fix(str(model.path), model.name, data, train, size, shortcut_groups(results))


def fields(fix: Fix, attribute: str, other: str | None, attributes: Any) -> dict[str, str]:
    """The template fields of one target, shell-quoted: ``model``, ``stem``, ``data``, ``train``,
    ``attribute``, ``other``, ``attributes`` (space separated), ``group``, ``batch``, ``steps``."""
    group = fix.groups.get(attribute, "")
    return {
        "model": shlex.quote(fix.model), "stem": fix.stem, "data": shlex.quote(fix.data),
        "train": shlex.quote(fix.train), "attribute": shlex.quote(attribute),
        "other": shlex.quote(other or ""), "attributes": " ".join(shlex.quote(a) for a in attributes),
        "group": shlex.quote(group) if group else "", "batch": str(BATCH), "steps": str(fix.steps),
    }  # fmt: skip


def training_spec(provenance: Mapping[str, Any], data: str) -> tuple[str, int | None]:
    """The data spec a model learned from and its size, when its checkpoint records them (fixtures
    and recipes write ``train`` and ``train_images``), so a suggested fine-tune meets the same
    shortcut; else the gated spec, whose train split the recipe takes (and whose evaluated images
    it refuses to train on)."""
    train = provenance.get("train")
    if not isinstance(train, str) or not train:
        return data, None
    size = provenance.get("train_images")
    return train, int(size) if isinstance(size, int) and size > 0 else _spec_size(train)


def _spec_size(spec: str) -> int | None:
    """``n=`` of a synthetic data spec (``synthfaces:n=8000,...``), if it names one."""
    _, _, options = spec.partition(":")
    for option in options.split(","):
        key, _, value = option.partition("=")
        if key.strip() == "n" and value.strip().isdigit():
            return int(value)
    return None


def shortcut_groups(results: Any) -> dict[str, str]:
    """For each attribute, the binary protected group its predicted probability depends on most
    among images of the same true label (the largest ``leakage``, above 0): the group to
    rebalance on or unlearn, whichever group a failing item names."""
    plan = results.plan
    table = results.tables.get("leakage")
    if plan is None or table is None or table.empty:
        return {}
    binary = {g for g, count in plan.protected.items() if count == 2 and len(group_parts(g)) == 1}
    rows = table[table["group"].isin(binary) & (table["value"] > 0)]
    rows = rows.sort_values(["attribute", "value", "group"], ascending=[True, False, True])
    return dict(rows.groupby("attribute", sort=False)["group"].first())
