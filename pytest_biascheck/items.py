"""pytest collectors and items: one collector per model, one item per (check, target)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from pytest_biascheck.checks import Check, Measurement, Target, catalogue
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.model import LoadedModel


class CheckFailed(AssertionError):
    """A check's value is on the wrong side of its threshold."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class ModelCollector(pytest.Collector):
    """The items of one model file, named ``<model file>::<check>[<attribute>-<group or region>]``."""

    def __init__(self, *, model: LoadedModel, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model

    def collect(self) -> list[pytest.Item]:
        from pytest_biascheck.plugin import STATE

        state = self.config.stash[STATE]
        scope = state.scope(self.model)
        wanted = state.settings.for_model(self.model.name).checks or state.settings.checks
        items = []
        for check in catalogue(self.config.pluginmanager.hook).values():
            if not (check.name in wanted if wanted else check.default):
                continue
            for target in check.targets(scope):
                item = CheckItem.from_parent(
                    self, name=f"{check.name}[{target.id}]", check=check, target=target
                )
                item.add_marker("biascheck")
                item.add_marker(check.name)
                items.append(item)
        return items


class CheckItem(pytest.Item):
    """One bias check of one model; it fails with the value, threshold, interval and a fix."""

    def __init__(self, *, check: Check, target: Target, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check
        self.target = target

    @property
    def model(self) -> LoadedModel:
        return self.parent.model

    def threshold(self) -> float:
        """The model's own threshold, else the global one, else the check's default."""
        from pytest_biascheck.plugin import STATE

        settings = self.config.stash[STATE].settings
        own = settings.for_model(self.model.name).thresholds
        return own.get(
            self.check.name, settings.thresholds.get(self.check.name, self.check.threshold)
        )

    def runtest(self) -> None:
        from pytest_biascheck.baseline import compare
        from pytest_biascheck.plugin import STATE

        state = self.config.stash[STATE]
        results = state.results_for(self.model)
        measured = self.check.measure(results, self.target, state.scope(self.model))
        threshold = self.threshold()
        if measured.n == 0:
            pytest.skip(
                f"{self.check.name} of {self.target.id} is not measurable: no image in that subset, "
                "or no group holding min_group_share of the images"
            )
        passed = self.check.passes(measured.value, threshold)
        previous = state.baseline.get(self.nodeid)
        tolerance = state.settings.tolerances.get(self.check.name, state.settings.tolerance)
        change = compare(measured.value, previous, self.check.direction, tolerance)
        op = ">=" if self.check.direction == "min" else "<="
        status = "passed" if passed and change != "regressed" else "FAILED"
        state.outcomes.append(
            {"item": self.nodeid, "model": self.model.name, "check": self.check.name,
             "attribute": self.target.attribute, "other": self.target.other, "value": measured.value,
             "low": measured.low, "high": measured.high, "n": measured.n, "threshold": threshold,
             "op": op, "status": status, "recipe": self.fix(), "baseline": previous, "change": change,
             "description": self.check.description}
        )  # fmt: skip
        self.user_properties.append(("value", measured.value))
        self.user_properties.append(("threshold", threshold))
        if not passed:
            raise CheckFailed(self.explain(measured, threshold, op))
        if change == "regressed":
            raise CheckFailed(
                [
                    f"{self.check.name} of {self.target.id}: {measured.value:.3f} regressed from the baseline {previous:.3f} "
                    f"by more than the tolerance {tolerance:.3f} (threshold {op} {threshold:.3f} still holds)",
                    f"  value      {measured.value:.3f}  ({_interval(measured)}, n={measured.n} images)",
                    f"  fix        {self.fix()}",
                ]
            )

    def explain(self, measured: Measurement, threshold: float, op: str) -> list[str]:
        """The failure message: what was measured, against what, how sure, and what to run."""
        return [
            f"{self.check.name} of {self.target.id}: {measured.value:.3f} does not meet {op} {threshold:.3f}",
            f"  value      {measured.value:.3f}  ({_interval(measured)}, n={measured.n} images)",
            f"  threshold  {op} {threshold:.3f}  ({self.check.direction}; set [tool.biascheck.thresholds] {self.check.name})",
            f"  checks     {self.check.description}",
            f"  fix        {self.fix()}",
        ]

    def fix(self) -> str:
        """The mitigation command for this model and target, ready to paste."""
        path = str(self.model.path)
        from pytest_biascheck.plugin import STATE

        state = self.config.stash[STATE]
        data, _ = state.dataset(self.model)
        return self.check.command(path, self.model.name, data, self.target, state.scope(self.model))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, CheckFailed):
            return "\n".join(excinfo.value.lines)
        if isinstance(excinfo.value, BiascheckError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        # No dots in the domain: pytest would turn them into "::" in verbose lines.
        return self.model.path, None, f"{self.model.name}::{self.name}"


def _interval(measured: Measurement) -> str:
    if measured.n == 0:
        return "not measurable: no image in this subset"
    if math.isnan(measured.low):
        return "no interval for this metric"
    return f"95% CI {measured.low:.3f}-{measured.high:.3f}"
