"""Fixtures for the detection tests: a small embedded digits COCO set and real encoder files."""

from __future__ import annotations

from pathlib import Path

import pytest

from ringbench_testing.detection import make_encoder


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
