"""compute_cams against pytorch-grad-cam (looped per attribute) and its own invariants."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
import torchvision
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform
from torch import nn

from pytest_biascheck.cam import compute_cams
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.nets import SmallResNet

REFERENCE = {
    "gradcam": pgc.GradCAM,
    "gradcam++": pgc.GradCAMPlusPlus,
    "hirescam": pgc.HiResCAM,
    "elementwise": pgc.GradCAMElementWise,
}
TOL = 1e-4


class AbsLogit:
    """The binary-CAM paper's predicted-class target |z_a|, as Attention-IoU passes it to pytorch-grad-cam."""

    def __init__(self, a: int) -> None:
        self.a = a

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[..., self.a].abs()


def reference(method, model, layer, x, targets_per_map, reshape=None) -> np.ndarray:
    """pytorch-grad-cam's maps [B, M, H, W], one call per map (the loop lives only here)."""
    cam_class = REFERENCE.get(method) or method
    with cam_class(model, [model.get_submodule(layer)], reshape_transform=reshape) as cam:
        return np.stack([cam(x, targets) for targets in targets_per_map], 1)


def centre_logits(model: nn.Module, fc: nn.Linear, x: torch.Tensor) -> nn.Module:
    """Shift the head's bias so every output is positive on some images and negative on others."""
    model.eval()
    with torch.no_grad():
        fc.bias -= model(x).median(0).values + 1e-3
    return model


def build(name: str, x: torch.Tensor) -> nn.Module:
    torch.manual_seed(1)
    if name == "resnet18":
        model = torchvision.models.resnet18(num_classes=6)
        return centre_logits(model, model.fc, x)
    model = SmallResNet(5, head="mlp" if name == "small_mlp" else "linear")
    return centre_logits(model, model.fc[-1] if name == "small_mlp" else model.fc, x)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def models(x) -> dict[str, nn.Module]:
    return {name: build(name, x) for name in ("resnet18", "small_linear", "small_mlp")}


CASES = [
    ("resnet18", "layer4", True),
    ("resnet18", "layer3", False),
    ("small_linear", "layer3", False),
    ("small_mlp", "layer4", False),
]


@pytest.mark.parametrize("method", list(REFERENCE))
@pytest.mark.parametrize(("name", "layer", "closed"), CASES)
def test_matches_pytorch_grad_cam(models, x, name, layer, closed, method):
    model = models[name]
    k = model(x).shape[1]
    refs = {}
    for target, make in (("predicted", AbsLogit), ("positive", ClassifierOutputTarget)):
        ours = compute_cams(model, x, layer, method=method, target=target, size=(64, 64))
        refs[target] = reference(method, model, layer, x, [[make(a)] * len(x) for a in range(k)])
        assert ours.closed_form is closed
        assert ours.cams.shape == (len(x), k, 64, 64)
        assert np.abs(ours.cams.numpy() - refs[target]).max() <= TOL
    assert (refs["predicted"].reshape(-1, 64 * 64).max(1) > 0.5).mean() > 0.5, "maps mostly zero"
    assert np.abs(refs["predicted"] - refs["positive"]).max() > 0.1, "|z| and z targets coincide"


@pytest.mark.parametrize("method", list(REFERENCE))
def test_multiclass_targets_match_pytorch_grad_cam(models, x, method):
    model = models["resnet18"]
    classes = torch.tensor([0, 3, 5, 3])
    argmax = reference(method, model, "layer4", x, [None])
    given = reference(
        method, model, "layer4", x, [[ClassifierOutputTarget(int(c)) for c in classes]]
    )
    two = reference(method, model, "layer4", x, [[ClassifierOutputTarget(2)] * len(x)])
    for target, ref in (("predicted", argmax), (classes, given), (2, two)):
        ours = compute_cams(
            model, x, "layer4", method=method, target=target, head="multiclass", size=(64, 64)
        )
        assert ours.cams.shape == (len(x), 1, 64, 64)
        assert np.abs(ours.cams.numpy() - ref).max() <= TOL


@pytest.mark.parametrize("method", list(REFERENCE))
@pytest.mark.parametrize("name", ["resnet18", "small_linear"])
def test_closed_form_equals_autograd(models, x, name, method):
    kwargs = dict(method=method, relu=False, normalize=None)
    closed = compute_cams(models[name], x, "layer4", **kwargs)
    autograd = compute_cams(models[name], x, "layer4", closed_form=False, **kwargs)
    assert closed.closed_form and not autograd.closed_form
    scale = autograd.cams.abs().max()
    torch.testing.assert_close(closed.cams, autograd.cams, rtol=1e-4, atol=1e-5 * scale)


