"""Datasets (embedded digits, CIFAR-10/100, STL-10, ImageNet) and the pretraining augmentations (MoCo v2, CMC).

Nothing is downloaded: every reader opens files already on disk under a data root and raises
`DatasetError` naming the expected layout when they are missing or incomplete.

Data-root layout (the root may also be the dataset folder itself):
    <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    <root>/cifar-100-python/{train, test, meta}
    <root>/stl10_binary/{train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin, class_names.txt}
    <root>/imagenet/{train,val}/<wnid>/*.JPEG
The embedded digits need no root.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from pretrain.images import UndecodableImage, open_lazy, read_rgb

DATASETS = ("digits", "cifar10", "cifar100", "stl10", "imagenet")
SPLITS = {
    "digits": ("train", "test"),
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "stl10": ("train", "test", "unlabeled", "train+unlabeled"),
    "imagenet": ("train", "val"),
}
# Split used for pretraining and the (train, held-out) pair of the kNN monitor.
PRETRAIN_SPLIT = {"digits": "train", "cifar10": "train", "cifar100": "train", "stl10": "train+unlabeled",
                  "imagenet": "train"}
MONITOR_SPLITS = {"digits": ("train", "test"), "cifar10": ("train", "test"), "cifar100": ("train", "test"),
                  "stl10": ("train", "test"), "imagenet": ("train", "val")}
NATIVE_IMAGE_SIZE = {"digits": 32, "cifar10": 32, "cifar100": 32, "stl10": 96, "imagenet": 224}

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Per-channel mean/std on the 0-1 pixel scale of each training split. Digits: measured on the
# rendered 32 px train split (see `digits_images`); the others are the commonly published values.
DATASET_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "digits": ((0.3539, 0.3604, 0.4598), (0.2919, 0.2158, 0.1777)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}

# Digits are rendered through a fixed two-colour map (background -> stroke) rather than as grey, so
# that colour-based views (CMC's L / ab split) both carry the digit; the map is the same for every
# image, so it adds no nuisance signal.
DIGITS_BACKGROUND = np.array([20, 40, 160], dtype=np.float32)
DIGITS_STROKE = np.array([250, 210, 20], dtype=np.float32)
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0

OBTAIN = {
    "cifar10": "torchvision.datasets.CIFAR10(root, download=True) on a machine with internet, or "
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz extracted under the root",
    "cifar100": "torchvision.datasets.CIFAR100(root, download=True) on a machine with internet, or "
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz extracted under the root",
    "stl10": "torchvision.datasets.STL10(root, download=True) on a machine with internet, or "
    "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz extracted under the root",
    "imagenet": "the ILSVRC-2012 train/val archives from image-net.org, with val sorted into one "
    "folder per class (e.g. with the common valprep.sh)",
}
LAYOUT = {
    "cifar10": "cifar-10-batches-py/{data_batch_1..data_batch_5, test_batch, batches.meta}",
    "cifar100": "cifar-100-python/{train, test, meta}",
    "stl10": "stl10_binary/{train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin, class_names.txt}",
    "imagenet": "imagenet/{train,val}/<wnid>/*.JPEG",
}
FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "stl10": "stl10_binary",
          "imagenet": "imagenet"}


class DatasetError(ValueError):
    """A dataset that is missing, incomplete or asked for with a bad name or split."""


def check_dataset_name(name: str) -> str:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    return name


def dataset_stats(name: str) -> tuple[list[float], list[float]]:
    mean, std = DATASET_STATS[check_dataset_name(name)]
    return list(mean), list(std)


class LabelledImages(Dataset):
    """(PIL RGB image, int label) pairs, or (transform(image), label) once `transform` is set.

    `.labels` is an int64 array (-1 for unlabelled images), `.classes` the class names,
    `.num_classes` their number.
    """

    def __init__(self, name: str, split: str, load: Callable[[int], Image.Image], labels: np.ndarray,
                 classes: list[str], transform: Callable | None = None, files: list[str] | None = None):
        self.name, self.split = name, split
        self._load = load
        self.files = files  # image files on disk (JPEG folders), else None: images live in arrays
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Image.Image:
        return self._load(index)

    def open_lazy(self, index: int) -> Image.Image:
        """The image with its pixels not yet decoded when it is a file (so a JPEG can be drafted smaller)."""
        if self.files is None:
            return self._load(index)
        return open_lazy(self.files[index])

    def encoded(self, index: int) -> torch.Tensor:
        """The image file's bytes as a 1-D uint8 tensor (files), else the decoded (3, H, W) uint8 image."""
        if self.files is None:
            return torch.from_numpy(np.asarray(self._load(index), dtype=np.uint8).copy()).permute(2, 0, 1)
        try:
            with open(self.files[index], "rb") as handle:
                return torch.frombuffer(bytearray(handle.read()), dtype=torch.uint8)
        except OSError as error:
            raise UndecodableImage(f"{self.files[index]}: not readable ({error})") from None

    def __getitem__(self, index: int):
        image = self._load(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        return f"LabelledImages({self.name!r}, split={self.split!r}, n={len(self)}, classes={self.num_classes})"


def _array_images(name: str, split: str, images: np.ndarray, labels: np.ndarray, classes: list[str],
                  image_size: int | None = None) -> LabelledImages:
    """Images held as a uint8 (N, H, W, 3) array (or memmap), resized on access when asked."""

    def load(index: int) -> Image.Image:
        image = Image.fromarray(np.ascontiguousarray(images[index]), mode="RGB")
        if image_size is not None and image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.BILINEAR)
        return image

    return LabelledImages(name, split, load, labels, classes)


