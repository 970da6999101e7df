"""One pass of a model over evaluation data -> Results: every map, prediction and accumulator the
checks and the report need, computed batch by batch with fixed-size state (plus one row per image)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pytest_biascheck.cam import compute_cams
from pytest_biascheck.config import Settings
from pytest_biascheck.data.base import BiasDataset
from pytest_biascheck.data.regions import TEMPLATE_BOXES, template_box_mask
from pytest_biascheck.errors import BiascheckError, BiascheckWarning
from pytest_biascheck.metrics import (
    GroupRates,
    HeatmapScore,
    LeakageProbe,
    MaskScore,
    PairwiseMCC,
    PredictionDivergence,
    ProportionalEnergy,
)
from pytest_biascheck.metrics.group import bootstrap_summary
from pytest_biascheck.metrics.scores import CellScores
from pytest_biascheck.model import LoadedModel

if TYPE_CHECKING:
    from pytest_biascheck.checks import Scope

#: How many evaluation images keep their own maps for the report.
SAMPLES = 8


@dataclass(frozen=True)
class Plan:
    """What to measure: checked attributes, protected groups (with their number of values), and the
    region each attribute should be looked at in."""

    attributes: tuple[str, ...]
    protected: dict[str, int]
    regions: dict[str, str]
    bootstrap: int = 1000
    seed: int = 0
    leakage: bool = False  # fit the leakage probe (seconds of L-BFGS) only when its check runs

    @property
    def mapped(self) -> tuple[str, ...]:
        """The attributes that have a region: mask scores and energies are measured for these."""
        return tuple(a for a in self.attributes if a in self.regions)


@dataclass
class Results:
    """What one evaluation pass measured.

    ``frame`` has one row per image, ordered by image index: ``y:<attr>`` labels, ``z:<attr>`` logits
    and ``g:<group>`` protected-group values. ``tables`` holds the metric tables; ``maps`` the mean
    CAMs for the report.
    """

    model: str
    sha256: str
    data: str
    attributes: tuple[str, ...]
    frame: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    plan: Plan | None = None

    def column(self, kind: str, name: str) -> np.ndarray:
        """A per-image column, e.g. ``column("y", "Smiling")``; a clear error names what exists."""
        key = f"{kind}:{name}"
        if key not in self.frame:
            have = sorted(c.split(":", 1)[1] for c in self.frame if c.startswith(f"{kind}:"))
            raise BiascheckError(
                f"{self.model}: no {kind!r} column for {name!r}; available: {', '.join(have)}"
            )
        return self.frame[key].to_numpy()

    def table(self, name: str) -> pd.DataFrame:
        """A metric table; a clear error when this evaluation did not compute it."""
        if name not in self.tables:
            raise BiascheckError(
                f"{self.model}: no {name!r} results (evaluation computed {', '.join(sorted(self.tables))})"
            )
        return self.tables[name]


def resolve_device(name: str | None) -> torch.device:
    """``auto``/None -> CUDA when available, else CPU; anything else is passed to torch."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def group_levels(dataset: BiasDataset, names: Sequence[str]) -> dict[str, int]:
    """Number of values of each protected group: 2 for a label, else the dataset's declared levels."""
    declared = getattr(dataset, "group_levels", {})
    levels = {}
    for name in names:
        if name in dataset.attributes:
            levels[name] = 2
        elif name in dataset.group_names:
            levels[name] = len(declared.get(name, (0, 1)))
        else:
            have = ", ".join(dataset.attributes + dataset.group_names)
            raise BiascheckError(
                f"protected group {name!r} is neither a label nor a group of the data; choose from {have}"
            )
    return levels


def data_for(
    model: LoadedModel,
    settings: Settings,
    extra: Mapping[str, Any] | None = None,
    spec: str | None = None,
) -> tuple[str, BiasDataset]:
    """(spec, test split) a model is evaluated on: ``spec`` if given, else the model's setting, the
    global setting, or the synthetic set carrying its attributes; ``extra`` are plugin datasets."""
    from pytest_biascheck.data import default_spec, open_data

    spec = spec or settings.for_model(model.name).data or settings.data
    spec = spec or default_spec(model.spec.attributes)
    if spec is None:
        raise BiascheckError(
            f"no evaluation data for model {model.name}; pass --biascheck-data (pytest) or --data "
            f"(python -m pytest_biascheck), or set data under [tool.biascheck.models.{model.name}]"
        )
    _, height, width = model.spec.input_size
    size = height if height == width else (height, width)
    return spec, open_data(spec, "test", size, extra)


