"""The check catalogue: each check names a metric, a direction, a default threshold and a recipe,
and whether it gates a release by default or is reported as information (docs/validity.md says why)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from pytest_biascheck.data.base import group_parts
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.evaluate import Results
from pytest_biascheck.metrics.attention import DEFAULT_RESOLUTION
from pytest_biascheck.metrics.bootstrap import bootstrap_ci
from pytest_biascheck.planning import Scope
from pytest_biascheck.suggest import Fix, Remedy, fields, suggestion


@dataclass(frozen=True)
class Measurement:
    """A measured value with its interval (NaN bounds when the metric has none)."""

    value: float
    low: float
    high: float
    n: int
    detail: str = ""  # what the value is made of (e.g. the raw score and its chance level)


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
    target, scope)`` computes the value; ``recipe`` is the mitigation: remedies tried in order
    (:func:`suggest.suggestion`), or a command template formatted with the fields of
    :func:`suggest.fields` by ``command``. ``gate=False`` marks a check that is measured and reported as
    information but becomes an item only when the config's ``checks`` names it; ``why`` says why.
    ``bounds`` is the range of the measured value: thresholds in the config must lie inside it.
    """

    name: str
    direction: str
    threshold: float
    description: str
    recipe: str | Sequence[Remedy]
    targets: Callable[[Scope], list[Target]]
    measure: Callable[[Results, Target, Scope], Measurement]
    gate: bool = True
    why: str = ""
    bounds: tuple[float, float] = (0.0, 1.0)

    def passes(self, value: float, threshold: float) -> bool:
        """Whether ``value`` meets ``threshold`` in this check's direction (NaN never passes)."""
        if np.isnan(value):
            return False
        return value >= threshold if self.direction == "min" else value <= threshold

    def command(self, target: Target, scope: Scope, fix: Fix) -> str:
        """The mitigation command for one target, shell-quoted and ready to paste (or why no
        recipe fixes it)."""
        values = fields(fix, target.attribute, target.other, scope.attributes)
        if isinstance(self.recipe, str):
            return self.recipe.format(**values)
        return suggestion(self.recipe, values)


def selected(checks: dict[str, Check], wanted: Sequence[str]) -> list[Check]:
    """The checks that become items: those named in ``wanted`` (the config's ``checks``), else
    every gating check."""
    return [c for c in checks.values() if (c.name in wanted if wanted else c.gate)]


def information(
    results: Results, scope: Scope, checks: Sequence[Check], thresholds: Callable[[Check], float]
) -> list[dict[str, Any]]:
    """Outcomes of checks measured as information, not gating: value, interval and ``n`` per
    target, the threshold they would be held to and whether the value ``meets`` it. A check whose
    table the evaluation did not compute (the feature probe, unless asked for) is left out."""
    rows = []
    for check in checks:
        for target in check.targets(scope):
            try:
                measured = check.measure(results, target, scope)
            except BiascheckError:
                continue
            threshold = thresholds(check)
            rows.append(
                {"item": f"{check.name}[{target.id}]", "model": results.model, "check": check.name,
                 "attribute": target.attribute, "other": target.other, "value": measured.value,
                 "low": measured.low, "high": measured.high, "n": measured.n,
                 "threshold": threshold, "op": ">=" if check.direction == "min" else "<=",
                 "status": "info", "meets": check.passes(measured.value, threshold),
                 "detail": measured.detail, "description": check.description, "why": check.why}
            )  # fmt: skip
    return rows


def per_attribute(scope: Scope) -> list[Target]:
    """Each attribute (each class of a multiclass head)."""
    return [Target(a) for a in scope.attributes]


def per_task(scope: Scope) -> list[Target]:
    """A multiclass head's task as a whole, else each attribute."""
    return [Target(scope.task)] if scope.multiclass else per_attribute(scope)


def per_class(scope: Scope) -> list[Target]:
    """Each class of a multiclass head (none for a multilabel one)."""
    return per_attribute(scope) if scope.multiclass else []


def per_region(scope: Scope) -> list[Target]:
    return [Target(a, scope.regions[a]) for a in scope.attributes if a in scope.regions]


