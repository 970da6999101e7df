"""Training speed of each recipe relative to a plain BCE fine-tune of the same model, in one run.

    python benchmarks/train_speed.py                        # fixtures/faces_biased.pt if built
    python benchmarks/train_speed.py --steps 8 --rounds 3 --batch 32 --device cuda

Images are rendered once up front, so the numbers are the recipes' compute (forward, Grad-CAM,
backward, optimiser step), not the synthetic data's drawing. Recipes run interleaved for a few
rounds and each keeps its best round, so a busy shared machine skews the ratios less. Each uses its
own default optimiser; the BCE baseline uses AFFACT-b's. Prints images/s and the ratio to BCE.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from mitigations.__main__ import build_parser
from mitigations.job import train_config
from mitigations.recipe import Job, Setup, label_columns
from mitigations.registry import builtin_recipes
from mitigations.train import train
from pytest_biascheck.config import Settings
from pytest_biascheck.data.base import BiasDataset
from pytest_biascheck.data.synth_faces import SynthFaces
from pytest_biascheck.model import ModelSpec, load_checkpoint, save_checkpoint
from pytest_biascheck.nets import SmallResNet
from pytest_biascheck.planning import plan_for

ROOT = Path(__file__).resolve().parent.parent
ARGS = {
    "roi-iou": ["--attribute", "Smiling", "--region", "mouth"],
    "affact-b": [],
    "rebalance": ["--attribute", "Smiling", "--protected", "Black_Hair", "--mcc", "0.3"],
    # Crayon-Attention with simulated answers: Grad-CAM with create_graph, backward through it
    "crayon": ["--attribute", "Smiling", "--simulate", "mouth"],
    # JLU: one forward, secondary heads on detached and on live features, one backward
    "jlu": ["--attribute", "Smiling", "--spurious", "Black_Hair"],
}


class Prerendered(BiasDataset):
    """A SynthFaces set drawn once into memory, served in batches."""

    def __init__(self, source: SynthFaces) -> None:
        self.attributes, self.region_names = source.attributes, source.region_names
        self.labels = source.labels
        self.batch = source.render(range(len(source)))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.batch.items()}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        return [self[i] for i in indices]


def model_file(folder: Path) -> Path:
    """The biased face fixture, else a fresh fixture-sized model."""
    fixture = ROOT / "fixtures" / "faces_biased.pt"
    if fixture.exists():
        return fixture
    from pytest_biascheck.data.synth_faces import ATTRIBUTES

    spec = ModelSpec(attributes=ATTRIBUTES, input_size=(3, 64, 64), target_layer="layer4")
    return save_checkpoint(
        SmallResNet(len(ATTRIBUTES)), spec, folder / "m.pt", "biascheck.small_resnet"
    )


def bce_setup(job: Job) -> Setup:
    """The baseline: plain multi-label BCE over every output."""
    columns = label_columns(job.model, job.train_data)

    def loss(module, inputs, batch):
        logits = module(inputs)
        return {
            "loss": F.binary_cross_entropy_with_logits(
                logits, batch["labels"][:, columns], reduction="none"
            ).mean(1)
        }

    return Setup(loss=loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; best kept")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    options = parser.parse_args()
    device = torch.device(options.device)
    recipes = builtin_recipes()
    cli = build_parser(recipes)
    with tempfile.TemporaryDirectory() as tmp:
        path = model_file(Path(tmp))
        n = options.batch * (options.steps + 1)
        biased = {("Smiling", "Black_Hair"): 0.9}
        data = Prerendered(SynthFaces(n=n, split="train", image_size=64, correlations=biased))
        runs = {}
        for name in ["bce", *recipes]:
            model = load_checkpoint(path)
            scope, plan = plan_for(model, data, Settings())
            job = Job(model, data, "prerendered", scope, plan, device)
            recipe = "affact-b" if name == "bce" else name  # BCE trains with AFFACT-b's optimiser
            argv = [recipe, "--model", str(path), "--out", "x.pt", *ARGS[recipe]]
            args = cli.parse_args([*argv, "--batch-size", str(options.batch)])
            if name == "bce":
                setup = bce_setup(job)
            else:
                setup = recipes[name].prepare(args, job)
                setup.indices = None  # rebalance: time the loss, not the subset size
            runs[name] = (model, setup, train_config(args))
        rates = dict.fromkeys(runs, 0.0)
        for steps in [1] + [options.steps] * options.rounds:  # a warm-up step, then the rounds
            for name, (model, setup, config) in runs.items():
                start = time.perf_counter()
                done = train(
                    model.module, model.spec, data, setup,
                    dataclasses.replace(config, max_steps=steps), device,
                    resume_path=Path(tmp) / "state",
                )  # fmt: skip
                if steps == options.steps:
                    rates[name] = max(rates[name], done.images / (time.perf_counter() - start))
    print(f"{'recipe':<10} {'images/s':>9} {'vs BCE':>7}   ({device}, batch {options.batch}, "
          f"{options.steps} steps, best of {options.rounds} rounds)")  # fmt: skip
    for name, rate in rates.items():
        print(f"{name:<10} {rate:9.1f} {rate / rates['bce']:7.2f}x")


if __name__ == "__main__":
    main()