def test_head_that_is_not_a_plain_mean_is_not_closed_form(x):
    class Scaled(SmallResNet):
        def forward(self, x):
            return self.fc(self.features(x) * 2)

    torch.manual_seed(2)
    model = Scaled(3)
    centre_logits(model, model.fc, x)
    ours = compute_cams(model, x, "layer4", size=(64, 64))
    ref = reference("gradcam", model, "layer4", x, [[AbsLogit(a)] * len(x) for a in range(3)])
    assert not ours.closed_form
    assert np.abs(ours.cams.numpy() - ref).max() <= TOL


@pytest.mark.parametrize(("name", "layer"), [("small_mlp", "layer4"), ("resnet18", "layer4")])
def test_chunked_equals_unchunked(models, x, name, layer):
    for method in REFERENCE:
        whole = compute_cams(models[name], x, layer, method=method, normalize=None)
        ones = compute_cams(models[name], x, layer, method=method, normalize=None, chunk=1)
        torch.testing.assert_close(ones.cams, whole.cams, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(("name", "closed"), [("small_mlp", False), ("small_linear", True)])
def test_batch_size_independent(models, name, closed):
    x5 = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    for method in REFERENCE:
        batch = compute_cams(models[name], x5, "layer4", method=method)
        singles = [compute_cams(models[name], xi[None], "layer4", method=method) for xi in x5]
        assert batch.closed_form is closed
        torch.testing.assert_close(
            torch.cat([s.cams for s in singles]), batch.cams, atol=1e-5, rtol=0
        )
        torch.testing.assert_close(torch.cat([s.logits for s in singles]), batch.logits)


def test_outputs_select_maps(models, x):
    full = compute_cams(models["small_mlp"], x, "layer4")
    some = compute_cams(models["small_mlp"], x, "layer4", outputs=[3, 0])
    torch.testing.assert_close(some.cams, full.cams[:, [3, 0]], rtol=0, atol=1e-6)


def test_features_are_the_last_linear_input(models, x):
    model = models["small_linear"]
    with torch.no_grad():
        expected = model.features(x)
    torch.testing.assert_close(compute_cams(model, x, "layer4").features, expected)


def test_works_under_no_grad(models, x):
    outside = compute_cams(models["small_mlp"], x, "layer3", method="gradcam++")
    with torch.no_grad():
        inside = compute_cams(models["small_mlp"], x, "layer3", method="gradcam++")
    torch.testing.assert_close(inside.cams, outside.cams)


def test_normalisations(models, x):
    model = models["small_mlp"]
    summed = compute_cams(model, x, "layer3", normalize="sum").cams
    nonzero = summed.flatten(2).amax(-1) > 0
    assert nonzero.any()
    torch.testing.assert_close(summed.flatten(2).sum(-1)[nonzero], torch.ones(int(nonzero.sum())))
    minmax = compute_cams(model, x, "layer3").cams.flatten(2)
    assert torch.equal(minmax.amin(-1), torch.zeros_like(minmax[..., 0]))
    torch.testing.assert_close(minmax.amax(-1)[nonzero], torch.ones(int(nonzero.sum())))


@pytest.mark.parametrize("closed_form", [True, False])
@pytest.mark.parametrize("method", list(REFERENCE))
def test_zero_maps_stay_zero(x, method, closed_form):
    model = SmallResNet(3).eval()
    nn.init.zeros_(model.fc.weight)
    for normalize in ("minmax", "sum", None):
        result = compute_cams(
            model, x, "layer4", method=method, normalize=normalize, closed_form=closed_form
        )
        assert result.closed_form is closed_form
        cams = result.cams
        assert torch.equal(cams, torch.zeros_like(cams))


class TokenNet(nn.Module):
    """A toy vision transformer: patch tokens plus a class token, mixed by a nonlinear head."""

    def __init__(self, k: int = 3, c: int = 16) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, c, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, c))
        self.block = nn.Sequential(nn.Linear(c, c), nn.GELU())
        self.mix = nn.Linear(c, c)
        self.head = nn.Linear(c, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = self.block(torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1))
        return self.head(torch.tanh(self.mix(tokens)).mean(1))


