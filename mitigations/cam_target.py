"""Which score a recipe's Grad-CAM explains (``--cam-target``), one vocabulary for every recipe:
``label`` the labelled class (z for a positive image, -z for a negative one, as the Crayon
authors' code), ``predicted`` the predicted class (|z|, as the gate measures), ``positive`` the
output itself (z). A multiclass head's map is always its class's logit (``positive``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pytest_biascheck.errors import BiascheckError

CAM_TARGETS = ("label", "predicted", "positive")


def add_cam_target(parser: Any, default: str) -> None:
    """The ``--cam-target`` option, unset meaning ``default`` (a multiclass head: positive)."""
    parser.add_argument(
        "--cam-target",
        choices=CAM_TARGETS,
        default=None,
        help="score the maps explain: the labelled class (label), the predicted class |z| "
        f"(predicted, as the gate measures) or z itself (positive); unset: {default} "
        "(a multiclass head: positive, its class's logit)",
    )


def resolve_cam_target(value: str | None, default: str, head: str) -> str:
    """The map target of a run: ``value``, else ``default``; always positive for a multiclass
    head (refusing label and predicted, which flip the sign of a binary output)."""
    if head == "multiclass":
        if value not in (None, "positive"):
            raise BiascheckError(
                f"--cam-target {value} applies to binary outputs; a multiclass head's map is its "
                "class's logit: leave --cam-target unset or pass positive"
            )
        return "positive"
    return value or default


def score_sign(logits: Tensor, labels: Tensor | None, target: str) -> Tensor:
    """+1 or -1 per image: the sign that turns an output's logit z into the map's score (labels
    of that output are needed only for ``label``)."""
    if target == "label":
        return labels.to(logits.dtype) * 2 - 1
    if target == "predicted":
        return torch.where(logits >= 0, 1.0, -1.0).to(logits.dtype)
    if target == "positive":
        return torch.ones_like(logits)
    raise ValueError(f"target must be one of {CAM_TARGETS}, got {target!r}")


def signed_cams(raw: Tensor, sign: Tensor) -> Tensor:
    """Grad-CAM ``[B, h, w]`` of the score ``sign * z`` from the un-rectified map ``raw`` of z:
    Grad-CAM before its ReLU is linear in the score, so flipping the score flips the map."""
    return (raw * sign.to(raw.dtype)[:, None, None]).clamp_min(0)
