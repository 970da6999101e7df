"""Assertion helpers for users' own bias tests, with failure messages as clear as the built-in items.

def test_smiling_looks_at_the_mouth(biascheck_results):
    assert_mask_score(biascheck_results, "Smiling", region="mouth", min=0.5)
"""

from __future__ import annotations

from pytest_biascheck.checks import Measurement, Target, catalogue
from pytest_biascheck.evaluate import Results
from pytest_biascheck.planning import Scope


def measure(results: Results, check: str, attribute: str, other: str | None = None) -> Measurement:
    """Measure one catalogue check on evaluation results (the same code the check items run)."""
    checks = catalogue()
    if check not in checks:
        raise KeyError(f"unknown check {check!r}; choose from {', '.join(checks)}")
    plan = results.plan
    scope = Scope(
        attributes=list(plan.attributes) if plan else [attribute],
        protected=list(plan.protected) if plan else [],
        regions=dict(plan.regions) if plan else {},
    )
    return checks[check].measure(results, Target(attribute, other), scope)


def assert_check(
    results: Results,
    check: str,
    attribute: str,
    other: str | None = None,
    *,
    min: float | None = None,
    max: float | None = None,
) -> Measurement:
    """Fail unless the check's value lies in ``[min, max]``; returns the measurement."""
    if min is None and max is None:
        raise ValueError("give min=, max= or both")
    m = measure(results, check, attribute, other)
    target = attribute if other is None else f"{attribute}-{other}"
    bounds = " and ".join(f"{op} {v:.3f}" for op, v in ((">=", min), ("<=", max)) if v is not None)
    ok = (min is None or m.value >= min) and (max is None or m.value <= max)
    if not ok:
        raise AssertionError(
            f"{check} of {target} on {results.model}: {m.value:.3f} does not meet {bounds}\n"
            f"  value      {m.value:.3f}  (95% CI {m.low:.3f}-{m.high:.3f}, n={m.n} images)\n"
            f"  checks     {catalogue()[check].description}"
        )
    return m


def assert_mask_score(
    results: Results,
    attribute: str,
    region: str | None = None,
    *,
    min: float | None = None,
    max: float | None = None,
) -> Measurement:
    """The Attention-IoU mask score of ``attribute`` against its region must lie in ``[min, max]``."""
    measured = results.plan.regions.get(attribute) if results.plan else None
    if region is not None and measured != region:
        raise ValueError(
            f"{results.model}: {attribute} was scored against region {measured!r}, not {region!r}; "
            f'set regions = {{ {attribute} = "{region}" }} under [tool.biascheck.models.{results.model}]'
        )
    return assert_check(results, "mask_score", attribute, measured, min=min, max=max)


def assert_worst_group_accuracy(
    results: Results,
    attribute: str,
    group: str,
    *,
    min: float,
) -> Measurement:
    """The worst accuracy over the (label x ``group``) cells of ``attribute`` must be at least ``min``."""
    return assert_check(results, "worst_group_accuracy", attribute, group, min=min)
