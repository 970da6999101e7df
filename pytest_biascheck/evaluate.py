"""One pass of a model over evaluation data -> Results: every map, prediction and accumulator the
checks and the report need, computed batch by batch with fixed-size state (plus one row per image).

Called, this module is the public ``pytest_biascheck.evaluate(model, data, ...)`` (``api.evaluate``).
"""

from __future__ import annotations

import math
import sys
import types
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pytest_biascheck.cam import compute_cams
from pytest_biascheck.data.base import BiasDataset, group_parts
from pytest_biascheck.data.regions import resolve_region, template_box_mask
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
from pytest_biascheck.metrics.attention import RESOLUTIONS
from pytest_biascheck.metrics.energy import chance_energy, proportional_energy
from pytest_biascheck.metrics.group import bootstrap_summary
from pytest_biascheck.metrics.leakage import prediction_leakage
from pytest_biascheck.metrics.maps import is_empty
from pytest_biascheck.metrics.multiclass import (
    CLASS_SUMMARY,
    ClassRates,
    bootstrap_class_summary,
)
from pytest_biascheck.metrics.scores import CellScores
from pytest_biascheck.model import LoadedModel
from pytest_biascheck.planning import Plan, class_lookup


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

    @property
    def head(self) -> str:
        """``"multilabel"`` or ``"multiclass"`` (results without a plan are multilabel)."""
        return self.plan.head if self.plan else "multilabel"

    def label(self, name: str) -> np.ndarray:
        """True value per image: 0/1 for an attribute or class, the class index for the task name."""
        if self.head == "multiclass" and name == self.plan.task:
            return self._argmax("y")
        return (self.column("y", name) > 0.5).astype(np.int64)

    def predicted(self, name: str) -> np.ndarray:
        """Prediction per image: 0/1 for an attribute (logit > 0) or a class (it is the argmax
        class), the argmax class index for a multiclass head's task name."""
        if self.head != "multiclass":
            return (self.column("z", name) > 0).astype(np.int64)
        index = self._argmax("z")
        if name == self.plan.task:
            return index
        if name not in self.plan.attributes:
            raise BiascheckError(
                f"{self.model}: {name!r} is not a class of this multiclass model; choose from "
                f"{', '.join((self.plan.task, *self.plan.attributes))}"
            )
        return (index == self.plan.attributes.index(name)).astype(np.int64)

    def _argmax(self, kind: str) -> np.ndarray:
        return np.stack([self.column(kind, c) for c in self.plan.attributes], 1).argmax(1)

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
    multiclass = plan.head == "multiclass"
    outputs = [spec.attributes.index(a) for a in plan.attributes]
    cam_protected = [] if multiclass else [p for p in plan.protected if p in spec.attributes]
    maps_for = outputs + [spec.attributes.index(p) for p in cam_protected]
    region_of = _region_lookup(dataset, plan)
    true_class = class_reader(dataset, plan) if multiclass else None
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
        cam = _cams(module, spec, images, maps_for, multiclass)
        logits = cam.logits.float()
        cams = cam.cams[:, :a].float()
        groups = {name: dataset.protected_values(batch, name).to(dev) for name in plan.protected}
        index = batch["index"]
        if true_class is None:
            labels = torch.stack(
                [batch["labels"][:, dataset.attribute_index(x)] for x in plan.attributes], 1
            ).to(dev)
            predicted = (logits[:, outputs] > 0).long()
            probabilities = torch.sigmoid(logits[:, outputs])
        else:  # every class one-vs-rest; the task from the class indices
            truth, guess = true_class(batch).to(dev), logits.argmax(1)
            labels, predicted = F.one_hot(truth, a), F.one_hot(guess, a)
            probabilities = torch.softmax(logits, 1)
            acc["classes"].update(truth, guess, groups)
        if mapped:
            regions = region_of(batch, images.shape[-2:]).to(dev)
            cams_r, labels_r, predicted_r = cams[:, mapped], labels[:, mapped], predicted[:, mapped]
            if not state.sums:
                _warn_small_regions(regions, cams_r.shape[-2:], plan.mapped)
            _add(state.sums, "region_sum", regions.double().sum(0))
            _add(state.sums, "region_n", regions.flatten(2).any(2).double().sum(0))
            for resolution in RESOLUTIONS:
                acc[f"mask_score:{resolution}"].update(cams_r, regions, index, labels_r, groups)
            acc["energy"].update(cams_r, regions, predicted_r, labels_r)
            energy_scores = proportional_energy(cams_r, regions).double()
            acc["energy_cells"].add_scores(
                energy_scores, energy_scores == 0, index, predicted_r,
                chance=chance_energy(regions), counted=~is_empty(regions),
            )  # fmt: skip
        for k, name in enumerate(cam_protected):
            acc[f"heatmap:{name}"].update(cams, cam.cams[:, a + k].float(), index, labels, groups)
        acc["groups"].update(labels, predicted, groups)
        acc["divergence"].update(probabilities, groups, labels)
        acc["mcc"].update(labels, predicted)
        if plan.feature_probe and cam.features is not None and plan.protected:
            probe = LeakageProbe(cam.features.shape[1], plan.protected)
            acc.setdefault("feature_leakage", probe).update(cam.features.float(), groups, index)
        _sum_maps(state.sums, cams, labels, predicted, groups, plan, images)
        _append(columns, "index", index)
        for i, name in enumerate(spec.attributes):
            _append(columns, f"z:{name}", logits[:, i])
        for i, name in enumerate(plan.attributes):
            _append(columns, f"y:{name}", labels[:, i])
        for name, values in groups.items():
            _append(columns, f"g:{name}", values)
    return state