def digits_images(image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 bundled scikit-learn digits as uint8 (N, size, size, 3) colour-mapped images + labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    intensity = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    if image_size != 8:
        intensity = torch.nn.functional.interpolate(intensity, size=(image_size, image_size), mode="bilinear",
                                                    align_corners=False).clamp(0, 1)
    intensity = intensity.squeeze(1).numpy()[..., None]
    rgb = DIGITS_BACKGROUND + intensity * (DIGITS_STROKE - DIGITS_BACKGROUND)
    return np.round(rgb).astype(np.uint8), digits.target.astype(np.int64)


def digits_split_indices() -> dict[str, np.ndarray]:
    """The fixed stratified 80/20 train/test split of the digits (seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    labels = load_digits().target
    train, test = train_test_split(np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, stratify=labels,
                                   random_state=DIGITS_SPLIT_SEED)
    return {"train": np.sort(train), "test": np.sort(test)}


def _open_digits(split: str, image_size: int) -> LabelledImages:
    images, labels = digits_images(image_size)
    index = digits_split_indices()[split]
    return _array_images("digits", split, images[index], labels[index], [str(d) for d in range(10)])


def _dataset_folder(name: str, root: str | os.PathLike | None) -> Path:
    if root is None:
        raise DatasetError(f"dataset {name!r} needs a data root holding {LAYOUT[name]}; obtain it via {OBTAIN[name]}")
    root = Path(root).expanduser()
    folder = root if root.name == FOLDER[name] else root / FOLDER[name]
    if not folder.is_dir():
        raise DatasetError(
            f"dataset {name!r}: folder {folder} not found; expected <data-root>/{LAYOUT[name]} "
            f"(data root given: {root}). Obtain it via {OBTAIN[name]}; nothing is downloaded at run time."
        )
    return folder


def _require_files(name: str, folder: Path, files: list[str]) -> None:
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DatasetError(
            f"dataset {name!r} in {folder} is incomplete: missing {', '.join(missing)}; expected "
            f"<data-root>/{LAYOUT[name]}. Obtain it via {OBTAIN[name]}."
        )


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle, encoding="bytes")
    except Exception as error:
        raise DatasetError(f"{path}: not a readable CIFAR pickle ({type(error).__name__}: {error})") from None


def _open_cifar(name: str, root, split: str) -> LabelledImages:
    folder = _dataset_folder(name, root)
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        _require_files(name, folder, files + ["batches.meta"])
        classes = [c.decode() for c in _unpickle(folder / "batches.meta")[b"label_names"]]
        label_key = b"labels"
    else:
        files = [split]
        _require_files(name, folder, files + ["meta"])
        classes = [c.decode() for c in _unpickle(folder / "meta")[b"fine_label_names"]]
        label_key = b"fine_labels"
    data, labels = [], []
    for file in files:
        batch = _unpickle(folder / file)
        if b"data" not in batch or label_key not in batch:
            raise DatasetError(f"{folder / file}: lacks b'data' or {label_key!r}; not a {name} batch file")
        data.append(np.asarray(batch[b"data"], dtype=np.uint8))
        labels.extend(batch[label_key])
    images = np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return _array_images(name, split, images, np.asarray(labels), classes)


def _stl_images(folder: Path, stem: str) -> np.ndarray:
    path = folder / f"{stem}_X.bin"
    size = path.stat().st_size
    if size % (3 * 96 * 96):
        raise DatasetError(f"{path}: {size} bytes is not a whole number of 3x96x96 images (truncated?)")
    raw = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, 96, 96)
    return raw.transpose(0, 3, 2, 1)  # stored column-major per channel


def _open_stl10(root, split: str) -> LabelledImages:
    folder = _dataset_folder("stl10", root)
    parts = split.split("+")
    needed = ["class_names.txt"]
    for part in parts:
        needed += [f"{part}_X.bin"] + ([f"{part}_y.bin"] if part != "unlabeled" else [])
    _require_files("stl10", folder, needed)
    classes = (folder / "class_names.txt").read_text().split()
    arrays, labels = [], []
    for part in parts:
        images = _stl_images(folder, part)
        if part == "unlabeled":
            part_labels = np.full(len(images), -1, dtype=np.int64)
        else:
            part_labels = np.fromfile(folder / f"{part}_y.bin", dtype=np.uint8).astype(np.int64) - 1
            if len(part_labels) != len(images):
                raise DatasetError(f"{folder}: {part}_y.bin has {len(part_labels)} labels for {len(images)} images")
        arrays.append(images)
        labels.append(part_labels)
    bounds = np.cumsum([0] + [len(a) for a in arrays])

    def load(index: int) -> Image.Image:
        part = int(np.searchsorted(bounds, index, side="right") - 1)
        return Image.fromarray(np.ascontiguousarray(arrays[part][index - bounds[part]]), mode="RGB")

    return LabelledImages("stl10", split, load, np.concatenate(labels), classes)


def _open_imagenet(root, split: str) -> LabelledImages:
    from torchvision.datasets import ImageFolder

    folder = _dataset_folder("imagenet", root) / split
    if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
        raise DatasetError(
            f"dataset 'imagenet': {folder} has no class folders; expected <data-root>/{LAYOUT['imagenet']}. "
            f"Obtain it via {OBTAIN['imagenet']}."
        )
    images = ImageFolder(str(folder))

    def load(index: int) -> Image.Image:
        return read_rgb(images.samples[index][0])  # PIL's convert("RGB"), as ImageFolder's loader

    return LabelledImages("imagenet", split, load, np.asarray(images.targets), images.classes,
                          files=[path for path, _ in images.samples])


def open_dataset(name: str, root: str | os.PathLike | None = None, split: str = "train",
                 image_size: int | None = None) -> LabelledImages:
    """Open a labelled image dataset from disk (digits from scikit-learn; `image_size` only for digits)."""
    check_dataset_name(name)
    if split not in SPLITS[name]:
        raise DatasetError(f"dataset {name!r} has no split {split!r}; valid splits: {', '.join(SPLITS[name])}")
    if name == "digits":
        return _open_digits(split, image_size or NATIVE_IMAGE_SIZE["digits"])
    if name in ("cifar10", "cifar100"):
        return _open_cifar(name, root, split)
    if name == "stl10":
        return _open_stl10(root, split)
    return _open_imagenet(root, split)


# ---------------------------------------------------------------------------------------------- augmentations

AUGMENT_SIZES = (32, 64, 96, 224)


AUGMENTATIONS = ("mocov2", "cmc")


def augmentation_for(method: str, setting: str = "auto") -> str:
    """The augmentation pipeline a config means: `auto` is the method's own (CMC's for cmc, else MoCo v2)."""
    if setting == "auto":
        return "cmc" if method == "cmc" else "mocov2"
    if setting not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {setting!r}; valid: auto, {', '.join(AUGMENTATIONS)}")
    return setting


def pretrain_transform(image_size: int, mean, std, crop_min_scale: float = 0.2, hflip: bool = True,
                       blur: bool | None = None, augmentation: str = "mocov2") -> Callable:
    """The pretraining augmentation at `image_size`, ending in ToTensor + Normalize(mean, std).

    mocov2  random resized crop, colour jitter (p 0.8), grayscale (p 0.2), Gaussian blur (p 0.5; by
            default only at >= 64 px, kernel ~10% of the side), horizontal flip.
    cmc     CMC's (HobbitLong/CMC train_CMC.py): random resized crop and horizontal flip only. No colour
            operation: the Lab split that follows (pretrain.views) is CMC's view generator, and jitter or
            grayscale would change the very colour the ab encoder has to predict from L.
    """
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augmentation!r}; valid: {', '.join(AUGMENTATIONS)}")
    steps: list = [T.RandomResizedCrop(image_size, scale=(crop_min_scale, 1.0), antialias=True)]
    if augmentation == "mocov2":
        steps += [T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2)]
        blur = image_size >= 64 if blur is None else blur
        if blur:
            kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)
            steps.append(T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def eval_transform(image_size: int, mean, std) -> Callable:
    """Resize (the 256/224 ratio at 224 px) and centre crop, then normalise."""
    resize = 256 if image_size == 224 else image_size
    return T.Compose([T.Resize(resize, antialias=True), T.CenterCrop(image_size), T.ToTensor(), T.Normalize(mean, std)])


def eval_transform_uint8(image_size: int) -> Callable:
    """`eval_transform` up to the pixels: resize and centre crop, as a (3, S, S) uint8 tensor; the
    device converts and normalises (`transfer.features.device_images`), with bit-identical results."""
    resize = 256 if image_size == 224 else image_size
    return T.Compose([T.Resize(resize, antialias=True), T.CenterCrop(image_size), T.PILToTensor()])


# A run of this many undecodable files in a row is not a few bad files but the wrong folder.
MAX_CONSECUTIVE_UNDECODABLE = 32


class UndecodableSkips:
    """Counts the files skipped as undecodable (`data.skip_undecodable`), across DataLoader worker
    processes (a shared counter), and names each skipped file once on stderr."""

    def __init__(self):
        import multiprocessing

        self._count = multiprocessing.Value("q", 0)

    def add(self, error: UndecodableImage) -> None:
        with self._count.get_lock():
            self._count.value += 1
        print(f"warning: skipped undecodable image: {error}", file=sys.stderr, flush=True)

    def take(self) -> int:
        """The count since the last call (the epoch's), reset to 0."""
        with self._count.get_lock():
            count, self._count.value = self._count.value, 0
        return int(count)


def decodable_item(read: Callable[[int], Any], index: int, length: int, skips: UndecodableSkips | None):
    """(read(index), index); with `skips`, an undecodable file is counted and the next decodable file
    (index + 1, ...) stands in, with its own index (a memory bank stays consistent)."""
    for offset in range(MAX_CONSECUTIVE_UNDECODABLE):
        candidate = (index + offset) % length
        try:
            return read(candidate), candidate
        except UndecodableImage as error:
            if skips is None:
                raise
            if offset == 0:  # a stand-in that fails is counted on its own turn
                skips.add(error)
    raise DatasetError(f"{MAX_CONSECUTIVE_UNDECODABLE} files in a row from dataset index {index} do not decode; "
                       "is the data root an image dataset?")


class MultiViewDataset(Dataset):
    """Wraps a LabelledImages: item = (view_1, ..., view_n, index) with independent augmentations.
    `skips`: skip undecodable files (counted there) instead of raising."""

    def __init__(self, images: LabelledImages, transform: Callable, num_views: int = 2,
                 skips: UndecodableSkips | None = None):
        self.images, self.transform, self.num_views, self.skips = images, transform, num_views, skips

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image, index = decodable_item(self.images.image, index, len(self.images), self.skips)
        return (*(self.transform(image) for _ in range(self.num_views)), index)


class UInt8Views(Dataset):
    """The CPU half of the uint8 pipeline: item = ((num_views, 3, size, size) uint8 views, index), the
    views cropped, resized and flipped (`pretrain.augment.crop_flip_views`); colour runs on the device."""

    def __init__(self, images: LabelledImages, laws, num_views: int = 2, skips: UndecodableSkips | None = None):
        self.images, self.laws, self.num_views, self.skips = images, laws, num_views, skips

    def __len__(self) -> int:
        return len(self.images)

    def _views(self, index: int) -> torch.Tensor:
        from pretrain.augment import crop_flip_views

        image = self.images.open_lazy(index)
        try:
            return crop_flip_views(image, self.laws, self.num_views)
        except (OSError, SyntaxError) as error:  # PIL decodes lazily: a truncated file fails here
            name = self.images.files[index] if self.images.files is not None else f"image {index}"
            raise UndecodableImage(f"{name}: not a decodable image ({error})") from None

    def __getitem__(self, index: int):
        return decodable_item(self._views, index, len(self.images), self.skips)


class EncodedImages(Dataset):
    """The CPU half of the GPU pipeline: item = (file bytes, or the decoded uint8 image, index)."""

    def __init__(self, images: LabelledImages):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images.encoded(index), index


def collate_encoded(items):
    """Keep the variable-size byte strings as a list; indices as a tensor."""
    return [data for data, _ in items], torch.tensor([index for _, index in items])


class TransformedImages(Dataset):
    """(transform(image), label) without touching the wrapped dataset's own transform."""

    def __init__(self, images: LabelledImages, transform: Callable):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images.image(index)), int(self.images.labels[index])
