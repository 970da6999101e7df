"""Leakage of a protected attribute. Into the features: the JLU paper's probe (how well a linear
classifier recovers the attribute from penultimate features) and its "% unlearned". Into the
predictions: how much the predicted probability depends on the attribute among images of the same
true label, which is 0 for a model whose output ignores the attribute even where the attribute is
plainly visible in the image (the features of any model encode a visible background)."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from pytest_biascheck.metrics.base import Accumulator
from pytest_biascheck.metrics.bootstrap import percentile_interval, resample_counts
from pytest_biascheck.metrics.inputs import as_index, check_levels, stack_groups


def percent_unlearned(blind: float, baseline: float, chance: float) -> float:
    """JLU's "% unlearned": ``100 * (baseline - blind) / (baseline - chance)``, i.e. how much of the
    probe's above-chance accuracy before mitigation (``baseline``) is gone after it (``blind``).
    NaN when the baseline was not above chance (nothing to unlearn)."""
    if baseline <= chance:
        return float("nan")
    return 100.0 * (baseline - blind) / (baseline - chance)


def prediction_leakage(
    probabilities: Tensor,
    labels: Tensor,
    groups: Tensor,
    min_count: int = 1,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float, int]:
    """(value, low, high, n): how much the model's predicted probability (``[n]``) depends on a
    protected group among images of the same true label (``labels [n]``, any number of classes):
    within each label, the largest difference between the group values' mean probabilities (the
    balance for the positive and the negative class of Kleinberg et al.), and the largest over the
    labels. 0 when the prediction carries nothing about the group beyond the label, 1 when the
    group alone decides it. Label x value cells under ``min_count`` images are left out; the
    interval is a percentile bootstrap over images."""
    p, labels, groups = probabilities.double(), labels.long(), groups.long()
    n = p.shape[0]
    label_values, label_index = labels.unique(return_inverse=True)
    group_values, group_index = groups.unique(return_inverse=True)
    width = len(group_values)
    cell = F.one_hot(label_index * width + group_index, len(label_values) * width).double()
    kept = cell.sum(0) >= min_count
    per_label = kept.view(len(label_values), width)
    usable = per_label.sum(1) >= 2  # a label needs two group values to compare
    if not usable.any():
        return float("nan"), float("nan"), float("nan"), 0
    # Row 0 counts every image once (the value itself); the other rows are the resamples.
    counts = torch.cat(
        [torch.ones(1, n, dtype=torch.float64), *resample_counts(n, n_resamples, seed)]
    )
    means = (counts @ (cell * p[:, None])) / (counts @ cell)  # [1 + R, cells]
    means = means.view(-1, len(label_values), width).masked_fill(~per_label, torch.nan)
    gaps = means.nan_to_num(-torch.inf).amax(-1) - means.nan_to_num(torch.inf).amin(-1)
    leak = gaps[:, usable].amax(-1)
    low, high = percentile_interval(leak[1:], confidence)
    counted = int((cell[:, kept.view(-1)].sum(1) * usable[label_index]).sum())
    return float(leak[0]), float(low), float(high), counted


def fit_probe(
    features: Tensor, targets: Tensor, classes: int, l2: float = 1e-3, iterations: int = 100
) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression (float64, full-batch L-BFGS, L2 on the weights, at most
    ``iterations`` steps, zero start: deterministic); returns ``(weight [D, K], bias [K])``."""
    x = features.to(torch.float64)
    y = targets.long().clone()
    with torch.inference_mode(False), torch.enable_grad():
        weight = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [weight, bias],
            max_iter=iterations,
            tolerance_grad=1e-12,
            tolerance_change=1e-15,
            line_search_fn="strong_wolfe",
        )

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(x @ weight + bias, y) + 0.5 * l2 * weight.square().sum()
            loss.backward()
            return loss

        optimizer.step(closure)
    return weight.detach(), bias.detach()


class LeakageProbe(Accumulator):
    """Probe accuracy for each protected attribute from penultimate features ``[B, D]``.

    Features are kept per image (``D`` floats each): the one accumulator whose state is not of fixed
    size, because the probe is fit on all of them at once. Images with ``index % holdout == 0`` form
    the test part, the rest the training part, so the split does not depend on batching or sharding.
    Features are standardised with training statistics. ``compute()`` gives per group ``n_train``,
    ``n_test``, the probe's test ``accuracy``, ``chance`` (the majority-class rate of the test part,
    which is the paper's 1/K on a balanced test set) and, for groups with a ``reference`` accuracy
    (the probe before mitigation), ``percent_unlearned``.
    """

    def __init__(
        self,
        n_features: int,
        groups: Mapping[str, int],
        holdout: int = 5,
        l2: float = 1e-3,
        iterations: int = 100,
        reference: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        if holdout < 2:
            raise ValueError("holdout must be >= 2 (every holdout-th image is held out)")
        self.groups = check_levels(groups)
        self.holdout, self.l2, self.iterations = holdout, l2, iterations
        self.reference = dict(reference or {})
        self.add_state("index", torch.zeros(0, dtype=torch.int64), "cat")
        self.add_state("features", torch.zeros(0, n_features, dtype=torch.float32), "cat")
        self.add_state("groups", torch.zeros(0, len(self.groups), dtype=torch.int64), "cat")

    def update(self, features: Tensor, groups: Mapping[str, Tensor], index: Tensor) -> None:
        """Fold in penultimate features ``[B, D]``, each group's values ``[B]`` and image indices."""
        batch = features.shape[0]
        index, values = as_index(index, batch), stack_groups(groups, self.groups, batch)
        self.accumulate("index", index)
        self.accumulate("features", features.flatten(1))
        self.accumulate("groups", values)

    def compute(self) -> pd.DataFrame:
        """Probe accuracy against chance (and % unlearned) for every protected attribute."""
        order = self.image_order()
        held_out = self.state("index")[order] % self.holdout == 0
        x = self.state("features")[order].to(torch.float64)
        if held_out.all() or not held_out.any():
            raise ValueError("LeakageProbe needs images in both the training and the test part")
        mean, std = x[~held_out].mean(0), x[~held_out].std(0, correction=0)
        x = (x - mean) / torch.where(std > 0, std, 1.0)
        rows = []
        for column, (name, classes) in enumerate(self.groups.items()):  # one probe per attribute
            y = self.state("groups")[order, column]
            weight, bias = fit_probe(x[~held_out], y[~held_out], classes, self.l2, self.iterations)
            predicted = (x[held_out] @ weight + bias).argmax(1)
            test = y[held_out]
            accuracy = (predicted == test).double().mean().item()
            chance = (torch.bincount(test, minlength=classes).max() / len(test)).item()
            reference = self.reference.get(name)
            rows.append(
                {
                    "group": name,
                    "n_train": int((~held_out).sum()),
                    "n_test": int(held_out.sum()),
                    "accuracy": accuracy,
                    "chance": chance,
                    "percent_unlearned": float("nan")
                    if reference is None
                    else percent_unlearned(accuracy, reference, chance),
                }
            )
        return pd.DataFrame(rows)
