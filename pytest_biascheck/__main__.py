"""``python -m pytest_biascheck evaluate``: one evaluation pass written to a results JSON, planned as
the plugin plans it; under torchrun every process takes a shard and rank 0 writes the file.
``python -m pytest_biascheck layers MODEL``: the layers a model's maps can be taken at.
``python -m pytest_biascheck convert [SOURCE] --out FILE --arch ARCH --attributes A,B``: any
PyTorch classifier -> a checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_biascheck.config import option_type
from pytest_biascheck.errors import BiascheckError

if TYPE_CHECKING:
    from pytest_biascheck.config import Settings
    from pytest_biascheck.model import LoadedModel


#: Exit code of bad input, as for ``pytest --biascheck`` (pytest's usage error).
USAGE_ERROR = 4


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 4, like every other refusal."""

    def error(self, message: str) -> None:
        self.exit(USAGE_ERROR, f"biascheck: error: {message}; see {self.prog} --help\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; bad input prints one line on stderr and returns exit code 4."""
    try:
        args = _parser().parse_args(argv)
        return args.run(args)
    except BiascheckError as exc:
        print(f"biascheck: error: {exc}", file=sys.stderr)
        return USAGE_ERROR


def _load(args: argparse.Namespace) -> tuple[Settings, LoadedModel]:
    """Settings (``--config`` or the nearest config file) and the model loaded as the plugin does."""
    from pytest_biascheck import hookspecs
    from pytest_biascheck.checks import catalogue
    from pytest_biascheck.config import find_config, load_settings, validate_thresholds
    from pytest_biascheck.model import load_checkpoint

    settings = load_settings(Path(args.config) if args.config else find_config(Path.cwd()))
    hook = hookspecs.plugin_manager().hook
    validate_thresholds(settings, catalogue(hook))
    model = load_checkpoint(
        args.model,
        trust_pickle=args.trust_pickle,
        allow_imports=settings.allow_imports,
        architectures=hookspecs.merged(hook.pytest_biascheck_architectures()),
        spec_overrides=settings.for_model(Path(args.model).stem).task,
    )
    return settings, model


def evaluate_command(args: argparse.Namespace) -> int:
    """Load settings, model and data, evaluate (sharded under torchrun) and save the Results."""
    from pytest_biascheck import hookspecs
    from pytest_biascheck.distributed import gather_pass, process_group, shard_indices
    from pytest_biascheck.evaluate import finish, run_pass
    from pytest_biascheck.planning import data_for, plan_for
    from pytest_biascheck.store import save_results

    settings, model = _load(args)
    if args.batch_size is not None:
        settings.batch_size = args.batch_size
    if args.device is not None:
        settings.device = args.device
    hook = hookspecs.plugin_manager().hook
    spec, dataset = data_for(
        model, settings, hookspecs.merged(hook.pytest_biascheck_datasets()), args.data
    )
    _, plan = plan_for(model, dataset, settings)
    with process_group(settings.device) as (rank, world, device):
        state = run_pass(
            model,
            dataset,
            plan,
            settings.batch_size,
            str(device),
            indices=shard_indices(len(dataset), rank, world),
            progress=rank == 0 and sys.stderr.isatty(),
        )
        state = gather_pass(state)
        if rank == 0:
            results = finish(state, model, spec, plan)
            save_results(results, args.out)
            print(
                f"wrote {args.out}: {model.name} on {spec}, {len(results.frame)} images, {world} processes"
            )
    return 0


def layers_command(args: argparse.Namespace) -> int:
    """Print the candidate target layers (output shape per image, feature-map layout) in the order
    they finish, marking the model's target layer and naming the automatic choice."""
    from pytest_biascheck.layers import candidate_layers, choose_target_layer

    _, model = _load(args)
    found = candidate_layers(model.module, model.spec.input_size)
    automatic = choose_target_layer(model.module, found)
    rows = [("", "layer", "module", "output", "feature map")] + [
        (
            "*" if info.name == model.spec.target_layer else "",
            info.name,
            info.module,
            str(list(info.shape)),
            info.layout.describe(),
        )
        for info in found
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    print(f"{args.model}: {model.arch}, input {list(model.spec.input_size)}")
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    print(
        f"* target layer: {model.spec.target_layer}; automatic choice: {automatic} "
        "(set task.target_layer in the checkpoint or the config to use another)"
    )
    return 0


def convert_command(args: argparse.Namespace) -> int:
    """Convert a model into a checkpoint and say how to gate it."""
    from pytest_biascheck import hookspecs
    from pytest_biascheck.convert import convert

    hook = hookspecs.plugin_manager().hook
    model = convert(
        args.source,
        args.out,
        arch=args.arch,
        attributes=args.attributes,
        arch_kwargs=args.arch_kwargs,
        input_size=args.input_size,
        mean=args.mean,
        std=args.std,
        target_layer=args.target_layer,
        head=args.head,
        weights=args.weights,
        trust_pickle=args.trust_pickle,
        architectures=hookspecs.merged(hook.pytest_biascheck_architectures()),
        seed=args.seed,
    )
    spec = model.spec
    print(
        f"wrote {args.out}: {model.arch}, {spec.head} head with {len(spec.attributes)} outputs "
        f"({', '.join(spec.attributes)}), input {list(spec.input_size)}, mean {list(spec.mean)}, "
        f"std {list(spec.std)}, target layer {spec.target_layer}"
    )
    if ":" in model.arch:
        print(
            f'the gate loads it once the config allows the import: allow_imports = ["{model.arch}"]'
        )
    print(f"gate it: pytest --biascheck {args.out} --biascheck-data SPEC (see docs/data.md)")
    return 0


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _numbers(kind: type) -> Any:
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__}s, got {text!r}"
            ) from None

    parse.__name__ = f"{kind.__name__} list"
    return parse