def sample_maps(
    loaded: LoadedModel,
    dataset: BiasDataset,
    plan: Plan,
    indices: Sequence[int],
    batch_size: int = 64,
    device: str | None = None,
) -> dict[str, torch.Tensor]:
    """The images ``indices`` (``index``, ``image``) with the maps of every checked attribute
    (``maps [k, A, h, w]``, as the pass computes them) and the masks of the regions of the mapped
    attributes (``regions [k, A', H, W]``): the report's sample images, chosen after the pass."""
    if not indices:
        return {}
    dev = resolve_device(device)
    module, spec = loaded.module.to(dev).eval(), loaded.spec
    outputs = [spec.attributes.index(a) for a in plan.attributes]
    region_of = _region_lookup(dataset, plan)
    loader = DataLoader(torch.utils.data.Subset(dataset, list(indices)), batch_size=batch_size)
    out: dict[str, torch.Tensor] = {}
    for batch in loader:
        images = batch["image"].to(dev)
        cams = _cams(module, spec, images, outputs, plan.head == "multiclass").cams.float()
        _cat(out, "index", batch["index"])
        _cat(out, "image", images.cpu())
        _cat(out, "maps", cams.cpu())
        if plan.mapped:
            _cat(out, "regions", region_of(batch, images.shape[-2:]).cpu())
    return out


def _cams(
    module: torch.nn.Module, spec: Any, images: torch.Tensor, outputs: list[int], multiclass: bool
):
    """CAMs of ``outputs``: of the class logits for a multiclass head, of ``|z|`` for a binary one."""
    return compute_cams(
        module,
        spec.normalize(images),
        spec.target_layer,
        outputs=outputs,
        head=spec.head,
        target="positive" if multiclass else "predicted",
    )


