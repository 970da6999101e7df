"""pytest collector and items: a model file given with ``--biascheck`` collects one item per
(check, target), named ``<model file>::<check>[<target>]`` with the target as the parameter id,
so node ids work as any test's do (``--lf``, ``--deselect``, copied from the output)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from _pytest._code.code import (
    ReprEntryNative,
    ReprExceptionInfo,
    ReprFileLocation,
    ReprTraceback,
)

from pytest_biascheck.baseline import compare
from pytest_biascheck.checks import Check, Measurement, Target
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.report import HTML_NAME
from pytest_biascheck.report.document import anchor
from pytest_biascheck.state import STATE

#: The outcome of a check item, read by the plugin into its test report.
OUTCOME = pytest.StashKey[dict[str, Any]]()


class CheckFailed(AssertionError):
    """A check's value is on the wrong side of its threshold, or regressed from the baseline:
    ``head`` says how in one line, ``lines`` explain it."""

    def __init__(self, head: str, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.head = head
        self.lines = lines


class ModelItems:
    """What a model's collector does: one item per check and target; ``key`` is the model's key
    in the session (its file's path in node ids, or a live model's name)."""

    key: str

    @property
    def model(self) -> Any:
        """The loaded model (``model.LoadedModel``)."""
        return self.config.stash[STATE].models[self.key]

    def collect(self) -> list[pytest.Item]:
        state = self.config.stash[STATE]
        items = []
        for index, (check, target) in enumerate(state.planned(self.key)):
            item = CheckItem.from_parent(
                self, name=f"{check.name}[{target.id}]", check=check, target=target, index=index,
                **_node_id(self, check.name, target.id),
            )  # fmt: skip
            item.add_marker("biascheck")
            item.add_marker(check.name)
            items.append(item)
        return items


class ModelFile(ModelItems, pytest.File):
    """A model checkpoint given with ``--biascheck``, collected at its own path."""

    def __init__(self, *, key: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.key = key


class LiveModel(ModelItems, pytest.Collector):
    """A model handed over by the ``pytest_biascheck_models`` hook: no file, named by its key."""

    def __init__(self, *, key: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.key = key


def _node_id(parent: pytest.Collector, name: str, params: str) -> dict[str, Any]:
    """pytest >= 9.2 keeps node ids structured (path, names, parameter id), and ``--lf`` or a node id
    given as an argument match on that structure: put the target in the parameter id, as
    ``parametrize`` does. Older pytest compares the ``name[params]`` string, which is the default."""
    own = getattr(parent, "id", None)
    return {"nodeid": own.child(name).with_params(params)} if hasattr(own, "with_params") else {}


class CheckItem(pytest.Item):
    """One bias check of one model: it passes, fails with the value, threshold, interval and a fix,
    warns (severity "warn"), or is an expected failure (a known failure in the baseline)."""

    def __init__(self, *, check: Check, target: Target, index: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check
        self.target = target
        self.index = index

    @property
    def model(self) -> Any:
        return self.parent.model

    def runtest(self) -> None:
        state = self.config.stash[STATE]
        key, name = self.parent.key, self.parent.model.name
        scope = state.scope(key)
        measured = self.check.measure(state.results_for(key), self.target, scope)
        if measured.n == 0:
            pytest.skip(
                f"{self.check.name} of {self.target.id} is not measurable: no image in that subset, "
                "or no group holding min_group_share of the images"
            )
        settings = state.settings
        threshold, origin = settings.threshold(name, self.check.name, self.check.threshold)
        met = bool(self.check.passes(measured.value, threshold))
        saved = state.baselines.get(key)
        previous = saved.checks.get(self.name) if saved else None
        tolerance = settings.tolerances.get(self.check.name, settings.tolerance)
        before = None if previous is None else previous.value
        change = compare(measured.value, before, self.check.direction, tolerance)
        known = previous is not None and not previous.passed
        known = known and not self.config.getoption("runxfail")  # "as if they were not marked"
        severity = settings.severity_of(name, self.check.name)
        status = status_of(met, change, known, severity)
        op = ">=" if self.check.direction == "min" else "<="
        self.stash[OUTCOME] = {
            "item": self.nodeid, "key": self.name, "path": key, "model": name,
            "check": self.check.name, "attribute": self.target.attribute, "other": self.target.other,
            "value": float(measured.value), "low": float(measured.low), "high": float(measured.high),
            "n": int(measured.n), "threshold": float(threshold), "op": op,
            "direction": self.check.direction, "met": met, "status": status,
            "severity": severity, "recipe": self.fix(),
            "baseline": before, "change": change,
            "description": self.check.description, "detail": measured.detail,
            "index": self.index,
        }  # fmt: skip
        self._record_properties(measured, threshold)
        if status == "xfailed":
            pytest.xfail(
                f"known failure: {measured.value:.3f} does not meet {op} {threshold:.3f}, "
                f"{previous.value:.3f} in the baseline ({saved.model})"
            )
        if status == "FAILED":
            raise self.explain(measured, threshold, op, origin, before)

    def _record_properties(self, measured: Measurement, threshold: float) -> None:
        """JUnit XML properties: plain floats and strings, so pytest-xdist can send them."""
        self.user_properties += [
            ("value", float(measured.value)),
            ("threshold", float(threshold)),
            ("direction", self.check.direction),
            ("n", int(measured.n)),
        ]
        if not math.isnan(measured.low):
            self.user_properties.append(
                ("interval", f"[{float(measured.low)!r}, {float(measured.high)!r}]")
            )
        self.user_properties.append(("report", self.report_link()))

    def explain(
        self, measured: Measurement, threshold: float, op: str, origin: str, previous: float | None
    ) -> CheckFailed:
        """The failure: what was measured, against what, how sure, and what to run."""
        if self.check.passes(measured.value, threshold):
            settings = self.config.stash[STATE].settings
            tolerance = settings.tolerances.get(self.check.name, settings.tolerance)
            head = (
                f"{measured.value:.3f} regressed from the baseline {previous:.3f} by more than the "
                f"tolerance {tolerance:.3f} (threshold {op} {threshold:.3f} still holds)"
            )
        else:
            head = f"{measured.value:.3f} does not meet {op} {threshold:.3f}"
        return CheckFailed(
            head,
            [
                f"{self.nodeid}: {head}",
                f"  value      {measured.value:.3f}  ({_interval(measured)}, n={measured.n} images)",
                *([f"  measured   {measured.detail}"] if measured.detail else []),
                f"  threshold  {op} {threshold:.3f}  ({self.check.direction}; {origin})",
                f"  checks     {self.check.description}",
                f"  fix        {self.fix()}",
                f"  report     {self.report_link()}",
            ],
        )

    def fix(self) -> str:
        """The mitigation command for this model and target, ready to paste."""
        state = self.config.stash[STATE]
        key = self.parent.key
        return self.check.command(self.target, state.scope(key), state.fix(key))

    def report_link(self) -> str:
        """This item's row in the HTML report: the page (relative to the folder pytest was started
        in when inside it) and the row's anchor."""
        page = self.config.stash[STATE].report_dir.absolute() / HTML_NAME
        start = self.config.invocation_params.dir.absolute()
        shown = page.relative_to(start) if page.is_relative_to(start) else page
        return f"{shown.as_posix()}#{anchor(self.nodeid)}"

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        """The explanation, shaped by ``--tb``: a line each (``line``), without the check's
        description (``short``), or whole; the one-line head is the crash message that the short
        summary and JUnit XML show. Built from reprs that pytest-xdist can send."""
        error = excinfo.value
        if not isinstance(error, CheckFailed | BiascheckError):
            return super().repr_failure(excinfo, style)
        if isinstance(error, CheckFailed):
            head, lines = error.head, error.lines
        else:
            head, lines = str(error), [str(error)]
        tbstyle = style or self.config.getoption("tbstyle", "auto")
        if tbstyle == "line":  # pytest prints the crash line of each failure, and nothing else
            crash = ReprFileLocation(self.location[0], 0, f"{self.name}: {head}")
            return ReprExceptionInfo(ReprTraceback([], None, "line"), crash)
        if tbstyle == "short":
            lines = [line for line in lines if not line.startswith("  checks ")]
        text = "\n".join(lines) + "\n"
        return ReprExceptionInfo(
            ReprTraceback([ReprEntryNative([text])], None, "native"),
            ReprFileLocation(self.location[0], 0, head),
        )

    def reportinfo(self) -> tuple[Any, int | None, str]:
        # The domain is the item's name, as for a parametrized test: pytest heads each failure
        # with it and rewrites dots before "[" into "::" in verbose lines, so no file name here.
        return self.path, None, self.name


def status_of(met: bool, change: str | None, known: bool, severity: str) -> str:
    """passed (threshold met, no regression), xfailed (a known failure of the baseline that did
    not regress), warned (a failure of a "warn" check) or FAILED."""
    if change != "regressed" and (met or known):
        return "passed" if met else "xfailed"
    return "warned" if severity == "warn" else "FAILED"


def _interval(measured: Measurement) -> str:
    if measured.n == 0:
        return "not measurable: no image in this subset"
    if math.isnan(measured.low):
        return "no interval for this metric"
    return f"95% CI {measured.low:.3f}-{measured.high:.3f}"
