"""One recipe run end to end: check the input, measure the parent with the gate's checks, train,
save the new checkpoint with its provenance, measure it again, and write the before/after report.
The input model file is only ever read."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.nn.functional as F

from mitigations.compare import (
    REPORT_SCHEMA,
    command_line,
    comparison,
    evaluate_model,
    run_checks,
    side_by_side,
    summary,
    table,
    write_html,
)
from mitigations.recipe import Job, Recipe, Setup, training_targets
from mitigations.train import TrainConfig, Trained, config_facts, fingerprint, train
from pytest_biascheck import files, hookspecs
from pytest_biascheck.atomic import atomic_write_text
from pytest_biascheck.checks import catalogue, selected
from pytest_biascheck.config import Settings, find_config, load_settings, validate_thresholds
from pytest_biascheck.data import default_spec
from pytest_biascheck.data.base import BiasDataset
from pytest_biascheck.distributed import process_group
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.evaluate import Results, sample_maps
from pytest_biascheck.model import LoadedModel, load_checkpoint, save_checkpoint
from pytest_biascheck.planning import Plan, Scope, data_for, group_levels, open_for, plan_for
from pytest_biascheck.report.document import records, to_json

#: Options that change how a run executes or where it reads and writes, not the weights it makes.
OPERATIONAL = frozenset(
    {"model", "out", "config", "device", "resume", "workers", "checkpoint_every", "skip_checks",
     "eval_data", "eval_batch_size", "micro_batch", "recipe", "train_on_eval_images"}
)  # fmt: skip


def output_paths(out: Path) -> dict[str, Path]:
    """Files a run writes next to ``out``: the resume state, the JSON report, the HTML folder."""
    stem = out.name.removesuffix(".pt")
    return {
        "resume": out.with_name(f"{out.name}.resume"),
        "report": out.with_name(f"{stem}.report.json"),
        "html": out.with_name(f"{stem}.report"),
    }


def check_paths(model: Path, out: Path) -> None:
    """Refuse, before any work, an output that would overwrite the input or cannot be written."""
    if out.exists() and model.exists() and out.resolve() == model.resolve():
        raise BiascheckError(f"--out {out} is the input model; write the new model to another file")
    if out.is_dir():
        raise BiascheckError(
            f"--out {out} is a folder; give a file name such as {out / 'model.pt'}"
        )
    folder = out.parent
    if not folder.is_dir():
        raise BiascheckError(
            f"output folder {folder} does not exist; create it or choose another --out"
        )
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise BiascheckError(
            f"output folder {folder} is not writable ({exc.strerror}); choose another --out"
        ) from None


def check_held_out(
    train_spec: str, train: BiasDataset, eval_spec: str, evaluation: BiasDataset
) -> None:
    """Refuse to train on images the checks evaluate (a data source without a held-out split
    gives the same images to both), unless ``--train-on-eval-images`` says so."""
    files_of = [getattr(d, "image_files", None) for d in (train, evaluation)]
    if not all(files_of):
        return
    shared = set(files_of[0]()) & set(files_of[1]())
    if shared:
        rule = "; ".join(getattr(evaluation, "notes", list)()) or eval_spec
        raise BiascheckError(
            f"training data {train_spec} holds {len(shared)} of the {len(evaluation)} images the "
            f"checks evaluate ({rule}); add a split column (train/val/test), pass --eval-data with "
            "held-out images, or --train-on-eval-images to train on them anyway"
        )


def with_checks(settings: Settings, name: str, extra: Sequence[str], hook: Any) -> Settings:
    """Settings under which model ``name`` runs the checks it would run plus ``extra`` (a
    recipe's own measures, such as JLU's leakage probe)."""
    if not extra:
        return settings
    known = catalogue(hook)
    unknown = [c for c in extra if c not in known]
    if unknown:
        raise ValueError(f"Setup.checks names unknown checks: {', '.join(unknown)}")
    own = settings.for_model(name)
    wanted = [c.name for c in selected(known, own.checks or settings.checks)]
    checks = [*wanted, *(c for c in extra if c not in wanted)]
    models = {**settings.models, name: dataclasses.replace(own, checks=checks)}
    return dataclasses.replace(settings, models=models)


def hyperparameters(args: argparse.Namespace) -> dict[str, Any]:
    """The options that shape the weights, for provenance and for matching a resume file."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in OPERATIONAL and not callable(v)}


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The shared loop's settings from the parsed options."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


