"""pytest_biascheck.cam.gradcam_differentiable (the ROI-IoU recipe's map): the same values as
compute_cams, and gradients to the parameters that match finite differences."""

from __future__ import annotations

import pytest
import torch

from pytest_biascheck.cam import compute_cams, gradcam_differentiable
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.nets import SmallResNet


def tiny(head: str, dtype: torch.dtype = torch.float32) -> SmallResNet:
    torch.manual_seed(3)
    return SmallResNet(4, widths=(8, 8, 8, 8), head=head).to(dtype).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("head", ["linear", "mlp"])
@pytest.mark.parametrize("target", ["predicted", "positive"])
@pytest.mark.parametrize("normalize", ["minmax", None])
def test_same_maps_as_compute_cams(x, head, target, normalize):
    model = tiny(head)
    for output in range(4):
        reference = compute_cams(
            model, x, "layer4", outputs=[output], target=target, normalize=normalize
        )
        logits, cams = gradcam_differentiable(
            model, x, "layer4", output, target=target, normalize=normalize
        )
        assert cams.shape == reference.cams[:, 0].shape == (5, 4, 4)
        torch.testing.assert_close(cams.detach(), reference.cams[:, 0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(logits.detach(), reference.logits)
        assert cams.requires_grad


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_parameter_gradients_match_finite_differences(x, head):
    model = tiny(head, torch.float64)
    x = x.double()
    weights = {
        n: p
        for n, p in model.named_parameters()
        if n in ("layer4.conv2.weight", "layer3.conv1.weight")
    }
    weights["head"] = model.fc.weight if head == "linear" else model.fc[0].weight

    def score() -> torch.Tensor:
        _, cams = gradcam_differentiable(model, x, "layer4", 1, relu=False, normalize=None)
        return (cams * torch.linspace(-1, 1, cams[0].numel(), dtype=cams.dtype).view(4, 4)).sum()

    grads = torch.autograd.grad(score(), list(weights.values()))
    for (name, weight), grad in zip(weights.items(), grads, strict=True):
        assert grad.abs().max() > 0, f"no gradient reaches {name}"
        direction = torch.randn(
            weight.shape, generator=torch.Generator().manual_seed(1), dtype=weight.dtype
        )
        eps = 1e-6
        with torch.no_grad():
            weight += eps * direction
            up = score()
            weight -= 2 * eps * direction
            down = score()
            weight += eps * direction
        numeric = (up - down) / (2 * eps)
        assert float((grad * direction).sum()) == pytest.approx(float(numeric), rel=1e-5, abs=1e-8)


def test_leaves_the_model_as_it_was(x):
    model = tiny("mlp").train()
    model.layer1.conv1.weight.requires_grad_(False)
    gradcam_differentiable(model, x, "layer4", 0)
    assert model.training and not model.layer1.conv1.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_bad_arguments(x):
    model = tiny("linear")
    with pytest.raises(BiascheckError, match="target layer 'layer9' not found"):
        gradcam_differentiable(model, x, "layer9", 0)
    with pytest.raises(ValueError, match="target must be"):
        gradcam_differentiable(model, x, "layer4", 0, target=2)
    with pytest.raises(ValueError, match="outputs must be indices"):
        gradcam_differentiable(model, x, "layer4", 7)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="needs gradients"):
        gradcam_differentiable(model, x, "layer4", 0)