def _json_table(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f'expected a JSON object such as {{"image_size": 64}}, got {text!r}'
        )
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m pytest_biascheck",
        description="biascheck outside pytest: evaluate a model once and save the results, "
        "list the layers its maps can be taken at, or convert a model into a checkpoint.",
    )
    commands = parser.add_subparsers(title="subcommands", metavar="COMMAND", required=True)
    evaluate = commands.add_parser(
        "evaluate",
        help="one evaluation pass -> results JSON (shards over processes under torchrun)",
        description="Evaluate a model on data as `pytest --biascheck` does and write the results "
        "JSON. Under `torchrun --nproc_per_node N -m pytest_biascheck evaluate ...` each process "
        "takes every N-th image (gloo on CPU, nccl on CUDA) and rank 0 writes the file.",
    )
    evaluate.add_argument("--model", required=True, metavar="PATH", help="model checkpoint")
    evaluate.add_argument(
        "--data", metavar="SPEC", help="evaluation data (default: the config's, else synthetic)"
    )
    evaluate.add_argument("--out", required=True, metavar="FILE", help="results JSON to write")
    _add_loading(evaluate)
    evaluate.add_argument(
        "--batch-size", type=option_type("batch_size"), metavar="N", help="images per batch"
    )
    evaluate.add_argument(
        "--device",
        type=option_type("device"),
        metavar="DEVICE",
        help="torch device (default: auto)",
    )
    evaluate.set_defaults(run=evaluate_command)
    layers = commands.add_parser(
        "layers",
        help="list the layers CAMs can be taken at, with output shapes",
        description="Load a model as `pytest --biascheck` does and list every layer that gives a "
        "feature map the outputs depend on (CNN maps, channels-last maps, ViT patch tokens), in "
        "the order they finish, with the automatic target layer used when the checkpoint names "
        "none.",
    )
    layers.add_argument("model", metavar="MODEL", help="model checkpoint")
    _add_loading(layers)
    layers.set_defaults(run=layers_command)
    convert = commands.add_parser(
        "convert",
        help="any PyTorch classifier -> a biascheck checkpoint (.pt or .safetensors)",
        description="Write a biascheck/1 checkpoint from a state_dict file (also a training "
        "checkpoint holding one), a safetensors file, a biascheck checkpoint, a TorchScript file, "
        "a trusted whole-model pickle, or no file (the architecture with --weights). The weights "
        "must fit --arch and one dry forward pass must give one output per attribute before "
        "anything is written. Input size and normalisation default to the architecture's preset.",
    )
    convert.add_argument(
        "source", nargs="?", metavar="SOURCE", help="weights file (omit: build --arch afresh)"
    )
    convert.add_argument(
        "--out", required=True, metavar="FILE", help="checkpoint to write (.pt or .safetensors)"
    )
    convert.add_argument(
        "--arch",
        metavar="ARCH",
        help="torchvision.<name>, timm.<name>, biascheck.small_resnet, a plugin's, or module:factory",
    )
    convert.add_argument(
        "--attributes", type=_names, metavar="A,B", help="output names, one per output, in order"
    )
    convert.add_argument(
        "--arch-kwargs",
        type=_json_table,
        metavar="JSON",
        help='factory arguments, e.g. {"image_size": 64}',
    )
    convert.add_argument("--input-size", type=_numbers(int), metavar="C,H,W")
    convert.add_argument("--mean", type=_numbers(float), metavar="M1,M2,M3")
    convert.add_argument("--std", type=_numbers(float), metavar="S1,S2,S3")
    convert.add_argument(
        "--target-layer", metavar="NAME", help="layer for the maps (default: chosen automatically)"
    )
    convert.add_argument("--head", choices=("multilabel", "multiclass"))
    convert.add_argument(
        "--weights",
        default="random",
        metavar="NAME",
        help="without SOURCE: random (default), or pretrained weights to download "
        "(torchvision: DEFAULT, IMAGENET1K_V1...; timm: pretrained)",
    )
    convert.add_argument(
        "--trust-pickle", action="store_true", help="allow a whole pickled model (it can run code)"
    )
    convert.add_argument(
        "--seed", type=option_type("seed"), default=0, help="seed of random weights"
    )
    convert.set_defaults(run=convert_command)
    return parser


def _add_loading(parser: argparse.ArgumentParser) -> None:
    """Options that change how a model loads."""
    parser.add_argument(
        "--config", metavar="FILE", help="settings file (default: biascheck.toml or pyproject.toml)"
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow model files holding pickled Python objects (trusted files only)",
    )


if __name__ == "__main__":
    sys.exit(main())
