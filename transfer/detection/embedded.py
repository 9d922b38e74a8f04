"""The embedded detection dataset: a real COCO 2017-layout dataset made from scikit-learn's digits.

Each canvas (96 x 96 px by default) holds 2-4 non-overlapping digits upscaled 3-5x (24-40 px, bilinear),
in the embedded encoders' pretraining colours (yellow strokes on a blue, slightly noisy background). Per digit it records
- a box and a category (ten classes, "zero" ... "nine") in instances_{train,val}2017.json,
- polygon masks traced around the digit's pixels (ink above a threshold, holes filled, one polygon per
  4-connected part), and
- four named keypoints, the digit's extreme points (top, bottom, left_extreme, right_extreme; flip pairs
  left_extreme <-> right_extreme by COCO's left_/right_ naming), in person_keypoints_{train,val}2017.json
  under the same ten digit categories, each with the keypoint names and its own OKS sigmas
  ("keypoint_oks_sigmas"). COCOeval scores keypoints per category, so a keypoint counts only on a
  detection of the right digit: the keypoint task needs recognition as well as localisation.
Train and val canvases use disjoint digit images. Built once, atomically, and reused.

The default is few labelled images (64 train canvases, about 190 digits; 128 val canvases), the regime where
a backbone's initialisation matters: with 512 train canvases a random backbone came within 0.7-2.2 keypoint
AP of the pretrained ones, with 64 it stays 5-6 keypoint AP and 6-7 mask AP below them (three seeds).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ringbench_common.atomic_files import build_folder_once

EMBEDDED_VERSION = 2
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
KEYPOINT_NAMES = ("top", "bottom", "left_extreme", "right_extreme")
KEYPOINT_SKELETON = [[1, 3], [3, 2], [2, 4], [4, 1]]  # 1-based, COCO style
KEYPOINT_OKS_SIGMAS = [0.08, 0.08, 0.08, 0.08]
INK_THRESHOLD = 5  # of 16: digit cells at or above this are the object
MARKER = "ringbench_embedded.json"


def default_parameters(canvas: int = 96, train_images: int = 64, val_images: int = 128, seed: int = 0) -> dict[str, Any]:
    from pretrain.data import DIGITS_BACKGROUND, DIGITS_STROKE

    return {
        "version": EMBEDDED_VERSION,
        # The pretraining colours of the embedded encoders (yellow strokes on blue), so the detection
        # images come from the domain the encoders were pretrained on.
        "background_rgb": [float(v) for v in DIGITS_BACKGROUND],
        "stroke_rgb": [float(v) for v in DIGITS_STROKE],
        "canvas": canvas,
        "train_images": train_images,
        "val_images": val_images,
        "digits_per_image": [2, 4],
        "scales": [3, 4, 5],
        "seed": seed,
    }


def trace_polygons(cells: np.ndarray) -> list[list[tuple[int, int]]]:
    """Outer boundaries of a filled binary cell grid as closed vertex loops in corner coordinates (x, y).

    Each boundary edge of a foreground cell is oriented clockwise (image axes, y down); edges are then
    chained into loops and collinear vertices dropped.
    """
    rows, cols = cells.shape
    padded = np.zeros((rows + 2, cols + 2), dtype=bool)
    padded[1:-1, 1:-1] = cells
    outgoing: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def add(start: tuple[int, int], end: tuple[int, int]) -> None:
        outgoing.setdefault(start, []).append(end)

    for r, c in zip(*np.nonzero(cells)):
        pr, pc = r + 1, c + 1
        if not padded[pr - 1, pc]:
            add((c, r), (c + 1, r))
        if not padded[pr, pc + 1]:
            add((c + 1, r), (c + 1, r + 1))
        if not padded[pr + 1, pc]:
            add((c + 1, r + 1), (c, r + 1))
        if not padded[pr, pc - 1]:
            add((c, r + 1), (c, r))
    loops = []
    while outgoing:
        start = min(outgoing)
        loop = [start]
        vertex = start
        while True:
            ends = outgoing[vertex]
            nxt = ends.pop()
            if not ends:
                del outgoing[vertex]
            if nxt == start:
                break
            loop.append(nxt)
            vertex = nxt
        loops.append(_drop_collinear(loop))
    return [loop for loop in loops if len(loop) >= 3]


def _drop_collinear(loop: list[tuple[int, int]]) -> list[tuple[int, int]]:
    kept = []
    count = len(loop)
    for index, (x, y) in enumerate(loop):
        px, py = loop[index - 1]
        nx, ny = loop[(index + 1) % count]
        if (x - px) * (ny - y) - (y - py) * (nx - x) != 0:
            kept.append((x, y))
    return kept


def _digit_instance(digit: np.ndarray, scale: int, left: int, top: int) -> dict[str, Any] | None:
    """Mask polygons, box and extreme-point keypoints of one digit placed at (left, top) on the canvas."""
    from scipy import ndimage

    ink = ndimage.binary_fill_holes(digit >= INK_THRESHOLD)
    labels, count = ndimage.label(ink)  # 4-connected parts
    polygons = []
    for part in range(1, count + 1):
        for loop in trace_polygons(labels == part):
            polygons.append([float(v) for x, y in loop for v in (left + x * scale, top + y * scale)])
    if not polygons:
        return None
    rows, cols = np.nonzero(ink)
    x0, x1 = left + cols.min() * scale, left + (cols.max() + 1) * scale
    y0, y1 = top + rows.min() * scale, top + (rows.max() + 1) * scale
    big = np.kron(ink, np.ones((scale, scale), dtype=bool))  # the filled digit at canvas scale
    big_rows, big_cols = np.nonzero(big)

    def middle(values: np.ndarray) -> int:
        return int(np.round((values.min() + values.max()) / 2))

    top_row, bottom_row = big_rows.min(), big_rows.max()
    left_col, right_col = big_cols.min(), big_cols.max()
    points = [
        (middle(big_cols[big_rows == top_row]), top_row),
        (middle(big_cols[big_rows == bottom_row]), bottom_row),
        (left_col, middle(big_rows[big_cols == left_col])),
        (right_col, middle(big_rows[big_cols == right_col])),
    ]
    keypoints = [float(v) for x, y in points for v in (left + x, top + y, 2)]
    return {"segmentation": polygons, "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "keypoints": keypoints}


def _upscale(intensity: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upscaling, as the pretraining images are rendered."""
    import torch

    tensor = torch.from_numpy(intensity.astype(np.float32))[None, None]
    return torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()