def per_group(scope: Scope) -> list[Target]:
    """Each attribute (class, one-vs-rest) across each protected group it is not part of."""
    return [
        Target(a, g) for a in scope.attributes for g in scope.protected if a not in group_parts(g)
    ]


def per_task_group(scope: Scope) -> list[Target]:
    """A multiclass head's task across each protected group that does not name a class or the
    task itself, else :func:`per_group`."""
    if not scope.multiclass:
        return per_group(scope)
    own = {scope.task, *scope.attributes}
    return [Target(scope.task, g) for g in scope.protected if not own & set(group_parts(g))]


def per_predicted_group(scope: Scope) -> list[Target]:
    return [Target(a, g) for a in scope.attributes for g in scope.predicted_groups if g != a]


def per_protected(scope: Scope) -> list[Target]:
    return [Target(g) for g in scope.protected]


def accuracy(results: Results, target: Target, scope: Scope) -> Measurement:
    """Accuracy of an attribute, or top-1 accuracy of a multiclass task."""
    correct = results.predicted(target.attribute) == results.label(target.attribute)
    mean, low, high = bootstrap_ci(torch.from_numpy(correct.astype(np.float64)), seed=0)
    return Measurement(float(mean), float(low), float(high), len(correct))


def class_accuracy(results: Results, target: Target, scope: Scope) -> Measurement:
    """Per-class accuracy of a multiclass head: the share of the class's images predicted as it."""
    members = results.label(target.attribute)
    if not members.any():
        return Measurement(float("nan"), float("nan"), float("nan"), 0)
    hits = torch.from_numpy(results.predicted(target.attribute).astype(np.float64))
    mean, low, high = bootstrap_ci(hits, seed=0, weights=torch.from_numpy(members))
    return Measurement(float(mean), float(low), float(high), int(members.sum()))


def _overall_row(table: pd.DataFrame, attribute: str, **match: Any) -> pd.Series:
    rows = table[
        (table["attribute"] == attribute) & (table["group"] == "") & (table["label"] == -1)
    ]
    for key, value in match.items():
        rows = rows[rows[key] == value]
    if rows.empty:
        raise BiascheckError(
            f"no result for {attribute!r} {match or ''}: the evaluation did not map it"
        )
    return rows.iloc[0]


def _lift(row: pd.Series, score: str) -> Measurement:
    """A chance-calibrated score: the lift over the better uninformative map, with the raw score
    and both chance levels in the detail line."""
    if int(row["n"]) == 0:
        return Measurement(float("nan"), float("nan"), float("nan"), 0)
    detail = (
        f"lift over chance = ({score} - chance) / (1 - chance); {score} {row['mean']:.3f} "
        f"({row['low']:.3f}-{row['high']:.3f}), chance {row['chance']:.3f} (uniform map "
        f"{row['chance_uniform']:.3f}, centre prior {row['chance_centre']:.3f})"
    )
    return Measurement(row["lift"], row["lift_low"], row["lift_high"], int(row["n"]), detail)


def mask_score(results: Results, target: Target, scope: Scope) -> Measurement:
    """Lift over chance of the Attention-IoU mask score in its worst cell, at the planned
    resolution, over the images that have the region and show the attribute: the lowest over the
    protected groups' cells of positive images holding ``min_group_share`` of the images (all
    positive images when no group is protected), as worst-group accuracy reads accuracy. A shortcut
    shows where it disagrees with the label: there the map leaves the region. Negative images are
    left out because what a model should look at to say "absent" is not the region alone (a
    balanced bird model's map of a landbird scores 0.05 over chance, its waterbirds 0.45)."""
    plan = results.plan
    resolution = plan.resolution if plan else DEFAULT_RESOLUTION
    table = results.table("mask_score")
    mine = table[(table["attribute"] == target.attribute) & (table["resolution"] == resolution)]
    overall = _overall_row(mine, target.attribute)
    worst = worst_mask_cell(results, target.attribute)
    worst = overall if worst is None else worst
    found = _lift(worst, "Attention-IoU")
    where = _cell_name(worst, target.attribute, plan)
    overall_lift = f"{overall['lift']:.3f} over all {int(overall['n'])} images with the region"
    return replace(
        found,
        detail=f"worst cell {where}: {found.detail}; overall lift {overall_lift}; maps compared "
        f"at the {resolution} resolution",
    )


