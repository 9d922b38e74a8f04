"""Helpers for the linear-evaluation tests: real (randomly initialised) encoder files and small image sets."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from pretrain.backbones import build_backbone
from pretrain.checkpoint import save_encoder, untrained_metadata

IMAGE_SIZE = 32
MEAN = [0.5, 0.5, 0.5]
STD = [0.25, 0.25, 0.25]


def encoder_metadata(**overrides):
    return untrained_metadata(arch="resnet18", stem="imagenet", image_size=IMAGE_SIZE, mean=MEAN, std=STD,
                              sampler="nce") | overrides


def write_encoder(path, seed=0, weights_seed=None, **overrides):
    torch.manual_seed(seed if weights_seed is None else weights_seed)
    return save_encoder(path, build_backbone("resnet18", "imagenet"), encoder_metadata(seed=seed, **overrides))


class ColourImages(torch.utils.data.Dataset):
    """Small RGB images whose class sets the mean colour, plus pixel noise: linearly learnable."""

    def __init__(self, n: int, num_classes: int = 3, seed: int = 0, size: int = 32):
        rng = np.random.default_rng(seed)
        self.labels = np.arange(n) % num_classes
        self.num_classes = num_classes
        palette = rng.uniform(0, 255, size=(num_classes, 3))
        self.arrays = [
            np.clip(palette[label] + rng.normal(0, 20, size=(size, size, 3)), 0, 255).astype(np.uint8)
            for label in self.labels
        ]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return Image.fromarray(self.arrays[index], "RGB"), int(self.labels[index])


class PatternImages(torch.utils.data.Dataset):
    """Class = stripe pattern (horizontal, vertical, checkerboard) in random colours and phases:
    survives colour jitter, grayscale, flips and crops, so augmented training can learn it."""

    def __init__(self, n: int, seed: int = 0, size: int = 32, period: int = 8):
        rng = np.random.default_rng(seed)
        self.labels = np.arange(n) % 3
        self.num_classes = 3
        rows, cols = np.mgrid[0:size, 0:size]
        self.arrays = []
        for label in self.labels:
            phase = rng.integers(0, period)
            bands = {0: (rows + phase) // (period // 2) % 2, 1: (cols + phase) // (period // 2) % 2,
                     2: ((rows + phase) // (period // 2) + (cols + phase) // (period // 2)) % 2}[int(label)]
            dark, light = rng.uniform(0, 100, 3), rng.uniform(155, 255, 3)
            image = np.where(bands[..., None] == 1, light, dark) + rng.normal(0, 10, (size, size, 3))
            self.arrays.append(np.clip(image, 0, 255).astype(np.uint8))

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return Image.fromarray(self.arrays[index], "RGB"), int(self.labels[index])
