"""AFFACT-b (binary-CAM paper, eq. 5-6): fine-tune with a balanced Euclidean loss whose
per-attribute class weights come from the training label frequencies, so that the minority class
of each attribute counts as much as the majority class. For a multiclass head the same weights
``n_max / n_k`` per class (eq. 6 with K classes: the majority class 1) weight a cross-entropy over
the class label instead of the Euclidean loss.

The paper reuses AFFACT's network and schedule without stating optimiser settings; the defaults
here (SGD, lr 0.003, momentum 0.9, batch 64, one epoch, gradient norm clipped to 5) are the
project's, all overridable. The clipping matters when fine-tuning a BCE-trained model: its logits
are far from the Euclidean targets ±1, and the first steps' gradients would otherwise diverge.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mitigations.recipe import (
    Defaults,
    Job,
    Loss,
    Recipe,
    Setup,
    is_multiclass,
    training_targets,
)
from pytest_biascheck.errors import BiascheckError


def balanced_weights(positive_rate: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 6: ``(w_m(+1), w_m(-1))`` per attribute from the share ``p_m`` of positive training
    labels; the majority class gets weight 1, the minority class p_maj/p_min. A class absent from
    the data (p_m = 0 or 1) never receives a weight, so its entry is set to 1."""
    p = positive_rate.double()
    majority_positive = p > 0.5
    w_pos = torch.where(majority_positive, 1.0, (1 - p) / p)
    w_neg = torch.where(majority_positive, p / (1 - p), 1.0)
    return w_pos.nan_to_num(1.0, 1.0), w_neg.nan_to_num(1.0, 1.0)


def balanced_class_weights(counts: Tensor) -> Tensor:
    """Eq. 6 for a multiclass head: weight ``n_max / n_k`` per class from its training images
    ``counts [K]``, so every class counts as much as the majority class (which gets 1); an absent
    class gets 1 (never used)."""
    counts = counts.double()
    return torch.where(counts > 0, counts.max() / counts.clamp_min(1), 1.0)


def balanced_euclidean_loss(logits: Tensor, labels: Tensor, w_pos: Tensor, w_neg: Tensor) -> Tensor:
    """Per-image term of eq. 5, ``sum_m w_m(t_m) (z_m - t_m)^2`` with targets ``t = 2y - 1``;
    the mean over images is J_w."""
    targets = 2 * labels.to(logits.dtype) - 1
    weights = torch.where(labels > 0.5, w_pos, w_neg).to(logits.dtype)
    return (weights * (logits - targets).square()).sum(-1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Which outputs get eq. 6's class weights (all of them in the paper)."""
    parser.add_argument(
        "--attributes",
        metavar="A,B,...",
        help="balance only these outputs (e.g. the ones whose checks failed); the others keep the "
        "Euclidean loss with weight 1 for both classes; unset: every output, as in the paper",
    )


def chosen_outputs(text: str | None, names: Sequence[str]) -> Tensor:
    """Boolean ``[A]``: the outputs named in ``--attributes`` (all when unset); an unknown name is
    an error listing the model's outputs."""
    if not text:
        return torch.ones(len(names), dtype=torch.bool)
    chosen = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in chosen if a not in names]
    if unknown or not chosen:
        raise BiascheckError(
            f"--attributes {text!r}: {', '.join(unknown) or 'no name'} is not an output of the "
            f"model; choose from {', '.join(names)}"
        )
    return torch.tensor([a in chosen for a in names])


def prepare(args: argparse.Namespace, job: Job) -> Setup:
    """Weights from the training labels (eq. 6) for the chosen outputs, 1 for the others, and the
    balanced Euclidean loss over all outputs (a multiclass head: the weighted cross-entropy)."""
    names = job.model.spec.attributes
    chosen = chosen_outputs(getattr(args, "attributes", None), names)
    targets = training_targets(job)
    balanced = [a for a, keep in zip(names, chosen.tolist(), strict=True) if keep]
    if is_multiclass(job.model):
        loss, facts = _multiclass(job, chosen, targets)
        return Setup(loss=loss, facts={"balanced": balanced, **facts})
    w_pos, w_neg = balanced_weights(targets.double().mean(0))
    w_pos, w_neg = torch.where(chosen, w_pos, 1.0), torch.where(chosen, w_neg, 1.0)
    w_pos, w_neg = w_pos.float().to(job.device), w_neg.float().to(job.device)
    targets = targets.to(job.device)

    def loss(module: nn.Module, inputs: Tensor, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        y = targets[batch["index"].to(targets.device)]
        return {"loss": balanced_euclidean_loss(module(inputs), y, w_pos, w_neg)}

    return Setup(
        loss=loss,
        facts={
            "balanced": balanced,
            "weights_positive": dict(zip(names, w_pos.tolist(), strict=True)),
            "weights_negative": dict(zip(names, w_neg.tolist(), strict=True)),
        },
    )


def _multiclass(job: Job, chosen: Tensor, classes: Tensor) -> tuple[Loss, dict[str, Any]]:
    """A multiclass head's loss and facts: cross-entropy over the class label, each image weighted
    by its class's eq. 6 weight (chosen classes; the others 1)."""
    names = job.model.spec.attributes
    counts = torch.bincount(classes, minlength=len(names))
    weight = torch.where(chosen, balanced_class_weights(counts), 1.0)
    device_weight, classes = weight.float().to(job.device), classes.to(job.device)

    def loss(module: nn.Module, inputs: Tensor, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        y = classes[batch["index"].to(classes.device)]
        ce = F.cross_entropy(module(inputs).float(), y, weight=device_weight, reduction="none")
        return {"loss": ce}

    return loss, {
        "class_counts": dict(zip(names, counts.tolist(), strict=True)),
        "class_weights": dict(zip(names, weight.tolist(), strict=True)),
    }


RECIPE = Recipe(
    name="affact-b",
    summary="balanced Euclidean loss with per-attribute class weights (binary-CAM paper, AFFACT-b)",
    defaults=Defaults(
        optimizer="sgd", lr=0.003, momentum=0.9, batch_size=64, epochs=1, clip_grad_norm=5.0
    ),
    add_arguments=add_arguments,
    prepare=prepare,
)