def class_reader(dataset: BiasDataset, plan: Plan):
    """A function batch -> true class indices ``[B]`` of a multiclass head (see ``class_lookup``);
    one-hot label columns must mark exactly one class per image."""
    lookup = class_lookup(dataset, plan.attributes, plan.label)
    columns = [dataset.attribute_index(c) for c in plan.attributes] if lookup is None else []

    def read(batch: dict) -> torch.Tensor:
        if lookup is not None:
            return lookup[dataset.protected_values(batch, plan.label)]
        onehot = batch["labels"][:, columns] > 0.5
        count = onehot.sum(1)
        if (count != 1).any():
            bad = int((count != 1).nonzero()[0, 0])
            raise BiascheckError(
                f"image {int(batch['index'][bad])} has {int(count[bad])} of the classes "
                f"{', '.join(plan.attributes)} labelled, a multiclass head needs exactly one; "
                "fix the labels or set label to a column holding the class"
            )
        return onehot.long().argmax(1)

    return read


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
    results.tables = summarise(state.accumulators, results)
    return results


def summarise(acc: dict[str, Any], results: Results) -> dict[str, pd.DataFrame]:
    """Compute every accumulator into tables (after any merge or all-reduce of shards)."""
    plan = results.plan
    tables = {}
    if plan.mapped:
        tables["mask_score"] = pd.concat(
            [acc[f"mask_score:{r}"].compute().assign(resolution=r) for r in RESOLUTIONS],
            ignore_index=True,
        )
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
    summary = _with_intervals(group_tables["summary"], results)
    excluded = [group_tables["excluded"]]
    if "classes" in acc:
        class_tables = acc["classes"].compute()
        for name in ("task", "classes", "confusion"):
            tables[name] = class_tables[name]
        tables["task_groups"] = class_tables["groups"].assign(attribute=plan.task)
        tables["task_cells"] = class_tables["cells"].assign(attribute=plan.task)
        one_vs_rest = summary[~summary["stat"].isin(CLASS_SUMMARY)]  # those are the task's
        summary = pd.concat([_task_intervals(class_tables["summary"], results), one_vs_rest])
        excluded.append(class_tables["excluded"].assign(attribute=plan.task))
    tables["group_summary"] = summary.reset_index(drop=True)
    tables["excluded_groups"] = _named_values(pd.concat(excluded, ignore_index=True), plan)
    for name in ("group_rates", "group_cells", "task_groups", "task_cells"):
        if name in tables:
            tables[name] = _named_values(tables[name], plan)
    if plan.protected:
        tables["divergence"] = _large_groups(acc["divergence"].compute(), len(results.frame), plan)
        tables["leakage"] = _prediction_leakage(results)
    if "feature_leakage" in acc:
        tables["feature_leakage"] = acc["feature_leakage"].compute()
    mcc = acc["mcc"].compute()
    tables["mcc_labels"], tables["mcc_predictions"] = mcc["labels"], mcc["predictions"]
    return tables


def _accumulators(plan: Plan, cam_protected: list[str]) -> dict[str, Any]:
    boot = {"n_resamples": plan.bootstrap, "seed": plan.seed}
    acc: dict[str, Any] = {
        **{
            f"mask_score:{r}": MaskScore(plan.mapped, plan.protected, r, **boot)
            for r in RESOLUTIONS
        },
        "energy": ProportionalEnergy(plan.mapped),
        "energy_cells": CellScores(plan.mapped, **boot, chance=True),
        "groups": GroupRates(plan.attributes, plan.protected, plan.min_group_share),
        "divergence": PredictionDivergence(plan.attributes, plan.protected),
        "mcc": PairwiseMCC(plan.attributes),
    }
    if plan.head == "multiclass":
        acc["classes"] = ClassRates(plan.attributes, plan.protected, plan.min_group_share)
    for name in cam_protected:
        acc[f"heatmap:{name}"] = HeatmapScore(plan.attributes, plan.protected, **boot)
    return acc


_INTERVAL_COLUMNS = ["attribute", "group", "stat", "value", "low", "high"]


