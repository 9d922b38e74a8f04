"""The embedded VOC set: a real VOCdevkit (VOC2007 trainval + test, VOC2012 trainval) made from the digits.

Each 96 x 96 JPEG holds 2-4 non-overlapping digits upscaled 3-5x in the embedded encoders' pretraining colours
(as the embedded COCO set, transfer.detection.embedded). Each digit is one <object> in the image's
Annotations/<id>.xml, named by a VOC class: digit d is VOC_CLASSES[d] (0 aeroplane, 1 bicycle, 2 bird,
3 boat, 4 bottle, 5 bus, 6 car, 7 cat, 8 chair, 9 cow; the other ten classes do not occur). A digit drawn
faint (ink at 30-45% instead of 80-100%, about one in eight) is marked <difficult>1</difficult>, as VOC marks
objects that are hard to recognise; a class's first object in a set never is, so each class has an AP. Digit
classes come in turn (each object a random image of the next class), so every set holds all ten. ImageSets/Main holds trainval.txt (and test.txt for 2007). VOC2007 and
VOC2012 use disjoint digit images and their own id styles (000001, 2012_000001); test digits are disjoint
from both. Built once, atomically, and reused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ringbench_common.atomic_files import build_folder_once
from transfer.detection.voc_data import VOC_CLASSES

EMBEDDED_VOC_VERSION = 2
MARKER = "ringbench_embedded_voc.json"
DIGIT_CLASSES = VOC_CLASSES[:10]  # digit d -> DIGIT_CLASSES[d]


def default_parameters(canvas: int = 96, voc2007_trainval: int = 32, voc2012_trainval: int = 32,
                       voc2007_test: int = 64, seed: int = 0) -> dict[str, Any]:
    from pretrain.data import DIGITS_BACKGROUND, DIGITS_STROKE

    return {
        "version": EMBEDDED_VOC_VERSION,
        "background_rgb": [float(v) for v in DIGITS_BACKGROUND],
        "stroke_rgb": [float(v) for v in DIGITS_STROKE],
        "canvas": canvas,
        "images": {"2007/trainval": voc2007_trainval, "2012/trainval": voc2012_trainval, "2007/test": voc2007_test},
        "digits_per_image": [2, 4],
        "scales": [3, 4, 5],
        "difficult_fraction": 0.125,
        "classes": list(DIGIT_CLASSES),
        "seed": seed,
    }


def annotation_xml(folder: str, file_name: str, width: int, height: int, objects: list[dict[str, Any]]) -> str:
    """A VOC annotation document (the fields VOC and Detectron2 read)."""
    import xml.etree.ElementTree as ET

    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = file_name
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "RingBench embedded digits"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        element = ET.SubElement(root, "object")
        ET.SubElement(element, "name").text = obj["name"]
        ET.SubElement(element, "pose").text = "Unspecified"
        ET.SubElement(element, "truncated").text = "0"
        ET.SubElement(element, "difficult").text = "1" if obj["difficult"] else "0"
        box = ET.SubElement(element, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj["box"]):
            ET.SubElement(box, tag).text = str(int(value))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _render_set(year_root: Path, ids: list[str], digit_images: np.ndarray, digit_labels: np.ndarray,
                params: dict[str, Any], rng: np.random.Generator) -> None:
    from PIL import Image

    from transfer.detection.embedded import INK_THRESHOLD, canvas_rgb, digit_spots, paint_digit

    canvas = params["canvas"]
    next_class, easy = 0, set()
    for image_id in ids:
        pixels = rng.normal(0.04, 0.03, size=(canvas, canvas)).clip(0, 1)
        placed: list[tuple[int, int, int, int]] = []
        objects: list[dict[str, Any]] = []
        for scale, size, left, top in digit_spots(rng, params, placed):
            # classes in turn (a random image of each), so every class occurs in every set
            label = next_class % len(params["classes"])
            which = int(rng.choice(np.flatnonzero(digit_labels == label)))
            digit = digit_images[which]
            rows, cols = np.nonzero(digit >= INK_THRESHOLD)
            if rows.size == 0:
                continue
            placed.append((left, top, left + size, top + size))
            next_class += 1
            # a class's first object is never difficult: its AP needs a non-difficult object in each set
            difficult = bool(rng.random() < params["difficult_fraction"]) and label in easy
            if not difficult:
                easy.add(label)
            paint_digit(pixels, digit, left, top, size, rng.uniform(0.30, 0.45) if difficult else rng.uniform(0.8, 1.0))
            # VOC boxes: 1-based inclusive pixel indices of the ink's cells
            box = (left + cols.min() * scale + 1, top + rows.min() * scale + 1,
                   left + (cols.max() + 1) * scale, top + (rows.max() + 1) * scale)
            objects.append({"name": params["classes"][label], "box": box, "difficult": difficult})
        Image.fromarray(canvas_rgb(pixels, params)).save(year_root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        xml = annotation_xml(year_root.name, f"{image_id}.jpg", canvas, canvas, objects)
        (year_root / "Annotations" / f"{image_id}.xml").write_text(xml)


def build_embedded_voc(root: str | os.PathLike, **overrides: Any) -> Path:
    """Build (once) the digits VOCdevkit at `root` (root/VOCdevkit/VOC2007, VOC2012); rebuilt when the
    parameters change. Returns `root`, a valid --data-root."""
    from sklearn.datasets import load_digits

    params = default_parameters(**overrides)

    def build(staging: Path) -> None:
        digits = load_digits()
        order = np.random.default_rng(params["seed"]).permutation(len(digits.target))
        # disjoint digit images: 40% VOC2007 trainval, 20% VOC2012 trainval, 40% VOC2007 test
        cuts = (int(0.4 * len(order)), int(0.6 * len(order)))
        pools = {"2007/trainval": order[: cuts[0]], "2012/trainval": order[cuts[0] : cuts[1]], "2007/test": order[cuts[1] :]}
        for index, (key, count) in enumerate(params["images"].items()):
            year, split = key.split("/")
            year_root = staging / "VOCdevkit" / f"VOC{year}"
            for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
                (year_root / folder).mkdir(parents=True, exist_ok=True)
            offset = 0 if split == "trainval" else params["images"]["2007/trainval"]
            ids = [f"{offset + i + 1:06d}" if year == "2007" else f"2012_{i + 1:06d}" for i in range(count)]
            rng = np.random.default_rng([params["seed"], index + 1])
            pool = pools[key]
            _render_set(year_root, ids, digits.images[pool].astype(np.float64), digits.target[pool], params, rng)
            (year_root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")

    return build_folder_once(root, MARKER, params, build)


def embedded_classes(data_root: str | os.PathLike) -> tuple[str, ...] | None:
    """The classes of a built embedded set at `data_root` (None: not an embedded set, the 20 VOC classes)."""
    marker = Path(data_root) / MARKER
    if not marker.is_file():
        return None
    return tuple(json.loads(marker.read_text())["classes"])
