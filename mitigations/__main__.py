"""``python -m mitigations RECIPE --model in.pt --out out.pt [--data SPEC] [options]``: fine-tune a
model with a recipe from the papers and report the gate's checks before and after.
``python -m mitigations crayon annotate ...`` serves Crayon's yes/no annotation page instead;
``python -m mitigations auto --model m.pt`` runs the fix the gate suggests (``mitigations.auto``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence

from mitigations.cli import HelpFormatter, Parser
from mitigations.recipe import Defaults, Recipe
from pytest_biascheck.config import option_type
from pytest_biascheck.errors import BiascheckError


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def add_training_arguments(parser: argparse.ArgumentParser, defaults: Defaults) -> None:
    """Options every recipe shares: files, data, and the training loop with the paper's defaults."""
    files = parser.add_argument_group("files and data")
    files.add_argument("--model", required=True, metavar="PATH", help="checkpoint to start from")
    files.add_argument("--out", required=True, metavar="PATH", help="new checkpoint to write")
    files.add_argument(
        "--data",
        metavar="SPEC",
        help="training data, e.g. synthfaces:split=train,preset=biased,n=4000; "
        "unset: the config's, else the synthetic set of the model's attributes",
    )
    files.add_argument(
        "--eval-data",
        metavar="SPEC",
        help="evaluation data for the before/after checks; unset: what the gate uses",
    )
    files.add_argument(
        "--config", metavar="FILE", help="settings file; unset: biascheck.toml or pyproject.toml"
    )
    files.add_argument(
        "--train-on-eval-images",
        action="store_true",
        help="train even on images the before/after checks evaluate (data with no held-out split)",
    )
    loop = parser.add_argument_group("training")
    loop.add_argument(
        "--optimizer", choices=("sgd", "adam"), default=defaults.optimizer, help="optimiser"
    )
    loop.add_argument("--lr", type=float, default=defaults.lr, help="learning rate")
    loop.add_argument("--momentum", type=float, default=defaults.momentum, help="SGD momentum")
    loop.add_argument(
        "--weight-decay", type=float, default=defaults.weight_decay, help="L2 weight decay"
    )
    loop.add_argument(
        "--scheduler",
        choices=("constant", "cosine"),
        default="constant",
        help="learning-rate schedule",
    )
    loop.add_argument(
        "--batch-size", type=_positive, default=defaults.batch_size, help="global batch"
    )
    loop.add_argument(
        "--epochs", type=_positive, default=defaults.epochs, help="passes over the data"
    )
    loop.add_argument(
        "--max-steps", type=_positive, default=None, help="stop after this many steps"
    )
    loop.add_argument(
        "--micro-batch",
        type=_positive,
        default=None,
        help="images per forward pass (gradients accumulate; results do not change)",
    )
    loop.add_argument(
        "--clip-grad-norm",
        type=float,
        default=defaults.clip_grad_norm,
        metavar="MAX",
        help="clip the global gradient norm to MAX (not in the papers; 0 or unset: off)",
    )
    loop.add_argument("--seed", type=int, default=0, help="batch order, subsampling, init")
    loop.add_argument(
        "--amp",
        choices=("auto", "bf16", "fp16", "off"),
        default="auto",
        help="mixed precision on CUDA (auto: bf16 where supported, else fp16)",
    )
    run = parser.add_argument_group("running")
    run.add_argument(
        "--device",
        type=option_type("device"),
        help="cpu, cuda, cuda:1 ...; unset: CUDA when available",
    )
    run.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    run.add_argument(
        "--checkpoint-every",
        type=_positive,
        default=50,
        metavar="N",
        help="write the resume state every N steps",
    )
    run.add_argument(
        "--resume", action="store_true", help="continue from OUT.resume when it exists"
    )
    run.add_argument(
        "--eval-batch-size",
        type=option_type("batch_size"),
        default=None,
        help="batch of the evaluation passes",
    )
    run.add_argument(
        "--skip-checks", action="store_true", help="train and save only, no before/after report"
    )


def build_parser(recipes: Mapping[str, Recipe]) -> argparse.ArgumentParser:
    """The command line: one subcommand per recipe, each listing every option with its default."""
    parser = Parser(
        prog="python -m mitigations",
        description="Fine-tune a model with a bias mitigation recipe, then re-run the bias checks "
        "before and after (JSON + HTML report next to --out). Under torchrun the training is "
        "data parallel. 'python -m mitigations auto --model m.pt' runs the recipe the gate "
        "suggests for most of the model's failing checks.",
    )
    commands = parser.add_subparsers(
        title="recipes", metavar="RECIPE", dest="recipe", required=True
    )
    for name, recipe in recipes.items():
        sub = commands.add_parser(
            name,
            help=recipe.summary,
            description=recipe.summary,
            formatter_class=HelpFormatter,
        )
        recipe.add_arguments(sub.add_argument_group(f"{name} options"))
        add_training_arguments(sub, recipe.defaults)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run; bad input prints one line on stderr and returns exit code 2."""
    from mitigations.job import run
    from mitigations.registry import all_recipes
    from pytest_biascheck import hookspecs

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:2] == ["crayon", "annotate"]:
            from mitigations.crayon.annotate import main as annotate

            return annotate(argv[2:])
        if argv[:1] == ["auto"]:
            from mitigations.auto import main as auto

            return auto(argv[1:])
        recipes = all_recipes(hookspecs.plugin_manager().hook)
        args = build_parser(recipes).parse_args(argv)
        return run(recipes[args.recipe], args)
    except BiascheckError as exc:
        print(f"mitigations: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
