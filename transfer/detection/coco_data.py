"""COCO 2017 layout under --data-root, json checks with clear errors, and a torch dataset over it.

Layout (Detectron2's builtin layout; `<root>/coco/...` is accepted as well):
    <root>/train2017/*.jpg            <root>/val2017/*.jpg
    <root>/annotations/instances_{train,val}2017.json
    <root>/annotations/person_keypoints_{train,val}2017.json

Every check raises `CocoDataError` naming the file, the annotation or image id and what was expected,
so a broken dataset is refused before any job is submitted.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "val")
KINDS = ("instances", "keypoints")
JSON_PREFIX = {"instances": "instances", "keypoints": "person_keypoints"}

# pycocotools' OKS sigmas for the 17 COCO person keypoints (nose ... right_ankle).
COCO_PERSON_OKS_SIGMAS = [
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
]  # fmt: skip


class CocoDataError(ValueError):
    """A COCO dataset that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class CocoSplit:
    """One json + image folder, e.g. the keypoints annotations of val2017."""

    kind: str  # "instances" or "keypoints"
    split: str  # "train" or "val"
    json_file: Path
    image_root: Path

    @property
    def name(self) -> str:
        return f"{self.kind}_{self.split}"


@dataclass
class CocoSummary:
    """What a check found: counts, categories and keypoint metadata (names, flip pairs, OKS sigmas)."""

    json_file: Path
    num_images: int
    num_annotations: int
    images_without_annotations: int
    categories: list[dict[str, Any]]
    keypoint_names: list[str] = field(default_factory=list)
    keypoint_flip_map: list[tuple[str, str]] = field(default_factory=list)
    keypoint_oks_sigmas: list[float] = field(default_factory=list)


def resolve_coco_root(data_root: str | os.PathLike) -> Path:
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise CocoDataError(f"--data-root {root}: no such folder; expected the COCO 2017 layout (train2017/, val2017/, annotations/)")
    if not (root / "annotations").is_dir() and (root / "coco" / "annotations").is_dir():
        root = root / "coco"
    return root


def coco_split(root: str | os.PathLike, kind: str, split: str) -> CocoSplit:
    if kind not in KINDS:
        raise CocoDataError(f"unknown annotation kind {kind!r}; valid: {', '.join(KINDS)}")
    if split not in SPLITS:
        raise CocoDataError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    root = Path(root)
    return CocoSplit(kind, split, root / "annotations" / f"{JSON_PREFIX[kind]}_{split}2017.json", root / f"{split}2017")


def coco_layout(data_root: str | os.PathLike, kinds: Sequence[str]) -> dict[tuple[str, str], CocoSplit]:
    """The train and val splits of each kind; every json and image folder must exist."""
    root = resolve_coco_root(data_root)
    splits = {(kind, split): coco_split(root, kind, split) for kind in kinds for split in SPLITS}
    missing = [str(s.json_file) for s in splits.values() if not s.json_file.is_file()]
    missing += sorted({str(s.image_root) for s in splits.values() if not s.image_root.is_dir()})
    if missing:
        raise CocoDataError(
            f"{root}: missing COCO 2017 files: {', '.join(missing)}. Expected train2017/, val2017/ and "
            "annotations/{instances,person_keypoints}_{train,val}2017.json"
        )
    return splits


