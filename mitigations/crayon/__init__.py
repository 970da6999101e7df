"""Crayon (Correcting Reasoning with Annotations of Yes Or No): fine-tune a model from yes / no
answers about its own explanations.

- ``attention``: each training image's Grad-CAM O of the original model is judged relevant (yes),
  irrelevant (no) or unclear (maybe). Loss
  ``w_cls * BCE + w_yes / #yes * L_rel + w_no / #no * L_irr`` with ``L_rel = sum N (1 - O)``
  over yes images and ``L_irr = sum N O`` over no images (eq. 1-4), N the refined model's
  differentiable Grad-CAM, both maps divided by their maximum per image
  (``(M + 1e-10) / max(M + 1e-10)``, the authors' code). ``--variant waterbirds`` divides each
  image's terms by ``sum(1 - O)`` and ``sum(O)`` (the authors' Waterbirds solver).
- ``pruning``: each channel of the target layer (the paper's penultimate neurons) is shown as its
  top-k activating patches; a channel most of whose patches are judged irrelevant is pruned, and
  only the head is retrained with BCE.
- ``pruning+attention``: prune first, then fine-tune everything with the attention loss.

"CE" of the paper is the BCE of the guided attribute's output (the fixtures are multi-label
models; ``--bce all`` sums it over every output, which keeps the others); for a multiclass head it
is the cross-entropy over the class label, ``--attribute`` names a class and its maps are that
class's logit's. Maps score the labelled
class by default (the authors' ``explain_gradcam``: z for a positive, -z for a negative image).
Answers come from the annotation page (``python -m mitigations crayon annotate``) or, for
unattended runs, from the mask-based annotator of ``--simulate REGION``, which the report names
as simulated.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mitigations.cam_target import add_cam_target, resolve_cam_target, score_sign, signed_cams
from mitigations.crayon import answers as notes
from mitigations.crayon.explain import (
    Patches,
    loader,
    original_maps,
    patch_coverage,
    top_patches,
)
from mitigations.crayon.prune import cut, find_head, hold_pruned, prune_mask, train_only_head
from mitigations.recipe import (
    Defaults,
    Job,
    Recipe,
    Setup,
    is_multiclass,
    label_column,
    label_columns,
    output_index,
    training_targets,
)
from pytest_biascheck.cam import gradcam_differentiable
from pytest_biascheck.data.base import BiasDataset
from pytest_biascheck.errors import BiascheckError

MODES = ("attention", "pruning", "pruning+attention")
VARIANTS = ("celeba", "waterbirds")
#: Images per batch of the passes that explain the original model before training.
SCAN_BATCH = 128

#: The authors' settings (paper Sec. IV-C, scripts/, misc/training_config.md) by dataset, for the
#: attention modes and for pruning. Waterbirds pruning uses SGD on a summed CE; the loop averages
#: over the batch, so its lr is the paper's 5e-5 times the batch of 128.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "celeba": {
        "attention": dict(optimizer="adam", lr=1e-5, weight_decay=1e-4, batch_size=64,
                          epochs=10, w_yes=5e7, w_no=1e6, variant="celeba"),
        "pruning": dict(optimizer="adam", lr=5e-6, weight_decay=1e-4, batch_size=64, epochs=50),
    },
    "waterbirds": {
        "attention": dict(optimizer="adam", lr=5e-5, weight_decay=1e-4, batch_size=128,
                          epochs=10, w_yes=1e7, w_no=2e5, variant="waterbirds"),
        "pruning": dict(optimizer="sgd", momentum=0.0, lr=6.4e-3, weight_decay=1e-4,
                        batch_size=128, epochs=5),
    },
}  # fmt: skip


def preset_values(preset: str | None, mode: str) -> dict[str, Any]:
    """The option values preset ``preset`` gives in ``mode`` (none for no preset)."""
    if preset is None:
        return {}
    return PRESETS[preset]["pruning" if mode == "pruning" else "attention"]


class _PresetChoice(argparse.Action):
    """``--mode`` and ``--preset``: after either, every option the preset covers takes the preset's
    value unless it was given explicitly before (options after them always win)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, *_: Any):
        old = preset_values(namespace.preset, namespace.mode)
        setattr(namespace, self.dest, values)
        for dest, value in preset_values(namespace.preset, namespace.mode).items():
            current = getattr(namespace, dest)
            if current == parser.get_default(dest) or (dest in old and current == old[dest]):
                setattr(namespace, dest, value)


def max_normalise(maps: Tensor, eps: float = 1e-10) -> Tensor:
    """Each map ``[..., h, w]`` divided by its maximum, ``(M + eps) / max(M + eps)`` as the
    authors' code does (an all-zero map becomes all ones)."""
    shifted = maps + eps
    return shifted / shifted.amax((-2, -1), keepdim=True)


