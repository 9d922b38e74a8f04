"""COCOeval with the metric names both engines report: bbox/AP, bbox/AP50, ..., segm/AP, keypoints/AP.

Values are x100 (Detectron2's convention). A task with no predictions scores 0 (nothing detected
means zero recall), where Detectron2 would print NaN.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BOX_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval stats[0:6] for bbox and segm
KEYPOINT_METRICS = ("AP", "AP50", "AP75", "APm", "APl")  # stats[0:5] for keypoints
IOU_TYPES = ("bbox", "segm", "keypoints")


def metric_names(iou_type: str) -> list[str]:
    names = KEYPOINT_METRICS if iou_type == "keypoints" else BOX_METRICS
    return [f"{iou_type}/{name}" for name in names]


def _evaluate_one(
    gt, results: list[dict[str, Any]], iou_type: str, oks_sigmas: Sequence[float] | None
) -> tuple[dict[str, float], dict[str, float]]:
    from pycocotools.cocoeval import COCOeval

    names = metric_names(iou_type)
    category_names = {c["id"]: c["name"] for c in gt.loadCats(gt.getCatIds())}
    with_gt = [cat_id for cat_id in sorted(category_names) if gt.getAnnIds(catIds=[cat_id], iscrowd=False)]
    if not results:
        return {name: 0.0 for name in names}, {category_names[c]: 0.0 for c in with_gt}
    with contextlib.redirect_stdout(io.StringIO()):
        detections = gt.loadRes(list(results))
        evaluator = COCOeval(gt, detections, iou_type)
        if iou_type == "keypoints":
            if oks_sigmas is None:
                raise ValueError("keypoint evaluation needs the per-keypoint OKS sigmas")
            evaluator.params.kpt_oks_sigmas = np.asarray(oks_sigmas, dtype=np.float64)
        evaluator.params.imgIds = sorted(gt.getImgIds())
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    values = {}
    for name, stat in zip(names, evaluator.stats):
        # COCOeval writes -1 where a size range has no ground truth; report that as NaN, not a score.
        values[name] = float("nan") if stat < 0 else float(stat) * 100.0
    # Per-category AP (all IoU thresholds, all areas, the largest maxDets): COCO's AP is their mean.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_category = {}
    for index, cat_id in enumerate(evaluator.params.catIds):
        valid = precision[:, :, index][precision[:, :, index] > -1]
        if valid.size:
            per_category[category_names[cat_id]] = float(valid.mean()) * 100.0
    return values, per_category


def evaluate_coco(
    gt_json: str | os.PathLike,
    results: dict[str, list[dict[str, Any]]],
    oks_sigmas: Sequence[float] | None = None,
) -> dict[str, float]:
    """`results` maps an IoU type ("bbox", "segm", "keypoints") to a COCO results list for `gt_json`."""
    return evaluate_coco_detailed(gt_json, results, oks_sigmas)[0]


def evaluate_coco_detailed(
    gt_json: str | os.PathLike,
    results: dict[str, list[dict[str, Any]]],
    oks_sigmas: Sequence[float] | None = None,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Metrics as `evaluate_coco`, plus per IoU type the AP of each category (their mean is <type>/AP)."""
    from pycocotools.coco import COCO

    unknown = sorted(set(results) - set(IOU_TYPES))
    if unknown:
        raise ValueError(f"unknown IoU types {unknown}; valid: {', '.join(IOU_TYPES)}")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(Path(gt_json)))
    metrics: dict[str, float] = {}
    per_category: dict[str, dict[str, float]] = {}
    for iou_type, result_list in results.items():
        values, per_category[iou_type] = _evaluate_one(gt, result_list, iou_type, oks_sigmas)
        metrics.update(values)
    return metrics, per_category


def ground_truth_as_results(gt_json: str | os.PathLike, iou_types: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Every non-crowd ground-truth annotation as a perfect prediction (score 1): the AP = 100 sanity check."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(Path(gt_json)))
    results: dict[str, list[dict[str, Any]]] = {iou_type: [] for iou_type in iou_types}
    for annotation in gt.loadAnns(gt.getAnnIds(iscrowd=False)):
        base = {"image_id": annotation["image_id"], "category_id": annotation["category_id"], "score": 1.0}
        if "bbox" in results:
            results["bbox"].append({**base, "bbox": list(annotation["bbox"])})
        if "segm" in results:
            rle = mask_utils.encode(np.asfortranarray(gt.annToMask(annotation)))
            rle["counts"] = rle["counts"].decode("ascii")
            results["segm"].append({**base, "segmentation": rle})
        if "keypoints" in results and annotation.get("num_keypoints", 0) > 0:
            results["keypoints"].append({**base, "keypoints": list(annotation["keypoints"])})
    return results