@dataclasses.dataclass
class Inputs:
    """Everything a run reads before training: settings, plugins, the parent model and the data."""

    settings: Settings
    hook: Any
    model: LoadedModel
    train_spec: str
    train_data: BiasDataset
    eval_spec: str
    eval_data: BiasDataset
    scope: Scope
    plan: Plan


def load_inputs(args: argparse.Namespace) -> Inputs:
    """Settings, model and data as the gate would load them; every refusal is a BiascheckError."""
    settings = load_settings(Path(args.config) if args.config else find_config(Path.cwd()))
    if args.device is not None:
        settings.device = args.device
    if args.eval_batch_size is not None:
        settings.batch_size = args.eval_batch_size
    hook = hookspecs.plugin_manager().hook
    validate_thresholds(settings, catalogue(hook))
    model_path, out = Path(args.model), Path(args.out)
    check_paths(model_path, out)
    model = load_checkpoint(
        model_path,
        allow_imports=settings.allow_imports,
        architectures=hookspecs.merged(hook.pytest_biascheck_architectures()),
        spec_overrides=settings.for_model(model_path.stem).task,
    )
    if model.arch in ("torchscript", "pickled"):
        raise BiascheckError(
            f"model {model_path} is a {model.arch} file; recipes need a checkpoint, so the new "
            f"weights can be saved the same way: python -m pytest_biascheck convert {model_path} "
            "--arch ARCH --out model.pt"
        )
    datasets = hookspecs.merged(hook.pytest_biascheck_datasets())
    train_spec = args.data or settings.for_model(model.name).data or settings.data
    train_spec = train_spec or default_spec(model.spec.attributes)
    if train_spec is None:
        raise BiascheckError(f"no training data for model {model.name}; pass --data SPEC")
    train_data = open_for(model, settings, train_spec, "train", datasets)
    eval_spec, eval_data = data_for(model, settings, datasets, args.eval_data)
    if not args.train_on_eval_images:
        check_held_out(train_spec, train_data, eval_spec, eval_data)
    scope, plan = plan_for(model, eval_data, settings)
    return Inputs(settings, hook, model, train_spec, train_data, eval_spec, eval_data, scope, plan)


def run(recipe: Recipe, args: argparse.Namespace) -> int:
    """Run ``recipe`` as the parsed options say; bad input raises BiascheckError before training."""
    inputs = load_inputs(args)
    parent, out, paths = inputs.model, Path(args.out), output_paths(Path(args.out))
    config = train_config(args)
    with process_group(inputs.settings.device) as (rank, world, device):
        if config.batch_size < world:
            raise BiascheckError(
                f"--batch-size {config.batch_size} is smaller than the {world} processes"
            )
        job = Job(parent, inputs.train_data, inputs.train_spec, inputs.scope, inputs.plan, device)
        setup = recipe.prepare(args, job)
        extra = [g for g in setup.protected if g not in inputs.plan.protected]
        inputs.plan = dataclasses.replace(
            inputs.plan,
            protected={**inputs.plan.protected, **group_levels(inputs.eval_data, extra)},
            feature_probe=inputs.plan.feature_probe or "feature_leakage" in setup.checks,
        )
        inputs.settings = with_checks(inputs.settings, parent.name, setup.checks, inputs.hook)
        evaluate = dict(
            data=inputs.eval_data, spec=inputs.eval_spec, plan=inputs.plan,
            batch_size=inputs.settings.batch_size, device=str(device), rank=rank, world=world,
            progress=rank == 0 and sys.stderr.isatty(),
        )  # fmt: skip
        before = None if args.skip_checks else evaluate_model(parent, **evaluate)
        hyper = hyperparameters(args)
        run_id = fingerprint(
            {"recipe": recipe.name, "parent": parent.sha256, **hyper, **config_facts(config)}
        )
        trained = train(
            parent.module,
            parent.spec,
            inputs.train_data,
            setup,
            config,
            device,
            resume_path=paths["resume"],
            resume=args.resume,
            run_id=run_id,
            progress=rank == 0,
        )
        provenance = {
            "recipe": recipe.name,
            "hyperparameters": hyper,
            "parent": {"path": str(parent.path), "sha256": parent.sha256},
            "train": inputs.train_spec,
            "train_images": len(inputs.train_data if setup.indices is None else setup.indices),
            "steps": trained.steps,
            "positive_rates": _positive_rates(job, setup.indices),
            "recipe_facts": setup.facts,
        }
        if rank == 0:
            save_checkpoint(
                parent.module, parent.spec, out, parent.arch, parent.arch_kwargs, provenance,
                hookspecs.merged(inputs.hook.pytest_biascheck_architectures()),
            )  # fmt: skip
        if world > 1:
            dist.barrier()
        sha = files.sha256(out, "model", "new model file")
        new = LoadedModel(
            parent.module, parent.spec, out, sha, parent.arch, parent.arch_kwargs, provenance
        )
        after = None if args.skip_checks else evaluate_model(new, **evaluate)
        if rank == 0:
            paths["resume"].unlink(missing_ok=True)
            print(
                f"{out}: {recipe.name} on {inputs.train_spec}, {trained.steps} steps, "
                f"{trained.images_per_second:.0f} images/s"
            )
            if before is not None and after is not None:
                _report(recipe, inputs, new, setup, hyper, trained, (before, after), paths)
    return 0


