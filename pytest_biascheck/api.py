"""``pytest_biascheck.evaluate(model, data)``: the gate's evaluation from Python (a notebook, a
script), with the loading, validation and planning of ``pytest --biascheck``: the same Results."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from pytest_biascheck.config import Settings, find_config, load_settings, validate_thresholds
from pytest_biascheck.data.base import BiasDataset
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.evaluate import Results
from pytest_biascheck.evaluate import evaluate as run
from pytest_biascheck.model import LoadedModel, ModelSpec, live_model, load_checkpoint


def evaluate(
    model: nn.Module | LoadedModel | str | os.PathLike,
    data: str | BiasDataset | None = None,
    *,
    spec: ModelSpec | Mapping[str, Any] | None = None,
    name: str = "model",
    config: str | os.PathLike | None = None,
    attributes: Sequence[str] | None = None,
    protected: Sequence[str] | None = None,
    regions: Mapping[str, str] | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    trust_pickle: bool = False,
) -> Results:
    """Evaluate ``model`` (a checkpoint path, or an ``nn.Module`` with its ``spec``, checked as a
    file's would be) on ``data`` (a data spec such as ``"csv:labels.csv,groups=skin_tone"``, a
    ``BiasDataset``, or None for the config's or the synthetic default), as ``pytest --biascheck``
    does. Settings come from ``config`` (default: ``biascheck.toml`` or ``pyproject.toml`` in the
    current folder); ``attributes``, ``protected`` and ``regions`` override the model's own."""
    from pytest_biascheck import hookspecs
    from pytest_biascheck.checks import catalogue
    from pytest_biascheck.planning import data_for, plan_for

    settings = load_settings(Path(config) if config else find_config(Path.cwd()))
    hook = hookspecs.plugin_manager().hook
    validate_thresholds(settings, catalogue(hook))
    if isinstance(model, LoadedModel):
        loaded = model
    elif isinstance(model, nn.Module):
        if spec is None:
            raise BiascheckError(
                "evaluate(module, ...) needs spec=ModelSpec(attributes=(...), input_size=..., "
                "mean=..., std=...): what the outputs are and how to feed the model"
            )
        loaded = live_model(model, spec, name)
    else:
        loaded = load_model(model, settings, hook, trust_pickle)
    overrides = {"attributes": attributes, "protected": protected, "regions": regions}
    own = dataclasses.replace(
        settings.for_model(loaded.name),
        **{k: type(v)(v) if k != "regions" else dict(v) for k, v in overrides.items() if v},
    )
    settings.models = {**settings.models, loaded.name: own}
    settings.batch_size = batch_size or settings.batch_size
    settings.device = device or settings.device
    if isinstance(data, BiasDataset):
        data_spec, dataset = f"<{type(data).__name__}>", data
    else:
        extra = hookspecs.merged(hook.pytest_biascheck_datasets())
        data_spec, dataset = data_for(loaded, settings, extra, data)
    _, plan = plan_for(loaded, dataset, settings)
    return run(
        loaded, dataset, data_spec, plan, batch_size=settings.batch_size, device=settings.device
    )


def load_model(
    path: str | os.PathLike, settings: Settings, hook: Any, trust_pickle: bool = False
) -> LoadedModel:
    """A model file loaded as the gate loads it: the config's allowed imports and task overrides,
    plugins' architectures."""
    from pytest_biascheck import hookspecs

    return load_checkpoint(
        path,
        trust_pickle=trust_pickle,
        allow_imports=settings.allow_imports,
        architectures=hookspecs.merged(hook.pytest_biascheck_architectures()),
        spec_overrides=settings.for_model(Path(path).stem).task,
    )
