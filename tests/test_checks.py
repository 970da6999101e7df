"""The catalogue: suggested commands parse with the recipe's own command line; the attention check
reads the worst cell of the mask score."""

from __future__ import annotations

import dataclasses
import shlex

import pandas as pd
import pytest

from mitigations.__main__ import build_parser
from mitigations.registry import builtin_recipes
from pytest_biascheck.checks import Target, catalogue
from pytest_biascheck.evaluate import Results
from pytest_biascheck.planning import Plan, Scope
from pytest_biascheck.suggest import Fix

SCOPE = Scope(
    attributes=["Smiling", "Male"],
    protected=["Black_Hair"],
    regions={"Smiling": "mouth", "Male": "skin"},
    predicted_groups=["Black_Hair"],
)
TRAIN = "synthfaces:n=1000,corr=Smiling~Black_Hair@0.95"
FIX = Fix(
    "my model.pt", "my_model", "synthfaces:n=64", TRAIN, 1000,
    {"Smiling": "Black_Hair", "Male": "Black_Hair"}, frozenset({"Black_Hair"}),
)  # fmt: skip
COMMANDS = [
    (check.name, target, check.command(target, SCOPE, FIX))
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
    assert args.model == "my model.pt" and args.eval_data == "synthfaces:n=64"
    assert args.data == TRAIN  # the data the model learned from: the same shortcut
    assert (args.batch_size, args.max_steps) == (32, 60)  # 1000 images / 32, at least 60 steps
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


def mask_table(rows: list[tuple]) -> pd.DataFrame:
    """A mask_score table: (group, label, group_value, n, lift) rows for Smiling at both resolutions."""
    frames = []
    for resolution, shift in (("grid", 0.0), ("input", -0.5)):
        frames.append(
            pd.DataFrame(
                [
                    {
                        "attribute": "Smiling",
                        "group": g,
                        "label": y,
                        "group_value": v,
                        "n": n,
                        "n_empty": 0,
                        "mean": 0.3,
                        "low": 0.2,
                        "high": 0.4,
                        "chance_uniform": 0.1,
                        "chance_centre": 0.2,
                        "chance": 0.2,
                        "lift": lift + shift,
                        "lift_low": lift + shift - 0.01,
                        "lift_high": lift + shift + 0.01,
                        "resolution": resolution,
                    }
                    for g, y, v, n, lift in rows
                ]
            )
        )
    return pd.concat(frames, ignore_index=True)


def test_mask_score_reads_the_worst_cell_holding_the_minimum_share() -> None:
    plan = Plan(("Smiling",), {"Black_Hair": 2}, {"Smiling": "mouth"}, min_group_share=0.05,
                levels={"Black_Hair": ("0", "1")})  # fmt: skip
    frame = pd.DataFrame({"index": range(100)})
    rows = [
        ("", -1, -1, 100, 0.30),
        ("", 0, -1, 50, 0.32),
        ("", 1, -1, 50, 0.28),
        ("Black_Hair", 0, 0, 30, 0.35),
        ("Black_Hair", 0, 1, 20, 0.25),
        ("Black_Hair", 1, 0, 46, 0.12),  # the worst cell that counts
        ("Black_Hair", 1, 1, 4, -0.90),  # under 5% of the images: left out
    ]
    results = Results(
        "m", "0" * 64, "d", ("Smiling",), frame, {"mask_score": mask_table(rows)}, plan=plan
    )
    check = catalogue()["mask_score"]
    measured = check.measure(results, Target("Smiling", "mouth"), SCOPE)
    assert (measured.value, measured.low, measured.high, measured.n) == pytest.approx(
        (0.12, 0.11, 0.13, 46)
    )
    assert measured.detail.startswith("worst cell Smiling=1, Black_Hair=0:")
    assert "overall lift 0.300 over all 100 images" in measured.detail
    input_plan = dataclasses.replace(plan, resolution="input")
    results.plan = input_plan
    assert check.measure(results, Target("Smiling", "mouth"), SCOPE).value == pytest.approx(-0.38)
    results.plan = dataclasses.replace(plan, protected={})
    without_groups = mask_table(rows[:3])
    results.tables = {"mask_score": without_groups}
    measured = check.measure(results, Target("Smiling", "mouth"), SCOPE)
    assert measured.value == pytest.approx(0.28) and "worst cell Smiling=1:" in measured.detail
