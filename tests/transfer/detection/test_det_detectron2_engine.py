"""The Detectron2 engine's paths that do not need Detectron2, and its end-to-end run where it is installed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from transfer.detection.engines import DETECTRON2_INSTALL_HINT, detectron2_available, resolve_engine
from transfer.detection.engines.detectron2_engine import (
    DETECTRON2_DUMP,
    MetricsFileError,
    clear_finished_run,
    parse_metrics_file,
    run_state,
    score_no_predictions,
)

needs_detectron2 = [
    pytest.mark.slow,
    pytest.mark.detectron2,
    pytest.mark.skipif(not detectron2_available(), reason="detectron2 is not installed (not on PyPI; install it from source to run this)"),
]

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


def test_no_predictions_score_zero_not_nan():
    """Detectron2's COCOEvaluator gives NaN for every metric when nothing was detected; the suite would drop
    them all and fail the cell ("without metrics"). Nothing detected is AP 0."""
    nan = float("nan")
    empty = {"bbox": {"AP": nan, "AP50": nan, "AP75": nan, "APs": nan, "APm": nan, "APl": nan},
             "keypoints": {"AP": nan, "AP50": nan, "AP75": nan, "APm": nan, "APl": nan}}
    scored = score_no_predictions(empty, num_predictions=0)
    assert scored == {"bbox": dict.fromkeys(empty["bbox"], 0.0), "keypoints": dict.fromkeys(empty["keypoints"], 0.0)}
    some = {"bbox": {"AP": 12.0, "APm": nan}}  # with predictions a NaN is a size range without ground truth
    kept = score_no_predictions(some, num_predictions=3)
    assert kept["bbox"]["AP"] == 12.0 and math.isnan(kept["bbox"]["APm"])


def test_only_an_unfinished_run_resumes(tmp_path):
    out = tmp_path / "output"
    out.mkdir()
    assert run_state(out) == "fresh"
    (out / "model_0000099.pth").write_bytes(b"x")
    (out / "last_checkpoint").write_text("model_0000099.pth")
    assert run_state(out) == "unfinished"  # a requeued job continues
    (out / "last_checkpoint").write_text("model_0000199.pth")
    assert run_state(out) == "fresh"  # a marker naming a missing file resumes nothing
    (out / "model_final.pth").write_bytes(b"x")
    (out / "last_checkpoint").write_text("model_final.pth")
    (out / "metrics.json").write_text('{"iteration": 149, "bbox/AP": 30.0}\n')
    (out / "inference").mkdir()
    (out / "inference" / "coco_instances_results.json").write_text("[]")
    (out / "config.yaml").write_text("VERSION: 2\n")
    assert run_state(out) == "finished"  # a rerun or --force: train again, never "resume" at the end
    removed = clear_finished_run(out, keep=("config.yaml",))
    assert removed == ["inference", "last_checkpoint", "metrics.json", "model_0000099.pth", "model_final.pth"]
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"] and run_state(out) == "fresh"


def test_cells_sharing_a_process_log_each_line_once(tmp_path, capfd):
    import logging

    from transfer.detection.engines.detectron2_engine import _CellLogging

    for cell in ("a", "b", "c"):
        (tmp_path / cell).mkdir()
        with _CellLogging(tmp_path / cell, rank=0):
            logging.getLogger("detectron2.engine.train_loop").info("cell %s starts", cell)
    err = capfd.readouterr().err
    assert [err.count(f"cell {c} starts") for c in "abc"] == [1, 1, 1]
    assert (tmp_path / "c" / "log.txt").read_text().count("starts") == 1  # each cell's log.txt holds its own lines
    assert logging.getLogger("detectron2").handlers == []


def test_test_helpers_survive_a_foreign_tests_package_on_sys_path(tmp_path):
    """An editable Detectron2 puts its checkout, with a regular `tests` package, on sys.path; RingBench's
    helpers are `ringbench_testing`, so the test modules still import."""
    import os
    import subprocess
    import sys

    from ringbench_testing.bench import REPO

    foreign = tmp_path / "checkout" / "tests"
    foreign.mkdir(parents=True)
    (foreign / "__init__.py").write_text("")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(foreign.parent), str(REPO)]))
    files = ["tests/bench/test_cli.py", "tests/bench/test_store.py", "tests/bench/test_fingerprint.py",
             "tests/transfer/detection/test_det_suite.py", "tests/slurm/test_slurm.py"]
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    import re

    assert not re.search(r"\d+ errors? ", out.stdout) and re.search(r"\d+ tests? collected", out.stdout), out.stdout[-2000:]


def _embedded_job(tmp_path, small_coco, task="mask_rcnn", max_iter=4, clip=None, **overrides):
    import torch

    from transfer.detection.coco_data import check_coco_json
    from transfer.detection.configs import DetectionJob, Schedule, embedded_protocol

    protocol = embedded_protocol(task)
    kind = "keypoints" if task == "keypoint_rcnn" else "instances"
    prefix = "person_keypoints" if task == "keypoint_rcnn" else "instances"
    val_json = small_coco / f"annotations/{prefix}_val2017.json"
    summary = check_coco_json(val_json, small_coco / "val2017", kind, check_image_files=False)
    fields = dict(
        task=task, recipe="fpn", arch="resnet18",
        train_json=small_coco / f"annotations/{prefix}_train2017.json", train_images=small_coco / "train2017",
        val_json=val_json, val_images=small_coco / "val2017", num_classes=len(summary.categories),
        schedule=Schedule(ims_per_batch=2, base_lr=0.005, max_iter=max_iter, steps=steps_for(max_iter), warmup_iters=1,
                          clip_grad_norm=clip),
        input=protocol.input, pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.25, 0.25, 0.25),
        output_dir=tmp_path / "out", num_gpus=torch.cuda.device_count() and 1, anchor_sizes=protocol.anchor_sizes,
        keypoint_names=tuple(summary.keypoint_names), keypoint_flip_map=tuple(summary.keypoint_flip_map),
        keypoint_oks_sigmas=tuple(summary.keypoint_oks_sigmas), precise_bn_iters=2, num_workers=0, heads=protocol.heads,
    )
    fields.update(overrides)
    return DetectionJob(**fields)


def steps_for(max_iter):
    from transfer.detection.configs import steps_for_max_iter

    return steps_for_max_iter(max_iter)


def _started_at(output_dir: Path) -> list[int]:
    import re

    return [int(m) for m in re.findall(r"Starting training from iteration (\d+)", (output_dir / "log.txt").read_text())]


def detectron2_test(function):
    for mark in reversed(needs_detectron2):
        function = mark(function)
    return function


@detectron2_test
def test_detectron2_schedules_from_one_to_twelve_iterations_build():
    """Fault 2 against Detectron2 itself: its lr scheduler (fvcore) accepts every short schedule we derive."""
    import torch
    from detectron2.config import get_cfg
    from detectron2.solver import build_lr_scheduler

    for max_iter in range(1, 13):
        cfg = get_cfg()
        cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS = max_iter, steps_for(max_iter), max_iter // 5
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        scheduler = build_lr_scheduler(cfg, optimizer)
        for _ in range(max_iter):
            optimizer.step()
            scheduler.step()


@detectron2_test
def test_detectron2_trainer_builds_the_full_model_clipping_optimizer(tmp_path, small_coco):
    """Fault 1: CLIP_TYPE full_model is not a stock GradientClipType; our trainer's build_optimizer takes it."""
    import torch
    from detectron2.config import get_cfg

    from transfer.detection.configs import detectron2_config, write_config
    from transfer.detection.engines.detectron2_engine import _trainer_class

    job = _embedded_job(tmp_path, small_coco, "keypoint_rcnn", clip=10.0)
    cfg = get_cfg()
    cfg.merge_from_file(str(write_config(detectron2_config(job, "w.pkl", "a", "b"), tmp_path / "c.yaml")))
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    optimizer = _trainer_class(job).build_optimizer(cfg, model)
    assert type(optimizer).__name__ == "SGDWithFullModelGradientClip"
    assert len(optimizer.param_groups) >= 2  # Detectron2's groups (no weight decay on norms) are kept
    with pytest.raises(ValueError, match="not a valid GradientClipType"):  # what stock Detectron2 does with it
        from detectron2.solver import build_optimizer

        build_optimizer(cfg, model)


