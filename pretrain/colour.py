"""sRGB <-> CIE Lab (D65) in torch, and CMC's L / ab views as RGB images.

CMC splits an image into its lightness L and its colour ab. To keep both encoders standard
3-channel ResNets (so the L encoder exports as a plain RGB encoder), each view is rendered back to
RGB: the L view is the image with its colour removed (a = b = 0, a grey image of the same
lightness), the ab view the image's colour at a fixed mid lightness (L = 50).
"""

from __future__ import annotations

import torch

_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]])
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])
_EPSILON = 6.0 / 29.0


def _linearise(rgb: torch.Tensor) -> torch.Tensor:
    return torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055).clamp_min(0) ** 2.4, rgb / 12.92)


def _gamma(linear: torch.Tensor) -> torch.Tensor:
    return torch.where(linear > 0.0031308, 1.055 * linear.clamp_min(1e-12) ** (1 / 2.4) - 0.055, 12.92 * linear)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) sRGB in [0, 1] -> Lab with L in [0, 100]."""
    matrix, white = _RGB_TO_XYZ.to(rgb), _WHITE.to(rgb)
    xyz = torch.einsum("ij,...jhw->...ihw", matrix, _linearise(rgb.clamp(0, 1)))
    xyz = xyz / white.view(3, 1, 1)
    f = torch.where(xyz > _EPSILON**3, xyz.clamp_min(1e-12) ** (1 / 3), xyz / (3 * _EPSILON**2) + 4 / 29)
    lightness = 116 * f[..., 1:2, :, :] - 16
    a = 500 * (f[..., 0:1, :, :] - f[..., 1:2, :, :])
    b = 200 * (f[..., 1:2, :, :] - f[..., 2:3, :, :])
    return torch.cat([lightness, a, b], dim=-3)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_lab`, clamped to [0, 1]."""
    matrix, white = _RGB_TO_XYZ.to(lab), _WHITE.to(lab)
    fy = (lab[..., 0:1, :, :] + 16) / 116
    fx = fy + lab[..., 1:2, :, :] / 500
    fz = fy - lab[..., 2:3, :, :] / 200
    f = torch.cat([fx, fy, fz], dim=-3)
    xyz = torch.where(f > _EPSILON, f**3, 3 * _EPSILON**2 * (f - 4 / 29)) * white.view(3, 1, 1)
    linear = torch.einsum("ij,...jhw->...ihw", torch.linalg.inv(matrix), xyz)
    return _gamma(linear.clamp(0, 1)).clamp(0, 1)


def lab_views(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L view, ab view) of a (B, 3, H, W) batch in [0, 1], each rendered as RGB in [0, 1]."""
    lab = rgb_to_lab(rgb)
    zeros = torch.zeros_like(lab[:, 1:])
    lightness_only = lab_to_rgb(torch.cat([lab[:, :1], zeros], dim=1))
    colour_only = lab_to_rgb(torch.cat([torch.full_like(lab[:, :1], 50.0), lab[:, 1:]], dim=1))
    return lightness_only, colour_only
