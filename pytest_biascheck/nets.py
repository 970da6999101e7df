"""The project's own small nets: residual CNNs whose ``layer4`` gives an 8x8 CAM grid at 64x64 input
(16x16 with ``strides=(1, 2, 1, 1)``), and a small vision transformer for token-model checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from torchvision.models import VisionTransformer


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem (stride 2) + four residual stages (``strides``, default 1, 2, 2, 1) + global average pool
    + head.

    ``head="linear"`` is pool + linear, the case where CAMs have a closed form; ``head="mlp"`` puts a
    hidden layer after the pool (the Attention-IoU paper's extended ResNet head). The CAM grid at
    ``layer4`` is the input size divided by 2 and by each stage's stride: small regions such as a
    mouth need ``strides=(1, 2, 1, 1)`` (16x16 at 64 px) to cover more than one cell.
    """

    def __init__(
        self,
        num_outputs: int,
        widths: Sequence[int] = (32, 64, 96, 128),
        head: str = "linear",
        hidden: int = 128,
        in_channels: int = 3,
        strides: Sequence[int] = (1, 2, 2, 1),
    ) -> None:
        super().__init__()
        if head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")
        if len(strides) != 4 or any(s not in (1, 2) for s in strides):
            raise ValueError(f"strides must be four values of 1 or 2, got {list(strides)}")
        w, s = list(widths), list(strides)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w[0], 3, 2, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU()
        )
        self.layer1 = BasicBlock(w[0], w[0], s[0])
        self.layer2 = BasicBlock(w[0], w[1], s[1])
        self.layer3 = BasicBlock(w[1], w[2], s[2])
        self.layer4 = BasicBlock(w[2], w[3], s[3])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        if head == "linear":
            self.fc: nn.Module = nn.Linear(w[3], num_outputs)
        else:
            self.fc = nn.Sequential(
                nn.Linear(w[3], hidden), nn.ReLU(), nn.Linear(hidden, num_outputs)
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate (pooled) features, the input of the head."""
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.flatten(self.pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def small_resnet(num_outputs: int, **kwargs) -> SmallResNet:
    """Factory used by the architecture registry (name ``biascheck.small_resnet``)."""
    return SmallResNet(num_outputs, **kwargs)


def small_vit(
    num_outputs: int,
    image_size: int = 48,
    patch_size: int = 8,
    num_layers: int = 2,
    num_heads: int = 2,
    hidden_dim: int = 64,
    mlp_dim: int = 128,
) -> VisionTransformer:
    """A small torchvision ViT (name ``biascheck.small_vit``): a 6x6 patch grid at 48x48 input, for
    token-model checks that must run in seconds on a CPU. Its head starts random, not zero as in
    torchvision, so that an untrained one already has maps."""
    from torchvision.models import VisionTransformer  # imported on use: torchvision loads slowly

    model = VisionTransformer(
        image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim, num_classes=num_outputs
    )
    nn.init.normal_(model.heads.head.weight, std=hidden_dim**-0.5)
    return model
