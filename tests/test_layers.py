"""Feature-map layouts, candidate layers, the automatic target layer and `python -m pytest_biascheck
layers`, on small nets with known answers."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision
from pytorch_grad_cam.utils.reshape_transforms import swinT_reshape_transform, vit_reshape_transform
from torch import nn
from torchvision.models.convnext import LayerNorm2d

from pytest_biascheck.__main__ import main
from pytest_biascheck.cam import compute_cams
from pytest_biascheck.errors import BiascheckError
from pytest_biascheck.layers import (
    CHANNELS_LAST,
    MAP,
    TOKENS,
    Layout,
    candidate_layers,
    choose_target_layer,
    output_layout,
    tracing,
)
from pytest_biascheck.model import ModelSpec, load_checkpoint, save_checkpoint, save_torchscript
from pytest_biascheck.nets import SmallResNet, small_vit

pytestmark = pytest.mark.usefixtures("one_thread")


def layout_of(model: nn.Module, name: str, image: torch.Tensor) -> Layout | None:
    """The layout of one layer's output, read from a real forward pass."""
    layer = model.get_submodule(name)
    seen = []
    handle = layer.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    with tracing(model, layer) as ran, torch.no_grad():
        model(image)
    handle.remove()
    return output_layout(model, ran, seen[0], image.shape[-2:])


def test_reshapes_equal_pytorch_grad_cams_transforms():
    tokens = torch.randn(2, 1 + 3 * 5, 7)
    ours = Layout(TOKENS, (3, 5), prefix=1).to_feature_map(tokens)
    torch.testing.assert_close(ours, vit_reshape_transform(tokens, 3, 5), rtol=0, atol=0)
    grid = torch.randn(2, 3, 5, 7)
    ours = Layout(CHANNELS_LAST, (3, 5)).to_feature_map(grid)
    torch.testing.assert_close(ours, swinT_reshape_transform(grid.flatten(1, 2), 3, 5))
    assert Layout(MAP, (5, 7)).to_feature_map(grid) is grid


class Patches(nn.Module):
    """Patch tokens from a convolution (reshaped functionally), optionally after a class token."""

    def __init__(self, class_token: bool) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 8, 8)
        self.token = nn.Parameter(torch.randn(1, 1, 8)) if class_token else None
        self.mix = nn.Linear(8, 8)
        self.act = nn.GELU()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        if self.token is not None:
            tokens = torch.cat([self.token.expand(len(x), -1, -1), tokens], 1)
        return self.head(self.act(self.mix(tokens)).mean(1))


