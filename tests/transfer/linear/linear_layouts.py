"""Small datasets written in the real on-disk layouts (CIFAR pickles, STL-10 binaries, ImageFolder).

Each class has its own colour (plus pixel noise), so a correct reader gives a linearly separable
problem even through a random encoder, and a reader that misaligns images and labels does not.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def class_images(labels: np.ndarray, num_classes: int, size: int, seed: int) -> np.ndarray:
    palette = np.random.default_rng(1234).uniform(0, 255, size=(num_classes, 3))
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 6, size=(len(labels), size, size, 3))
    return np.clip(palette[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def balanced_labels(n: int, num_classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % num_classes)


def _pickle(path: Path, value: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(value, handle)


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # channel planes, row-major


def write_cifar10(root: Path, per_batch: int = 6, n_test: int = 20) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_labels = balanced_labels(5 * per_batch, 10, seed=0)  # every class in the training set
    for batch in range(1, 6):
        labels = train_labels[(batch - 1) * per_batch:batch * per_batch]
        _pickle(folder / f"data_batch_{batch}",
                {b"data": _cifar_rows(class_images(labels, 10, 32, batch)), b"labels": labels.tolist()})
    labels = balanced_labels(n_test, 10, seed=99)
    _pickle(folder / "test_batch", {b"data": _cifar_rows(class_images(labels, 10, 32, 99)), b"labels": labels.tolist()})
    _pickle(folder / "batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)]})
    return folder


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        labels = balanced_labels(n, 100, seed)
        _pickle(folder / split, {b"data": _cifar_rows(class_images(labels, 100, 32, seed)),
                                 b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist()})
    _pickle(folder / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)]})
    return folder


def write_stl10(root: Path, n_train: int = 30, n_test: int = 20) -> Path:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        labels = balanced_labels(n, 10, seed)
        images = class_images(labels, 10, 96, seed)
        images.transpose(0, 3, 2, 1).tofile(folder / f"{split}_X.bin")  # STL-10 stores each channel column-major
        (labels + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")  # labels 1..10 on disk
    (folder / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    return folder


def write_imagefolder(root: Path, classes: int = 3, n_train: int = 15, n_test: int = 9) -> Path:
    folder = root / "imagenet"
    for split, n, seed in (("train", n_train, 1), ("val", n_test, 2)):
        labels = balanced_labels(n, classes, seed)
        for index, (image, label) in enumerate(zip(class_images(labels, classes, 40, seed), labels)):
            target = folder / split / f"n{label:08d}" / f"{split}_{index}.JPEG"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(target, format="JPEG", quality=95)
    return folder