@detectron2_test
def test_detectron2_end_to_end_on_cpu(tmp_path, small_coco, encoder_r18):
    """Full-model clipping (fault 1), a 6-iteration schedule (fault 2), configs side by side, and a rerun that
    trains again instead of "resuming" the finished model (fault 4)."""
    from transfer.detection.convert import convert_checkpoint_to_detectron2
    from transfer.detection.engines.detectron2_engine import train_and_evaluate

    job = _embedded_job(tmp_path, small_coco, "keypoint_rcnn", max_iter=6, clip=10.0)
    weights = convert_checkpoint_to_detectron2(encoder_r18, tmp_path / "w.pkl")
    result = train_and_evaluate(job, weights)
    assert {"bbox/AP", "keypoints/AP"} <= set(result.metrics)
    assert all(0 <= result.metrics[name] <= 100 for name in ("bbox/AP", "keypoints/AP"))
    assert result.info["engine"] == "detectron2" and result.info["resumed"] is False
    out = tmp_path / "out"
    ours = yaml.safe_load((out / "config.yaml").read_text())
    assert ours["MODEL"]["RESNETS"]["DEPTH"] == 18 and "CUDNN_BENCHMARK" not in ours  # the project's, not the dump
    dump = yaml.safe_load((out / DETECTRON2_DUMP).read_text())
    assert dump["CUDNN_BENCHMARK"] is False and dump["SOLVER"]["CLIP_GRADIENTS"]["CLIP_TYPE"] == "full_model"
    assert dump["MODEL"]["FPN"]["OUT_CHANNELS"] == 64
    assert _started_at(out) == [0]

    again = train_and_evaluate(job, weights)  # e.g. --force: train again from the converted weights
    assert again.info["resumed"] is False and _started_at(out) == [0]  # log.txt was cleared with the old run
    assert set(again.metrics) == set(result.metrics)