def worst_mask_cell(results: Results, attribute: str) -> pd.Series | None:
    """The mask score's row of its worst cell: the lowest lift over the protected groups' cells of
    positive images holding ``min_group_share`` of the images (all positive images without
    groups), at the planned resolution; None when no cell has images."""
    plan = results.plan
    resolution = plan.resolution if plan else DEFAULT_RESOLUTION
    table = results.table("mask_score")
    mine = table[(table["attribute"] == attribute) & (table["resolution"] == resolution)]
    least = (plan.min_group_share if plan else 0.0) * len(results.frame)
    positive = mine[(mine["label"] == 1) & (mine["n"] >= max(least, 1))]
    cells = positive[positive["group"] != ""]
    cells = cells if len(cells) else positive[positive["group"] == ""]
    return cells.loc[cells["lift"].idxmin()] if len(cells) else None


def _cell_name(row: pd.Series, attribute: str, plan: Any) -> str:
    """``Smiling=1, Black_Hair=0`` for a label x group cell, ``Smiling=1`` for a label cell."""
    if row["label"] < 0:
        return "all images"
    name = f"{attribute}={int(row['label'])}"
    if row["group"] == "":
        return name
    levels = plan.levels.get(row["group"], ()) if plan else ()
    value = int(row["group_value"])
    return f"{name}, {row['group']}={levels[value] if value < len(levels) else value}"


def heatmap_score(results: Results, target: Target, scope: Scope) -> Measurement:
    """Lift of the heatmap score (the attribute's map against the protected attribute's) over
    what an uninformative map scores against the protected attribute's map."""
    row = _overall_row(results.table("heatmap_score"), target.attribute, protected=target.other)
    return _lift(row, "heatmap score")


def majority_class(scope: Scope, results: Results, attribute: str) -> int:
    """The majority class of an attribute by its positive rate in the training data when the
    checkpoint records it (the binary-CAM paper's p_m), else in the evaluation data; ties -> 0."""
    rate = scope.positive_rates.get(attribute)
    if rate is None:
        rate = float((results.column("y", attribute) > 0.5).mean())
    return int(rate > 0.5)


def _energy(results: Results, target: Target, predicted: int) -> Measurement:
    """Lift of the proportional energy inside the region over an uninformative map's, for the images
    predicted as ``predicted`` that have the region."""
    table = results.table("energy_cells")
    rows = table[
        (table["attribute"] == target.attribute)
        & (table["group"] == "")
        & (table["label"] == predicted)
    ]
    if rows.empty:
        return Measurement(float("nan"), float("nan"), float("nan"), 0)
    return _lift(rows.iloc[0], "proportional energy")


def majority_energy(results: Results, target: Target, scope: Scope) -> Measurement:
    return _energy(results, target, majority_class(scope, results, target.attribute))


def minority_energy(results: Results, target: Target, scope: Scope) -> Measurement:
    return _energy(results, target, 1 - majority_class(scope, results, target.attribute))


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (used where no per-image bootstrap state exists)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def no_activation_rate(results: Results, target: Target, scope: Scope) -> Measurement:
    table = results.table("energy")
    rows = table[table["attribute"] == target.attribute]
    n = int(rows["n"].sum())
    empty = float((rows["no_activation_rate"].fillna(0) * rows["n"]).sum())
    low, high = wilson(empty, n)
    return Measurement(empty / n if n else float("nan"), low, high, n)


def _group_stat(stat: str) -> Callable[[Results, Target, Scope], Measurement]:
    def measure(results: Results, target: Target, scope: Scope) -> Measurement:
        table = results.table("group_summary")
        rows = table[
            (table["attribute"] == target.attribute)
            & (table["group"] == target.other)
            & (table["stat"] == stat)
        ]
        if rows.empty:
            raise BiascheckError(f"no {stat} for {target.attribute!r} across {target.other!r}")
        row = rows.iloc[0]
        n = 0 if math.isnan(row["value"]) else len(results.frame)  # NaN: no group to compare
        return Measurement(row["value"], row["low"], row["high"], n)

    measure.__name__ = stat
    return measure


