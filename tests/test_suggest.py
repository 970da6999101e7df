"""Suggested fixes: the training data the model learned from, the group its predictions lean on,
steps sized to the data, and a plain sentence where no recipe fits."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from pytest_biascheck.checks import BUILTIN, Check, Target, per_attribute
from pytest_biascheck.planning import Scope
from pytest_biascheck.suggest import (
    BATCH,
    LEANS,
    STEPS,
    Fix,
    Remedy,
    fix_for,
    shortcut_groups,
    training_spec,
)

SCOPE = Scope(attributes=["Smiling"], protected=["Male"], regions={"Smiling": "mouth"})
CHECKS = {c.name: c for c in BUILTIN}


def results_with(leakage: list[tuple[str, str, float]], protected: dict[str, int]):
    table = pd.DataFrame(leakage, columns=["attribute", "group", "value"])
    plan = SimpleNamespace(protected=protected, head="multilabel")
    return SimpleNamespace(tables={"leakage": table}, plan=plan)


def test_shortcut_group_is_the_binary_group_with_the_largest_leakage():
    results = results_with(
        [("Smiling", "Male", 0.21), ("Smiling", "Black_Hair", 0.59), ("Smiling", "Age", 0.9),
         ("Smiling", "Male+Black_Hair", 0.95), ("Bangs", "Male", LEANS - 0.01)],
        {"Male": 2, "Black_Hair": 2, "Age": 3, "Male+Black_Hair": 4},
    )  # fmt: skip
    # three-valued Age and the intersection cannot be rebalanced; Bangs leans on no group
    assert shortcut_groups(results) == {"Smiling": "Black_Hair"}


def test_shortcut_group_ties_break_by_name():
    results = results_with([("A", "Zed", 0.3), ("A", "Bee", 0.3)], {"Zed": 2, "Bee": 2})
    assert shortcut_groups(results) == {"A": "Bee"}


def test_leans_is_the_leakage_checks_default_threshold():
    assert CHECKS["leakage"].threshold == LEANS


def test_training_spec_prefers_the_recorded_training_data():
    recorded = {"train": "synthfaces:n=8000,corr=Smiling~Black_Hair@0.95"}
    assert training_spec(recorded, "synthfaces") == (recorded["train"], 8000)
    assert training_spec({**recorded, "train_images": 812}, "synthfaces")[1] == 812
    assert training_spec({"train": "csv:faces.csv"}, "csv:eval.csv") == ("csv:faces.csv", None)
    assert training_spec({}, "csv:eval.csv") == ("csv:eval.csv", None)
    assert training_spec({}, "synthfaces:n=640") == ("synthfaces:n=640", 640)


@pytest.mark.parametrize(
    ("images", "steps"),
    [(100, STEPS[0]), (32 * 100, 100), (8000, STEPS[1]), (None, STEPS[1])],
)
def test_steps_are_one_pass_over_the_training_images_within_bounds(images, steps):
    assert Fix("m.pt", "m", "d", "t", images).steps == steps


def test_groups_are_balanced_on_the_shortcut_else_on_the_items_own_binary_group():
    check, target = CHECKS["worst_group_accuracy"], Target("Smiling", "Male")
    nothing = Fix("m.pt", "m", "synthfaces", "synthfaces", 1000)
    text = check.command(target, SCOPE, nothing)
    assert text.startswith("no recipe fixes this check here: rebalance needs a binary")
    own = Fix("m.pt", "m", "synthfaces", "synthfaces", 1000, binary=frozenset({"Male"}))
    assert "--protected Male" in check.command(target, SCOPE, own)
    leaning = Fix("m.pt", "m", "d", "t", 1000, {"Smiling": "Hair"}, frozenset({"Male", "Hair"}))
    command = check.command(target, SCOPE, leaning)
    assert "--protected Hair" in command and f"--batch-size {BATCH}" in command


def test_a_map_off_its_region_is_rebalanced_on_a_shortcut_else_guided_by_roi_iou():
    check, target = CHECKS["mask_score"], Target("Smiling", "mouth")
    leaning = Fix("m.pt", "m", "d", "t", 1000, {"Smiling": "Hair"}, frozenset({"Hair"}))
    assert " rebalance " in check.command(target, SCOPE, leaning)
    guided = check.command(target, SCOPE, Fix("m.pt", "m", "d", "t", binary=frozenset({"Hair"})))
    assert " roi-iou " in guided and "--region mouth" in guided and "--pair" not in guided


def test_jlu_never_unlearns_an_output_of_the_model():
    check = CHECKS["feature_leakage"]
    fix = Fix("m.pt", "m", "d", "t")
    assert " jlu " in check.command(Target("Male"), SCOPE, fix)  # Male is protected, not predicted
    predicted = Scope(attributes=["Smiling", "Male"], protected=["Male"], regions={})
    text = check.command(Target("Male"), predicted, fix)
    assert (
        text == "no recipe fixes this check here: jlu would unlearn Male, which the model predicts"
    )


def test_fix_for_reads_provenance_and_the_plans_binary_groups():
    model = SimpleNamespace(path="m.pt", name="m", provenance={"train": "synthbirds:n=600"})
    results = results_with([("Waterbird", "place", 0.43)], {"place": 2, "age": 3, "place+age": 6})
    fix = fix_for(model, "synthbirds", results)
    assert (fix.train, fix.train_images, fix.steps) == ("synthbirds:n=600", 600, STEPS[0])
    assert fix.shortcuts == {"Waterbird": "place"} and fix.binary == {"place"}


def test_a_remedy_without_a_recipe_says_why():
    remedy = Remedy("", unfixable="the data has no labels to train on")
    check = Check("c", "min", 0.5, "d", (remedy,), per_attribute, lambda *a: None)
    text = check.command(Target("Smiling"), SCOPE, Fix("m.pt", "m", "d", "t"))
    assert text == "no recipe fixes this check here: the data has no labels to train on"


def test_a_plugin_template_gets_every_field_quoted():
    check = Check(
        "c", "min", 0.5, "d", "fix --model {model} --data {train} --steps {steps} {group}",
        per_attribute, lambda *a: None,
    )  # fmt: skip
    fix = Fix("my model.pt", "my_model", "d", "t x", 6400, {"Smiling": "Male"}, frozenset({"Male"}))
    command = check.command(Target("Smiling"), SCOPE, fix)
    assert command == "fix --model 'my model.pt' --data 't x' --steps 200 Male"