@detectron2_test
def test_detectron2_resumes_an_unfinished_run(tmp_path, small_coco, encoder_r18):
    from transfer.detection.convert import convert_checkpoint_to_detectron2
    from transfer.detection.engines.detectron2_engine import train_and_evaluate

    job = _embedded_job(tmp_path, small_coco, max_iter=4, extra={"SOLVER.CHECKPOINT_PERIOD": 2})
    weights = convert_checkpoint_to_detectron2(encoder_r18, tmp_path / "w.pkl")
    train_and_evaluate(job, weights)
    out = tmp_path / "out"
    assert (out / "model_0000001.pth").is_file()
    (out / "model_final.pth").unlink()  # as if the job was preempted after iteration 2
    (out / "last_checkpoint").write_text("model_0000001.pth")
    (out / "metrics.json").unlink()
    resumed = train_and_evaluate(job, weights)
    assert resumed.info["resumed"] is True and _started_at(out)[-1] == 2
    assert "bbox/AP" in resumed.metrics


@detectron2_test
def test_detectron2_no_predictions_score_zero(tmp_path, small_coco, encoder_r18):
    """Fault 3 end to end: a score threshold nothing passes leaves the model without detections."""
    from transfer.detection.convert import convert_checkpoint_to_detectron2
    from transfer.detection.engines.detectron2_engine import train_and_evaluate

    job = _embedded_job(tmp_path, small_coco, max_iter=2, extra={"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 1.0})
    result = train_and_evaluate(job, convert_checkpoint_to_detectron2(encoder_r18, tmp_path / "w.pkl"))
    assert result.metrics["bbox/AP"] == 0.0 and result.metrics["segm/AP"] == 0.0
    assert all(value == 0.0 for value in result.metrics.values())


@detectron2_test
def test_detectron2_c4_recipe_end_to_end_on_cpu(tmp_path, small_coco):
    """MoCo's R50-C4 (Res5ROIHeadsExtraNorm, naiveSyncBN) trains and evaluates: a ResNet-50 encoder converted,
    two iterations, COCO metrics for boxes and masks."""
    from ringbench_testing.detection import make_encoder
    from transfer.detection.convert import convert_checkpoint_to_detectron2
    from transfer.detection.engines.detectron2_engine import train_and_evaluate

    encoder = make_encoder(tmp_path / "r50.pt", arch="resnet50")
    job = _embedded_job(tmp_path, small_coco, "mask_rcnn", max_iter=2, recipe="c4", arch="resnet50")
    result = train_and_evaluate(job, convert_checkpoint_to_detectron2(encoder, tmp_path / "w.pkl"))
    assert {"bbox/AP", "segm/AP"} <= set(result.metrics)
    assert all(0 <= result.metrics[name] <= 100 for name in ("bbox/AP", "segm/AP"))
    dump = yaml.safe_load((tmp_path / "out" / DETECTRON2_DUMP).read_text())
    assert dump["MODEL"]["ROI_HEADS"]["NAME"] == "Res5ROIHeadsExtraNorm" and dump["MODEL"]["RESNETS"]["NORM"] == "naiveSyncBN"
    assert dump["MODEL"]["RESNETS"]["DEPTH"] == 50
