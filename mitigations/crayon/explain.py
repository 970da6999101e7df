"""What Crayon's annotators judge, computed from the original model in one pass over the training
data: each image's Grad-CAM (Crayon-Attention) and, for each channel of the target layer, the
images that activate it most with the cell where it peaks (Crayon-Pruning's patches)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mitigations.cam_target import score_sign, signed_cams
from pytest_biascheck.cam import compute_cams
from pytest_biascheck.data.base import BiasDataset
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.metrics.energy import proportional_energy
from pytest_biascheck.model import ModelSpec


def loader(data: BiasDataset, batch_size: int, indices: Sequence[int] | None = None) -> DataLoader:
    """The training images in order (or ``indices`` of them), ``batch_size`` at a time."""
    subset = data if indices is None else torch.utils.data.Subset(data, list(indices))
    return DataLoader(subset, batch_size=batch_size, shuffle=False)


def original_maps(
    module: nn.Module,
    spec: ModelSpec,
    data: BiasDataset,
    output: int,
    column: int | None,
    *,
    target: str = "label",
    region: int | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor | None]:
    """Grad-CAM O ``[n, h, w]`` (ReLU, not normalised) of model output ``output`` for every
    training image, scored as ``target`` says (``label``: with the label in column ``column`` of
    the data, which the other targets do not read);
    with a mask ``region`` (its position in the data's regions) also each map's proportional
    energy inside it ``[n]`` (the gate's measure), else None."""
    if spec.target_layer is None:
        raise BiascheckError("the model names no target layer; set task.target_layer in it")
    maps, energies = [], []
    for batch in loader(data, batch_size):
        images = spec.normalize(batch["image"].to(device))
        cam = compute_cams(
            module, images, spec.target_layer, outputs=[output], target="positive",
            relu=False, normalize=None,
        )  # fmt: skip
        labels = None if column is None else batch["labels"][:, column].to(device)
        sign = score_sign(cam.logits[:, output], labels, target)
        found = signed_cams(cam.cams[:, 0], sign).float().cpu()
        maps.append(found)
        if region is not None:
            energies.append(proportional_energy(found, batch["masks"][:, region].float()))
    return torch.cat(maps), torch.cat(energies).float() if energies else None


@dataclass(frozen=True)
class Patches:
    """Each channel's top-k training images by peak activation, highest first (ties: lower index),
    and the cell of the grid where the channel peaks in each of them."""

    images: Tensor
    """[C, k] positions in the training data."""
    cells: Tensor
    """[C, k] flat cell index ``row * w + col`` on the target layer's grid."""
    activations: Tensor
    """[C, k] the peak activations."""
    grid: tuple[int, int]

    def unique(self) -> tuple[Tensor, Tensor]:
        """The distinct (image, cell) patches ``[P, 2]`` sorted, and for every channel's slot the
        position of its patch in that list ``[C, k]`` (a patch shared by channels is shown once)."""
        pairs = torch.stack([self.images, self.cells], -1).reshape(-1, 2)
        distinct, slot = torch.unique(pairs, dim=0, return_inverse=True)
        return distinct, slot.view_as(self.images)


def top_patches(
    module: nn.Module,
    spec: ModelSpec,
    data: BiasDataset,
    k: int = 3,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> Patches:
    """Stream the training data once through the model and keep, for every channel of the target
    layer, the ``k`` images where its spatial maximum is highest (the paper's concept patches)."""
    if not 1 <= k <= len(data):
        raise BiascheckError(f"--top-k must be between 1 and the {len(data)} training images")
    layer = module.get_submodule(spec.target_layer)
    captured: list[Tensor] = []
    handle = layer.register_forward_hook(lambda mod, args, out: captured.append(out))
    best: tuple[Tensor, Tensor, Tensor] | None = None
    try:
        module.eval()
        for batch in loader(data, batch_size):
            captured.clear()
            with torch.no_grad():
                module(spec.normalize(batch["image"].to(device)))
            if captured[0].dim() != 4:
                raise BiascheckError(
                    f"target layer {spec.target_layer!r} gives {captured[0].dim()}-D outputs, not "
                    "[B, C, h, w] maps; Crayon-Pruning needs a convolutional target layer"
                )
            acts = captured[0].float().flatten(2)  # [B, C, hw]
            peak, cell = acts.amax(2).T.cpu(), acts.argmax(2).T.cpu()  # [C, B]
            index = batch["index"].expand_as(peak)
            found = (peak, index, cell)
            if best is not None:
                found = tuple(torch.cat(pair, 1) for pair in zip(best, found, strict=True))
            order = torch.sort(found[0], dim=1, descending=True, stable=True).indices[:, :k]
            best = tuple(t.gather(1, order) for t in found)
        grid = tuple(captured[0].shape[-2:])
    finally:
        handle.remove()
    return Patches(images=best[1], cells=best[2], activations=best[0], grid=grid)


def cell_boxes(cells: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Pixel boxes ``[..., 4]`` (top, left, bottom, right; bottom/right exclusive) of flat cells on
    ``grid`` in an image of ``size``: the bins of adaptive average pooling, so a cell's box holds
    exactly the pixels that pooling to the grid averages into it."""
    (h, w), (height, width) = grid, size
    row, col = cells // w, cells % w
    top, left = (row * height) // h, (col * width) // w
    bottom, right = -((-(row + 1) * height) // h), -((-(col + 1) * width) // w)
    return torch.stack([top, left, bottom, right], -1)


def patch_coverage(masks: Tensor, cells: Tensor, grid: tuple[int, int]) -> Tensor:
    """Share of each patch's box ``[B]`` that region masks ``[B, H, W]`` cover (the mask pooled to
    the grid by area, read at each image's cell)."""
    pooled = F.adaptive_avg_pool2d(masks.float()[:, None], grid)[:, 0].flatten(1)
    return pooled.gather(1, cells.view(-1, 1))[:, 0]