def plan_for(model: LoadedModel, dataset: BiasDataset, settings: Settings) -> tuple[Scope, Plan]:
    """What to check (Scope) and to measure (Plan) for a model: its configured attributes, groups
    and regions, else the data's defaults. The plugin and the CLI both plan through here."""
    from pytest_biascheck.checks import Scope

    own = settings.for_model(model.name)
    default = getattr(dataset, "default_scope", {})
    attributes = own.attributes or [
        a for a in default.get("attributes", dataset.attributes) if a in model.spec.attributes
    ]
    for name in attributes:
        if name not in model.spec.attributes or name not in dataset.attributes:
            raise BiascheckError(
                f"model {model.name}: attribute {name!r} is not predicted by the model or not labelled "
                f"in the data; fix [tool.biascheck.models.{model.name}] attributes"
            )
    protected = own.protected or list(default.get("protected", []))
    regions = {**default.get("regions", {}), **own.regions}
    scope = Scope(
        attributes=attributes,
        protected=protected,
        regions={a: regions[a] for a in attributes if a in regions},
        predicted_groups=[g for g in protected if g in model.spec.attributes],
        positive_rates=dict(model.provenance.get("positive_rates", {})),
    )
    plan = Plan(
        attributes=tuple(scope.attributes),
        protected=group_levels(dataset, scope.protected),
        regions=scope.regions,
        bootstrap=settings.bootstrap,
        seed=settings.seed,
        leakage="leakage" in (settings.for_model(model.name).checks or settings.checks),
    )
    return scope, plan


@dataclass
class Pass:
    """The state of an evaluation pass before it is summarised: accumulators, per-image columns and
    map sums. Shards of one evaluation (processes, workers) merge here, then ``finish`` runs once."""

    accumulators: dict[str, Any]
    columns: dict[str, list[np.ndarray]] = field(default_factory=dict)
    sums: dict[str, torch.Tensor] = field(default_factory=dict)


def evaluate(
    loaded: LoadedModel,
    dataset: BiasDataset,
    data_spec: str,
    plan: Plan,
    batch_size: int = 64,
    device: str | None = None,
    progress: bool = False,
) -> Results:
    """Run the model once over ``dataset`` and summarise everything the checks need."""
    state = run_pass(loaded, dataset, plan, batch_size, device, progress=progress)
    return finish(state, loaded, data_spec, plan)


def run_pass(
    loaded: LoadedModel,
    dataset: BiasDataset,
    plan: Plan,
    batch_size: int = 64,
    device: str | None = None,
    indices: Sequence[int] | None = None,
    progress: bool = False,
) -> Pass:
    """Accumulate every metric over ``dataset`` (or only ``indices`` of it, for one shard)."""
    dev = resolve_device(device)
    module = loaded.module.to(dev).eval()
    spec = loaded.spec
    if spec.target_layer is None:
        raise BiascheckError(
            f"model {loaded.name} names no target layer; set task.target_layer in the checkpoint"
        )
    outputs = [spec.attributes.index(a) for a in plan.attributes]
    cam_protected = [p for p in plan.protected if p in spec.attributes]
    maps_for = outputs + [spec.attributes.index(p) for p in cam_protected]
    region_of = _region_lookup(dataset, plan)
    mapped = [plan.attributes.index(x) for x in plan.mapped]
    state = Pass(_accumulators(plan, cam_protected))
    acc, columns = state.accumulators, state.columns
    subset = dataset if indices is None else torch.utils.data.Subset(dataset, list(indices))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False)
    a = len(plan.attributes)
    for batch in tqdm(
        loader, desc=f"biascheck {loaded.name}", unit="batch", disable=not progress, leave=False
    ):
        images = batch["image"].to(dev)
        cam = compute_cams(
            module, spec.normalize(images), spec.target_layer, outputs=maps_for, head=spec.head
        )
        logits = cam.logits.float()
        cams = cam.cams[:, :a].float()
        labels = torch.stack(
            [batch["labels"][:, dataset.attribute_index(x)] for x in plan.attributes], 1
        ).to(dev)
        predicted = (logits[:, outputs] > 0).long()
        groups = {name: _group_values(batch, dataset, name).to(dev) for name in plan.protected}
        index = batch["index"]
        if mapped:
            regions = region_of(batch, images.shape[-2:]).to(dev)
            cams_r, labels_r, predicted_r = cams[:, mapped], labels[:, mapped], predicted[:, mapped]
            if not state.sums:
                _warn_small_regions(regions, cams_r.shape[-2:], plan.mapped)
            acc["mask_score"].update(cams_r, regions, index, labels_r, groups)
            acc["energy"].update(cams_r, regions, predicted_r, labels_r)
            energy_scores = _energy(cams_r, regions)
            acc["energy_cells"].add_scores(energy_scores, energy_scores == 0, index, predicted_r)
        for k, name in enumerate(cam_protected):
            acc[f"heatmap:{name}"].update(cams, cam.cams[:, a + k].float(), index, labels, groups)
        acc["groups"].update(labels, predicted, groups)
        acc["divergence"].update(torch.sigmoid(logits[:, outputs]), groups)
        acc["mcc"].update(labels, predicted)
        if plan.leakage and cam.features is not None and plan.protected:
            acc.setdefault("leakage", LeakageProbe(cam.features.shape[1], plan.protected)).update(
                cam.features.float(), groups, index
            )
        _sum_maps(state.sums, cams, predicted, groups, plan, images, index)
        _append(columns, "index", index)
        for i, name in enumerate(spec.attributes):
            _append(columns, f"z:{name}", logits[:, i])
        for i, name in enumerate(plan.attributes):
            _append(columns, f"y:{name}", labels[:, i])
        for name, values in groups.items():
            _append(columns, f"g:{name}", values)
    return state


