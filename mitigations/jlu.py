"""JLU, joint learning and unlearning (Alvi et al., "Turning a Blind Eye"): secondary heads learn
to predict each spurious variation from the features, and a confusion loss changes the features
until those heads can do no better than uniform, while the primary head keeps learning its task.

Features are the input of the model's last ``nn.Linear`` (the primary head), as for the gate's
leakage probe; the secondary heads are linear classifiers on them, trained alongside but not saved.
Per image, with inverse-frequency class weights on both classification losses (section 5.5):

- ``L_p``: weighted BCE of the primary attribute(s) (``--attribute`` lists them; the model's other
  outputs are not trained: features blind to the spurious variation cannot keep predicting it,
  nor what goes with it, such as the other hair colours); for a multiclass head, the weighted
  softmax cross-entropy over the class label (``--attribute`` then names classes of the head);
- ``L_s = sum_m beta * CE_m``: eq. 5, softmax cross-entropy of head m;
- ``L_conf = 1/M sum_m -1/K_m sum_k log p_mk``: eq. 2 and 4, cross-entropy to uniform, minimal
  (``log K_m``) at uniform outputs. ``--confusion kl`` uses ``KL(p || U) = log K_m - H(p)`` (the
  paper's "KL between the softmax output and a uniform distribution"; the other direction,
  ``KL(U || p)``, is the cross-entropy minus a constant and trains identically).

The paper alternates: minimise ``L_s`` over the heads with the features fixed, then
``L_p + alpha * L_conf`` over the network with the heads fixed (Algorithm 1). The training loop
takes one optimiser step per global batch, so the alternation is one backward of
``L_p + L_s + alpha * L_conf`` in which ``L_s`` sees detached features (it reaches only the heads)
and ``L_conf`` sees the heads' weights detached (it reaches only the network). Each step therefore
moves the heads by one step on ``L_s`` at the current features and the network by one step on
``L_p + alpha * L_conf`` against the current heads; the network's next step faces the updated
heads. This was chosen over two optimiser phases per step because it needs one forward pass and
leaves the loop's guarantees (micro-batches, processes and resume give the same weights) as they
are; it differs from Algorithm 1 only in that both players' steps of iteration t are taken from
the same state (an O(lr) difference). The paper's first inner loop, "minimise ``L_s`` until
converged", is run in full: before training, the heads are fitted to the parent's features of up
to ``--warm-start`` training images (the leakage probe's L-BFGS fit, unweighted); later ones are
one step each, at the paper's 10x learning rate of classification layers.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from mitigations.recipe import (
    Defaults,
    Job,
    Recipe,
    Setup,
    group_values,
    is_multiclass,
    training_targets,
)
from pytest_biascheck.data.base import BiasDataset
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.evaluate import Results
from pytest_biascheck.metrics.leakage import fit_probe, percent_unlearned
from pytest_biascheck.model import ModelSpec
from pytest_biascheck.planning import group_levels

CONFUSION = ("ce", "kl")
#: ``--freeze conv``: every parameter outside ``nn.Linear`` layers (the paper froze conv1-conv5).
CONV = "conv"


def class_weights(counts: Tensor) -> Tensor:
    """Inverse relative class frequency ``n / (K * n_k)`` over the last axis of class counts
    (mean weight 1 over the data; K counts the classes present); an absent class gets 1 (unused)."""
    counts = counts.double()
    present = counts > 0
    k = present.sum(-1, keepdim=True).clamp_min(1)
    weights = counts.sum(-1, keepdim=True) / (k * counts.clamp_min(1))
    return torch.where(present, weights, torch.ones_like(weights)).float()


def confusion_loss(logits: Tensor, valid: Tensor, variant: str = "ce") -> Tensor:
    """Per image and head ``[B, M]`` from logits ``[B, M, K]`` whose classes ``valid [M, K]`` exist:
    ``"ce"`` the cross-entropy to uniform ``-1/K sum_k log p_k`` (eq. 2), ``"kl"`` ``KL(p || U)``."""
    log_p = torch.log_softmax(logits.masked_fill(~valid, -math.inf), -1).masked_fill(~valid, 0.0)
    k = valid.sum(-1).to(log_p.dtype)
    if variant == "ce":
        return -log_p.sum(-1) / k
    if variant == "kl":
        return (log_p.exp() * log_p).sum(-1) + k.log()
    raise ValueError(f"variant must be one of {CONFUSION}, got {variant!r}")


def secondary_loss(logits: Tensor, valid: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """Class-weighted softmax cross-entropy ``[B, M]`` of each head (eq. 1) for ``targets [B, M]``
    and per-class ``weights [M, K]``."""
    log_p = torch.log_softmax(logits.masked_fill(~valid, -math.inf), -1)
    picked = log_p.gather(-1, targets[..., None])[..., 0]
    heads = torch.arange(targets.shape[1], device=targets.device)
    return -weights[heads, targets] * picked


class SecondaryHeads(nn.Module):
    """One linear classifier per spurious variation on the features, held as one ``nn.Linear``
    whose outputs are ``[M, K]`` blocks (K = the most levels; missing classes are masked)."""

    def __init__(self, in_features: int, levels: Sequence[int]) -> None:
        super().__init__()
        self.levels = tuple(levels)
        k = max(self.levels)
        self.linear = nn.Linear(in_features, len(self.levels) * k)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        valid = torch.arange(k)[None, :] < torch.tensor(self.levels)[:, None]
        self.register_buffer("valid", valid, persistent=False)

    def forward(self, features: Tensor, detach_weights: bool = False) -> Tensor:
        """Logits ``[B, M, K]``; ``detach_weights`` lets gradients reach only the features."""
        weight, bias = self.linear.weight, self.linear.bias
        if detach_weights:
            weight, bias = weight.detach(), bias.detach()
        return F.linear(features, weight, bias).unflatten(-1, self.valid.shape)

    def set_head(self, m: int, weight: Tensor, bias: Tensor) -> None:
        """Head ``m``'s weights ``[D, K_m]`` and bias ``[K_m]`` (e.g. a fitted probe)."""
        k, rows = self.valid.shape[1], self.levels[m]
        with torch.no_grad():
            self.linear.weight[m * k : m * k + rows] = weight.T.to(self.linear.weight)
            self.linear.bias[m * k : m * k + rows] = bias.to(self.linear.bias)


