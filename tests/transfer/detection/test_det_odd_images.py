"""Both detection engines read odd image files as PIL's convert("RGB") of the stored pixels (no EXIF
rotation: COCO's boxes are drawn on them) and name a file that does not decode."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from pretrain.images import UndecodableImage
from ringbench_testing.odd_images import DECODABLE, max_difference, reference_rgb, write_odd_image
from transfer.detection.coco_data import CocoDetectionDataset, coco_layout
from transfer.detection.engines.detectron2_engine import read_image_as_stored


@pytest.fixture()
def odd_coco(small_coco, tmp_path):
    """The small COCO set with its first train images rewritten as odd files under their .png names."""
    root = tmp_path / "coco"
    shutil.copytree(small_coco, root)
    split = coco_layout(root, ["instances"])[("instances", "train")]
    dataset = CocoDetectionDataset(split, False, False, train=True)
    files = {}
    for index, kind in enumerate(DECODABLE):
        info = dataset.coco.loadImgs(dataset.image_ids[index])[0]
        path = split.image_root / info["file_name"]
        pixels = np.asarray(Image.open(path).convert("RGB"))
        files[kind] = (index, write_odd_image(path, kind, pixels))
    return dataset, files


def test_torchvision_engine_reads_every_kind_as_pil(odd_coco):
    dataset, files = odd_coco
    for kind, (index, path) in files.items():
        image, _ = dataset[index]
        pixels = np.round(image.permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)
        assert max_difference(pixels, reference_rgb(path)) == 0, kind


def test_detectron2_engine_reads_every_kind_as_pil(odd_coco):
    dataset, files = odd_coco
    for kind, (_, path) in files.items():
        reference = reference_rgb(path)
        assert max_difference(read_image_as_stored(str(path), "RGB"), reference) == 0, kind
        assert max_difference(read_image_as_stored(str(path), "BGR")[:, :, ::-1], reference) == 0, kind


def test_an_undecodable_file_is_named_by_both_engines(odd_coco):
    dataset, files = odd_coco
    index, path = files["rgb"]
    write_odd_image(path, "truncated", reference_rgb(files["gray"][1]))
    with pytest.raises(UndecodableImage, match=str(path)):
        dataset[index]
    with pytest.raises(UndecodableImage, match=str(path)):
        read_image_as_stored(str(path), "BGR")
