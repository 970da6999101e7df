"""Rebalance (Attention-IoU paper, appendix C): subsample the training data so that a target
attribute and a protected one reach a requested Matthews correlation, keeping the four
(target, protected) subgroups as close to their original sizes as possible, then fine-tune (or
retrain) on that subset.

The paper minimises ``sum((g - g0)^2 / g^2)`` subject to ``MCC(g) = m``, ``0 <= g <= g0`` and a
fixed total with scipy's trust-constr. Here the same problem is solved exactly in two variables:
writing the subgroups as ``g = T * f(a, b)`` with ``a`` and ``b`` the shares of target and protected
positives, the MCC fixes the joint cell,
``f11 = a b + m sqrt(a (1-a) b (1-b))``, and the rest follow from the margins. A zooming grid search
over (a, b) then finds the global minimum, with no start point or step walk. Without a total, the
paper takes the size its own solution reaches; here that is the largest ``T`` the bounds allow for
each (a, b), since the objective only falls as ``T`` grows toward ``g0``.

For a multiclass head the target attribute is one of its classes, read one-vs-rest (is the image of
this class), and the fine-tune's loss is the cross-entropy over the class label (its class weights
``(1 - p_k) / p_k`` from the subset play the part of BCE's ``pos_weight``).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mitigations.recipe import (
    Defaults,
    Job,
    Recipe,
    Setup,
    group_values,
    is_multiclass,
    output_index,
    training_targets,
)
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.metrics.mcc import mcc_from_counts

#: Grid points per axis and zoom rounds of the search: the window shrinks ~30x per round.
GRID, ROUNDS = 241, 12
#: Outputs that get the BCE pos_weight. On every output (the paper's) a fine-tune moves the
#: threshold of outputs the model never learned (fixture: overall accuracy -3.6 points, see
#: docs/mitigations.md), so the default weights only the rebalanced attribute.
POS_WEIGHT = ("attribute", "all", "none")


def _cells(a: np.ndarray, b: np.ndarray, mcc: float) -> np.ndarray:
    """Subgroup shares ``[..., 4]`` ordered (t0p0, t0p1, t1p0, t1p1) for margins a, b and MCC."""
    f11 = a * b + mcc * np.sqrt(np.clip(a * (1 - a) * b * (1 - b), 0, None))
    return np.stack([1 - a - b + f11, b - f11, a - f11, f11], -1)


def objective(groups: np.ndarray, original: np.ndarray) -> np.ndarray:
    """The paper's distance ``sum((g - g0)^2 / g^2)`` (with its 1e-15 guard) over the last axis."""
    return ((groups - original) ** 2 / (groups**2 + 1e-15)).sum(-1)