def primary_head(module: nn.Module, spec: ModelSpec) -> str:
    """Name of the ``nn.Linear`` whose output is the model's output (its input: the features)."""
    names = {m: name for name, m in module.named_modules() if isinstance(m, nn.Linear)}
    calls: list[tuple[str, Tensor]] = []
    handles = [
        m.register_forward_hook(lambda m, a, out: calls.append((names[m], out))) for m in names
    ]
    training = module.training
    device = next(module.parameters()).device
    try:
        with torch.no_grad():
            output = module.eval()(torch.zeros(1, *spec.input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
        module.train(training)
    if not calls or calls[-1][1] is not output:
        raise BiascheckError(
            "jlu needs a model whose outputs come straight from an nn.Linear layer (the primary "
            "head, whose input are the features); choose another recipe for this architecture"
        )
    return calls[-1][0]


def features_and_logits(
    module: nn.Module, head: nn.Module, inputs: Tensor
) -> tuple[Tensor, Tensor]:
    """One forward pass: the head's input ``[B, D]`` (features, with their graph) and the logits."""
    captured: list[Tensor] = []
    handle = head.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    try:
        logits = module(inputs)
    finally:
        handle.remove()
    return captured[-1].flatten(1), logits


def freeze(module: nn.Module, names: Sequence[str], head: str) -> list[str]:
    """Stop training the parameters under the named modules (``conv``: all outside nn.Linear);
    returns the frozen parameter names. An unknown name, or nothing left before the head: error."""
    modules = dict(module.named_modules())
    unknown = [n for n in names if n != CONV and n not in modules]
    if unknown:
        raise BiascheckError(
            f"--freeze {' '.join(unknown)}: no such module; choose from {CONV}, "
            f"{', '.join(n for n in modules if n and '.' not in n)}"
        )
    linear = {
        f"{n}.{p}"
        for n, m in modules.items()
        if isinstance(m, nn.Linear)
        for p in ("weight", "bias")
    }
    frozen = []
    for name, p in module.named_parameters():
        if any(name.startswith(f"{n}.") for n in names) or (CONV in names and name not in linear):
            p.requires_grad_(False)
            frozen.append(name)
    trunk = [
        n for n, p in module.named_parameters() if p.requires_grad and not n.startswith(f"{head}.")
    ]
    if not trunk:
        raise BiascheckError(
            f"--freeze {' '.join(names)} leaves no layer before the primary head {head!r} to train, "
            "so nothing can be unlearned; freeze fewer layers"
        )
    return frozen


def spurious_reader(data: BiasDataset, names: Sequence[str]) -> Callable[[Mapping], Tensor]:
    """A function giving a batch's values ``[B, M]`` of the spurious variations ``names``, each a
    label or a group of ``data`` (one gather per source, then one reorder)."""
    labels = [data.attributes.index(n) for n in names if n in data.attributes]
    groups = [data.group_names.index(n) for n in names if n not in data.attributes]
    stacked = [n for n in names if n in data.attributes] + [
        n for n in names if n not in data.attributes
    ]
    order = [stacked.index(n) for n in names]

    def read(batch: Mapping[str, Tensor]) -> Tensor:
        parts = [batch["labels"][:, labels].long()]
        if groups:
            parts.append(batch["groups"][:, groups].long())
        return torch.cat(parts, 1)[:, order]

    return read


def loss_weights(
    primary: Tensor, targets: Tensor, levels: Sequence[int], classes: int = 0
) -> tuple[Tensor, Tensor]:
    """The paper's inverse-frequency class weights in the training data: for the primary task,
    ``[P, 2]`` (negative, positive) from its labels ``primary [n, P]``, or ``[K]`` from the true
    classes ``primary [n]`` of a multiclass head of ``classes`` classes; ``[M, K]`` for the
    secondary heads from their ``targets [n, M]``."""
    if classes:
        primary_weights = class_weights(torch.bincount(primary, minlength=classes))
    else:
        positives = primary.sum(0)
        primary_weights = class_weights(torch.stack([len(primary) - positives, positives], -1))
    secondary = [
        F.pad(class_weights(torch.bincount(targets[:, m], minlength=k)), (0, max(levels) - k))
        for m, k in enumerate(levels)
    ]
    return primary_weights, torch.stack(secondary)


def warm_start(heads: SecondaryHeads, job: Job, head: nn.Module, targets: Tensor, n: int) -> float:
    """Fit every head to convergence on the parent's features of the first ``n`` training images
    (Algorithm 1's first inner loop); returns the heads' mean training accuracy there."""
    module, spec = job.model.module.to(job.device).eval(), job.model.spec
    loader = DataLoader(Subset(job.train_data, range(n)), batch_size=256)
    with torch.no_grad():
        features = torch.cat(
            [features_and_logits(module, head, spec.normalize(b["image"].to(job.device)))[0]
             for b in loader]
        ).cpu()  # fmt: skip
    hits = []
    for m, levels in enumerate(heads.levels):  # a few spurious variations, once per run
        weight, bias = fit_probe(features, targets[:n, m], levels)
        heads.set_head(m, weight, bias)
        predicted = (features.double() @ weight + bias).argmax(1)
        hits.append((predicted == targets[:n, m]).double().mean())
    return float(torch.stack(hits).mean())


def measure(results: Results, primary: Sequence[str], spurious: Sequence[str]) -> dict[str, Any]:
    """The paper's measures on one evaluation: leakage probe accuracy (and chance) per spurious
    variation, and for each primary attribute across it the KL between the groups' prediction
    distributions (largest ordered pair), the accuracy gap, equalized odds and worst-group accuracy."""
    out: dict[str, Any] = {"leakage": {}, "groups": {}}
    if "feature_leakage" in results.tables:
        table = results.tables["feature_leakage"].set_index("group")
        for name in spurious:
            if name in table.index:
                out["leakage"][name] = {
                    "accuracy": float(table.loc[name, "accuracy"]),
                    "chance": float(table.loc[name, "chance"]),
                }
    summary, divergence = results.tables["group_summary"], results.tables.get("divergence")
    for a in primary:
        for g in spurious:
            rows = summary[(summary["attribute"] == a) & (summary["group"] == g)]
            if rows.empty:
                continue
            stats = dict(zip(rows["stat"], rows["value"].astype(float), strict=True))
            kl = divergence[
                (divergence["attribute"] == a)
                & (divergence["group"] == g)
                & (divergence["label"] < 0)
            ]["kl"]  # the paper's KL: over all images
            out["groups"][f"{a}-{g}"] = {
                "kl": float(kl.max()) if len(kl) else float("nan"),
                **{
                    k: stats[k]
                    for k in ("accuracy_gap", "equalized_odds_difference", "worst_group_accuracy")
                },
            }
    return out


def compare(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """The paper's "% unlearned" of each spurious variation: how much of the probe's accuracy
    above chance before the recipe is gone after it."""
    return {
        "percent_unlearned": {
            name: percent_unlearned(
                after["leakage"][name]["accuracy"], old["accuracy"], old["chance"]
            )
            for name, old in before["leakage"].items()
            if name in after["leakage"]
        }
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The primary task, the spurious variations to unlearn, and the paper's loss settings."""
    parser.add_argument("--attribute", nargs="+", required=True, help="primary attribute(s)")
    parser.add_argument(
        "--spurious",
        nargs="+",
        required=True,
        help="spurious variation(s) to unlearn: labels or groups",
    )
    parser.add_argument("--alpha", type=float, default=0.1, help="weight of the confusion loss")
    parser.add_argument("--beta", type=float, default=1.0, help="weight of each secondary loss")
    parser.add_argument(
        "--confusion",
        choices=CONFUSION,
        default="ce",
        help="cross-entropy to uniform (eq. 2) or KL(p || uniform)",
    )
    parser.add_argument(
        "--head-lr-factor",
        type=float,
        default=10.0,
        help="learning-rate factor of the primary and secondary heads (the paper's 10x)",
    )
    parser.add_argument(
        "--freeze",
        nargs="+",
        default=[],
        metavar="MODULE",
        help=f"modules not to train (e.g. stem layer1); {CONV}: everything outside nn.Linear "
        "(the paper's frozen conv1-5, for models with hidden linear layers)",
    )
    parser.add_argument(
        "--warm-start",
        type=int,
        default=1024,
        metavar="N",
        help="fit the secondary heads on the parent's features of N training images first (0: off)",
    )
    parser.add_argument(
        "--no-class-weights",
        dest="class_weights",
        action="store_false",
        help="plain losses instead of the paper's inverse-frequency class weights",
    )


def prepare(args: argparse.Namespace, job: Job) -> Setup:
    """Check the attributes and variations, build the secondary heads and the joint loss."""
    data, model = job.train_data, job.model
    primary, spurious = list(dict.fromkeys(args.attribute)), list(dict.fromkeys(args.spurious))
    multiclass = is_multiclass(model)
    labelled = [a for a in model.spec.attributes if multiclass or a in data.attributes]
    for name in primary:
        if name not in labelled:
            raise BiascheckError(
                f"--attribute {name!r} must be predicted by {model.name} and labelled in the "
                f"training data; choose from {', '.join(labelled)}"
            )
    both = sorted(set(model.spec.attributes if multiclass else primary) & set(spurious))
    if both:
        what = "classes of the model" if multiclass else "both --attribute and --spurious"
        raise BiascheckError(f"{', '.join(both)} cannot be {what}; unlearn another variation")
    if args.alpha < 0 or args.beta < 0 or args.head_lr_factor <= 0 or args.warm_start < 0:
        raise BiascheckError("--alpha, --beta and --warm-start must be >= 0, --head-lr-factor > 0")
    targets = torch.stack([group_values(data, name) for name in spurious], 1)
    levels = group_levels(data, spurious)
    levels = [max(levels[n], int(targets[:, m].max()) + 1) for m, n in enumerate(spurious)]
    module, spec = model.module, model.spec
    head_name = primary_head(module, spec)
    head = module.get_submodule(head_name)
    frozen = freeze(module, args.freeze, head_name)
    heads = SecondaryHeads(head.in_features, levels)
    n_warm = min(args.warm_start, len(data))
    warm = warm_start(heads, job, head, targets, n_warm) if n_warm else None

    outputs = torch.tensor([spec.attributes.index(a) for a in primary])
    task = training_targets(job)
    task = task if multiclass else task[:, outputs]
    weights = loss_weights(task, targets, levels, len(spec.attributes) if multiclass else 0)
    if not args.class_weights:
        weights = tuple(torch.ones_like(w) for w in weights)
    primary_weights, secondary_weights = (w.to(job.device) for w in weights)
    spurious_of = spurious_reader(data, spurious)
    p_index = torch.arange(len(primary), device=job.device)
    outputs, task = outputs.to(job.device), task.to(job.device)

    def loss(net: nn.Module, inputs: Tensor, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        features, logits = features_and_logits(net, head, inputs)
        y = task[batch["index"].to(task.device)]
        if multiclass:
            l_p = F.cross_entropy(logits.float(), y, weight=primary_weights, reduction="none")
        else:
            bce = F.binary_cross_entropy_with_logits(
                logits[:, outputs].float(), y, reduction="none"
            )
            l_p = (primary_weights[p_index, y.long()] * bce).mean(1)
        s = spurious_of(batch)
        fixed = heads(features.detach().float())
        l_s = args.beta * secondary_loss(fixed, heads.valid, s, secondary_weights).sum(1)
        l_conf = confusion_loss(
            heads(features.float(), detach_weights=True), heads.valid, args.confusion
        ).mean(1)
        return {
            "loss": l_p + l_s + args.alpha * l_conf,
            "primary": l_p,
            "secondary": l_s,
            "confusion": l_conf,
            "secondary_accuracy": (fixed.argmax(-1) == s).float().mean(1),
        }

    return Setup(
        loss=loss,
        extra=heads,
        lr_factors={head_name: args.head_lr_factor, "extra": args.head_lr_factor},
        facts={
            "primary_head": head_name,
            "features": head.in_features,
            "spurious_levels": dict(zip(spurious, levels, strict=True)),
            "primary_class_weights": dict(
                zip(
                    spec.attributes if multiclass else primary,
                    primary_weights.tolist(),
                    strict=True,
                )
            ),
            "secondary_class_weights": {
                n: secondary_weights[m, :k].tolist()
                for m, (n, k) in enumerate(zip(spurious, levels, strict=True))
            },
            "frozen": frozen,
            "warm_start": {"images": n_warm, "accuracy": warm},
        },
        measure=lambda results: measure(results, primary, spurious),
        compare=compare,
        protected=tuple(spurious),
        checks=("leakage", "feature_leakage", "prediction_kl"),
    )


RECIPE = Recipe(
    name="jlu",
    summary="secondary heads + confusion loss unlearn spurious variations from the features (JLU)",
    defaults=Defaults(optimizer="sgd", lr=1e-4, momentum=0.9, batch_size=64, epochs=1),
    add_arguments=add_arguments,
    prepare=prepare,
)
