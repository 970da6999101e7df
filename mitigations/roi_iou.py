"""ROI-IoU: fine-tune a face-attribute model to look at a chosen region, with
``Loss = wa * BCE + wg * IoU loss`` and ``IoU loss = -ln(|G ∩ S| / |G ∪ S|)`` (eq. 1-2), where G is
the attribute's Grad-CAM at the target layer above 0.5 and S the region on the CAM grid. The BCE
is the paper's "combined" BCE: summed over the model's attributes (a mean would shrink the guided
attribute's own term by the number of outputs and let the IoU term trade its accuracy away).

The paper's G is a hard set: whether a cell belongs to it has no gradient. Two variants:

- ``soft`` (default): G = sigmoid((cam - 0.5) / tau), a smooth step at the paper's threshold. Every
  cell gets a gradient, so attention is also pulled into region cells the model does not look at
  yet, which is the case the recipe exists for.
- ``hard``: G = cam where cam > 0.5, else 0 (the thresholded map as a mask times the map values,
  a straight-through reading of eq. 2). Gradients reach only cells already above the threshold:
  it can push attention out of wrong cells but never pull a region cell below 0.5 up, so it
  depends on the attention already touching the region. On the biased fixture both work, soft a
  little better (docs/mitigations.md).

S is a region of the data's part maps or, asked for as ``box:NAME``, one of the ten template
rectangles (``data.regions.TEMPLATE_BOXES``), resolved as the gate resolves regions, brought to the CAM grid exactly as the gate's mask score does
(``metrics.maps.mask_to_cam``: antialiased bilinear, divided by its maximum). The IoU uses fuzzy
set operations: |G ∩ S| = sum(G S), |G ∪ S| = sum(G + S - G S). Images whose region is empty add
no IoU loss.

For a multiclass head the attribute is one of its classes, G is the Grad-CAM of that class's logit
and the attribute loss is the cross-entropy over the class label.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mitigations.cam_target import add_cam_target, resolve_cam_target, score_sign, signed_cams
from mitigations.recipe import Defaults, Job, Recipe, Setup, output_index, training_targets
from pytest_biascheck.cam import gradcam_differentiable, normalise_maps
from pytest_biascheck.data.base import BiasDataset
from pytest_biascheck.data.regions import (
    BOX_PREFIX,
    TEMPLATE_BOXES,
    resolve_region,
    template_box_mask,
)
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.evaluate import Results
from pytest_biascheck.metrics.maps import mask_to_cam

THRESHOLD = 0.5


def region_on_grid(
    kind: str, name: str, batch: Mapping[str, Tensor], data: BiasDataset, grid: tuple[int, int]
) -> Tensor:
    """The region S ``[B, h, w]`` in [0, 1] on the CAM grid: a template box's cells, or a mask
    region brought to the grid as the gate's mask score does (zero where the region is absent)."""
    images = batch["image"]
    if kind == "box":
        box = template_box_mask(name, *grid).to(images.device, torch.float32)
        return box.expand(images.shape[0], -1, -1)
    index = data.region_names.index(name)
    return mask_to_cam(batch["masks"][:, index : index + 1], grid)[:, 0]


def iou_loss(
    cam: Tensor, region: Tensor, variant: str = "soft", tau: float = 0.1, eps: float = 1e-6
) -> Tensor:
    """Per-image ``-ln(|G ∩ S| / |G ∪ S|)`` for min-max normalised maps ``cam [B, h, w]`` and
    regions ``region [B, h, w]``; ``variant`` "soft" or "hard" (see the module docstring)."""
    if variant == "soft":
        g = torch.sigmoid((cam - THRESHOLD) / tau)
    elif variant == "hard":
        g = cam * (cam > THRESHOLD)
    else:
        raise ValueError(f"variant must be 'soft' or 'hard', got {variant!r}")
    inter = (g * region).sum((-2, -1))
    union = (g + region - g * region).sum((-2, -1))
    return -torch.log((inter + eps) / (union + eps))


