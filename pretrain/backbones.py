"""ResNet trunks with torchvision parameter names, and the projection head."""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

ARCHS = {"resnet18": 512, "resnet50": 2048}
STEMS = ("imagenet", "cifar")


def feature_dim(arch: str) -> int:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid archs: {', '.join(sorted(ARCHS))}")
    return ARCHS[arch]


def build_backbone(arch: str = "resnet18", stem: str = "imagenet", in_channels: int = 3) -> nn.Module:
    """A torchvision ResNet whose forward returns the pooled features (fc is an identity).

    The state_dict keys are torchvision's (conv1, bn1, layer1..layer4), without fc.
    `stem="cifar"` swaps conv1 for a 3x3 stride-1 conv and drops the max-pool, for 32 px images.
    `in_channels` != 3 is for non-RGB views (CMC's 2-channel ab encoder).
    """
    feature_dim(arch)
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; valid stems: {', '.join(STEMS)}")
    model = getattr(torchvision.models, arch)(weights=None)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.fc = nn.Identity()
    return model


class ProjectionHead(nn.Module):
    """MLP feature -> hidden (= feature width) -> ReLU -> out, L2-normalised output."""

    def __init__(self, in_dim: int, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


class Encoder(nn.Module):
    """Backbone plus projection head; `forward` gives normalised embeddings, `features` pooled features."""

    def __init__(self, arch: str = "resnet18", stem: str = "imagenet", embed_dim: int = 128, in_channels: int = 3):
        super().__init__()
        self.arch, self.stem = arch, stem
        self.backbone = build_backbone(arch, stem, in_channels)
        self.head = ProjectionHead(feature_dim(arch), embed_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
