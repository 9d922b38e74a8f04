"""Generated Detectron2 configs parse as YAML and carry the protocol's overrides; schedules scale as stated."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from transfer.detection.configs import (
    COCO_1X,
    DetectionJob,
    Schedule,
    coco_protocol,
    config_yaml,
    detectron2_config,
    embedded_protocol,
    scale_schedule,
)

COCO = Path("/data/coco")


def coco_job(task: str, recipe: str = "fpn", arch: str = "resnet50", num_gpus: int = 8, batch: int = 16) -> DetectionJob:
    protocol = coco_protocol(task)
    keypoint_rcnn = task == "keypoint_rcnn"
    return DetectionJob(
        task=task, recipe=recipe, arch=arch,
        train_json=COCO / "annotations/x_train2017.json", train_images=COCO / "train2017",
        val_json=COCO / "annotations/x_val2017.json", val_images=COCO / "val2017",
        num_classes=1 if keypoint_rcnn else 80,
        schedule=scale_schedule(protocol.schedule, batch), input=protocol.input,
        pixel_mean=(0.485, 0.456, 0.406), pixel_std=(0.229, 0.224, 0.225),
        output_dir=Path("/tmp/out"), num_gpus=num_gpus, anchor_sizes=protocol.anchor_sizes,
        keypoint_names=tuple(f"k{i}" for i in range(17)) if keypoint_rcnn else (),
        keypoint_oks_sigmas=(0.05,) * 17 if keypoint_rcnn else (),
    )


def parsed(job: DetectionJob) -> dict:
    return yaml.safe_load(config_yaml(detectron2_config(job, "/w/backbone.pkl", "train_set", "val_set")))


def assert_torchvision_overrides(cfg: dict) -> None:
    model = cfg["MODEL"]
    assert cfg["INPUT"]["FORMAT"] == "RGB"
    assert model["PIXEL_MEAN"] == pytest.approx([123.675, 116.28, 103.53])
    assert model["PIXEL_STD"] == pytest.approx([58.395, 57.12, 57.375])
    assert model["RESNETS"]["STRIDE_IN_1X1"] is False
    assert model["BACKBONE"]["FREEZE_AT"] == 0
    assert cfg["TEST"]["PRECISE_BN"]["ENABLED"] is True and cfg["TEST"]["PRECISE_BN"]["NUM_ITER"] == 200
    assert model["WEIGHTS"] == "/w/backbone.pkl"
    assert "_BASE_" not in cfg


def test_mask_rcnn_fpn_1x():
    cfg = parsed(coco_job("mask_rcnn"))
    assert_torchvision_overrides(cfg)
    model = cfg["MODEL"]
    assert model["MASK_ON"] is True and model["KEYPOINT_ON"] is False
    assert model["BACKBONE"]["NAME"] == "build_resnet_fpn_backbone"
    assert model["RESNETS"]["NORM"] == "SyncBN" and model["FPN"]["NORM"] == "SyncBN"  # 8 GPUs
    assert model["RESNETS"]["DEPTH"] == 50 and model["ROI_HEADS"]["NUM_CLASSES"] == 80
    solver = cfg["SOLVER"]
    assert (solver["IMS_PER_BATCH"], solver["BASE_LR"], solver["MAX_ITER"], solver["STEPS"]) == (16, 0.02, 90000, [60000, 80000])
    assert solver["WARMUP_ITERS"] == 1000 and solver["REFERENCE_WORLD_SIZE"] == 0
    assert cfg["DATASETS"] == {"TRAIN": ["train_set"], "TEST": ["val_set"]}


def test_keypoint_rcnn_fpn_1x_has_the_stabilising_settings():
    cfg = parsed(coco_job("keypoint_rcnn"))
    assert_torchvision_overrides(cfg)
    model = cfg["MODEL"]
    assert model["KEYPOINT_ON"] is True and model["MASK_ON"] is False
    assert model["ROI_KEYPOINT_HEAD"]["NUM_KEYPOINTS"] == 17
    assert model["ROI_BOX_HEAD"]["SMOOTH_L1_BETA"] == 0.5
    assert model["RPN"]["POST_NMS_TOPK_TRAIN"] == 1500
    assert cfg["SOLVER"]["WARMUP_ITERS"] == 1000
    clip = cfg["SOLVER"]["CLIP_GRADIENTS"]
    assert clip["ENABLED"] is True and clip["CLIP_TYPE"] == "full_model" and clip["CLIP_VALUE"] > 0
    assert cfg["TEST"]["KEYPOINT_OKS_SIGMAS"] == [0.05] * 17


def test_one_gpu_uses_plain_bn_and_resnet18_res2_width():
    cfg = parsed(coco_job("mask_rcnn", arch="resnet18", num_gpus=1))
    assert cfg["MODEL"]["RESNETS"]["NORM"] == "BN" and cfg["MODEL"]["FPN"]["NORM"] == "BN"
    assert cfg["MODEL"]["RESNETS"]["DEPTH"] == 18 and cfg["MODEL"]["RESNETS"]["RES2_OUT_CHANNELS"] == 64


def test_moco_c4_recipe():
    cfg = parsed(coco_job("mask_rcnn", recipe="c4"))
    assert_torchvision_overrides(cfg)
    model = cfg["MODEL"]
    assert model["BACKBONE"]["NAME"] == "build_resnet_backbone"
    assert model["ROI_HEADS"]["NAME"] == "Res5ROIHeadsExtraNorm"
    assert model["RESNETS"]["OUT_FEATURES"] == ["res4"] and "FPN" not in model
    assert model["RPN"]["PRE_NMS_TOPK_TEST"] == 6000


def test_c4_refuses_resnet18_and_keypoints():
    with pytest.raises(ValueError, match="C4 recipe needs resnet50.*use recipe=fpn for resnet18"):
        coco_job("mask_rcnn", recipe="c4", arch="resnet18")
    with pytest.raises(ValueError, match="keypoints use the FPN recipe"):
        coco_job("keypoint_rcnn", recipe="c4")


def test_schedule_scales_with_total_batch():
    half = scale_schedule(COCO_1X, 8)
    assert (half.base_lr, half.max_iter, half.steps, half.warmup_iters) == (0.01, 180000, (120000, 160000), 2000)
    double = scale_schedule(COCO_1X, 32, length_scale=0.5)
    assert (double.base_lr, double.max_iter, double.steps) == (0.04, 22500, (15000, 20000))
    short = scale_schedule(COCO_1X, 16, length_scale=0.001)  # 90 iterations: warmup capped at a fifth
    assert short.max_iter == 90 and short.warmup_iters == 18
    with pytest.raises(ValueError):
        scale_schedule(COCO_1X, 0)


def test_lr_follows_warmup_then_steps():
    schedule = Schedule(ims_per_batch=2, base_lr=0.1, max_iter=100, steps=(50, 80), warmup_iters=10, warmup_factor=0.001)
    assert schedule.lr_at(0) == pytest.approx(1e-4)
    assert schedule.lr_at(5) == pytest.approx(0.1 * (0.001 * 0.5 + 0.5))
    assert schedule.lr_at(10) == pytest.approx(0.1)
    assert schedule.lr_at(49) == pytest.approx(0.1)
    assert schedule.lr_at(50) == pytest.approx(0.01)
    assert schedule.lr_at(99) == pytest.approx(0.001)


def test_embedded_protocol_is_cpu_sized():
    protocol = embedded_protocol("mask_rcnn")
    assert protocol.input.min_size_train == (96,) and protocol.input.max_size_test == 96
    assert protocol.input.horizontal_flip is False and embedded_protocol("keypoint_rcnn").input.horizontal_flip is False
    assert protocol.anchor_sizes[0] == 16 and protocol.schedule.ims_per_batch == 4