def finish(state: Pass, loaded: LoadedModel, data_spec: str, plan: Plan) -> Results:
    """Summarise a (possibly merged) pass into Results."""
    if not state.columns:
        raise BiascheckError(
            f"evaluation data {data_spec!r} is empty; choose a split or spec with images"
        )
    frame = pd.DataFrame({k: np.concatenate(v) for k, v in state.columns.items()})
    frame = frame.sort_values("index", kind="stable").reset_index(drop=True)
    results = Results(
        loaded.name,
        loaded.sha256,
        data_spec,
        loaded.spec.attributes,
        frame,
        maps=state.sums,
        plan=plan,
    )
    results.tables = summarise(state.accumulators, frame, plan)
    return results


def summarise(acc: dict[str, Any], frame: pd.DataFrame, plan: Plan) -> dict[str, pd.DataFrame]:
    """Compute every accumulator into tables (after any merge or all-reduce of shards)."""
    tables = {}
    if plan.mapped:
        tables["mask_score"] = acc["mask_score"].compute()
        tables["energy"] = acc["energy"].compute()
        tables["energy_cells"] = acc["energy_cells"].compute()
    heatmaps = [
        acc[k].compute().assign(protected=k.split(":", 1)[1])
        for k in acc
        if k.startswith("heatmap:")
    ]
    if heatmaps:
        tables["heatmap_score"] = pd.concat(heatmaps, ignore_index=True)
    group_tables = acc["groups"].compute()
    tables["overall"] = group_tables["overall"]
    tables["group_rates"] = group_tables["groups"]
    tables["group_cells"] = group_tables["cells"]
    tables["group_summary"] = _with_intervals(group_tables["summary"], frame, plan)
    if plan.protected:
        tables["divergence"] = acc["divergence"].compute()
    if "leakage" in acc:
        tables["leakage"] = acc["leakage"].compute()
    mcc = acc["mcc"].compute()
    tables["mcc_labels"], tables["mcc_predictions"] = mcc["labels"], mcc["predictions"]
    return tables


def _accumulators(plan: Plan, cam_protected: list[str]) -> dict[str, Any]:
    boot = {"n_resamples": plan.bootstrap, "seed": plan.seed}
    acc: dict[str, Any] = {
        "mask_score": MaskScore(plan.mapped, plan.protected, **boot),
        "energy": ProportionalEnergy(plan.mapped),
        "energy_cells": CellScores(plan.mapped, **boot),
        "groups": GroupRates(plan.attributes, plan.protected),
        "divergence": PredictionDivergence(plan.attributes, plan.protected),
        "mcc": PairwiseMCC(plan.attributes),
    }
    for name in cam_protected:
        acc[f"heatmap:{name}"] = HeatmapScore(plan.attributes, plan.protected, **boot)
    return acc


