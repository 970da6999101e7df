"""The fix a failing check suggests: its recipe's command, filled in with what makes it work on the
gated model and data — the training data the model learned from (so the recipe meets the same
shortcut), the protected group its predictions lean on, a batch size and a step count sized to the
data — or, where no recipe fits, why not. Which recipe comes first for which check was measured on
the biased fixtures (tests/test_suggested_fixes.py, docs/mitigations.md)."""

from __future__ import annotations

import math
import shlex
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_biascheck.data.base import group_parts
from pytest_biascheck.planning import DEFAULT_TASK

#: How every suggested command starts (``python -m mitigations auto`` recognises them by it).
COMMAND = "python -m mitigations "
#: The batch of every suggested fine-tune: small enough for a CPU, large enough for batch norm.
BATCH = 32
#: Bounds of a suggested fine-tune's steps (one pass over the training images, in batches of BATCH).
STEPS = (60, 250)


#: Leakage (the largest gap in mean predicted probability between groups, within a true label)
#: from which a group counts as the attribute's shortcut: the leakage check's default threshold.
LEANS = 0.2


@dataclass(frozen=True)
class Fix:
    """What a suggestion is filled in with for one model: its file and stem, the gated data spec,
    the training data spec and size when known, per attribute the shortcut group its predictions
    lean on (:func:`shortcut_groups`), the binary protected groups a recipe can balance, and for a
    multiclass head its task and the classes that stand for it."""

    model: str
    stem: str
    data: str
    train: str
    train_images: int | None = None
    shortcuts: Mapping[str, str] = field(default_factory=dict)
    binary: frozenset[str] = frozenset()
    task: str = ""
    task_classes: Mapping[str, str] = field(default_factory=dict)
    """A multiclass head's task name, and per protected group the class that leans on it most:
    what a recipe, which trains one class, is given for an item of the task as a whole."""

    @property
    def steps(self) -> int:
        """One pass over the training images at :data:`BATCH`, within :data:`STEPS` (the upper
        bound when the size is unknown)."""
        if self.train_images is None:
            return STEPS[1]
        return min(max(math.ceil(self.train_images / BATCH), STEPS[0]), STEPS[1])


@dataclass(frozen=True)
class Remedy:
    """A recipe and its options, as templates over the fields of :func:`fields`. ``needs`` says
    when it applies: ``"group"``, a binary group to work on (the shortcut, else the target's own
    group); ``"shortcut"``, a group the predictions lean on; ``"not_predicted"``, a ``{group}``
    the model does not predict (unlearning it would break that output). ``optional`` options are
    dropped when a field they name is empty (no group; ``{attribute}`` of a multiclass task with
    no class to stand for it); a remedy without a recipe says why (``unfixable``)."""

    recipe: str
    suffix: str = ""
    options: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    unfixable: str = ""

    def applies(self, fields: Mapping[str, str]) -> str:
        """Why this remedy does not apply to a target ("" when it does)."""
        if not self.recipe:
            return self.unfixable
        attribute, group = fields["attribute"], fields["group"]
        if not attribute and any("{attribute}" in o for o in self.options):
            return f"{self.recipe} trains one class, and no class of {fields['task']} stands out"
        attribute = attribute or fields["task"]
        if "group" in self.needs and not group:
            return (
                f"{self.recipe} needs a binary protected group to balance, and {attribute} has none"
            )
        if "shortcut" in self.needs and not fields["shortcut"]:
            return f"{attribute}'s predictions lean on no protected group (leakage < {LEANS})"
        spurious = self.spurious(fields)
        if "not_predicted" in self.needs and spurious in fields["predicted"].split():
            return f"{self.recipe} would unlearn {spurious}, which the model predicts"
        return ""

    def spurious(self, fields: Mapping[str, str]) -> str:
        """The value this remedy's ``--spurious`` option takes ("" without one)."""
        options = [o.split(maxsplit=1) for o in self.options]
        return next((v.format(**fields) for k, v in options if k == "--spurious"), "")

    def command(self, fields: Mapping[str, str]) -> str:
        names = string.Formatter().parse
        filled = [o for o in self.optional if all(fields[n] for _, n, _, _ in names(o) if n)]
        options = [*self.options, *filled]
        parts = [
            f"{COMMAND}{self.recipe} --model {{model}} --out {{stem}}_{self.suffix}.pt",
            "--data {train} --eval-data {data}",
            *options,
            "--batch-size {batch} --max-steps {steps}",
        ]
        return " ".join(parts).format(**fields)


