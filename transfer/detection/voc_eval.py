"""PASCAL VOC box AP as Detectron2's PascalVOCDetectionEvaluator computes it (its voc_eval / voc_ap).

For each class and each IoU threshold t in 0.50, 0.55, ..., 0.95:
- detections are written as Detectron2 writes them (score to 3 decimals, xmin + 1 and ymin + 1 back to VOC's
  1-based pixels, coordinates to 1 decimal) and sorted by descending score;
- IoU uses VOC's inclusive-pixel convention (width = xmax - xmin + 1);
- a detection whose best-overlapping ground truth has IoU > t (strictly) is a true positive if that ground
  truth is not `difficult` and not yet matched, a false positive if it was matched already, and neither
  when it is `difficult` (VOC ignores difficult objects); IoU <= t is a false positive;
- recall counts non-difficult objects only; AP is VOC2007's 11-point interpolated AP (the 2007 test set) or
  the area under the precision envelope (`use_07_metric=False`, VOC2010+).
AP50 and AP75 are the means over classes at 0.50 and 0.75; AP is the mean over the ten thresholds. x100.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from transfer.detection.voc_data import VocImage

IOU_THRESHOLDS = tuple(t / 100.0 for t in range(50, 100, 5))
METRICS = ("AP", "AP50", "AP75")


@dataclass(frozen=True)
class VocDetection:
    image_id: str
    class_index: int  # 0-based, in the evaluated class order
    score: float
    box: tuple[float, float, float, float]  # the model's continuous xmin, ymin, xmax, ymax


@dataclass
class VocEvaluation:
    metrics: dict[str, float]  # "AP", "AP50", "AP75" (x100)
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> class -> AP (their mean)


def average_precision(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = True) -> float:
    """VOC07's 11-point AP (max precision at recall >= 0, 0.1, ..., 1) or the area under the envelope."""
    if use_07_metric:
        total = 0.0
        for level in np.arange(0.0, 1.1, 0.1):  # the devkit's 11 levels, float rounding included
            reached = recall >= level
            total += (float(np.max(precision[reached])) if reached.any() else 0.0) / 11.0
        return total
    recall = np.concatenate(([0.0], recall, [1.0]))
    envelope = np.concatenate(([0.0], precision, [0.0]))
    envelope = np.maximum.accumulate(envelope[::-1])[::-1]
    changes = np.where(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[changes + 1] - recall[changes]) * envelope[changes + 1]))


def _as_written(detection: VocDetection) -> tuple[float, np.ndarray]:
    """The score and 1-based box after Detectron2's text round trip (f"{score:.3f} {xmin + 1:.1f} ...")."""
    xmin, ymin, xmax, ymax = (float(v) for v in detection.box)
    return float(f"{detection.score:.3f}"), np.array([float(f"{v:.1f}") for v in (xmin + 1, ymin + 1, xmax, ymax)])


def _class_ap(ground_truth: dict[str, tuple[np.ndarray, np.ndarray]], detections: list[VocDetection],
              threshold: float, use_07_metric: bool) -> float:
    positives = sum(int((~difficult).sum()) for _, difficult in ground_truth.values())
    if not detections:
        return 0.0
    written = [_as_written(d) for d in detections]
    scores = np.array([score for score, _ in written])
    order = np.argsort(-scores)  # the same call as voc_eval, on detections in the same order: equal ties
    matched = {image_id: np.zeros(len(boxes), dtype=bool) for image_id, (boxes, _) in ground_truth.items()}
    true_positive = np.zeros(len(order))
    false_positive = np.zeros(len(order))
    for rank, index in enumerate(order):
        image_id = detections[index].image_id
        box = written[index][1]
        boxes, difficult = ground_truth[image_id]
        best = -np.inf
        if boxes.size:
            inter_w = np.maximum(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]) + 1.0, 0.0)
            inter_h = np.maximum(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]) + 1.0, 0.0)
            inter = inter_w * inter_h
            union = ((box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
                     + (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0) - inter)
            overlaps = inter / union
            best, nearest = float(overlaps.max()), int(overlaps.argmax())
        if best > threshold:
            if difficult[nearest]:
                continue  # matching a difficult object counts neither way
            if matched[image_id][nearest]:
                false_positive[rank] = 1.0
            else:
                true_positive[rank] = 1.0
                matched[image_id][nearest] = True
        else:
            false_positive[rank] = 1.0
    true_positive, false_positive = np.cumsum(true_positive), np.cumsum(false_positive)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = true_positive / float(positives)
    precision = true_positive / np.maximum(true_positive + false_positive, np.finfo(np.float64).eps)
    return average_precision(recall, precision, use_07_metric)


def evaluate_voc(images: Sequence[VocImage], classes: Sequence[str], detections: Sequence[VocDetection],
                 use_07_metric: bool = True) -> VocEvaluation:
    """AP, AP50, AP75 over `classes` of `detections` on `images` (their objects are the ground truth).

    A detection on an image outside `images` or of a class outside `classes` is a ValueError."""
    known = {image.image_id for image in images}
    by_class: dict[int, list[VocDetection]] = {index: [] for index in range(len(classes))}
    for detection in detections:
        if detection.image_id not in known:
            raise ValueError(f"detection on image {detection.image_id!r}, which is not in the evaluated image set")
        if detection.class_index not in by_class:
            raise ValueError(f"detection of class index {detection.class_index}; expected 0..{len(classes) - 1}")
        by_class[detection.class_index].append(detection)
    per_threshold: dict[float, list[float]] = {t: [] for t in IOU_THRESHOLDS}
    per_class: dict[str, dict[str, float]] = {name: {} for name in METRICS}
    for index, name in enumerate(classes):
        ground_truth = {}
        for image in images:
            mine = [obj for obj in image.objects if obj.name == name]
            ground_truth[image.image_id] = (np.array([obj.box for obj in mine], dtype=np.float64).reshape(-1, 4),
                                            np.array([obj.difficult for obj in mine], dtype=bool))
        aps = {t: 100.0 * _class_ap(ground_truth, by_class[index], t, use_07_metric) for t in IOU_THRESHOLDS}
        for threshold, ap in aps.items():
            per_threshold[threshold].append(ap)
        per_class["AP"][name] = float(np.mean(list(aps.values())))
        per_class["AP50"][name] = aps[0.5]
        per_class["AP75"][name] = aps[0.75]
    means = {t: float(np.mean(values)) for t, values in per_threshold.items()}
    metrics = {"AP": float(np.mean(list(means.values()))), "AP50": means[0.5], "AP75": means[0.75]}
    return VocEvaluation(metrics, per_class)
