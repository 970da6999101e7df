"""The catalogue's suggested commands: each one parses with the recipe's own command line."""

from __future__ import annotations

import shlex

import pytest

from mitigations.__main__ import build_parser
from mitigations.recipe import builtin_recipes
from pytest_biascheck.checks import catalogue
from pytest_biascheck.planning import Scope

SCOPE = Scope(
    attributes=["Smiling", "Male"],
    protected=["Black_Hair"],
    regions={"Smiling": "mouth", "Male": "skin"},
    predicted_groups=["Black_Hair"],
)
COMMANDS = [
    (check.name, target, check.command("my model.pt", "my_model", "synthfaces:n=64", target, SCOPE))
    for check in catalogue().values()
    if check.name != "class_accuracy"  # multiclass only: no targets in a multilabel scope
    for target in check.targets(SCOPE)
]


def parse(command: str):
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "mitigations"]
    return argv[3], build_parser(builtin_recipes()).parse_args(argv[3:])


@pytest.mark.parametrize(
    ("name", "target", "command"), COMMANDS, ids=lambda v: getattr(v, "id", None)
)
def test_every_suggested_command_parses_with_its_recipe(name, target, command):
    recipe, args = parse(command)
    assert args.model == "my model.pt" and args.data == "synthfaces:n=64"
    assert args.out.startswith("my_model_") and args.out != args.model
    attribute = args.attribute if recipe != "affact-b" else args.attributes
    if name == "feature_leakage":  # the protected group is what to unlearn; the task: the scope
        assert (recipe, args.attribute, args.spurious) == (
            "jlu",
            ["Smiling", "Male"],
            ["Black_Hair"],
        )
    else:
        assert target.attribute in (attribute if isinstance(attribute, list) else [attribute])


def test_catalogue_covers_every_targeted_check():
    assert {name for name, _, _ in COMMANDS} == set(catalogue()) - {"class_accuracy"}
