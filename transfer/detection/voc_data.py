"""PASCAL VOC on disk: the real VOCdevkit layout, checked before anything is submitted, and read for training.

Layout (per year, under `<data-root>/VOCdevkit/VOC<year>` or `<data-root>/VOC<year>`, Detectron2's layout):

    Annotations/<id>.xml         one per image: <size><width><height>, <object><name><difficult><bndbox>
    ImageSets/Main/<split>.txt   image ids, one per line (trainval for training, test for VOC2007 test)
    JPEGImages/<id>.jpg

Boxes are VOC's 1-based inclusive pixel indices (xmin, ymin, xmax, ymax); `training_box` turns them into
continuous [xmin - 1, ymin - 1, xmax, ymax] as Detectron2's `load_voc_instances` does. `difficult` objects are
trained on (as Detectron2 does) and ignored by the evaluation (voc_eval).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
YEARS = ("2007", "2012")
TEST_SET = ("2007", "test")  # MoCo: voc_2007_test


class VocDataError(ValueError):
    """A VOC dataset that cannot be used; the message names the file and the value that is wrong."""


@dataclass(frozen=True)
class VocObject:
    name: str
    box: tuple[float, float, float, float]  # VOC's 1-based inclusive xmin, ymin, xmax, ymax
    difficult: bool

    @property
    def training_box(self) -> tuple[float, float, float, float]:
        """Continuous pixel coordinates (Detectron2's load_voc_instances: xmin - 1, ymin - 1)."""
        xmin, ymin, xmax, ymax = self.box
        return (xmin - 1.0, ymin - 1.0, xmax, ymax)


@dataclass(frozen=True)
class VocImage:
    image_id: str
    jpeg: Path
    width: int
    height: int
    objects: tuple[VocObject, ...]


@dataclass(frozen=True)
class VocSplit:
    """One image set of one year, e.g. VOC2007 test."""

    year: str
    split: str
    root: Path  # the VOC<year> folder

    @property
    def name(self) -> str:
        return f"voc_{self.year}_{self.split}"

    @property
    def image_set_file(self) -> Path:
        return self.root / "ImageSets" / "Main" / f"{self.split}.txt"

    def annotation(self, image_id: str) -> Path:
        return self.root / "Annotations" / f"{image_id}.xml"

    def jpeg(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"


def year_folder(data_root: str | os.PathLike, year: str) -> Path:
    """`<root>/VOCdevkit/VOC<year>`, `<root>/VOC<year>`, or `<root>` itself when it is that folder."""
    root = Path(data_root).expanduser()
    for candidate in (root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}"):
        if candidate.is_dir():
            return candidate
    if root.name == f"VOC{year}" and root.is_dir():
        return root
    raise VocDataError(f"{root}: no VOC{year} folder (looked for {root / 'VOCdevkit' / f'VOC{year}'} and {root / f'VOC{year}'})")


def voc_splits(data_root: str | os.PathLike, train_years: Sequence[str]) -> tuple[list[VocSplit], VocSplit]:
    """The trainval sets of `train_years` and VOC2007 test; a missing year is named (07+12 needs VOC2012)."""
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise VocDataError(f"--data-root {root}: not a directory")
    train = []
    for year in train_years:
        if year not in YEARS:
            raise VocDataError(f"train year {year!r}: expected one of {', '.join(YEARS)}")
        try:
            train.append(VocSplit(year, "trainval", year_folder(root, year)))
        except VocDataError as error:
            asked = "+".join(y[2:] for y in train_years)
            raise VocDataError(f"{error}; training on VOC{asked} needs VOC{year} "
                               f"(train only on 2007 with train_years=2007)") from None
    test = VocSplit(TEST_SET[0], TEST_SET[1], year_folder(root, TEST_SET[0]))
    return train, test


def read_image_set(split: VocSplit) -> list[str]:
    path = split.image_set_file
    if not path.is_file():
        raise VocDataError(f"{path}: image set missing ({split.name} needs ImageSets/Main/{split.split}.txt)")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise VocDataError(f"{path}: image set is empty (expected one image id per line)")
    duplicated = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if duplicated:
        raise VocDataError(f"{path}: image id(s) listed twice: {', '.join(duplicated[:5])}")
    return ids


def _text(element: ET.Element, tag: str, path: Path, where: str) -> str:
    found = element.find(tag)
    if found is None or found.text is None or not found.text.strip():
        raise VocDataError(f"{path}: {where} has no <{tag}>")
    return found.text.strip()


def _number(element: ET.Element, tag: str, path: Path, where: str) -> float:
    text = _text(element, tag, path, where)
    try:
        value = float(text)
    except ValueError:
        raise VocDataError(f"{path}: {where} <{tag}>{text}</{tag}> is not a number") from None
    if not np.isfinite(value):
        raise VocDataError(f"{path}: {where} <{tag}>{text}</{tag}> is not finite")
    return value


def parse_annotation(path: Path, classes: Sequence[str] = VOC_CLASSES) -> tuple[int, int, tuple[VocObject, ...]]:
    """(width, height, objects) of one annotation file, every value checked: well-formed XML, a size, objects
    of `classes` only, boxes inside the image with a positive area, `difficult` 0 or 1 (missing = 0)."""
    if not path.is_file():
        raise VocDataError(f"{path}: annotation file missing")
    try:
        tree = ET.parse(path)
    except ET.ParseError as error:
        raise VocDataError(f"{path}: malformed XML ({error})") from None
    annotation = tree.getroot()
    if annotation.tag != "annotation":
        raise VocDataError(f"{path}: malformed VOC annotation: root element <{annotation.tag}>, expected <annotation>")
    size = annotation.find("size")
    if size is None:
        raise VocDataError(f"{path}: <annotation> has no <size>")
    width, height = _number(size, "width", path, "<size>"), _number(size, "height", path, "<size>")
    if width < 1 or height < 1 or width != int(width) or height != int(height):
        raise VocDataError(f"{path}: <size> {width:g} x {height:g}: expected positive integers")
    objects = []
    for index, element in enumerate(annotation.findall("object")):
        where = f"object {index}"
        name = _text(element, "name", path, where)
        if name not in classes:
            raise VocDataError(f"{path}: {where} class {name!r} is not one of the VOC classes "
                               f"({', '.join(classes)})")
        difficult_element = element.find("difficult")
        difficult_text = (difficult_element.text or "").strip() if difficult_element is not None else "0"
        if difficult_text not in ("0", "1"):
            raise VocDataError(f"{path}: {where} ({name}) <difficult>{difficult_text}</difficult>: expected 0 or 1")
        box_element = element.find("bndbox")
        if box_element is None:
            raise VocDataError(f"{path}: {where} ({name}) has no <bndbox>")
        box = tuple(_number(box_element, tag, path, f"{where} ({name}) <bndbox>") for tag in ("xmin", "ymin", "xmax", "ymax"))
        xmin, ymin, xmax, ymax = box
        if xmin < 1 or ymin < 1 or xmax > width or ymax > height:
            raise VocDataError(f"{path}: {where} ({name}) box (xmin {xmin:g}, ymin {ymin:g}, xmax {xmax:g}, ymax {ymax:g}) "
                               f"is outside the {width:g} x {height:g} image (VOC boxes are 1-based: 1 <= x <= width)")
        if xmax < xmin or ymax < ymin:  # continuous [xmin - 1, xmax] x [ymin - 1, ymax]: area 0 or less
            raise VocDataError(f"{path}: {where} ({name}) box (xmin {xmin:g}, ymin {ymin:g}, xmax {xmax:g}, ymax {ymax:g}) "
                               "has zero area (expected xmin <= xmax and ymin <= ymax)")
        objects.append(VocObject(name, box, difficult_text == "1"))  # type: ignore[arg-type]
    return int(width), int(height), tuple(objects)


def read_split(split: VocSplit, classes: Sequence[str] = VOC_CLASSES, check_jpegs: bool = True) -> list[VocImage]:
    """Every image of an image set with its checked annotation; a missing JPEG is named."""
    images = []
    for image_id in read_image_set(split):
        jpeg = split.jpeg(image_id)
        if check_jpegs and not jpeg.is_file():
            raise VocDataError(f"{jpeg}: JPEG missing (listed in {split.image_set_file})")
        width, height, objects = parse_annotation(split.annotation(image_id), classes)
        images.append(VocImage(image_id, jpeg, width, height, objects))
    return images


@dataclass(frozen=True)
class VocSummary:
    split: str
    num_images: int
    num_objects: int
    num_difficult: int
    images_without_objects: int
    classes: tuple[str, ...]  # the classes with at least one object, in VOC order


def summarise(split: VocSplit, images: Sequence[VocImage]) -> VocSummary:
    present = {obj.name for image in images for obj in image.objects}
    return VocSummary(split.name, len(images), sum(len(i.objects) for i in images),
                      sum(o.difficult for i in images for o in i.objects), sum(not i.objects for i in images),
                      tuple(name for name in VOC_CLASSES if name in present))


def check_voc_root(data_root: str | os.PathLike, train_years: Sequence[str],
                   classes: Sequence[str] = VOC_CLASSES) -> dict[str, VocSummary]:
    """Check the train and test sets completely (files, XML, classes, boxes); split name -> summary.

    Every evaluated class must have a non-difficult object in the test set: VOC's AP of a class without one is
    undefined (Detectron2's voc_eval divides by zero)."""
    train, test = voc_splits(data_root, train_years)
    summaries = {}
    for split in [*train, test]:
        images = read_split(split, classes)
        summaries[split.name] = summarise(split, images)
    test_images = images
    positives = {obj.name for image in test_images for obj in image.objects if not obj.difficult}
    missing = [name for name in classes if name not in positives]
    if missing:
        raise VocDataError(f"{test.image_set_file}: no non-difficult object of class(es) {', '.join(missing)} in "
                           f"{test.name}; their AP is undefined")
    return summaries


class VocDetectionDataset:
    """Images and torchvision targets (boxes xyxy continuous, labels 1..K in `classes` order) of VOC images.

    Training keeps `difficult` objects (Detectron2 does) and leaves out images without objects (Detectron2's
    FILTER_EMPTY_ANNOTATIONS)."""

    def __init__(self, images: Sequence[VocImage], classes: Sequence[str], train: bool, horizontal_flip: bool = False):
        self.classes = tuple(classes)
        self.label = {name: index + 1 for index, name in enumerate(self.classes)}
        self.images = [image for image in images if image.objects] if train else list(images)
        if train and not self.images:
            raise VocDataError("no training image has an object")
        self.horizontal_flip = horizontal_flip and train

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        import torch
        from PIL import Image

        image = self.images[index]
        with Image.open(image.jpeg) as handle:
            array = np.asarray(handle.convert("RGB"), dtype=np.float32) / 255.0
        boxes = np.array([obj.training_box for obj in image.objects], dtype=np.float32).reshape(-1, 4)
        labels = np.array([self.label[obj.name] for obj in image.objects], dtype=np.int64)
        if self.horizontal_flip and np.random.random() < 0.5:
            array = array[:, ::-1]
            boxes[:, [0, 2]] = array.shape[1] - boxes[:, [2, 0]]
        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        return tensor, {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels), "index": index}