def _with_intervals(summary: pd.DataFrame, results: Results) -> pd.DataFrame:
    """Long table (attribute, group, stat, value, low, high) with bootstrap intervals over images."""
    plan = results.plan
    if not plan.protected:
        return pd.DataFrame(columns=_INTERVAL_COLUMNS)
    labels = torch.tensor(np.stack([results.label(a) for a in plan.attributes], 1))
    predicted = torch.tensor(np.stack([results.predicted(a) for a in plan.attributes], 1))
    intervals = bootstrap_summary(
        labels, predicted, _frame_groups(results), plan.protected, plan.bootstrap,
        seed=plan.seed, min_share=plan.min_group_share,
    )  # fmt: skip
    long = summary.melt(id_vars=["attribute", "group"], var_name="stat", value_name="value")
    bounds = {
        (a, g, s): v[i].tolist()
        for g, stats in intervals.items()
        for s, v in stats.items()
        for i, a in enumerate(plan.attributes)
    }
    keys = list(zip(long["attribute"], long["group"], long["stat"], strict=True))
    return long.assign(low=[bounds[k][0] for k in keys], high=[bounds[k][1] for k in keys])


def _task_intervals(summary: pd.DataFrame, results: Results) -> pd.DataFrame:
    """The multiclass task's rows of the long group summary: worst/mean-group accuracy over the
    class x group cells and the top-1 accuracy gap, with bootstrap intervals over images."""
    plan = results.plan
    intervals = bootstrap_class_summary(
        torch.from_numpy(results.label(plan.task)), torch.from_numpy(results.predicted(plan.task)),
        _frame_groups(results), plan.protected, len(plan.attributes), plan.bootstrap,
        seed=plan.seed, min_share=plan.min_group_share,
    )  # fmt: skip
    long = summary.melt(id_vars=["group"], var_name="stat", value_name="value")
    low = [float(intervals[g][s][0]) for g, s in zip(long["group"], long["stat"], strict=True)]
    high = [float(intervals[g][s][1]) for g, s in zip(long["group"], long["stat"], strict=True)]
    return long.assign(attribute=plan.task, low=low, high=high)[_INTERVAL_COLUMNS]


def _prediction_leakage(results: Results) -> pd.DataFrame:
    """Leakage of every protected group into every attribute's (class's) predicted probability,
    within labels (a multiclass head's probabilities are its softmax)."""
    plan = results.plan
    least = max(1, math.ceil(plan.min_group_share * len(results.frame)))
    logits = torch.from_numpy(np.stack([results.column("z", a) for a in plan.attributes], 1))
    multiclass = results.head == "multiclass"
    probabilities = logits.double().softmax(1) if multiclass else logits.double().sigmoid()
    rows = []
    for i, attribute in enumerate(plan.attributes):
        label = torch.from_numpy(results.label(attribute))
        for group in plan.protected:
            if attribute in group_parts(group):
                continue
            values = torch.from_numpy(results.column("g", group).astype(np.int64))
            value, low, high, n = prediction_leakage(
                probabilities[:, i], label, values, least, plan.bootstrap, seed=plan.seed
            )
            rows.append({"attribute": attribute, "group": group, "value": value, "low": low,
                         "high": high, "n": n})  # fmt: skip
    columns = ["attribute", "group", "value", "low", "high", "n"]
    return pd.DataFrame(rows, columns=columns)


def _frame_groups(results: Results) -> dict[str, torch.Tensor]:
    return {g: torch.tensor(results.column("g", g)).long() for g in results.plan.protected}


def _named_values(table: pd.DataFrame, plan: Plan) -> pd.DataFrame:
    """``table`` with a ``level`` column naming each row's group value (e.g. ``1*0`` for
    ``Male*Young``), from the data's level names."""
    names = [
        plan.levels.get(g, ())[v] if v < len(plan.levels.get(g, ())) else str(v)
        for g, v in zip(table["group"], table["value"], strict=True)
    ]
    return table.assign(level=pd.Series(names, index=table.index, dtype="str"))


