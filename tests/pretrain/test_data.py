import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.data import (
    AUGMENT_SIZES,
    DATASET_STATS,
    DatasetError,
    digits_images,
    eval_transform,
    open_dataset,
    pretrain_transform,
)


def test_digits_split_is_fixed_stratified_and_disjoint():
    train, test = open_dataset("digits", split="train"), open_dataset("digits", split="test")
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert train.num_classes == 10 and train.classes[3] == "3"
    # stratified: every class holds about 20% of its images in test
    for label in range(10):
        share = (test.labels == label).sum() / ((test.labels == label).sum() + (train.labels == label).sum())
        assert 0.17 < share < 0.23
    again = open_dataset("digits", split="test")
    assert np.array_equal(again.labels, test.labels)
    image, label = test[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (32, 32)
    assert open_dataset("digits", split="test", image_size=64)[0][0].size == (64, 64)


def test_digits_stats_match_the_rendered_train_split():
    images, _ = digits_images(32)
    train = open_dataset("digits", split="train")
    pixels = np.stack([np.asarray(train.image(i)) for i in range(len(train))]).reshape(-1, 3) / 255.0
    mean, std = DATASET_STATS["digits"]
    assert np.allclose(pixels.mean(0), mean, atol=2e-3) and np.allclose(pixels.std(0), std, atol=2e-3)
    assert images.shape == (1797, 32, 32, 3)


def _write_cifar10(root, per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 255, (per_batch, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, per_batch))}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, handle)
    return folder


def test_cifar10_reads_torchvision_pickles_and_channel_order(tmp_path):
    folder = _write_cifar10(tmp_path)
    train = open_dataset("cifar10", tmp_path, "train")
    assert len(train) == 20 and train.classes[2] == "c2" and train.num_classes == 10
    with open(folder / "data_batch_1", "rb") as handle:
        raw = pickle.load(handle, encoding="bytes")[b"data"][0]
    image = np.asarray(train.image(0))
    assert image[0, 0, 0] == raw[0] and image[0, 0, 1] == raw[1024] and image[0, 1, 0] == raw[1]
    assert len(open_dataset("cifar10", folder, "test")) == 4  # the root may be the dataset folder


def test_incomplete_cifar_names_the_missing_file(tmp_path):
    folder = _write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3.*cifar-10-python.tar.gz"):
        open_dataset("cifar10", tmp_path, "train")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10", "imagenet"])
def test_missing_dataset_names_the_layout(tmp_path, name):
    with pytest.raises(DatasetError, match="expected <data-root>/.*nothing is downloaded"):
        open_dataset(name, tmp_path, "train")


def test_stl10_binary_layout(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for part, n in (("train", 3), ("test", 2), ("unlabeled", 4)):
        rng.integers(0, 255, n * 3 * 96 * 96, dtype=np.uint8).tofile(folder / f"{part}_X.bin")
        if part != "unlabeled":
            np.array([1, 10, 5][:n], dtype=np.uint8).tofile(folder / f"{part}_y.bin")
    (folder / "class_names.txt").write_text("\n".join(f"k{i}" for i in range(10)))
    both = open_dataset("stl10", tmp_path, "train+unlabeled")
    assert len(both) == 7 and both.labels.tolist() == [0, 9, 4, -1, -1, -1, -1]
    assert both.image(5).size == (96, 96)
    raw = np.fromfile(folder / "train_X.bin", dtype=np.uint8)
    # column-major storage: pixel (row 0, col 1) of channel 0 is byte 96
    assert np.asarray(both.image(0))[0, 1, 0] == raw[96]
    with open(folder / "test_X.bin", "ab") as handle:
        handle.write(b"\x00")
    with pytest.raises(DatasetError, match="truncated"):
        open_dataset("stl10", tmp_path, "test")


def test_imagenet_image_folder(tmp_path):
    for split in ("train", "val"):
        for wnid in ("n01", "n02"):
            (tmp_path / "imagenet" / split / wnid).mkdir(parents=True)
            Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "imagenet" / split / wnid / "a.JPEG")
    val = open_dataset("imagenet", tmp_path, "val")
    assert val.classes == ["n01", "n02"] and val.labels.tolist() == [0, 1] and val[1][0].size == (40, 30)


def test_unknown_names_and_splits():
    with pytest.raises(DatasetError, match="valid datasets: digits, cifar10"):
        open_dataset("mnist")
    with pytest.raises(DatasetError, match="valid splits: train, test"):
        open_dataset("digits", split="val")


@pytest.mark.parametrize("size", AUGMENT_SIZES)
def test_augmentations_give_normalised_tensors_at_each_size(size):
    image = Image.new("RGB", (50, 50), (200, 100, 50))
    mean, std = DATASET_STATS["imagenet"]
    view = pretrain_transform(size, mean, std)(image)
    assert view.shape == (3, size, size) and view.dtype == torch.float32
    assert eval_transform(size, mean, std)(image).shape == (3, size, size)
