"""Input views: what an encoder's stem was trained to see, and the one function that produces it.

Every encoder file records the view its backbone expects (`metadata["input_view"]`). Evaluation
code feeds encoders normalised RGB batches (the checkpoint's mean/std) and the feature models built
here turn them into the encoder's view, so a CMC L encoder is never fed colour by accident.

    rgb        the image itself (IR, MoCo, SimCLR)
    lightness  CIE L only, rendered as a grey RGB image of the same lightness (a = b = 0; always in
               gamut, so nothing is lost), normalised with the checkpoint's mean/std: 3 channels,
               so CMC's L encoder stays a standard ResNet that detection can fine-tune
    lab_ab     CIE a and b as 2 channels, range-normalised as CMC does (a 2-channel stem); fed
               directly rather than rendered back to RGB, which would clamp saturated colours
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from pretrain.colour import lab_to_rgb, rgb_to_lab

INPUT_VIEWS = {"rgb": 3, "lightness": 3, "lab_ab": 2}  # view -> input channels of the encoder's stem
# CMC (HobbitLong/CMC train_CMC.py) normalises Lab by the range of each channel over sRGB:
# centre = (min + max) / 2, scale = (max - min) / 2.
AB_MIN, AB_MAX = (-86.183, -107.857), (98.233, 94.478)
AB_CENTRE = tuple((lo + hi) / 2 for lo, hi in zip(AB_MIN, AB_MAX))
AB_SCALE = tuple((hi - lo) / 2 for lo, hi in zip(AB_MIN, AB_MAX))
# CMC's two encoders inside one encoder file: the exported backbone is the L encoder, the ab encoder
# is stored beside it under this name.
CMC_FEATURES = ("l", "ab", "concat")
CMC_L, CMC_AB = "l", "ab"


def check_view(view: str, where: str = "input_view") -> str:
    if view not in INPUT_VIEWS:
        raise ValueError(f"{where}: unknown input view {view!r}; valid views: {', '.join(INPUT_VIEWS)}")
    return view


def view_channels(view: str) -> int:
    return INPUT_VIEWS[check_view(view)]


def _column(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32, device=like.device).view(1, -1, 1, 1)


def view_input(images: torch.Tensor, view: str, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised RGB batch (B, 3, H, W; `mean`/`std` on the 0-1 scale) -> the encoder's input for `view`.

    The one place where views are made: CMC's training split and every evaluation path call it.
    """
    check_view(view)
    if view == "rgb":
        return images
    with torch.autocast(images.device.type, enabled=False):  # Lab maths in float32
        mean_t, std_t = _column(mean, images), _column(std, images)
        rgb = (images.float() * std_t + mean_t).clamp(0, 1)
        lab = rgb_to_lab(rgb)
        if view == "lightness":
            grey = lab_to_rgb(torch.cat([lab[:, :1], torch.zeros_like(lab[:, 1:])], dim=1))
            return (grey - mean_t) / std_t
        return (lab[:, 1:] - _column(AB_CENTRE, images)) / _column(AB_SCALE, images)


def view_pixels(rgb: torch.Tensor, view: str) -> torch.Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> the same image as the encoder sees it, still RGB in [0, 1], for
    pipelines that normalise later themselves (detection). Only 3-channel views can be rendered."""
    if view_channels(view) != 3:
        raise ValueError(f"input view {view!r} has {view_channels(view)} channels; it cannot be rendered as RGB")
    if view == "rgb":
        return rgb
    lab = rgb_to_lab(rgb.float().clamp(0, 1))
    zeros = torch.zeros_like(lab[..., 1:, :, :])
    return lab_to_rgb(torch.cat([lab[..., :1, :, :], zeros], dim=-3))


def view_pixels_uint8(image: np.ndarray, view: str) -> np.ndarray:
    """`view_pixels` on an (H, W, 3) uint8 RGB array, as image pipelines that decode to numpy need it."""
    if view == "rgb":
        return image
    rgb = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    out = view_pixels(rgb, view)
    return (out * 255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


class ViewedBackbone(nn.Module):
    """forward(normalised RGB) = backbone(view_input(images)): a backbone that always sees its own view."""

    def __init__(self, backbone: nn.Module, view: str, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.backbone, self.view = backbone, check_view(view)
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(view_input(images, self.view, self.mean, self.std))


class ConcatenatedFeatures(nn.Module):
    """Several viewed backbones on the same images, features concatenated (CMC's L + ab evaluation)."""

    def __init__(self, parts: Sequence[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(images) for part in self.parts], dim=1)


def feature_model(encoders: dict[str, tuple[nn.Module, str]], selection: Sequence[str], mean: Sequence[float],
                  std: Sequence[float]) -> nn.Module:
    """A model from normalised RGB batches to features: the selected encoders, each on its own view,
    concatenated in `selection` order. A lone RGB encoder is returned as it is (no wrapper)."""
    parts = []
    for name in selection:
        backbone, view = encoders[name]
        parts.append(backbone if view == "rgb" else ViewedBackbone(backbone, view, mean, std))
    return parts[0] if len(parts) == 1 else ConcatenatedFeatures(parts)