def e1_e2(results: Results, attribute: str, other: str) -> dict[str, Any]:
    """The paper's evaluation of a pair (a, b): accuracy on a in E1 = a ∩ b and E2 = a ∩ ¬b (the
    images with the attribute, with and without its co-occurring one); NaN for an empty set."""
    y = results.label(attribute) == 1
    correct = results.predicted(attribute) == results.label(attribute)
    kind = "y" if f"y:{other}" in results.frame else "g"
    b = np.asarray(results.column(kind, other)) > 0.5
    out: dict[str, Any] = {"attribute": attribute, "pair": other}
    for name, members in (("E1", y & b), ("E2", y & ~b)):
        out[name] = float(correct[members].mean()) if members.any() else float("nan")
        out[f"{name}_n"] = int(members.sum())
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The paper's loss weights and our choice of IoU variant."""
    parser.add_argument("--attribute", required=True, help="attribute whose attention to guide")
    parser.add_argument(
        "--region",
        required=True,
        help="where it should look: a region of the data's part maps (e.g. mouth) or a template "
        f"box ({', '.join(BOX_PREFIX + b for b in TEMPLATE_BOXES)})",
    )
    parser.add_argument(
        "--wa",
        type=float,
        default=1.0,
        help="weight of the attribute loss (BCE; cross-entropy for a multiclass head)",
    )
    parser.add_argument("--wg", type=float, default=5.0, help="weight of the Grad-CAM IoU loss")
    parser.add_argument(
        "--iou",
        choices=("soft", "hard"),
        default="soft",
        help="soft: G = sigmoid((cam-0.5)/tau); hard: G = cam where cam > 0.5, else 0 (the map "
        "thresholded at 0.5; only cells already above 0.5 get gradients)",
    )
    parser.add_argument("--tau", type=float, default=0.1, help="temperature of the soft step")
    add_cam_target(parser, "predicted")
    parser.add_argument(
        "--pair",
        default=None,
        help="co-occurring attribute b for the E1/E2 evaluation; unset: the first protected group",
    )


def prepare(args: argparse.Namespace, job: Job) -> Setup:
    """Check attribute, region and layer, then build the combined loss."""
    output = output_index(job.model, args.attribute)
    layer = job.model.spec.target_layer
    if layer is None:
        raise BiascheckError(
            f"model {job.model.name} names no target layer; set task.target_layer in the checkpoint"
        )
    if args.tau <= 0:
        raise BiascheckError(f"--tau must be positive, got {args.tau}")
    kind, name = resolve_region(args.region, job.train_data.region_names, "--region")
    head = job.model.spec.head
    target = resolve_cam_target(args.cam_target, "predicted", head)
    targets = training_targets(job).to(job.device)
    data = job.train_data

    def loss(module: nn.Module, inputs: Tensor, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        logits, raw = gradcam_differentiable(
            module, inputs, layer, output, target="positive", relu=False, normalize=None
        )
        y = targets[batch["index"].to(targets.device)]
        label = None if head == "multiclass" else y[:, output]
        sign = score_sign(logits[:, output].detach(), label, target)
        cam = normalise_maps(signed_cams(raw, sign), "minmax")
        if head == "multiclass":
            task = F.cross_entropy(logits.float(), y, reduction="none")
        else:
            task = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none").sum(1)
        region = region_on_grid(kind, name, batch, data, tuple(cam.shape[-2:]))
        iou = iou_loss(cam.float(), region, args.iou, args.tau) * (region.sum((-2, -1)) > 0)
        parts = {"ce" if head == "multiclass" else "bce": task, "iou": iou}
        return {"loss": args.wa * task + args.wg * iou, **parts}

    pair = args.pair or next((g for g in job.scope.protected if g != args.attribute), None)
    return Setup(
        loss=loss,
        facts={"region": {"kind": kind, "name": name}, "pair": pair, "cam_target": target},
        measure=None
        if pair is None
        else lambda results: {"e1_e2": e1_e2(results, args.attribute, pair)},
        protected=() if pair is None else (pair,),
    )


RECIPE = Recipe(
    name="roi-iou",
    summary="BCE + IoU loss between the thresholded Grad-CAM and a chosen face region (ROI-IoU)",
    defaults=Defaults(
        optimizer="sgd", lr=0.01, momentum=0.9, batch_size=256, epochs=1, clip_grad_norm=1.0
    ),
    add_arguments=add_arguments,
    prepare=prepare,
)
