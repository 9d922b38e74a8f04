"""Helpers for the detection tests (shared by tests/transfer/detection)."""

from __future__ import annotations

from pathlib import Path


def make_encoder(path: Path, arch: str = "resnet18", stem: str = "imagenet", seed: int = 0, sampler: str = "nce") -> Path:
    """A randomly initialised but real encoder checkpoint (pretrain.checkpoint format)."""
    import torch

    from pretrain.backbones import build_backbone
    from pretrain.checkpoint import encoder_metadata, save_encoder

    torch.manual_seed(seed)
    backbone = build_backbone(arch, stem)
    metadata = encoder_metadata(method="simclr", sampler=sampler, arch=arch, stem=stem, pretrain_dataset="digits",
                                epochs=0, image_size=32, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25],
                                config={"test": True}, seed=seed)
    return save_encoder(path, backbone, metadata)