def flip_map_from_names(names: Sequence[str]) -> list[tuple[str, str]]:
    """COCO convention: left_X pairs with right_X (left_eye <-> right_eye)."""
    pairs = []
    for name in names:
        if name.startswith("left_") and "right_" + name[len("left_") :] in names:
            pairs.append((name, "right_" + name[len("left_") :]))
    return pairs


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def load_json(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CocoDataError(f"{path}: no such COCO json file")
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CocoDataError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise CocoDataError(f"{path}: top level is {type(data).__name__}, expected an object with images, annotations, categories")
    return data


def check_coco_json(
    json_file: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    kind: str = "instances",
    check_image_files: bool = True,
) -> CocoSummary:
    """Validate a COCO json for training and COCOeval; raise CocoDataError on the first problem found.

    Checks: top-level lists, unique ids, image fields, every annotation's image and category, bbox
    (4 finite numbers, positive size), area and iscrowd, polygons (lists of >= 3 points, even length) or
    RLE dicts, keypoint triplets (3K numbers, v in {0,1,2}, num_keypoints = count of v > 0), at least
    one annotated image, and (optionally) that every image file exists. Images without annotations
    are counted (COCO 2017 has some; training skips them) but a file with none at all is refused.
    """
    path = Path(json_file)
    data = load_json(path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            hint = " (a test-only json cannot be trained on or evaluated)" if key == "annotations" else ""
            raise CocoDataError(f"{path}: missing or non-list {key!r}{hint}")
    images, annotations, categories = data["images"], data["annotations"], data["categories"]
    if not images:
        raise CocoDataError(f"{path}: no images")
    if not categories:
        raise CocoDataError(f"{path}: no categories")

    category_ids: dict[int, dict[str, Any]] = {}
    for category in categories:
        if not isinstance(category, dict) or not isinstance(category.get("id"), int) or "name" not in category:
            raise CocoDataError(f"{path}: category {category!r} needs an integer id and a name")
        if category["id"] in category_ids:
            raise CocoDataError(f"{path}: duplicate category id {category['id']}")
        category_ids[category["id"]] = category

    keypoint_names: list[str] = []
    if kind == "keypoints":
        with_keypoints = [c for c in categories if c.get("keypoints")]
        if not with_keypoints:
            raise CocoDataError(f"{path}: a keypoints json needs categories with a 'keypoints' list of names")
        keypoint_names = list(with_keypoints[0]["keypoints"])
        if any(list(c["keypoints"]) != keypoint_names for c in with_keypoints):
            raise CocoDataError(f"{path}: categories disagree on their keypoint names")

    image_ids: dict[int, dict[str, Any]] = {}
    for image in images:
        if not isinstance(image, dict):
            raise CocoDataError(f"{path}: image entry {image!r} is not an object")
        image_id = image.get("id")
        if not isinstance(image_id, int):
            raise CocoDataError(f"{path}: image {image!r} has no integer id")
        if image_id in image_ids:
            raise CocoDataError(f"{path}: duplicate image id {image_id}")
        for key in ("height", "width"):
            if not isinstance(image.get(key), int) or image[key] <= 0:
                raise CocoDataError(f"{path}: image {image_id} needs a positive integer {key!r}")
        if not isinstance(image.get("file_name"), str) or not image["file_name"]:
            raise CocoDataError(f"{path}: image {image_id} has no file_name")
        image_ids[image_id] = image

    annotation_ids: set[int] = set()
    per_image: Counter[int] = Counter()
    for annotation in annotations:
        _check_annotation(path, annotation, image_ids, category_ids, annotation_ids, kind, len(keypoint_names))
        per_image[annotation["image_id"]] += 1
    if not annotations:
        raise CocoDataError(f"{path}: images without annotations: none of its {len(images)} images has an annotation")

    if check_image_files:
        if image_root is None:
            raise CocoDataError(f"{path}: checking image files needs the image folder")
        root = Path(image_root)
        if not root.is_dir():
            raise CocoDataError(f"{root}: no such image folder (for {path})")
        absent = [image["file_name"] for image in images if not (root / image["file_name"]).is_file()]
        if absent:
            raise CocoDataError(f"{root}: {len(absent)} image files listed in {path.name} are missing (first: {', '.join(absent[:3])})")

    sigmas: list[float] = []
    if kind == "keypoints":
        sigmas = keypoint_oks_sigmas([c for c in categories if c.get("keypoints")][0], path)
    return CocoSummary(
        json_file=path,
        num_images=len(images),
        num_annotations=len(annotations),
        images_without_annotations=sum(1 for image_id in image_ids if per_image[image_id] == 0),
        categories=sorted(categories, key=lambda c: c["id"]),
        keypoint_names=keypoint_names,
        keypoint_flip_map=flip_map_from_names(keypoint_names),
        keypoint_oks_sigmas=sigmas,
    )


def keypoint_oks_sigmas(category: Mapping[str, Any], where: Path | str) -> list[float]:
    """COCOeval's per-keypoint sigmas: the category's own "keypoint_oks_sigmas", else COCO person's for 17 points."""
    names = list(category["keypoints"])
    sigmas = category.get("keypoint_oks_sigmas")
    if sigmas is None:
        if len(names) == 17:
            return list(COCO_PERSON_OKS_SIGMAS)
        raise CocoDataError(
            f"{where}: {len(names)} keypoints but no 'keypoint_oks_sigmas' in category {category.get('name')!r}; "
            "COCOeval needs one sigma per keypoint (the COCO person values only fit 17 points)"
        )
    if len(sigmas) != len(names) or not all(_is_number(s) and s > 0 for s in sigmas):
        raise CocoDataError(f"{where}: keypoint_oks_sigmas must be {len(names)} positive numbers, got {sigmas!r}")
    return [float(s) for s in sigmas]


def _check_annotation(
    path: Path,
    annotation: Any,
    image_ids: Mapping[int, Mapping[str, Any]],
    category_ids: Mapping[int, Any],
    seen: set[int],
    kind: str,
    num_keypoints: int,
) -> None:
    if not isinstance(annotation, dict) or not isinstance(annotation.get("id"), int):
        raise CocoDataError(f"{path}: annotation {str(annotation)[:80]} has no integer id")
    ann_id = annotation["id"]
    where = f"{path}: annotation {ann_id}"
    if ann_id in seen:
        raise CocoDataError(f"{path}: duplicate annotation id {ann_id}")
    seen.add(ann_id)
    if annotation.get("image_id") not in image_ids:
        raise CocoDataError(f"{where}: image_id {annotation.get('image_id')!r} is not among the images")
    if annotation.get("category_id") not in category_ids:
        raise CocoDataError(f"{where}: category_id {annotation.get('category_id')!r} is not among the categories")
    bbox = annotation.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise CocoDataError(f"{where}: bbox {bbox!r} must be [x, y, width, height] (4 finite numbers)")
    if bbox[2] <= 0 or bbox[3] <= 0:
        raise CocoDataError(f"{where}: bbox {bbox!r} has non-positive width or height")
    if annotation.get("iscrowd", None) not in (0, 1):
        raise CocoDataError(f"{where}: iscrowd must be 0 or 1 (COCOeval needs it), got {annotation.get('iscrowd')!r}")
    if not _is_number(annotation.get("area")) or annotation["area"] < 0:
        raise CocoDataError(f"{where}: area must be a non-negative number (COCOeval needs it), got {annotation.get('area')!r}")
    if kind == "instances" or "segmentation" in annotation:
        _check_segmentation(where, annotation.get("segmentation"), image_ids[annotation["image_id"]])
    if kind == "keypoints":
        _check_keypoints(where, annotation, num_keypoints)


def _check_segmentation(where: str, segmentation: Any, image: Mapping[str, Any]) -> None:
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if size != [image["height"], image["width"]]:
            raise CocoDataError(f"{where}: RLE size {size!r} differs from the image's [height, width] {[image['height'], image['width']]}")
        if not isinstance(counts, str | list):
            raise CocoDataError(f"{where}: RLE counts must be a string or a list of run lengths")
        return
    if not isinstance(segmentation, list) or not segmentation:
        raise CocoDataError(f"{where}: segmentation must be a non-empty list of polygons or an RLE dict, got {str(segmentation)[:60]}")
    for index, polygon in enumerate(segmentation):
        if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
            raise CocoDataError(f"{where}: polygon {index} must be a flat list of numbers [x1, y1, x2, y2, ...]")
        if len(polygon) % 2 or len(polygon) < 6:
            raise CocoDataError(
                f"{where}: polygon {index} has {len(polygon)} values; a polygon needs an even count of at least 6 (3 points)"
            )


def _check_keypoints(where: str, annotation: Mapping[str, Any], num_keypoints: int) -> None:
    keypoints = annotation.get("keypoints")
    if not isinstance(keypoints, list) or len(keypoints) != 3 * num_keypoints:
        found = len(keypoints) if isinstance(keypoints, list) else type(keypoints).__name__
        raise CocoDataError(f"{where}: keypoints must be {num_keypoints} (x, y, v) triplets = {3 * num_keypoints} numbers, found {found}")
    if not all(_is_number(v) for v in keypoints):
        raise CocoDataError(f"{where}: keypoints must be finite numbers")
    visibility = keypoints[2::3]
    if any(v not in (0, 1, 2) for v in visibility):
        raise CocoDataError(f"{where}: keypoint visibility must be 0, 1 or 2, got {visibility!r}")
    labelled = sum(1 for v in visibility if v > 0)
    if annotation.get("num_keypoints") != labelled:
        raise CocoDataError(f"{where}: num_keypoints is {annotation.get('num_keypoints')!r} but {labelled} keypoints have v > 0")


def check_coco_root(data_root: str | os.PathLike, kinds: Sequence[str], check_image_files: bool = True) -> dict[tuple[str, str], CocoSummary]:
    """Check every json of the layout; the train and val category lists must agree."""
    summaries = {}
    for key, split in coco_layout(data_root, kinds).items():
        summaries[key] = check_coco_json(split.json_file, split.image_root, split.kind, check_image_files)
    for kind in kinds:
        train, val = summaries[(kind, "train")], summaries[(kind, "val")]
        if [(c["id"], c["name"]) for c in train.categories] != [(c["id"], c["name"]) for c in val.categories]:
            raise CocoDataError(f"{train.json_file} and {val.json_file}: train and val categories differ")
        if train.keypoint_names != val.keypoint_names:
            raise CocoDataError(f"{train.json_file} and {val.json_file}: train and val keypoint names differ")
    return summaries


class CocoDetectionDataset:
    """Images and targets for torchvision detection models, from a checked COCO json.

    Items: (float image tensor CxHxW in [0, 1], target dict with boxes xyxy, labels (contiguous 1..K),
    masks (uint8 N x H x W, rendered by pycocotools) and/or keypoints (N x K x 3), image_id).
    Crowd annotations and images without usable annotations are left out of training, as Detectron2 does.
    """

    def __init__(self, split: CocoSplit, with_masks: bool, with_keypoints: bool, train: bool, horizontal_flip: bool = False):
        from pycocotools.coco import COCO

        self.split = split
        self.coco = _quiet(lambda: COCO(str(split.json_file)))
        self.with_masks, self.with_keypoints, self.train = with_masks, with_keypoints, train
        self.horizontal_flip = horizontal_flip and train
        self.category_ids = sorted(self.coco.getCatIds())
        self.contiguous = {cat_id: index + 1 for index, cat_id in enumerate(self.category_ids)}
        image_ids = sorted(self.coco.getImgIds())
        if train:
            image_ids = [i for i in image_ids if self._usable(self.coco.loadAnns(self.coco.getAnnIds(imgIds=i, iscrowd=False)))]
            if not image_ids:
                raise CocoDataError(f"{split.json_file}: no image has a usable (non-crowd) annotation to train on")
        self.image_ids = image_ids
        self.flip_permutation: list[int] | None = None
        if with_keypoints:
            names = self.coco.loadCats(self.category_ids[0])[0]["keypoints"]
            index = {name: i for i, name in enumerate(names)}
            permutation = list(range(len(names)))
            for left, right in flip_map_from_names(names):
                permutation[index[left]], permutation[index[right]] = index[right], index[left]
            self.flip_permutation = permutation

    def _usable(self, annotations: list[dict[str, Any]]) -> bool:
        if self.with_keypoints:
            return any(a.get("num_keypoints", 0) > 0 for a in annotations)
        return bool(annotations)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int):
        import torch

        from pretrain.images import read_rgb

        image_id = self.image_ids[index]
        info = self.coco.loadImgs(image_id)[0]
        # PIL's convert("RGB") as stored, no EXIF rotation (COCO's boxes are drawn on the stored pixels)
        array = np.asarray(read_rgb(self.split.image_root / info["file_name"]), dtype=np.float32) / 255.0
        annotations = [a for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, iscrowd=False))]
        if self.with_keypoints:
            annotations = [a for a in annotations if a.get("num_keypoints", 0) > 0]
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in annotations], dtype=np.float32).reshape(-1, 4)
        target: dict[str, Any] = {
            "boxes": boxes,
            "labels": np.array([self.contiguous[a["category_id"]] for a in annotations], dtype=np.int64),
            "image_id": image_id,
        }
        if self.with_masks:
            target["masks"] = np.stack([self.coco.annToMask(a) for a in annotations]).astype(np.uint8) if annotations else np.zeros((0, info["height"], info["width"]), np.uint8)
        if self.with_keypoints:
            target["keypoints"] = np.array([a["keypoints"] for a in annotations], dtype=np.float32).reshape(len(annotations), -1, 3)
        if self.horizontal_flip and np.random.random() < 0.5:
            array, target = _flip_horizontally(array, target, self.flip_permutation)
        image = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        tensors = {key: (torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value) for key, value in target.items()}
        return image, tensors


def _flip_horizontally(array: np.ndarray, target: dict[str, Any], permutation: list[int] | None):
    width = array.shape[1]
    array = array[:, ::-1]
    target = dict(target)
    boxes = target["boxes"].copy()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"][:, :, ::-1]
    if "keypoints" in target:
        keypoints = target["keypoints"].copy()
        labelled = keypoints[..., 2] > 0
        # Integer pixel indices mirror to (width - 1 - x).
        keypoints[..., 0] = np.where(labelled, width - 1 - keypoints[..., 0], 0)
        target["keypoints"] = keypoints[:, permutation] if permutation is not None else keypoints
    return array, target


def _quiet(build):
    """pycocotools prints progress to stdout; keep job logs readable."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return build()