def _positive_rates(job: Job, indices: Any) -> dict[str, float]:
    """Share of positive training labels per output (the binary-CAM paper's p_m; a multiclass
    head: each class's share of the images), which the gate uses to tell each attribute's majority
    class."""
    labels, attributes = training_targets(job), job.model.spec.attributes
    if labels.dim() == 1:
        labels = F.one_hot(labels, len(attributes))
    if indices is not None:
        labels = labels[list(indices)]
    return dict(zip(attributes, labels.double().mean(0).tolist(), strict=True))


def _report(
    recipe: Recipe,
    inputs: Inputs,
    new: LoadedModel,
    setup: Setup,
    hyper: dict[str, Any],
    trained: Trained,
    results: tuple[Results, Results],
    paths: dict[str, Path],
) -> None:
    """Write ``<out>.report.json`` and the before/after page; print the table."""
    models = (inputs.model, new)
    outcomes = [
        run_checks(r, m, inputs.scope, inputs.settings, inputs.model.name, inputs.hook)
        for m, r in zip(models, results, strict=True)
    ]
    rows = comparison(*outcomes)
    measures = {
        side: setup.measure(r) if setup.measure else {}
        for side, r in zip(("before", "after"), results, strict=True)
    }
    if setup.compare is not None:
        measures["change"] = setup.compare(measures["before"], measures["after"])
    data = {"train": inputs.train_spec, "evaluation": inputs.eval_spec}
    document = {
        "schema": REPORT_SCHEMA,
        "recipe": recipe.name,
        "hyperparameters": hyper,
        "model": {"path": str(inputs.model.path), "sha256": inputs.model.sha256},
        "out": {"path": str(new.path), "sha256": new.sha256},
        "data": data,
        "training": {
            "steps": trained.steps,
            "images": trained.images,
            "seconds": trained.seconds,
            "images_per_second": trained.images_per_second,
            "losses": trained.losses,
        },
        "facts": setup.facts,
        "command": command_line(),
        "summary": summary(rows),
        "checks": rows,
        "measures": measures,
        "attributes": {
            side: records(r.table("overall"))
            for side, r in zip(("before", "after"), results, strict=True)
        },
    }
    atomic_write_text(paths["report"], to_json(document))
    draw = [
        functools.partial(sample_maps, m, inputs.eval_data, inputs.plan,
                          batch_size=inputs.settings.batch_size, device=inputs.settings.device)
        for m in models
    ]  # fmt: skip
    html = write_html(paths["html"], document, side_by_side(results, tuple(outcomes), tuple(draw)))
    print(table(rows))
    print(f"report: {paths['report']}, {html}")
