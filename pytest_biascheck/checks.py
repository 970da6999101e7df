"""The check catalogue: each check names a metric, a direction, a default threshold and a recipe."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pytest_biascheck.evaluate import Results
from pytest_biascheck.metrics.bootstrap import bootstrap_ci


@dataclass(frozen=True)
class Measurement:
    """A measured value with its bootstrap interval over images."""

    value: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class Target:
    """What one item checks: an attribute, and a protected group or region when the check needs one."""

    attribute: str
    other: str | None = None

    @property
    def id(self) -> str:
        return self.attribute if self.other is None else f"{self.attribute}-{self.other}"


@dataclass(frozen=True)
class Check:
    """A named bias check. ``direction`` "min": the value must be at least the threshold; "max": at most.

    ``targets(scope)`` lists what to check for a model (one pytest item each); ``measure(results,
    target, settings)`` computes the value; ``recipe`` is the mitigation command template, formatted with
    ``model``, ``attribute`` and ``other``.
    """

    name: str
    direction: str
    threshold: float
    description: str
    recipe: str
    targets: Callable[[Scope], list[Target]]
    measure: Callable[[Results, Target, Any], Measurement]

    def passes(self, value: float, threshold: float) -> bool:
        """Whether ``value`` meets ``threshold`` in this check's direction (NaN never passes)."""
        if np.isnan(value):
            return False
        return value >= threshold if self.direction == "min" else value <= threshold


@dataclass(frozen=True)
class Scope:
    """What a model is checked on: its attributes, the protected groups and the attribute regions."""

    attributes: Sequence[str]
    protected: Sequence[str]
    regions: dict[str, str]


def _per_attribute(scope: Scope) -> list[Target]:
    return [Target(a) for a in scope.attributes]


def _accuracy(results: Results, target: Target, settings: Any) -> Measurement:
    correct = (results.column("z", target.attribute) > 0) == (
        results.column("y", target.attribute) > 0.5
    )
    mean, low, high = bootstrap_ci(
        torch.from_numpy(correct.astype(np.float64)), settings.bootstrap, seed=settings.seed
    )
    return Measurement(float(mean), float(low), float(high), len(correct))


BUILTIN: tuple[Check, ...] = (
    Check(
        name="accuracy",
        direction="min",
        threshold=0.8,
        description="accuracy of the attribute on the evaluation data, so a fix cannot trade accuracy away unseen",
        recipe="python -m mitigations affact-b --model {model} --out {stem}_affact_b.pt --attribute {attribute}",
        targets=_per_attribute,
        measure=_accuracy,
    ),
)


def catalogue(hook: Any | None = None) -> dict[str, Check]:
    """Built-in checks plus those plugins add through ``pytest_biascheck_checks``."""
    checks = {c.name: c for c in BUILTIN}
    if hook is not None:
        for extra in hook.pytest_biascheck_checks():
            for check in extra or []:
                checks[check.name] = check
    return checks
