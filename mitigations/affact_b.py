"""AFFACT-b (binary-CAM paper, eq. 5-6): fine-tune with a balanced Euclidean loss whose
per-attribute class weights come from the training label frequencies, so that the minority class
of each attribute counts as much as the majority class.

The paper reuses AFFACT's network and schedule without stating optimiser settings; the defaults
here (SGD, lr 0.003, momentum 0.9, batch 64, one epoch, gradient norm clipped to 5) are the
project's, all overridable. The clipping matters when fine-tuning a BCE-trained model: its logits
are far from the Euclidean targets ±1, and the first steps' gradients would otherwise diverge.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mitigations.recipe import Defaults, Job, Recipe, Setup, dataset_labels, label_columns


def balanced_weights(positive_rate: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 6: ``(w_m(+1), w_m(-1))`` per attribute from the share ``p_m`` of positive training
    labels; the majority class gets weight p_min/p_maj, the minority class 1. A class absent from
    the data (p_m = 0 or 1) never receives a weight, so its entry is set to 1."""
    p = positive_rate.double()
    majority_positive = p > 0.5
    w_pos = torch.where(majority_positive, 1.0, (1 - p) / p)
    w_neg = torch.where(majority_positive, p / (1 - p), 1.0)
    return w_pos.nan_to_num(1.0, 1.0), w_neg.nan_to_num(1.0, 1.0)


def balanced_euclidean_loss(logits: Tensor, labels: Tensor, w_pos: Tensor, w_neg: Tensor) -> Tensor:
    """Per-image term of eq. 5, ``sum_m w_m(t_m) (z_m - t_m)^2`` with targets ``t = 2y - 1``;
    the mean over images is J_w."""
    targets = 2 * labels.to(logits.dtype) - 1
    weights = torch.where(labels > 0.5, w_pos, w_neg).to(logits.dtype)
    return (weights * (logits - targets).square()).sum(-1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """AFFACT-b has no options beyond the shared training ones."""


def prepare(args: argparse.Namespace, job: Job) -> Setup:
    """Weights from the training labels (eq. 6) and the balanced Euclidean loss over all outputs."""
    columns = label_columns(job.model, job.train_data)
    labels = dataset_labels(job.train_data)[:, columns]
    rate = labels.double().mean(0)
    w_pos, w_neg = balanced_weights(rate)
    w_pos, w_neg = w_pos.float().to(job.device), w_neg.float().to(job.device)
    columns = columns.to(job.device)

    def loss(module: nn.Module, inputs: Tensor, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        per_image = balanced_euclidean_loss(
            module(inputs), batch["labels"][:, columns], w_pos, w_neg
        )
        return {"loss": per_image}

    names = job.model.spec.attributes
    return Setup(
        loss=loss,
        facts={
            "weights_positive": dict(zip(names, w_pos.tolist(), strict=True)),
            "weights_negative": dict(zip(names, w_neg.tolist(), strict=True)),
        },
    )


RECIPE = Recipe(
    name="affact-b",
    summary="balanced Euclidean loss with per-attribute class weights (binary-CAM paper, AFFACT-b)",
    defaults=Defaults(
        optimizer="sgd", lr=0.003, momentum=0.9, batch_size=64, epochs=1, clip_grad_norm=5.0
    ),
    add_arguments=add_arguments,
    prepare=prepare,
)
