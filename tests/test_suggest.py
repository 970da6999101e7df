"""Suggested fixes: the training data the model learned from, the group its predictions lean on,
steps sized to the data, and a plain sentence where no recipe fits."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from pytest_biascheck.checks import BUILTIN, Check, Target, per_attribute
from pytest_biascheck.planning import Scope
from pytest_biascheck.suggest import BATCH, STEPS, Fix, Remedy, shortcut_groups, training_spec

SCOPE = Scope(attributes=["Smiling"], protected=["Male"], regions={"Smiling": "mouth"})
CHECKS = {c.name: c for c in BUILTIN}


def results_with(leakage: list[tuple[str, str, float]], protected: dict[str, int]):
    table = pd.DataFrame(leakage, columns=["attribute", "group", "value"])
    return SimpleNamespace(tables={"leakage": table}, plan=SimpleNamespace(protected=protected))


def test_shortcut_group_is_the_binary_group_with_the_largest_leakage():
    results = results_with(
        [("Smiling", "Male", 0.01), ("Smiling", "Black_Hair", 0.59), ("Smiling", "Age", 0.9),
         ("Smiling", "Male+Black_Hair", 0.95), ("Bangs", "Male", 0.0)],
        {"Male": 2, "Black_Hair": 2, "Age": 3, "Male+Black_Hair": 4},
    )  # fmt: skip
    # three-valued Age and the intersection cannot be rebalanced; Bangs depends on no group
    assert shortcut_groups(results) == {"Smiling": "Black_Hair"}


def test_shortcut_group_ties_break_by_name():
    results = results_with([("A", "Zed", 0.3), ("A", "Bee", 0.3)], {"Zed": 2, "Bee": 2})
    assert shortcut_groups(results) == {"A": "Bee"}


def test_training_spec_prefers_the_recorded_training_data():
    recorded = {"train": "synthfaces:n=8000,corr=Smiling~Black_Hair@0.95"}
    assert training_spec(recorded, "synthfaces") == (recorded["train"], 8000)
    assert training_spec({**recorded, "train_images": 812}, "synthfaces")[1] == 812
    assert training_spec({"train": "csv:faces.csv"}, "csv:eval.csv") == ("csv:faces.csv", None)
    assert training_spec({}, "csv:eval.csv") == ("csv:eval.csv", None)


@pytest.mark.parametrize(
    ("images", "steps"),
    [(100, STEPS[0]), (32 * 100, 100), (8000, STEPS[1]), (None, STEPS[1])],
)
def test_steps_are_one_pass_over_the_training_images_within_bounds(images, steps):
    assert Fix("m.pt", "m", "d", "t", images).steps == steps


def test_a_recipe_that_needs_a_group_says_so_when_there_is_none():
    fix = Fix("m.pt", "m", "synthfaces", "synthfaces", 1000)  # no shortcut group known
    text = CHECKS["worst_group_accuracy"].command(Target("Smiling", "Male"), SCOPE, fix)
    assert text.startswith("no recipe fixes this check here: rebalance needs")
    grouped = Fix("m.pt", "m", "synthfaces", "synthfaces", 1000, {"Smiling": "Male"})
    command = CHECKS["worst_group_accuracy"].command(Target("Smiling", "Male"), SCOPE, grouped)
    assert "--protected Male" in command and f"--batch-size {BATCH}" in command


def test_optional_options_are_dropped_without_a_group():
    check = CHECKS["mask_score"]
    bare = check.command(Target("Smiling", "mouth"), SCOPE, Fix("m.pt", "m", "d", "t"))
    paired = check.command(
        Target("Smiling", "mouth"), SCOPE, Fix("m.pt", "m", "d", "t", groups={"Smiling": "Male"})
    )
    assert "--pair" not in bare and paired == bare.replace(
        " --batch-size", " --pair Male --batch-size"
    )


def test_a_remedy_without_a_recipe_says_why():
    remedy = Remedy("", "", unfixable="the data has no labels to train on")
    assert remedy.command({}) == "no recipe fixes this check: the data has no labels to train on"


def test_a_plugin_template_gets_every_field_quoted():
    check = Check(
        "c", "min", 0.5, "d", "fix --model {model} --data {train} --steps {steps} {group}",
        per_attribute, lambda *a: None,
    )  # fmt: skip
    fix = Fix("my model.pt", "my_model", "d", "t x", 6400, {"Smiling": "Male"})
    command = check.command(Target("Smiling"), SCOPE, fix)
    assert command == "fix --model 'my model.pt' --data 't x' --steps 200 Male"