def leakage(results: Results, target: Target, scope: Scope) -> Measurement:
    """How much the attribute's predicted probability depends on the protected group among images
    of the same true label: the largest difference between groups' mean probabilities."""
    table = results.table("leakage")
    rows = table[(table["attribute"] == target.attribute) & (table["group"] == target.other)]
    if rows.empty:
        raise BiascheckError(f"no leakage for {target.attribute!r} across {target.other!r}")
    row = rows.iloc[0]
    return Measurement(row["value"], row["low"], row["high"], int(row["n"]))


def feature_leakage(results: Results, target: Target, scope: Scope) -> Measurement:
    """The JLU paper's probe: accuracy above chance of a linear probe for the protected attribute
    on penultimate features (held-out images)."""
    table = results.table("feature_leakage")
    row = table[table["group"] == target.attribute].iloc[0]
    low, high = wilson(row["accuracy"] * row["n_test"], int(row["n_test"]))
    return Measurement(
        row["accuracy"] - row["chance"],
        low - row["chance"],
        high - row["chance"],
        int(row["n_test"]),
        f"probe accuracy {row['accuracy']:.3f}, chance (majority value) {row['chance']:.3f}",
    )


def prediction_kl(results: Results, target: Target, scope: Scope) -> Measurement:
    """Largest KL divergence between the groups' distributions of predicted probabilities among
    images of the same true label, over groups holding ``min_group_share`` of the images."""
    table = results.table("divergence")
    rows = table[
        (table["attribute"] == target.attribute)
        & (table["group"] == target.other)
        & (table["label"] >= 0)
    ]
    n = len(results.frame)
    return Measurement(
        float(rows["kl"].max()) if len(rows) else float("nan"),
        float("nan"),
        float("nan"),
        n if len(rows) else 0,
    )


#: Rebalancing on the group the attribute leans on: on the biased fixtures it fixed every failing
#: check (mask score included) and broke none, where ROI-IoU and JLU broke others
#: (docs/mitigations.md, "Suggested fixes").
REBALANCE = Remedy(
    "rebalance", "rebalanced", ("--attribute {attribute}", "--protected {group}", "--mcc 0"),
    needs=("group",),
)  # fmt: skip
ROI_IOU = Remedy(
    "roi-iou", "roi_iou", ("--attribute {attribute}", "--region {other}", "--lr 0.001"),
    optional=("--pair {group}",),
)  # fmt: skip
ATTENTION = (replace(REBALANCE, needs=("group", "shortcut")), ROI_IOU)
AFFACT_B = (Remedy("affact-b", "affact_b", optional=("--attributes {attribute}",)),)
CRAYON = (Remedy("crayon", "crayon", ("--attribute {attribute}", "--mode attention")),)
GROUPS = (REBALANCE,)
#: JLU unlearns a protected group from the features: never one the model predicts.
UNLEARN = (
    Remedy("jlu", "jlu", ("--attribute {attributes}", "--spurious {attribute}"),
           needs=("not_predicted",)),
)  # fmt: skip

#: The range of a lift over chance: 1 at a perfect score, 0 at chance, unbounded below.
LIFT = (-math.inf, 1.0)

#: Why each information check does not gate by default (measured in docs/validity.md).
WHY = {
    "heatmap_score": "co-located features (glasses and the eyes of a Male map) score high in "
    "unbiased models too, so overlap with the protected attribute's map is not bias by itself",
    "majority_energy": "follows the mask score on every shortcut, with wider intervals",
    "minority_energy": "follows the mask score on every shortcut, with wider intervals",
    "no_activation_rate": "0 on every model of the validity suite, biased or not",
    "group_accuracy_gap": "a model that reads only the shortcut is equally wrong in every group of "
    "a balanced test set, so this gap stays near 0 for it; worst-group accuracy catches it",
    "feature_leakage": "the features of any model encode what is visible in the image (a "
    "background), balanced models included; leakage into the predictions is the gating measure",
    "fnr_gap": "one half of equalized_odds, which gates: a shortcut may put its errors on the "
    "other class (the corner-mark twin of seed 1: FNR gap 0.27, FPR gap 0.03)",
    "fpr_gap": "one half of equalized_odds, which gates: a shortcut may put its errors on the "
    "other class (the corner-mark twin of seed 1: FNR gap 0.27, FPR gap 0.03)",
    "prediction_kl": "unstable for small groups (empty bins dominate the divergence); "
    "leakage measures the same dependence with an interval",
}