def _evaluate(
    a: np.ndarray, b: np.ndarray, mcc: float, original: np.ndarray, total: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """(objective, groups) on a grid; infeasible points get +inf."""
    shares = _cells(a, b, mcc)
    feasible = (shares >= -1e-12).all(-1)
    if total is None:
        with np.errstate(divide="ignore", invalid="ignore"):
            limits = np.where(shares > 0, original / np.where(shares > 0, shares, 1), np.inf)
        size = limits.min(-1, keepdims=True)
        feasible &= np.isfinite(size[..., 0])
        groups = shares * np.where(np.isfinite(size), size, 0)
    else:
        groups = shares * total
        feasible &= (groups <= original * (1 + 1e-12) + 1e-9).all(-1)
    groups = np.clip(groups, 0, original)
    return np.where(feasible, objective(groups, original), np.inf), groups


def solve_subgroups(original: np.ndarray, mcc: float, total: float | None = None) -> np.ndarray:
    """Continuous subgroup sizes ``[2, 2]`` (rows: target 0/1, columns: protected 0/1) with MCC
    ``mcc``, each at most its original size, summing to ``total`` (default: as many as the bounds
    allow), closest to ``original`` in the paper's distance. No solution: BiascheckError."""
    flat = np.asarray(original, dtype=np.float64).reshape(4)
    if not -1 < mcc < 1:
        raise BiascheckError(f"--mcc must be strictly between -1 and 1, got {mcc}")
    if total is not None and not 0 < total <= flat.sum():
        raise BiascheckError(
            f"--size must be between 1 and the {int(flat.sum())} training images, got {total}"
        )
    low, high = np.zeros(2), np.ones(2)
    best, best_groups = np.inf, None
    for _ in range(ROUNDS):
        a = np.linspace(low[0], high[0], GRID)[:, None]
        b = np.linspace(low[1], high[1], GRID)[None, :]
        values, groups = _evaluate(a, b, mcc, flat, total)
        i, j = np.unravel_index(np.argmin(values), values.shape)
        if values[i, j] <= best:
            best, best_groups = values[i, j], groups[i, j]
        span = (high - low) * 3 / (GRID - 1)
        centre = np.array([a[i, 0], b[0, j]])
        low, high = np.clip(centre - span, 0, 1), np.clip(centre + span, 0, 1)
    if best_groups is None or not np.isfinite(best):
        raise BiascheckError(
            f"no subset of the training data reaches MCC {mcc} at size {total}; "
            "ask for a smaller --size or an MCC closer to the data's own"
        )
    return best_groups.reshape(2, 2)


def round_counts(groups: np.ndarray, original: np.ndarray, total: int | None = None) -> np.ndarray:
    """Integer subgroup sizes summing to ``total`` (default: the floor of the continuous sum) by
    largest remainders, never above the original sizes."""
    flat, bound = groups.reshape(4), np.asarray(original).reshape(4)
    total = int(np.floor(flat.sum() + 1e-9)) if total is None else int(total)
    counts = np.minimum(np.floor(flat + 1e-9), bound).astype(np.int64)
    order = np.argsort(-(flat - counts), kind="stable")
    for k in order:
        if counts.sum() >= total:
            break
        if counts[k] < bound[k]:
            counts[k] += 1
    return counts.reshape(2, 2)


def subsample(target: Tensor, protected: Tensor, counts: np.ndarray, seed: int) -> np.ndarray:
    """Sorted positions of a seeded random subset with ``counts[t, p]`` images of each subgroup."""
    cell = (2 * target.long() + protected.long()).numpy()
    keys = np.random.default_rng(seed).random(len(cell))
    order = np.lexsort((keys, cell))
    starts = np.searchsorted(cell[order], np.arange(4))
    rank = np.empty(len(cell), dtype=np.int64)
    rank[order] = np.arange(len(cell)) - starts[cell[order]]
    keep = rank < np.asarray(counts).reshape(4)[cell]
    return np.flatnonzero(keep)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The pair to decorrelate, the MCC to reach, and whether to start over."""
    parser.add_argument("--attribute", required=True, help="target attribute")
    parser.add_argument("--protected", required=True, help="protected attribute or group")
    parser.add_argument("--mcc", type=float, default=0.0, help="MCC to reach in the subset")
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="images in the subset; unset: the most the original subgroups allow at that MCC",
    )
    parser.add_argument(
        "--retrain", action="store_true", help="train from fresh weights instead of fine-tuning"
    )
    parser.add_argument(
        "--pos-weight",
        choices=POS_WEIGHT,
        default="attribute",
        help="BCE pos_weight = (1 - p) / p from the subset (a multiclass head: the class weights "
        "of its cross-entropy): on every output (the paper's, for training from scratch), only "
        "on --attribute, or none",
    )


def prepare(args: argparse.Namespace, job: Job) -> Setup:
    """Solve for the subgroup sizes, draw the subset, and train with (weighted) BCE on it (a
    multiclass head: weighted cross-entropy)."""
    multiclass = is_multiclass(job.model)
    if not multiclass and args.attribute not in job.train_data.attributes:
        raise BiascheckError(
            f"--attribute {args.attribute!r} is not labelled in the training data; choose from "
            f"{', '.join(job.train_data.attributes)}"
        )
    if args.protected == args.attribute:
        raise BiascheckError("--protected must differ from --attribute")
    targets = training_targets(job)
    if multiclass:
        target = (targets == output_index(job.model, args.attribute)).long()
    else:
        target = group_values(job.train_data, args.attribute)
    protected = group_values(job.train_data, args.protected)
    if int(protected.max()) > 1 or int(protected.min()) < 0:
        raise BiascheckError(
            f"--protected {args.protected!r} has more than two values; "
            "rebalancing needs a binary group"
        )
    original = np.bincount((2 * target + protected).numpy(), minlength=4).reshape(2, 2)
    groups = solve_subgroups(original, args.mcc, args.size)
    counts = round_counts(groups, original, args.size)
    indices = subsample(target, protected, counts, args.seed)
    kept = targets[indices]
    k = len(job.model.spec.attributes)
    rate = (
        torch.bincount(kept, minlength=k).double() / len(kept)
        if multiclass
        else kept.double().mean(0)
    )
    pos_weight = ((1 - rate) / rate).nan_to_num(1.0, 1.0, 1.0)
    if args.pos_weight == "attribute":
        weighted = torch.tensor([a == args.attribute for a in job.model.spec.attributes])
        pos_weight = torch.where(weighted, pos_weight, 1.0)
    pos_weight = None if args.pos_weight == "none" else pos_weight
    weight = None if pos_weight is None else pos_weight.float().to(job.device)
    targets = targets.to(job.device)

    def loss(module: nn.Module, inputs: Tensor, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        logits, y = module(inputs).float(), targets[batch["index"].to(targets.device)]
        if multiclass:
            return {"loss": F.cross_entropy(logits, y, weight=weight, reduction="none")}
        per_output = F.binary_cross_entropy_with_logits(
            logits, y, pos_weight=weight, reduction="none"
        )
        return {"loss": per_output.mean(1)}

    return Setup(
        loss=loss,
        indices=indices,
        reinitialise=args.retrain,
        facts={
            "original_counts": original.tolist(),
            "counts": counts.tolist(),
            "original_mcc": float(mcc_from_counts(torch.as_tensor(original))),
            "mcc": float(mcc_from_counts(torch.as_tensor(counts))),
            "pos_weight": None if pos_weight is None else pos_weight.tolist(),
        },
    )


RECIPE = Recipe(
    name="rebalance",
    summary="subsample to a target MCC between an attribute and a protected one (Attention-IoU)",
    defaults=Defaults(
        optimizer="adam", lr=1e-3, momentum=0.9, weight_decay=1e-4, batch_size=32, epochs=10
    ),
    add_arguments=add_arguments,
    prepare=prepare,
)
