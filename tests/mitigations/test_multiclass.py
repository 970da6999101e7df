"""Recipes on a multiclass head (a 4-way hair-colour softmax over SynthFaces): each one's loss is the
cross-entropy over the class label (with the recipe's class weights, computed here by hand), a few
steps change the weights, and the class comes from a ``label`` column as the gate reads it."""

from __future__ import annotations

import dataclasses
import shlex

import pytest
import torch
import torch.nn.functional as F

from mitigations.__main__ import build_parser
from mitigations.recipe import Job, training_targets
from mitigations.registry import builtin_recipes
from mitigations.train import TrainConfig, train
from pytest_biascheck.api import evaluate
from pytest_biascheck.checks import catalogue, selected
from pytest_biascheck.config import ModelSettings, Settings
from pytest_biascheck.data.real import MetadataGroups
from pytest_biascheck.data.synth_birds import SynthBirds
from pytest_biascheck.data.synth_faces import HAIR_COLOURS, SynthFaces
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.model import load_checkpoint
from pytest_biascheck.planning import plan_for
from pytest_biascheck.suggest import fix_for
from tests.test_multiclass import hair_of, save_multiclass

N = 48


@pytest.fixture(scope="module")
def hair_model(tmp_path_factory):
    return save_multiclass(tmp_path_factory.mktemp("models") / "hair.pt", HAIR_COLOURS)


@pytest.fixture(scope="module")
def faces():
    return SynthFaces(n=N, split="train", image_size=32)


def make_job(path, data) -> Job:
    model = load_checkpoint(path)
    scope, plan = plan_for(model, SynthFaces(n=16, image_size=32), Settings())
    return Job(model, data, "synthfaces", scope, plan, torch.device("cpu"))


def parse(recipe: str, *options: str):
    argv = [recipe, "--model", "m.pt", "--out", "o.pt", *options]
    return builtin_recipes()[recipe], build_parser(builtin_recipes()).parse_args(argv)


def subset_weights(y: torch.Tensor) -> torch.Tensor:
    """Class weights ``(1 - p) / p`` for class 0 (Black_Hair) from its share p in ``y``, else 1."""
    p = float((y == 0).double().mean())
    return torch.tensor([(1 - p) / p, 1.0, 1.0, 1.0])


#: Per recipe: options that leave only the task loss (weights of the other terms 0) and the class
#: weights of its cross-entropy from the training classes ``y`` (None: unweighted).
CASES = {
    "roi-iou": (("--attribute", "Black_Hair", "--region", "mouth", "--wg", "0"), None),
    "crayon": (
        ("--attribute", "Black_Hair", "--simulate", "mouth", "--w-yes", "0", "--w-no", "0"),
        None,
    ),
    # eq. 6 with K classes: n_max / n_k
    "affact-b": ((), lambda y, job, setup: (c := torch.bincount(y, minlength=4)).max() / c),
    # BCE's pos_weight on --attribute only: (1 - p) / p of Black_Hair in the subset, 1 elsewhere
    "rebalance": (
        ("--attribute", "Black_Hair", "--protected", "Male"),
        lambda y, job, setup: subset_weights(y[setup.indices]),
    ),
    # the paper's inverse frequency n / (K n_k)
    "jlu": (
        ("--attribute", "Black_Hair", "--spurious", "Male", "--alpha", "0", "--beta", "0"),
        lambda y, job, setup: len(y) / (4 * torch.bincount(y, minlength=4)),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_recipe_trains_a_multiclass_head_with_cross_entropy(hair_model, faces, tmp_path, name):
    assert HAIR_COLOURS[0] == "Black_Hair"
    options, weights = CASES[name]
    recipe, args = parse(name, *options)
    job = make_job(hair_model, faces)
    setup = recipe.prepare(args, job)
    module = job.model.module.eval()
    batch = faces.render(range(16))
    inputs = job.model.spec.normalize(batch["image"])
    y = hair_of(batch["labels"])
    with torch.no_grad():
        logits = module(inputs)
    weight = None if weights is None else weights(hair_of(faces.labels), job, setup).float()
    expected = F.cross_entropy(logits, y, weight=weight, reduction="none")
    torch.testing.assert_close(setup.loss(module, inputs, batch)["loss"], expected)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    config = TrainConfig(optimizer="adam", lr=1e-2, batch_size=16, max_steps=2)
    train(module, job.model.spec, faces, setup, config, job.device, resume_path=tmp_path / "s")
    changed = [k for k, v in module.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("fc") for k in changed), changed


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("roi-iou", ("--attribute", "Black_Hair", "--region", "mouth", "--cam-target", "label"),
         "a multiclass head's map is its class's logit"),
        ("crayon", ("--attribute", "Black_Hair", "--simulate", "mouth", "--cam-target",
                    "predicted"), "a multiclass head's map is its class's logit"),
        ("jlu", ("--attribute", "Black_Hair", "--spurious", "Blond_Hair"),
         "Blond_Hair cannot be classes of the model"),
        ("rebalance", ("--attribute", "Red_Hair", "--protected", "Male"), "does not predict"),
    ],
)  # fmt: skip
def test_multiclass_refusals_are_one_line(hair_model, faces, name, options, message):
    recipe, args = parse(name, *options)
    with pytest.raises(BiascheckError, match=message) as info:
        recipe.prepare(args, make_job(hair_model, faces))
    assert "\n" not in str(info.value)


def test_the_class_comes_from_a_label_column_as_the_gate_reads_it(tmp_path):
    birds = SynthBirds(n=24, split="train", image_size=32)
    species = ["waterbird" if y else "landbird" for y in birds.labels[:, 0].tolist()]
    meta = tmp_path / "species.csv"
    meta.write_text("image_id,species\n" + "".join(f"{i},{s}\n" for i, s in enumerate(species)))
    data, classes = MetadataGroups(birds, meta), ("waterbird", "landbird")
    model = load_checkpoint(save_multiclass(tmp_path / "birds.pt", classes))
    settings = Settings(models={"birds": ModelSettings(label="species")})
    scope, plan = plan_for(model, data, settings)
    job = Job(model, data, "birds", scope, plan, torch.device("cpu"))
    expected = torch.tensor([classes.index(s) for s in species])
    assert torch.equal(training_targets(job), expected)


def test_every_command_the_gate_suggests_for_a_multiclass_head_runs(
    hair_model, cli, tmp_path, capsys
):
    """The gate's suggestions for every gating item of a multiclass head name a class where a
    recipe trains one, and each distinct command runs (one step, no report: the command's own
    options otherwise, as printed)."""
    data = "synthfaces:n=32"
    results = evaluate(hair_model, data, name="hair")
    model = load_checkpoint(hair_model)
    scope, _ = plan_for(model, SynthFaces(n=32, image_size=32), Settings())
    fix = dataclasses.replace(fix_for(model, data, results), train="synthfaces:n=48")
    commands = {
        check.command(target, scope, fix)
        for check in selected(catalogue(), ())
        for target in check.targets(scope)
    }
    runnable = sorted(c for c in commands if c.startswith("python -m mitigations "))
    assert {shlex.split(c)[3] for c in runnable} >= {"affact-b", "rebalance"}
    for command in runnable:
        argv = shlex.split(command)[3:]
        if "--attribute" in argv:  # a one-class recipe gets a class, never the task's name
            assert argv[argv.index("--attribute") + 1] in HAIR_COLOURS
        assert cli(*argv, "--max-steps", "1", "--skip-checks") == 0, capsys.readouterr().err