def _large_groups(table: pd.DataFrame, n: int, plan: Plan) -> pd.DataFrame:
    """KL rows between group values that both hold at least ``min_group_share`` of the images."""
    least = plan.min_group_share * n
    return table[(table["n_p"] >= least) & (table["n_q"] >= least)].reset_index(drop=True)


def _region_lookup(dataset: BiasDataset, plan: Plan):
    """A function batch -> region masks ``[B, A', H, W]`` for the attributes that have a region:
    regions of the data's part maps, or template boxes asked for as ``box:NAME``
    (``regions.resolve_region``)."""
    resolved = [
        resolve_region(plan.regions[a], dataset.region_names, f"region of {a!r}")
        for a in plan.mapped
    ]

    def lookup(batch: dict, size: Sequence[int]) -> torch.Tensor:
        layers = []
        for kind, region in resolved:
            if kind == "mask":
                layers.append(batch["masks"][:, dataset.region_names.index(region)])
            else:
                box = template_box_mask(region, int(size[0]), int(size[1]))
                layers.append(box.expand(batch["image"].shape[0], -1, -1))
        return torch.stack(layers, 1)

    return lookup


def _warn_small_regions(regions: torch.Tensor, grid: Sequence[int], names: Sequence[str]) -> None:
    """Warn when a region covers less than one CAM cell on average over the images that have it:
    its scores are then coarse."""
    area = regions.float().mean((2, 3))
    present = (area > 0).sum(0)
    cells = area.sum(0) / present.clamp(min=1) * grid[0] * grid[1]
    small = [
        f"{name} ({float(c):.2f} cells)"
        for name, c, seen in zip(names, cells, present, strict=True)
        if seen and c < 1
    ]
    if small:
        warnings.warn(
            f"regions of {', '.join(small)} cover less than one cell of the {grid[0]}x{grid[1]} CAM "
            "grid on average, so their mask scores and energies are coarse; use a larger input or an "
            "earlier target layer",
            BiascheckWarning,
            stacklevel=2,
        )


def _sum_maps(sums, cams, labels, predicted, groups, plan, images) -> None:
    """Running sums for the report: maps by predicted class and by label x group-value cell, the
    mean image."""
    by_class = torch.nn.functional.one_hot(predicted, 2).double()  # [B, A, 2]
    _add(sums, "by_class", torch.einsum("bak,bahw->akhw", by_class, cams.double()))
    _add(sums, "by_class_n", by_class.sum(0))
    by_label = torch.nn.functional.one_hot((labels > 0.5).long(), 2).double()  # [B, A, 2]
    for name, values in groups.items():
        member = torch.nn.functional.one_hot(values, plan.protected[name]).double()  # [B, V]
        cells = torch.einsum("bay,bv,bahw->ayvhw", by_label, member, cams.double())
        _add(sums, f"cell:{name}", cells)
        _add(sums, f"cell_n:{name}", torch.einsum("bay,bv->ayv", by_label, member))
    _add(sums, "image_sum", images.double().sum(0))
    _add(sums, "image_n", torch.tensor(float(images.shape[0]), dtype=torch.float64))


def _add(sums: dict, key: str, value: torch.Tensor) -> None:
    value = value.cpu()
    sums[key] = value if key not in sums else sums[key] + value


def _cat(sums: dict, key: str, value: torch.Tensor) -> None:
    sums[key] = value if key not in sums else torch.cat([sums[key], value])


def _append(columns: dict[str, list[np.ndarray]], key: str, values: torch.Tensor) -> None:
    columns.setdefault(key, []).append(values.detach().cpu().numpy())


class _CallableModule(types.ModuleType):
    """``pytest_biascheck.evaluate`` is this module once it is imported (a package attribute
    cannot be both a module and a function), so calling it runs the public API."""

    def __call__(self, *args: Any, **kwargs: Any) -> Results:
        from pytest_biascheck.api import evaluate as public

        return public(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
