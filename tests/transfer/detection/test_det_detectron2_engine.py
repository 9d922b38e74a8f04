"""The Detectron2 engine's paths that do not need Detectron2, and its end-to-end run where it is installed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from transfer.detection.engines import DETECTRON2_INSTALL_HINT, detectron2_available, resolve_engine
from transfer.detection.engines.detectron2_engine import MetricsFileError, parse_metrics_file

# What Detectron2's JSONWriter writes: training lines, then EvalHook's flattened results after the last iteration.
RECORDED = [
    {"iteration": 19, "total_loss": 2.91, "loss_cls": 1.2, "loss_mask": 0.69, "lr": 0.0004, "time": 0.31},
    {"iteration": 39, "total_loss": 1.75, "loss_cls": 0.6, "loss_mask": 0.55, "lr": 0.0008, "time": 0.30},
    {"iteration": 39, "bbox/AP": 12.5, "bbox/AP50": 30.25, "bbox/AP75": 8.0, "bbox/APs": 10.0, "bbox/APm": float("nan"),
     "bbox/APl": float("nan"), "bbox/AP-zero": 20.0, "bbox/AP-one": 5.0, "segm/AP": 11.0, "segm/AP50": 28.0,
     "segm/AP75": 7.0, "segm/APs": 9.0, "segm/APm": float("nan"), "segm/APl": float("nan"), "segm/AP-zero": 15.0,
     "segm/AP-one": 7.0},
]


def write_lines(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))  # json writes NaN as D2 does
    return path


def test_parse_recorded_metrics(tmp_path):
    metrics, per_category = parse_metrics_file(write_lines(tmp_path / "metrics.json", RECORDED))
    assert metrics["bbox/AP"] == 12.5 and metrics["segm/AP50"] == 28.0
    assert math.isnan(metrics["bbox/APm"])
    assert "bbox/AP-zero" not in metrics and "total_loss" not in metrics
    assert per_category == {"bbox": {"zero": 20.0, "one": 5.0}, "segm": {"zero": 15.0, "one": 7.0}}


def test_parse_takes_the_last_evaluation_and_strips_the_dataset_prefix(tmp_path):
    later = {"iteration": 79, "ringbench_keypoint_rcnn_val/keypoints/AP": 44.0, "ringbench_keypoint_rcnn_val/bbox/AP": 50.0,
             "ringbench_keypoint_rcnn_val/keypoints/AP-digit": 44.0}
    metrics, per_category = parse_metrics_file(write_lines(tmp_path / "metrics.json", [*RECORDED, later]))
    assert metrics == {"keypoints/AP": 44.0, "bbox/AP": 50.0}
    assert per_category == {"keypoints": {"digit": 44.0}}


def test_parse_errors_name_the_file(tmp_path):
    with pytest.raises(MetricsFileError, match="no metrics.json"):
        parse_metrics_file(tmp_path / "metrics.json")
    with pytest.raises(MetricsFileError, match="no evaluation results"):
        parse_metrics_file(write_lines(tmp_path / "metrics.json", RECORDED[:2]))
    (tmp_path / "broken.json").write_text('{"iteration": 1}\n{oops\n')
    with pytest.raises(MetricsFileError, match=r"broken.json:2: not a JSON line"):
        parse_metrics_file(tmp_path / "broken.json")


def test_engine_resolution():
    assert resolve_engine("torchvision", embedded=False) == "torchvision"
    assert resolve_engine("auto", embedded=True) == "torchvision"
    assert resolve_engine("auto", embedded=False) == ("detectron2" if detectron2_available() else "torchvision")
    with pytest.raises(ValueError, match="unknown engine 'mmdet'"):
        resolve_engine("mmdet", embedded=False)
    if not detectron2_available():
        with pytest.raises(ModuleNotFoundError, match="install it from source"):
            resolve_engine("detectron2", embedded=False)
    assert "--no-build-isolation" in DETECTRON2_INSTALL_HINT


def test_engine_module_imports_without_detectron2():
    import sys

    import transfer.detection.engines.detectron2_engine  # noqa: F401

    if not detectron2_available():
        assert "detectron2" not in sys.modules


@pytest.mark.slow
@pytest.mark.detectron2
@pytest.mark.skipif(not detectron2_available(), reason="detectron2 is not installed (not on PyPI; install it from source to run this)")
def test_detectron2_end_to_end_on_cpu(tmp_path, small_coco, encoder_r18):
    import torch

    from transfer.detection.configs import DetectionJob, Schedule, embedded_protocol
    from transfer.detection.convert import convert_checkpoint_to_detectron2
    from transfer.detection.engines.detectron2_engine import train_and_evaluate

    protocol = embedded_protocol("mask_rcnn")
    job = DetectionJob(
        task="mask_rcnn", recipe="fpn", arch="resnet18",
        train_json=small_coco / "annotations/instances_train2017.json", train_images=small_coco / "train2017",
        val_json=small_coco / "annotations/instances_val2017.json", val_images=small_coco / "val2017",
        num_classes=10, schedule=Schedule(ims_per_batch=2, base_lr=0.005, max_iter=4, steps=(3,), warmup_iters=1),
        input=protocol.input, pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.25, 0.25, 0.25),
        output_dir=tmp_path / "out", num_gpus=torch.cuda.device_count() and 1, anchor_sizes=protocol.anchor_sizes,
        precise_bn_iters=2, num_workers=0,
    )
    weights = convert_checkpoint_to_detectron2(encoder_r18, tmp_path / "w.pkl")
    result = train_and_evaluate(job, weights)
    assert {"bbox/AP", "segm/AP"} <= set(result.metrics)
    assert result.info["engine"] == "detectron2"
    config = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert config["MODEL"]["RESNETS"]["DEPTH"] == 18