def attention_terms(new: Tensor, old: Tensor, variant: str = "celeba") -> tuple[Tensor, Tensor]:
    """Per-image ``(L_rel, L_irr)``: ``sum N (1 - O)`` and ``sum N O`` over the cells of the
    max-normalised maps; the Waterbirds variant divides them by ``sum(1 - O)`` and ``sum(O)``
    (0 where that sum is 0)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    n, o = max_normalise(new), max_normalise(old)
    relevance = (n * (1 - o)).sum((-2, -1))
    irrelevance = (n * o).sum((-2, -1))
    if variant == "waterbirds":
        relevance = _divide(relevance, (1 - o).sum((-2, -1)))
        irrelevance = _divide(irrelevance, o.sum((-2, -1)))
    return relevance, irrelevance


def _divide(part: Tensor, total: Tensor) -> Tensor:
    return torch.where(total > 0, part / torch.where(total > 0, total, 1.0), 0.0)


def per_answer_weights(codes: Tensor, w_yes: float, w_no: float) -> tuple[float, float]:
    """``w_yes / #yes`` and ``w_no / #no`` over all training annotations (a weight stays as it is
    when no image got that answer), as the authors' ``get_hfb``."""
    yes, no = int((codes == notes.YES).sum()), int((codes == notes.NO).sum())
    return w_yes / max(yes, 1), w_no / max(no, 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Mode, annotations (file or simulated), loss weights and the paper's presets."""
    parser.add_argument(
        "--mode", choices=MODES, default="attention", action=_PresetChoice,
        help="what the answers judge: saliency maps, neurons, or both (prune, then attention)",
    )  # fmt: skip
    parser.add_argument(
        "--preset", choices=tuple(PRESETS), default="celeba", action=_PresetChoice,
        help="the paper's settings for this mode on Biased CelebA or Waterbirds (optimiser, lr, "
        "weight decay, batch, epochs, w-yes, w-no, variant); options after it override it",
    )  # fmt: skip
    parser.add_argument("--attribute", required=True, help="the task output whose reasoning to fix")
    parser.add_argument(
        "--annotations", metavar="FILE", help="yes/no/maybe per map (crayon annotate --kind maps)"
    )
    parser.add_argument(
        "--neuron-annotations",
        metavar="FILE",
        help="yes/no/maybe per neuron patch (crayon annotate --kind neurons)",
    )
    parser.add_argument(
        "--simulate",
        metavar="REGION",
        help="unattended: answer from a mask region of the data (e.g. mouth, bird) where no file "
        "is given; the report names these answers as simulated",
    )
    parser.add_argument(
        "--simulate-yes", type=float, default=0.03,
        help="simulated map answer yes when the map's proportional energy in REGION is at least",
    )  # fmt: skip
    parser.add_argument(
        "--simulate-no", type=float, default=0.015,
        help="simulated map answer no when that energy is at most (maybe in between)",
    )  # fmt: skip
    parser.add_argument(
        "--patch-yes", type=float, default=0.25,
        help="simulated patch answer yes when REGION covers at least this share of its cell",
    )  # fmt: skip
    parser.add_argument(
        "--patch-no", type=float, default=0.05,
        help="simulated patch answer no when REGION covers at most this share (maybe between)",
    )  # fmt: skip
    parser.add_argument("--w-yes", type=float, default=5e7, help="weight of L_rel (before / #yes)")
    parser.add_argument("--w-no", type=float, default=1e6, help="weight of L_irr (before / #no)")
    parser.add_argument("--w-cls", type=float, default=1.0, help="weight of the BCE")
    parser.add_argument(
        "--bce", choices=("attribute", "all"), default="attribute",
        help="the paper's CE: BCE of --attribute only, or summed over every output the data "
        "labels (keeps the other outputs of a multi-label model); a multiclass head: the "
        "cross-entropy over the class label either way",
    )  # fmt: skip
    parser.add_argument(
        "--variant", choices=VARIANTS, default="celeba",
        help="celeba: sums over cells; waterbirds: each image's terms divided by sum(1-O), sum(O)",
    )  # fmt: skip
    add_cam_target(parser, "label")
    parser.add_argument(
        "--top-k", type=int, default=3, help="patches per neuron (pruning modes; the paper's 3)"
    )
    parser.add_argument(
        "--head-lr-factor", type=float, default=1.0,
        help="pruning+attention: the head trains at this times --lr, to re-fit the outputs "
        "that lost their pruned inputs (not in the paper: 1)",
    )  # fmt: skip


def _region(data: BiasDataset, region: str) -> int:
    if region not in data.region_names:
        have = ", ".join(data.region_names) or "none"
        raise BiascheckError(
            f"--simulate {region!r} is not a mask region of the training data; choose from {have}"
        )
    return data.region_names.index(region)


def _identity(job: Job, args: argparse.Namespace) -> dict[str, Any]:
    """What annotations must have been made for to be used in this run."""
    return {
        "attribute": args.attribute,
        "target": args.cam_target,
        "model": {"path": str(job.model.path), "sha256": job.model.sha256},
        "data": job.train_spec,
        "n_images": len(job.train_data),
    }


def map_answers(args: argparse.Namespace, job: Job, output: int, column: int | None) -> tuple:
    """``(O [n, h, w], codes [n], annotator)``: the original maps and one answer per training
    image, from ``--annotations`` or the simulated annotator."""
    data, model = job.train_data, job.model
    region = None if args.annotations else _region_or_ask(args, data, "--annotations FILE")
    maps, energy = original_maps(
        model.module, model.spec, data, output, column, target=args.cam_target,
        region=region, batch_size=SCAN_BATCH, device=job.device,
    )  # fmt: skip
    if region is not None:
        annotator = (
            f"simulated: proportional energy of O in {args.simulate!r} >= {args.simulate_yes} "
            f"yes, <= {args.simulate_no} no, else maybe"
        )
        return maps, notes.simulate(energy, args.simulate_yes, args.simulate_no), annotator
    path = Path(args.annotations)
    session = notes.load(path)
    notes.check_matches(session, path, {"kind": "maps", **_identity(job, args)}, range(len(data)))
    return maps, session.codes_for(range(len(data))), f"{session.annotator} ({path})"


def patch_items(patches: Patches) -> tuple[list[dict[str, Any]], Tensor]:
    """The distinct patches as annotation items (image, cell [row, col], the neurons showing it)
    and each neuron slot's item position ``[C, k]``."""
    distinct, slot = patches.unique()
    w = patches.grid[1]
    owners: list[list[int]] = [[] for _ in range(len(distinct))]
    for channel, positions in enumerate(slot.tolist()):
        for position in positions:
            owners[position].append(channel)
    items = [
        {"image": int(i), "cell": [int(c) // w, int(c) % w], "neurons": sorted(set(o))}
        for (i, c), o in zip(distinct.tolist(), owners, strict=True)
    ]
    return items, slot


def neuron_answers(args: argparse.Namespace, job: Job) -> tuple[Tensor, Tensor, str]:
    """``(pruned [C], patch codes [P], annotator)`` from ``--neuron-annotations`` or simulated."""
    data, model = job.train_data, job.model
    patches = top_patches(
        model.module, model.spec, data, args.top_k, batch_size=SCAN_BATCH, device=job.device
    )
    items, slot = patch_items(patches)
    if args.neuron_annotations:
        path = Path(args.neuron_annotations)
        session = notes.load(path)
        notes.check_matches(session, path, {"kind": "neurons", **_identity(job, args)}, items)
        codes = session.codes_for(items)
        annotator = f"{session.annotator} ({path})"
    else:
        region = _region_or_ask(args, data, "--neuron-annotations FILE")
        images = [item["image"] for item in items]
        cells = torch.tensor([r * patches.grid[1] + c for r, c in (i["cell"] for i in items)])
        masks = torch.cat([b["masks"][:, region] for b in loader(data, SCAN_BATCH, images)])
        coverage = patch_coverage(masks, cells, patches.grid)
        codes = notes.simulate(coverage, args.patch_yes, args.patch_no)
        annotator = (
            f"simulated: share of the patch's cell covered by {args.simulate!r} >= "
            f"{args.patch_yes} yes, <= {args.patch_no} no, else maybe"
        )
    return notes.neuron_pruned(codes[slot]), codes, annotator


def _region_or_ask(args: argparse.Namespace, data: BiasDataset, option: str) -> int:
    if args.simulate is None:
        raise BiascheckError(
            f"--mode {args.mode} needs answers: pass {option} (python -m mitigations crayon "
            "annotate) or --simulate REGION for the mask-based annotator"
        )
    return _region(data, args.simulate)


def _announce(kind: str, annotator: str, counts: dict[str, int]) -> None:
    """One line on stderr (first process only) naming where the answers came from, so a run on
    simulated answers is never mistaken for one on a person's."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"crayon: {kind} answers ({annotator}): {counts}", file=sys.stderr)


def _counts(codes: Tensor) -> dict[str, int]:
    return {name: int((codes == code).sum()) for name, code in notes.CODES.items() if name}


def prepare(args: argparse.Namespace, job: Job) -> Setup:
    """Explain the original model, collect the answers, prune if asked, build the loss."""
    output = output_index(job.model, args.attribute)
    spec, module, device = job.model.spec, job.model.module, job.device
    multiclass = is_multiclass(job.model)
    target = resolve_cam_target(args.cam_target, "label", spec.head)
    args = argparse.Namespace(**{**vars(args), "cam_target": target})
    column = classes = None
    if multiclass:
        classes = training_targets(job).to(device)
    else:
        column = label_column(job.train_data, args.attribute)
        outputs, columns = [output], torch.tensor([column])
        if args.bce == "all":
            outputs, columns = (
                list(range(len(spec.attributes))),
                label_columns(job.model, job.train_data),
            )
        columns = columns.to(device)
    if spec.target_layer is None:
        raise BiascheckError(
            f"model {job.model.name} names no target layer; set task.target_layer in the checkpoint"
        )
    if args.top_k < 1:
        raise BiascheckError(f"--top-k must be at least 1, got {args.top_k}")
    attention, pruning = args.mode != "pruning", args.mode != "attention"
    facts: dict[str, Any] = {
        "mode": args.mode, "preset": args.preset, "attribute": args.attribute, "bce": args.bce
    }  # fmt: skip
    module.to(device)
    mask = head = None
    lr_factors: dict[str, float] = {}
    if pruning:
        head = find_head(module, spec)
        pruned, patch_codes, annotator = neuron_answers(args, job)
        if bool(pruned.all()):
            raise BiascheckError(
                f"all {len(pruned)} neurons were judged irrelevant; nothing would be left to "
                f"predict {args.attribute} with: check the answers or the --patch-* thresholds"
            )
        mask = prune_mask(head, pruned, [output])
        hold_pruned(head, mask)
        if args.mode == "pruning":
            train_only_head(module, head)
        elif args.head_lr_factor != 1:
            ids = {id(p) for p in head.parameters}
            lr_factors = {
                n: args.head_lr_factor for n, p in module.named_parameters() if id(p) in ids
            }
        facts["neurons"] = {
            "annotator": annotator, "top_k": args.top_k, "patches": _counts(patch_codes),
            "pruned": int(pruned.sum()), "of": len(pruned),
            "pruned_channels": torch.nonzero(pruned)[:, 0].tolist(),
        }  # fmt: skip
        _announce("patch", annotator, facts["neurons"]["patches"])
    old = codes = None
    w_yes = w_no = 0.0
    if attention:
        old, codes, annotator = map_answers(args, job, output, column)
        w_yes, w_no = per_answer_weights(codes, args.w_yes, args.w_no)
        old, codes = old.to(device), codes.to(device)
        facts["maps"] = {
            "annotator": annotator, "answers": _counts(codes), "variant": args.variant,
            "cam_target": args.cam_target, "w_yes_per_image": w_yes, "w_no_per_image": w_no,
        }  # fmt: skip
        _announce("map", annotator, facts["maps"]["answers"])

    def loss(module: nn.Module, inputs: Tensor, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if mask is not None:
            cut(head, mask)
        labels = None if multiclass else batch["labels"][:, column].float()
        parts: dict[str, Tensor] = {}
        if old is None:
            logits = module(inputs)
        else:
            logits, raw = gradcam_differentiable(
                module, inputs, spec.target_layer, output, target="positive", relu=False,
                normalize=None,
            )  # fmt: skip
            logit = logits[:, output].detach().float()
            new = signed_cams(raw.float(), score_sign(logit, labels, target))
            index = batch["index"].to(old.device)
            relevance, irrelevance = attention_terms(new, old[index], args.variant)
            parts["relevance"] = relevance * (codes[index] == notes.YES)
            parts["irrelevance"] = irrelevance * (codes[index] == notes.NO)
        if multiclass:
            y = classes[batch["index"].to(classes.device)]
            task = F.cross_entropy(logits.float(), y, reduction="none")
        else:
            task = F.binary_cross_entropy_with_logits(
                logits[:, outputs].float(), batch["labels"][:, columns].float(), reduction="none"
            ).sum(1)
        total = args.w_cls * task
        if parts:
            total = total + w_yes * parts["relevance"] + w_no * parts["irrelevance"]
        return {"loss": total, "ce" if multiclass else "bce": task, **parts}

    return Setup(loss=loss, facts=facts, lr_factors=lr_factors)


RECIPE = Recipe(
    name="crayon",
    summary="Crayon: yes/no answers on saliency maps (attention) or neurons (pruning); "
    "annotate first with: python -m mitigations crayon annotate --help",
    defaults=Defaults(optimizer="adam", lr=1e-5, weight_decay=1e-4, batch_size=64, epochs=10),
    add_arguments=add_arguments,
    prepare=prepare,
)