def _with_intervals(summary: pd.DataFrame, frame: pd.DataFrame, plan: Plan) -> pd.DataFrame:
    """Long table (attribute, group, stat, value, low, high) with bootstrap intervals over images."""
    if not plan.protected:
        return pd.DataFrame(columns=["attribute", "group", "stat", "value", "low", "high"])
    labels = torch.tensor(np.stack([frame[f"y:{a}"].to_numpy() for a in plan.attributes], 1))
    predicted = torch.tensor(np.stack([frame[f"z:{a}"].to_numpy() > 0 for a in plan.attributes], 1))
    groups = {g: torch.tensor(frame[f"g:{g}"].to_numpy()) for g in plan.protected}
    intervals = bootstrap_summary(
        labels, predicted.long(), groups, plan.protected, plan.bootstrap, seed=plan.seed
    )
    long = summary.melt(id_vars=["attribute", "group"], var_name="stat", value_name="value")
    low = {
        (a, g, s): float(v[i, 0])
        for g, stats in intervals.items()
        for s, v in stats.items()
        for i, a in enumerate(plan.attributes)
    }
    high = {
        (a, g, s): float(v[i, 1])
        for g, stats in intervals.items()
        for s, v in stats.items()
        for i, a in enumerate(plan.attributes)
    }
    keys = list(zip(long["attribute"], long["group"], long["stat"], strict=True))
    return long.assign(low=[low[k] for k in keys], high=[high[k] for k in keys])


def _region_lookup(dataset: BiasDataset, plan: Plan):
    """A function batch -> region masks ``[B, A', H, W]`` for the attributes that have a region: mask
    regions of the data, or template boxes (for data without masks, such as CelebA)."""
    plan_regions = [plan.regions[a] for a in plan.mapped]
    for attribute, region in zip(plan.mapped, plan_regions, strict=True):
        if region not in dataset.region_names and region not in TEMPLATE_BOXES:
            have = ", ".join(list(dataset.region_names) + list(TEMPLATE_BOXES))
            raise BiascheckError(
                f"region {region!r} of {attribute!r} is neither a mask region of the data nor a template box; choose from {have}"
            )

    def lookup(batch: dict, size: Sequence[int]) -> torch.Tensor:
        layers = []
        for region in plan_regions:
            if region in dataset.region_names:
                layers.append(batch["masks"][:, dataset.region_names.index(region)])
            else:
                box = template_box_mask(region, int(size[0]), int(size[1]))
                layers.append(box.expand(batch["image"].shape[0], -1, -1))
        return torch.stack(layers, 1)

    return lookup


def _warn_small_regions(regions: torch.Tensor, grid: Sequence[int], names: Sequence[str]) -> None:
    """Warn when a region covers less than one CAM cell on average: its scores are then coarse."""
    cells = regions.float().mean((0, 2, 3)) * grid[0] * grid[1]
    small = [
        f"{name} ({float(c):.2f} cells)" for name, c in zip(names, cells, strict=True) if c < 1
    ]
    if small:
        warnings.warn(
            f"regions of {', '.join(small)} cover less than one cell of the {grid[0]}x{grid[1]} CAM "
            "grid on average, so their mask scores and energies are coarse; use a larger input or an "
            "earlier target layer",
            BiascheckWarning,
            stacklevel=2,
        )


def _group_values(batch: dict, dataset: BiasDataset, name: str) -> torch.Tensor:
    if name in dataset.attributes:
        return batch["labels"][:, dataset.attribute_index(name)].long()
    return batch["groups"][:, dataset.group_names.index(name)].long()


def _energy(cams: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    from pytest_biascheck.metrics.energy import proportional_energy

    return proportional_energy(cams, regions).double()


def _sum_maps(sums, cams, predicted, groups, plan, images, index) -> None:
    """Running sums for the report: maps by predicted class and by group value, the mean image."""
    by_class = torch.nn.functional.one_hot(predicted, 2).double()  # [B, A, 2]
    _add(sums, "by_class", torch.einsum("bak,bahw->akhw", by_class, cams.double()))
    _add(sums, "by_class_n", by_class.sum(0))
    for name, values in groups.items():
        member = torch.nn.functional.one_hot(values, plan.protected[name]).double()
        _add(sums, f"group:{name}", torch.einsum("bv,bahw->avhw", member, cams.double()))
        _add(sums, f"group_n:{name}", member.sum(0))
    _add(sums, "image_sum", images.double().sum(0))
    _add(sums, "image_n", torch.tensor(float(images.shape[0]), dtype=torch.float64))
    keep = index < SAMPLES
    if keep.any():
        _cat(sums, "sample_index", index[keep])
        _cat(sums, "sample_image", images[keep].cpu())
        _cat(sums, "sample_maps", cams[keep].cpu())


def _add(sums: dict, key: str, value: torch.Tensor) -> None:
    value = value.cpu()
    sums[key] = value if key not in sums else sums[key] + value


def _cat(sums: dict, key: str, value: torch.Tensor) -> None:
    sums[key] = value if key not in sums else torch.cat([sums[key], value])


def _append(columns: dict[str, list[np.ndarray]], key: str, values: torch.Tensor) -> None:
    columns.setdefault(key, []).append(values.detach().cpu().numpy())
