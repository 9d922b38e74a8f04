"""Fixtures for the detection tests: a small embedded digits COCO set and real encoder files."""

from __future__ import annotations

from pathlib import Path

import pytest


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


@pytest.fixture(scope="session")
def small_coco(tmp_path_factory) -> Path:
    """The embedded digits COCO set at test size (24 train, 8 val canvases)."""
    from transfer.detection.embedded import build_embedded_coco

    return build_embedded_coco(tmp_path_factory.mktemp("coco") / "digits", train_images=24, val_images=8)


@pytest.fixture(scope="session")
def encoder_r18(tmp_path_factory) -> Path:
    return make_encoder(tmp_path_factory.mktemp("enc") / "r18.pt")


@pytest.fixture(scope="session")
def encoder_cifar(tmp_path_factory) -> Path:
    return make_encoder(tmp_path_factory.mktemp("enc") / "cifar.pt", stem="cifar")
