"""The embedded Meta-Dataset source: scikit-learn's bundled digits in the real on-disk format.

`<cache>/meta_dataset/records-v1/digits/{0..9}.tfrecords` + `dataset_spec.json` (plain
`DatasetSpecification`): digits 0-4 are the TRAIN classes, 5-9 the TEST classes (no VALID), so
default TEST episodes are 5-way. Each 8x8 image (0..16) is scaled to 0..255, upsampled to 32x32
(bilinear), made RGB and stored as JPEG, one class file per digit, written by TensorFlow.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from ringbench_common.atomic_files import create_temporary_folder
from transfer.meta_dataset.spec import write_spec

EMBEDDED_SOURCE = "digits"
EMBEDDED_VERSION = 1
IMAGE_PIXELS = 32
TRAIN_DIGITS = (0, 1, 2, 3, 4)
TEST_DIGITS = (5, 6, 7, 8, 9)


def embedded_records_root() -> Path:
    from pretrain.embedded import cache_root

    return cache_root() / "meta_dataset" / f"records-v{EMBEDDED_VERSION}"


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 32, 32, 3) RGB images and their digit labels."""
    import torch
    from sklearn.datasets import load_digits
    from torch.nn import functional as F

    digits = load_digits()
    small = torch.from_numpy(digits.images.astype(np.float32) * (255.0 / 16.0))[:, None]
    large = F.interpolate(small, size=(IMAGE_PIXELS, IMAGE_PIXELS), mode="bilinear", align_corners=False)
    gray = large.clamp(0, 255).round().to(torch.uint8)[:, 0].numpy()
    return np.repeat(gray[..., None], 3, axis=-1), digits.target.astype(np.int64)


def write_digits_source(folder: Path) -> Path:
    """Write the digits source into `folder` (created); returns it."""
    from transfer.meta_dataset import records

    folder.mkdir(parents=True, exist_ok=True)
    images, labels = digit_images()
    order = list(TRAIN_DIGITS) + list(TEST_DIGITS)  # class id = position: TRAIN ids first
    images_per_class = {}
    for class_id, digit in enumerate(order):
        encoded = [records.encode_jpeg(image) for image in images[labels == digit]]
        images_per_class[str(class_id)] = records.write_records(folder / f"{class_id}.tfrecords", encoded, class_id)
    spec = {
        "__class__": "DatasetSpecification",
        "name": EMBEDDED_SOURCE,
        "classes_per_split": {"TRAIN": len(TRAIN_DIGITS), "VALID": 0, "TEST": len(TEST_DIGITS)},
        "images_per_class": images_per_class,
        "class_names": {str(class_id): f"digit_{digit}" for class_id, digit in enumerate(order)},
        "path": str(folder),
        "file_pattern": "{}.tfrecords",
    }
    write_spec(folder / "dataset_spec.json", spec)
    return folder


def embedded_records() -> Path:
    """The records folder holding the `digits` source, written on first use (atomically)."""
    root = embedded_records_root()
    if (root / EMBEDDED_SOURCE / "dataset_spec.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = create_temporary_folder(root)  # umask-following, unlike mkdtemp's 0700
    try:
        write_digits_source(staging / EMBEDDED_SOURCE)
        try:
            os.rename(staging, root)
        except OSError:  # another process finished first
            if not (root / EMBEDDED_SOURCE / "dataset_spec.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root
