"""Real CMC encoder files for the tests: an L encoder (lightness view) with its ab encoder (lab_ab view),
and the same weights as an old file that records no view; plus the features CMC's views should give."""

from __future__ import annotations

from pathlib import Path

import torch

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def cmc_metadata(image_size: int = 8, stem: str = "imagenet") -> dict:
    return {
        "method": "cmc", "sampler": "nce", "sampler_params": {}, "arch": "resnet18", "stem": stem,
        "pretrain_dataset": "digits", "epochs": 0, "image_size": image_size, "mean": MEAN, "std": STD,
        "config": {"method": "cmc", "augmentation": "cmc", "crop_min_scale": 0.5, "hflip": False}, "seed": 0,
    }


def cmc_backbones(seed: int = 0, stem: str = "imagenet"):
    from pretrain.backbones import build_backbone

    torch.manual_seed(seed)
    return build_backbone("resnet18", stem).eval(), build_backbone("resnet18", stem, in_channels=2).eval()


def write_cmc_encoder(path: Path, image_size: int = 8, seed: int = 0, stem: str = "imagenet") -> Path:
    """A CMC encoder file as pretraining writes it: L backbone on `lightness`, ab backbone beside it."""
    from pretrain.checkpoint import save_encoder

    lightness, colour = cmc_backbones(seed, stem)
    metadata = cmc_metadata(image_size, stem) | {"input_view": "lightness"}
    return save_encoder(path, lightness, metadata, extra={"ab": (colour, "lab_ab")})


def write_old_cmc_encoder(path: Path, image_size: int = 8, seed: int = 0) -> Path:
    """The same L encoder in the format written before views were recorded: no input_view, no ab encoder."""
    new = write_cmc_encoder(Path(str(path) + ".new"), image_size, seed)
    payload = torch.load(new, weights_only=True)
    del payload["metadata"]["input_view"], payload["metadata"]["extra_encoders"], payload["extra_state_dicts"]
    torch.save(payload, path)
    new.unlink()
    return Path(path)


@torch.no_grad()
def expected_features(images: torch.Tensor, which: str = "concat", seed: int = 0, rgb: bool = False) -> torch.Tensor:
    """Features of normalised RGB `images` (MEAN/STD) as CMC's views define them, from the same weights."""
    from pretrain.colour import lab_to_rgb, rgb_to_lab
    from pretrain.views import AB_CENTRE, AB_SCALE

    lightness, colour = cmc_backbones(seed)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    if rgb:
        return lightness(images)
    lab = rgb_to_lab((images * std + mean).clamp(0, 1))
    grey = lab_to_rgb(torch.cat([lab[:, :1], torch.zeros_like(lab[:, 1:])], 1))
    ab = (lab[:, 1:] - torch.tensor(AB_CENTRE).view(1, 2, 1, 1)) / torch.tensor(AB_SCALE).view(1, 2, 1, 1)
    parts = {"l": [lightness((grey - mean) / std)], "ab": [colour(ab)]}
    parts["concat"] = parts["l"] + parts["ab"]
    return torch.cat(parts[which], dim=1)