def digit_spots(rng: np.random.Generator, params: dict[str, Any], placed: list[tuple[int, int, int, int]]):
    """Squares for the digits of one canvas: draws how many it wants, then yields (scale, size, left, top)
    candidates at least 2 px from every square in `placed` (the caller appends each one it keeps) until
    `placed` holds that many or 200 tries are spent."""
    canvas = params["canvas"]
    wanted = int(rng.integers(params["digits_per_image"][0], params["digits_per_image"][1] + 1))
    attempts = 0
    while len(placed) < wanted and attempts < 200:
        attempts += 1
        scale = int(rng.choice(params["scales"]))
        size = 8 * scale
        left, top = (int(v) for v in rng.integers(0, canvas - size + 1, size=2))
        if not any(left < x1 + 2 and x0 < left + size + 2 and top < y1 + 2 and y0 < top + size + 2
                   for x0, y0, x1, y1 in placed):
            yield scale, size, left, top


def paint_digit(pixels: np.ndarray, digit: np.ndarray, left: int, top: int, size: int, brightness: float) -> None:
    """Ink the 8x8 `digit` (0-16), upscaled to `size`, into the canvas intensity `pixels` (in place)."""
    pixels[top : top + size, left : left + size] = np.maximum(
        pixels[top : top + size, left : left + size], _upscale(digit / 16.0, size) * brightness)