BUILTIN: tuple[Check, ...] = (
    Check("accuracy", "min", 0.7, "accuracy on the evaluation data (top-1 for a multiclass head), so a fix cannot trade accuracy away unseen",
          AFFACT_B, per_task, accuracy),
    Check("class_accuracy", "min", 0.5, "per-class accuracy of a multiclass head: share of the class's images predicted as that class",
          AFFACT_B, per_class, class_accuracy),
    Check("mask_score", "min", 0.07, "lift over chance of the Attention-IoU mask score in the worst protected group of images showing the attribute: 0 for a map that ignores the image, 1 for the region itself",
          ATTENTION, per_region, mask_score, bounds=LIFT),
    Check("heatmap_score", "max", 0.5, "lift over chance of the heatmap score: how much the attribute's CAM overlaps the protected attribute's",
          CRAYON, per_predicted_group, heatmap_score, gate=False, why=WHY["heatmap_score"], bounds=LIFT),
    Check("majority_energy", "min", 0.1, "lift over chance of the proportional energy inside the region, images predicted as the majority class",
          AFFACT_B, per_region, majority_energy, gate=False, why=WHY["majority_energy"], bounds=LIFT),
    Check("minority_energy", "min", 0.1, "lift over chance of the proportional energy inside the region, images predicted as the minority class",
          ATTENTION, per_region, minority_energy, gate=False, why=WHY["minority_energy"], bounds=LIFT),
    Check("no_activation_rate", "max", 0.2, "share of images whose CAM is empty (a prediction from the bias neuron alone)",
          AFFACT_B, per_region, no_activation_rate, gate=False, why=WHY["no_activation_rate"]),
    Check("worst_group_accuracy", "min", 0.7, "lowest accuracy over the label x group cells (true class x group for a multiclass head)",
          GROUPS, per_task_group, _group_stat("worst_group_accuracy")),
    Check("group_accuracy_gap", "max", 0.1, "largest accuracy difference between values of the protected group",
          GROUPS, per_task_group, _group_stat("accuracy_gap"), gate=False, why=WHY["group_accuracy_gap"]),
    Check("fnr_gap", "max", 0.15, "largest false-negative-rate difference between groups (per class, one-vs-rest, for a multiclass head)",
          GROUPS, per_group, _group_stat("fnr_gap"), gate=False, why=WHY["fnr_gap"]),
    Check("fpr_gap", "max", 0.15, "largest false-positive-rate difference between groups (per class, one-vs-rest, for a multiclass head)",
          GROUPS, per_group, _group_stat("fpr_gap"), gate=False, why=WHY["fpr_gap"]),
    Check("equalized_odds", "max", 0.15, "equalized-odds difference: the larger of the TPR and FPR gaps",
          GROUPS, per_group, _group_stat("equalized_odds_difference")),
    Check("leakage", "max", 0.2, "largest difference between groups in the mean predicted probability among images of the same true label",
          GROUPS, per_group, leakage),
    Check("feature_leakage", "max", 0.1, "probe accuracy above chance for the protected attribute from penultimate features (JLU)",
          UNLEARN, per_protected, feature_leakage, gate=False, why=WHY["feature_leakage"], bounds=(-1.0, 1.0)),
    Check("prediction_kl", "max", 0.1, "largest KL divergence between the groups' distributions of predicted probabilities, within each true label",
          GROUPS, per_group, prediction_kl, gate=False, why=WHY["prediction_kl"], bounds=(0.0, math.inf)),
)  # fmt: skip


def catalogue(hook: Any | None = None) -> dict[str, Check]:
    """Built-in checks plus those plugins add through ``pytest_biascheck_checks``."""
    checks = {c.name: c for c in BUILTIN}
    if hook is not None:
        for extra in hook.pytest_biascheck_checks():
            for check in extra or []:
                checks[check.name] = check
    return checks