def suggestion(remedies: Sequence[Remedy], fields: Mapping[str, str]) -> str:
    """The command of the first remedy that applies, else the sentence saying why none does."""
    reasons = []
    for remedy in remedies:
        reason = remedy.applies(fields)
        if not reason:
            return remedy.command(fields)
        reasons.append(reason)
    return f"no recipe fixes this check here: {'; '.join(reasons)}"


def fix_for(model: Any, data: str, results: Any) -> Fix:
    """The :class:`Fix` of a loaded model evaluated on ``data`` with ``results``."""
    train, size = training_spec(model.provenance, data)
    plan = results.plan
    multiclass = plan is not None and plan.head == "multiclass"
    return Fix(
        str(model.path), model.name, data, train, size, shortcut_groups(results),
        binary_groups(plan), (plan.task or DEFAULT_TASK) if multiclass else "",
        leaning_classes(results) if multiclass else {},
    )  # fmt: skip


def binary_groups(plan: Any) -> frozenset[str]:
    """The protected groups of ``plan`` a recipe can balance: single attributes with two values."""
    counts = plan.protected if plan is not None else {}
    return frozenset(g for g, n in counts.items() if n == 2 and len(group_parts(g)) == 1)


def fields(fix: Fix, attribute: str, other: str | None, attributes: Any) -> dict[str, str]:
    """The template fields of one target, shell-quoted: ``model``, ``stem``, ``data``, ``train``,
    ``attribute`` (for a multiclass task as a whole, the class that leans most on ``other``, or
    empty), ``other``, ``attributes`` (space separated), ``group`` (the attribute's shortcut,
    else ``other`` when it is a binary group, else empty), ``shortcut``, ``batch``, ``steps``,
    ``task``; and for :meth:`Remedy.applies` ``predicted`` (the model's checked outputs)."""
    if fix.task and attribute == fix.task:
        attribute = fix.task_classes.get(other or "", "")
    shortcut = fix.shortcuts.get(attribute, "")
    group = shortcut or (other if other in fix.binary else "")
    return {
        "model": shlex.quote(fix.model), "stem": fix.stem, "data": shlex.quote(fix.data),
        "train": shlex.quote(fix.train), "attribute": shlex.quote(attribute) if attribute else "",
        "other": shlex.quote(other or ""), "attributes": " ".join(shlex.quote(a) for a in attributes),
        "group": shlex.quote(group) if group else "", "shortcut": shortcut,
        "batch": str(BATCH), "steps": str(fix.steps), "predicted": " ".join(attributes),
        "task": fix.task,
    }  # fmt: skip


def training_spec(provenance: Mapping[str, Any], data: str) -> tuple[str, int | None]:
    """The data spec a model learned from and its size, when its checkpoint records them (fixtures
    and recipes write ``train`` and ``train_images``), so a suggested fine-tune meets the same
    shortcut; else the gated spec, whose train split the recipe takes (and whose evaluated images
    it refuses to train on), and its ``n=`` when it names one."""
    train = provenance.get("train")
    if not isinstance(train, str) or not train:
        return data, _spec_size(data)
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
    among images of the same true label, when that leakage reaches :data:`LEANS`: the group to
    rebalance on, whichever group a failing item names (a shortcut through hair colour makes
    Smiling fail across Male and Young too)."""
    table = results.tables.get("leakage")
    if results.plan is None or table is None:
        return {}
    rows = table[table["group"].isin(binary_groups(results.plan)) & (table["value"] >= LEANS)]
    return _most_leaking(rows, "attribute", "group")


def leaning_classes(results: Any) -> dict[str, str]:
    """For a multiclass head, per protected group the class whose one-vs-rest predicted probability
    depends on it most (the largest ``leakage``): the class a one-class recipe works on for an item
    of the task as a whole."""
    table = results.tables.get("leakage")
    if table is None:
        return {}
    return _most_leaking(
        table[table["attribute"].isin(results.plan.attributes)], "group", "attribute"
    )


def _most_leaking(rows: Any, key: str, choice: str) -> dict[str, str]:
    """Per value of column ``key`` of leakage ``rows``, the ``choice`` with the largest leakage
    (ties: the first ``choice`` by name)."""
    rows = rows.sort_values([key, "value", choice], ascending=[True, False, True])
    return dict(rows.groupby(key, sort=False)[choice].first())