def canvas_rgb(pixels: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Ink intensity (0 = background) to the set's background and stroke colours, uint8 RGB."""
    background, stroke = np.asarray(params["background_rgb"]), np.asarray(params["stroke_rgb"])
    return (background + pixels[:, :, None] * (stroke - background)).round().clip(0, 255).astype(np.uint8)


def _render_split(
    split: str, digit_images: np.ndarray, digit_labels: np.ndarray, count: int, params: dict[str, Any], root: Path, rng: np.random.Generator
) -> tuple[dict[str, Any], dict[str, Any]]:
    from PIL import Image
    from pycocotools import mask as mask_utils

    canvas = params["canvas"]
    image_dir = root / f"{split}2017"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, instances, keypoint_annotations = [], [], []
    ann_id = 1
    for image_index in range(count):
        image_id = image_index + 1
        pixels = rng.normal(0.04, 0.03, size=(canvas, canvas)).clip(0, 1)  # ink intensity, 0 = background
        placed: list[tuple[int, int, int, int]] = []
        for scale, size, left, top in digit_spots(rng, params, placed):
            which = int(rng.integers(0, len(digit_images)))
            digit = digit_images[which]
            instance = _digit_instance(digit, scale, left, top)
            if instance is None:
                continue
            placed.append((left, top, left + size, top + size))
            paint_digit(pixels, digit, left, top, size, rng.uniform(0.8, 1.0))
            rles = mask_utils.frPyObjects(instance["segmentation"], canvas, canvas)
            area = float(mask_utils.area(mask_utils.merge(rles)))
            common = {"image_id": image_id, "bbox": instance["bbox"], "area": area, "iscrowd": 0, "segmentation": instance["segmentation"]}
            instances.append({"id": ann_id, "category_id": int(digit_labels[which]) + 1, **common})
            keypoint_annotations.append(
                {"id": ann_id, "category_id": int(digit_labels[which]) + 1, **common, "keypoints": instance["keypoints"], "num_keypoints": len(KEYPOINT_NAMES)}
            )
            ann_id += 1
        file_name = f"{image_id:06d}.png"
        Image.fromarray(canvas_rgb(pixels, params)).save(image_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": canvas, "width": canvas})
    info = {"description": f"RingBench embedded digits COCO ({split})", "version": str(EMBEDDED_VERSION)}
    instances_json = {
        "info": info,
        "images": images,
        "annotations": instances,
        "categories": [{"id": i + 1, "name": name, "supercategory": "digit"} for i, name in enumerate(DIGIT_NAMES)],
    }
    keypoints_json = {
        "info": info,
        "images": images,
        "annotations": keypoint_annotations,
        "categories": [
            {
                "id": i + 1,
                "name": name,
                "supercategory": "digit",
                "keypoints": list(KEYPOINT_NAMES),
                "skeleton": KEYPOINT_SKELETON,
                "keypoint_oks_sigmas": KEYPOINT_OKS_SIGMAS,
            }
            for i, name in enumerate(DIGIT_NAMES)
        ],
    }
    return instances_json, keypoints_json


def build_embedded_coco(root: str | os.PathLike, **overrides: Any) -> Path:
    """Build (once) the digits COCO dataset at `root`; rebuilt only when the parameters change."""
    from sklearn.datasets import load_digits

    params = default_parameters(**overrides)

    def build(staging: Path) -> None:
        digits = load_digits()
        order = np.random.default_rng(params["seed"]).permutation(len(digits.target))
        cut = int(0.8 * len(order))
        (staging / "annotations").mkdir()
        for split, indices, count in (("train", order[:cut], params["train_images"]), ("val", order[cut:], params["val_images"])):
            rng = np.random.default_rng([params["seed"], 1 if split == "train" else 2])
            instances_json, keypoints_json = _render_split(
                split, digits.images[indices].astype(np.float64), digits.target[indices], count, params, staging, rng
            )
            (staging / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(instances_json))
            (staging / "annotations" / f"person_keypoints_{split}2017.json").write_text(json.dumps(keypoints_json))

    return build_folder_once(root, MARKER, params, build)