@pytest.mark.parametrize("class_token", [True, False])
@pytest.mark.parametrize(("height", "width"), [(32, 32), (32, 64)])
def test_token_grids_follow_the_input_aspect_and_class_tokens(class_token, height, width):
    image = torch.randn(1, 3, height, width)
    expected = Layout(TOKENS, (height // 8, width // 8), int(class_token))
    for name in ("mix", "act"):  # the GELU inherits the Linear's channels-last layout
        assert layout_of(Patches(class_token), name, image) == expected
    assert layout_of(Patches(class_token), "embed", image) == Layout(MAP, (height // 8, width // 8))
    assert layout_of(Patches(class_token), "head", image) is None


def test_torchvision_vit_declares_its_class_token():
    model = small_vit(2, image_size=32, patch_size=8).eval()
    image = torch.randn(1, 3, 32, 32)
    assert layout_of(model, "encoder.layers.encoder_layer_1.ln_1", image) == Layout(
        TOKENS, (4, 4), 1
    )


def test_channels_last_is_read_from_the_modules_that_made_the_output():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.norm2d = LayerNorm2d(4)  # a LayerNorm that permutes inside: channels stay first
            self.norm = nn.LayerNorm(4)
            self.drop = nn.Dropout()
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            x = self.norm2d(self.conv(x))
            x = self.drop(self.norm(x.permute(0, 2, 3, 1)))
            return self.head(x.mean((1, 2)))

    image = torch.randn(1, 3, 8, 8)
    model = Net().eval()
    assert layout_of(model, "conv", image) == Layout(MAP, (6, 6))
    assert layout_of(model, "norm2d", image) == Layout(MAP, (6, 6))
    assert layout_of(model, "norm", image) == Layout(CHANNELS_LAST, (6, 6))
    assert layout_of(model, "drop", image) == Layout(CHANNELS_LAST, (6, 6))


def test_a_channels_first_1d_output_is_not_tokens():
    model = nn.Sequential(nn.Flatten(2), nn.Conv1d(3, 4, 1), nn.Flatten(), nn.Linear(64, 2))
    assert layout_of(model, "1", torch.randn(1, 3, 4, 4)) is None


class SideBranch(SmallResNet):
    """A stage that runs but does not feed the logits, and a module that runs twice."""

    def __init__(self) -> None:
        super().__init__(2, widths=(8, 8, 8, 8))
        self.side = nn.Conv2d(3, 3, 1)
        self.twice = nn.Identity()

    def forward(self, x):
        self.side(x)
        return super().forward(self.twice(self.twice(x)))


def test_candidates_skip_unused_and_repeated_layers_and_stop_at_the_head():
    model = SideBranch().eval()
    found = candidate_layers(model, (3, 32, 32))
    names = [info.name for info in found]
    assert "side" not in names and "twice" not in names
    assert names[-1] == "layer4" and "pool" not in names
    assert choose_target_layer(model, found) == "layer4"
    layer4 = found[-1]
    assert (layer4.module, layer4.shape, layer4.layout) == (
        "BasicBlock",
        (8, 4, 4),
        Layout(MAP, (4, 4)),
    )


def test_last_stage_is_chosen_even_when_its_grid_is_one_cell():
    model = torchvision.models.resnet18(num_classes=2)  # layer4 is 1x1 at 32x32 input
    assert choose_target_layer(model, candidate_layers(model, (3, 32, 32))) == "layer4"


def test_pools_inside_blocks_do_not_end_the_search():
    model = torchvision.models.mobilenet_v3_small(num_classes=2)  # squeeze-excitation pools
    found = candidate_layers(model, (3, 64, 64))
    assert choose_target_layer(model, found) == "features"
    assert any(i.name.startswith("features.") and i.name.endswith(".avgpool") for i in found)


def test_a_resampling_pool_is_never_the_target():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, 2), nn.ReLU(), nn.AdaptiveAvgPool2d(5), nn.Flatten(), nn.Linear(100, 2)
    )
    found = candidate_layers(model, (3, 16, 16))
    assert [i.name for i in found] == ["0", "1", "2"]
    assert choose_target_layer(model, found) == "1"


def test_vit_target_is_the_last_layer_whose_patch_tokens_reach_the_head():
    torch.manual_seed(0)
    model = small_vit(3)
    found = candidate_layers(model, (3, 48, 48))
    chosen = choose_target_layer(model, found)
    assert chosen == "encoder.layers.encoder_layer_1.ln_1"
    x = torch.randn(2, 3, 48, 48)
    assert compute_cams(model, x, chosen, normalize=None).cams.amax((-2, -1)).gt(0).all()
    for later in ("encoder.layers.encoder_layer_1.ln_2", "encoder.layers.encoder_layer_1"):
        cams = compute_cams(model, x, later, normalize=None).cams
        assert torch.equal(cams, torch.zeros_like(cams)), later


def snapshot(model: nn.Module) -> list:
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks")
    return [(m.training, *(len(getattr(m, h)) for h in hooks)) for m in model.modules()] + [
        (p.requires_grad, p.grad) for p in model.parameters()
    ]


def test_scanning_is_deterministic_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = small_vit(2).train()
    before = snapshot(model)
    assert candidate_layers(model, (3, 48, 48)) == candidate_layers(model, (3, 48, 48))
    assert snapshot(model) == before


@pytest.fixture
def resnet_checkpoint(tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec(attributes=("a", "b"), input_size=(3, 64, 64))
    model = torchvision.models.resnet18(num_classes=2)
    return save_checkpoint(model, spec, tmp_path / "r18.pt", "torchvision.resnet18")


def test_layers_command_lists_shapes_and_marks_the_target(resnet_checkpoint, capsys):
    assert main(["layers", str(resnet_checkpoint)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{resnet_checkpoint}: torchvision.resnet18, input [3, 64, 64]"
    rows = {}
    for line in lines[2:-1]:
        cells = re.split(" {2,}", line.strip())
        cells = cells if cells[0] == "*" else ["", *cells]
        rows[cells[1]] = cells
    assert rows["layer4"] == ["*", "layer4", "Sequential", "[512, 2, 2]", "2x2 map"]  # stride 32
    assert rows["layer1"] == ["", "layer1", "Sequential", "[64, 16, 16]", "16x16 map"]  # stride 4
    assert [name for name, cells in rows.items() if cells[0]] == ["layer4"]
    assert "avgpool" not in rows and "fc" not in rows
    assert lines[-1].startswith("* target layer: layer4; automatic choice: layer4")


def test_checkpoint_without_dependent_layers_is_refused_in_one_line(tmp_path, capsys):
    model = small_vit(2)
    nn.init.zeros_(model.heads.head.weight)  # torchvision's untrained ViT head
    spec = ModelSpec(attributes=("a", "b"), input_size=(3, 48, 48))
    path = save_checkpoint(model, spec, tmp_path / "zero.pt", "biascheck.small_vit")
    with pytest.raises(BiascheckError, match="outputs depend on") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert main(["layers", str(path)]) == 4
    assert capsys.readouterr().err.count("\n") == 1


def test_torchscript_keeps_its_named_layer_and_cannot_be_listed(tmp_path, capsys):
    spec = ModelSpec(attributes=("a", "b"), input_size=(3, 32, 32), target_layer="layer3")
    path = save_torchscript(SmallResNet(2, widths=(8, 8, 8, 8)), spec, tmp_path / "m.ts")
    assert load_checkpoint(path, outputs_only=True).spec.target_layer == "layer3"
    assert main(["layers", str(path)]) == 4
    err = capsys.readouterr().err
    assert err.startswith("biascheck: error:") and "TorchScript" in err and err.count("\n") == 1