@pytest.mark.parametrize("method", list(REFERENCE))
def test_reshape_matches_pytorch_grad_cam(method):
    torch.manual_seed(3)
    model, x = TokenNet().eval(), torch.randn(4, 3, 32, 32)
    reshape = functools.partial(vit_reshape_transform, height=4, width=4)
    given = compute_cams(model, x, "block", method=method, size=(32, 32), reshape=reshape)
    found = compute_cams(model, x, "block", method=method, size=(32, 32))  # tokens detected
    targets = [[AbsLogit(a)] * len(x) for a in range(3)]
    ref = reference(method, model, "block", x, targets, reshape=reshape)
    assert ref.max() > 0.5
    for ours in (given, found):
        assert ours.cams.shape == (4, 3, 32, 32)
        assert np.abs(ours.cams.numpy() - ref).max() <= TOL


@pytest.mark.parametrize("method", ["layercam", "eigencam"])
def test_fallback_equals_pytorch_grad_cam(models, x, method):
    model = models["small_mlp"]
    cam_class = {"layercam": pgc.LayerCAM, "eigencam": pgc.EigenCAM}[method]
    ours = compute_cams(model, x, "layer3", method=method, target="positive", size=(64, 64))
    ref = reference(
        cam_class, model, "layer3", x, [[ClassifierOutputTarget(a)] * 4 for a in range(5)]
    )
    assert np.abs(ours.cams.numpy() - ref).max() <= TOL
    assert compute_cams(model, x, "layer3", method=method).cams.shape == (4, 5, 8, 8)


def snapshot(model: nn.Module) -> list:
    """Everything compute_cams must leave untouched: modes, requires_grad, .grad, hooks."""
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return [(m.training, *(len(getattr(m, h)) for h in hooks)) for m in model.modules()] + [
        (p.requires_grad, p.grad) for p in model.parameters()
    ]


class Exploding(SmallResNet):
    def forward(self, x):
        self.features(x)
        raise RuntimeError("boom")


@pytest.mark.parametrize(
    ("factory", "method", "error"),
    [
        (lambda: SmallResNet(3, head="mlp"), "gradcam", None),
        (lambda: SmallResNet(3), "gradcam", None),
        (lambda: SmallResNet(3, head="mlp"), "layercam", None),
        (lambda: Exploding(3), "gradcam", RuntimeError),
        (lambda: TokenNet(), "gradcam", BiascheckError),
    ],
)
def test_model_state_is_restored(factory, method, error):
    model = factory()
    model.train()
    model.get_submodule("block" if isinstance(model, TokenNet) else "layer2").eval()
    params = list(model.parameters())
    params[0].requires_grad_(False)
    params[-1].grad = torch.ones_like(params[-1])
    before = snapshot(model)
    x = torch.randn(2, 3, 32, 32)
    layer = "head" if isinstance(model, TokenNet) else "layer4"  # a head gives no feature map
    if error is None:
        compute_cams(model, x, layer, method=method)
    else:
        with pytest.raises(error):
            compute_cams(model, x, layer, method=method)
    after = snapshot(model)
    assert after[: -len(params)] == before[: -len(params)]
    for (req_a, grad_a), (req_b, grad_b) in zip(
        after[-len(params) :], before[-len(params) :], strict=True
    ):
        assert req_a == req_b and grad_a is grad_b


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        (dict(target_layer="layer9"), BiascheckError),
        (dict(method="nosuchcam"), BiascheckError),
        (dict(outputs=[7]), ValueError),
        (dict(target=9, head="multiclass"), ValueError),
        (dict(target=torch.tensor([0, 1]), head="multiclass"), ValueError),
        (dict(target="negative"), ValueError),
        (dict(normalize="l2"), ValueError),
        (dict(method="eigencam", relu=False), ValueError),
    ],
)
def test_bad_arguments_raise_one_line(models, x, kwargs, error):
    kwargs = {"target_layer": "layer4", **kwargs}
    with pytest.raises(error) as info:
        compute_cams(models["small_linear"], x, **kwargs)
    assert "\n" not in str(info.value)


class SideBranch(SmallResNet):
    """A module that runs but does not feed the logits."""

    def __init__(self) -> None:
        super().__init__(2)
        self.side = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        self.side(x)
        return super().forward(x)


def twice() -> nn.Module:
    shared = nn.Conv2d(3, 3, 3, padding=1)
    return nn.Sequential(shared, shared, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))


@pytest.mark.parametrize(
    ("factory", "layer", "words"),
    [(SideBranch, "side", "do not depend"), (twice, "0", "ran 2 times")],
)
def test_unusable_target_layers_raise_one_line(x, factory, layer, words):
    with pytest.raises(BiascheckError, match=words) as info:
        compute_cams(factory(), x, layer)
    assert "\n" not in str(info.value)
