"""compute_cams on torchvision CNNs and vision transformers loaded from biascheck checkpoints (random
weights, no downloads): automatic target layer, maps of every attribute, agreement with
pytorch-grad-cam and its reshape_transform; and `pytest --biascheck` end to end on a small ViT."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
import torchvision
from pytorch_grad_cam.utils.reshape_transforms import swinT_reshape_transform, vit_reshape_transform
from torch import nn

from pytest_biascheck.cam import compute_cams, gradcam_differentiable
from pytest_biascheck.model import LoadedModel, ModelSpec, load_checkpoint, save_checkpoint
from pytest_biascheck.nets import small_vit
from pytest_biascheck.store import load_results

SIZE = 64
ATTRIBUTES = ("a", "b", "c")
TOL = 1e-4
REFERENCE = {
    "gradcam": pgc.GradCAM,
    "gradcam++": pgc.GradCAMPlusPlus,
    "hirescam": pgc.HiResCAM,
    "elementwise": pgc.GradCAMElementWise,
}


def copied(tensor: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam keeps the hooked output itself; densenet's in-place ReLU after `features`
    would then change its stored activations (not its gradients). A copy keeps the layer's output."""
    return tensor.clone()


def swin_tokens(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """pytorch-grad-cam's Swin transform expects timm's [B, h*w, C]; torchvision gives [B, h, w, C]."""
    return swinT_reshape_transform(tensor.flatten(1, 2), height, width)


# name: (constructor kwargs, automatic target layer, CAM grid, closed form, pytorch-grad-cam reshape).
# The CNN and ViT layers give the same tensors as pytorch-grad-cam's README recommends (layer4[-1],
# features[-1], blocks[-1].norm1); Swin's is the final LayerNorm, which only pool + Linear follow.
ARCHITECTURES: dict[str, tuple[dict, str, tuple[int, int], bool, Callable]] = {
    "resnet18": ({}, "layer4", (2, 2), True, copied),
    "resnet50": ({}, "layer4", (2, 2), True, copied),
    "mobilenet_v3_small": ({}, "features", (2, 2), False, copied),
    "efficientnet_b0": ({}, "features", (2, 2), True, copied),
    "convnext_tiny": ({}, "features", (2, 2), False, copied),
    "densenet121": ({}, "features", (2, 2), False, copied),
    "vit_b_16": (
        {"image_size": SIZE},
        "encoder.layers.encoder_layer_11.ln_1",
        (4, 4),
        False,
        functools.partial(vit_reshape_transform, height=4, width=4),
    ),
    "swin_t": ({}, "norm", (2, 2), True, functools.partial(swin_tokens, height=2, width=2)),
}


class AbsLogit:
    """The binary-CAM paper's predicted-class target |z_a| as a pytorch-grad-cam target."""

    def __init__(self, a: int) -> None:
        self.a = a

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[..., self.a].abs()


def conditioned(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Random weights that give usable maps: batch-norm statistics from one batch of random images
    (deep random nets otherwise shrink activations to ~1e-14), a random head (torchvision's ViT head
    starts at zero) and biases that put every output on both sides of zero."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, SIZE, SIZE))
    model.eval()
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.normal_(head.weight, std=head.in_features**-0.5)
    with torch.no_grad():
        head.bias -= model(x).median(0).values + 1e-3
    return model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def loaded(request, x, tmp_path_factory) -> LoadedModel:
    """The architecture saved with no target layer in the checkpoint, then loaded back."""
    name = request.param
    torch.manual_seed(0)
    kwargs = ARCHITECTURES[name][0]
    model = torchvision.models.get_model(name, weights=None, num_classes=len(ATTRIBUTES), **kwargs)
    path = tmp_path_factory.mktemp(name) / f"{name}.pt"
    spec = ModelSpec(attributes=ATTRIBUTES, input_size=(3, SIZE, SIZE))
    save_checkpoint(conditioned(model, x), spec, path, f"torchvision.{name}", kwargs)
    del model
    yield load_checkpoint(path)
    path.unlink()


def reference(method: str, loaded: LoadedModel, x: torch.Tensor) -> np.ndarray:
    """pytorch-grad-cam's maps [B, A, H, W] with its reshape_transform, one call per attribute."""
    model, layer = loaded.module, loaded.module.get_submodule(loaded.spec.target_layer)
    reshape = ARCHITECTURES[loaded.arch.removeprefix("torchvision.")][4]
    with REFERENCE[method](model, [layer], reshape_transform=reshape) as cam:
        return np.stack([cam(x, [AbsLogit(a)] * len(x)) for a in range(len(ATTRIBUTES))], 1)


def test_loads_with_the_automatic_target_layer_and_maps_every_attribute(loaded, x):
    _, layer, grid, closed, _ = ARCHITECTURES[loaded.arch.removeprefix("torchvision.")]
    assert loaded.spec.target_layer == layer
    result = compute_cams(loaded.module, x, layer)
    assert result.cams.shape == (len(x), len(ATTRIBUTES), *grid)
    assert result.closed_form is closed


def test_gradcam_matches_pytorch_grad_cam(loaded, x):
    ours = compute_cams(loaded.module, x, loaded.spec.target_layer, size=(SIZE, SIZE))
    ref = reference("gradcam", loaded, x)
    assert (ref.reshape(-1, SIZE * SIZE).max(1) > 0.5).mean() > 0.5, "maps mostly zero"
    assert np.abs(ours.cams.numpy() - ref).max() <= TOL


@pytest.mark.parametrize("method", ["gradcam++", "hirescam", "elementwise"])
@pytest.mark.parametrize("loaded", ["vit_b_16", "swin_t"], indirect=True)
def test_token_models_match_pytorch_grad_cam_for_every_method(loaded, x, method):
    ours = compute_cams(
        loaded.module, x, loaded.spec.target_layer, method=method, size=(SIZE, SIZE)
    )
    assert np.abs(ours.cams.numpy() - reference(method, loaded, x)).max() <= TOL


@pytest.mark.parametrize("loaded", ["swin_t"], indirect=True)
def test_swin_closed_form_equals_autograd(loaded, x):
    kwargs = dict(relu=False, normalize=None)
    closed = compute_cams(loaded.module, x, "norm", **kwargs)
    autograd = compute_cams(loaded.module, x, "norm", closed_form=False, **kwargs)
    assert closed.closed_form and not autograd.closed_form
    scale = autograd.cams.abs().max()
    torch.testing.assert_close(closed.cams, autograd.cams, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("loaded", ["vit_b_16"], indirect=True)
def test_vit_patch_tokens_after_the_chosen_layer_get_no_gradient(loaded, x):
    """Why the ViT rule stops at the last block's first LayerNorm: the last block's output reaches
    the head only through the class token, so its maps are all zero."""
    later = compute_cams(loaded.module, x, "encoder.layers.encoder_layer_11", normalize=None)
    chosen = compute_cams(loaded.module, x, loaded.spec.target_layer, normalize=None)
    assert torch.equal(later.cams, torch.zeros_like(later.cams))
    assert chosen.cams.amax((-2, -1)).gt(0).all()


def test_differentiable_gradcam_reads_vit_tokens():
    """The ROI-IoU recipe's map (gradients flow through it) on patch tokens, as pytorch-grad-cam's."""
    torch.manual_seed(0)
    model, x = small_vit(3).eval(), torch.randn(2, 3, 48, 48)
    layer = "encoder.layers.encoder_layer_1.ln_1"
    _, maps = gradcam_differentiable(model, x, layer, 1)
    reshape = functools.partial(vit_reshape_transform, height=6, width=6)
    with pgc.GradCAM(model, [model.get_submodule(layer)], reshape_transform=reshape) as cam:
        ref = cam(x, [AbsLogit(1)] * len(x))
    up = torch.nn.functional.interpolate(maps[:, None], size=(48, 48), mode="bilinear")[:, 0]
    up = up - up.flatten(1).amin(1)[:, None, None]
    up = up / up.flatten(1).amax(1)[:, None, None]
    assert maps.shape == (2, 6, 6)
    assert np.abs(up.detach().numpy() - ref).max() <= TOL
    maps.sum().backward()
    assert model.heads.head.weight.grad.abs().sum() > 0


VIT_ATTRIBUTES = ("Smiling", "Black_Hair")


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory) -> Path:
    """A random small ViT (48x48 input, 8x8 patches: a 6x6 grid) on two SynthFaces attributes."""
    torch.manual_seed(0)
    spec = ModelSpec(attributes=VIT_ATTRIBUTES, input_size=(3, 48, 48))
    path = tmp_path_factory.mktemp("vit") / "vit.pt"
    return save_checkpoint(small_vit(len(VIT_ATTRIBUTES)), spec, path, "biascheck.small_vit")


def test_biascheck_gate_runs_end_to_end_on_a_vit(pytester: pytest.Pytester, vit_checkpoint):
    result = pytester.runpytest(
        f"--biascheck={vit_checkpoint}",
        "--biascheck-data=synthfaces:n=32",
        "--biascheck-report=report",
        "-p",
        "no:cacheprovider",
    )
    outcomes = result.parseoutcomes()
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) >= 3
    assert "errors" not in outcomes
    result.stdout.fnmatch_lines(["*vit.pt::mask_score?Smiling-mouth?*"])
    report = pytester.path / "report"
    assert (report / "biascheck.html").is_file() and (report / "biascheck.json").is_file()
    (cache,) = (report / ".cache").glob("*.json")
    maps = load_results(cache).maps
    assert maps["by_class"].shape[-2:] == (6, 6)
    assert maps["cell:Male"].shape[-2:] == (6, 6)
    assert maps["cell:Male"].amax((-2, -1)).gt(0).any()


# timm models (``pip install 'biascheck[timm]'``), as ``timm.<name>`` checkpoints: name -> (kwargs,
# automatic target layer, CAM grid, pytorch-grad-cam reshape). The ViT and DeiT layers are the
# ones pytorch-grad-cam's README recommends for timm (blocks[-1].norm1).
TIMM: dict[str, tuple[dict, str, tuple[int, int], Callable]] = {
    "resnet50": ({}, "layer4", (2, 2), copied),
    "convnext_tiny": ({}, "stages", (2, 2), copied),
    "efficientnet_b0": ({}, "bn2", (2, 2), copied),
    "vit_small_patch16_224": (
        {"img_size": SIZE}, "blocks.11.norm1", (4, 4),
        functools.partial(vit_reshape_transform, height=4, width=4),
    ),
    "deit_small_patch16_224": (
        {"img_size": SIZE}, "blocks.11.norm1", (4, 4),
        functools.partial(vit_reshape_transform, height=4, width=4),
    ),
    "swin_tiny_patch4_window7_224": (
        {"img_size": SIZE, "window_size": 4}, "norm", (2, 2),
        functools.partial(swin_tokens, height=2, width=2),
    ),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(TIMM))
def timm_loaded(request, x, tmp_path_factory) -> LoadedModel:
    """A random timm model saved with no target layer, then loaded back through the registry."""
    timm = pytest.importorskip("timm")
    name = request.param
    torch.manual_seed(0)
    kwargs = TIMM[name][0]
    model = timm.create_model(name, pretrained=False, num_classes=len(ATTRIBUTES), **kwargs)
    path = tmp_path_factory.mktemp(name) / f"{name}.pt"
    spec = ModelSpec(attributes=ATTRIBUTES, input_size=(3, SIZE, SIZE))
    save_checkpoint(conditioned(model, x), spec, path, f"timm.{name}", kwargs)
    del model
    yield load_checkpoint(path)
    path.unlink()


def test_timm_models_get_their_layer_and_match_pytorch_grad_cam(timm_loaded, x):
    _, layer, grid, reshape = TIMM[timm_loaded.arch.removeprefix("timm.")]
    assert timm_loaded.spec.target_layer == layer
    ours = compute_cams(timm_loaded.module, x, layer)
    assert ours.cams.shape == (len(x), len(ATTRIBUTES), *grid)
    ours = compute_cams(timm_loaded.module, x, layer, size=(SIZE, SIZE))
    module = timm_loaded.module
    with pgc.GradCAM(module, [module.get_submodule(layer)], reshape_transform=reshape) as cam:
        ref = np.stack([cam(x, [AbsLogit(a)] * len(x)) for a in range(len(ATTRIBUTES))], 1)
    assert (ref.reshape(-1, SIZE * SIZE).max(1) > 0.5).mean() > 0.5, "maps mostly zero"
    assert np.abs(ours.cams.numpy() - ref).max() <= TOL
