"""Generated Detectron2 configs parse as YAML and carry the protocol's overrides; schedules scale as stated."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from transfer.detection.configs import (
    CLIP_TYPES,
    COCO_1X,
    EMBEDDED_SCHEDULE,
    DetectionJob,
    Schedule,
    ScheduleError,
    check_schedule,
    coco_protocol,
    config_yaml,
    describe_schedule,
    detectron2_config,
    embedded_protocol,
    scale_schedule,
    steps_for_max_iter,
)

COCO = Path("/data/coco")


def coco_job(task: str, recipe: str = "fpn", arch: str = "resnet50", num_gpus: int = 8, batch: int = 16,
             protocol=None) -> DetectionJob:
    protocol = protocol or coco_protocol(task)
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
        keypoint_oks_sigmas=(0.05,) * 17 if keypoint_rcnn else (), heads=protocol.heads,
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
    # MoCo's Base-RCNN-C4-BN: naiveSyncBN in backbone and res5 head (plain BN in one process), on any GPU count
    assert model["RESNETS"]["NORM"] == "naiveSyncBN"
    assert parsed(coco_job("mask_rcnn", recipe="c4", num_gpus=0))["MODEL"]["RESNETS"]["NORM"] == "naiveSyncBN"


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


def test_clip_type_is_one_the_detectron2_engine_implements():
    from transfer.detection.engines.detectron2_engine import clip_gradients_plan

    clip = parsed(coco_job("keypoint_rcnn"))["SOLVER"]["CLIP_GRADIENTS"]
    assert clip["CLIP_TYPE"] in CLIP_TYPES
    assert clip_gradients_plan(clip) == ("full_model", 10.0, 2.0)
    assert clip_gradients_plan(parsed(coco_job("mask_rcnn"))["SOLVER"]["CLIP_GRADIENTS"]) is None  # 1x mask: no clipping
    with pytest.raises(ValueError, match=r"CLIP_TYPE='full'.*expected one of value, norm, full_model"):
        clip_gradients_plan({"ENABLED": True, "CLIP_TYPE": "full", "CLIP_VALUE": 1.0})


def test_full_model_clipping_is_one_norm_over_every_parameter_group():
    """The same update as torch.nn.utils.clip_grad_norm_ over the model (the torchvision engine), which
    per-parameter-group clipping would not give."""
    import torch

    from transfer.detection.engines.detectron2_engine import with_full_model_clipping

    def step(clip):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
        groups = [{"params": [*model[0].parameters(), *model[2].parameters()]}, {"params": list(model[1].parameters()), "weight_decay": 0.0}]
        optimizer = torch.optim.SGD(groups, lr=0.5, momentum=0.9, weight_decay=1e-4)
        if clip == "full_model":
            optimizer = with_full_model_clipping(optimizer, max_norm=0.1)
        loss = (model(torch.randn(16, 4)) ** 2).sum() * 100
        loss.backward()
        if clip == "reference":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        if clip == "per_group":
            for group in optimizer.param_groups:
                torch.nn.utils.clip_grad_norm_(group["params"], 0.1)
        optimizer.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()]), type(optimizer).__name__

    full, name = step("full_model")
    reference, _ = step("reference")
    per_group, _ = step("per_group")
    unclipped, _ = step("none")
    assert name == "SGDWithFullModelGradientClip"
    assert torch.allclose(full, reference, atol=1e-7)
    assert not torch.allclose(full, per_group, atol=1e-4) and not torch.allclose(full, unclipped, atol=1e-4)


@pytest.mark.parametrize("max_iter", range(1, 13))
def test_short_runs_get_steps_both_engines_accept(max_iter):
    """Steps at 3/4 and 11/12 of max_iter; one landing at or after the last iteration (fvcore: "Milestone
    must be smaller than total number of updates") is left out, since it could never lower the lr."""
    steps = steps_for_max_iter(max_iter)
    assert all(0 < step < max_iter for step in steps) and list(steps) == sorted(set(steps))
    schedule = replace(EMBEDDED_SCHEDULE, max_iter=max_iter, steps=steps, warmup_iters=max_iter // 5)
    check_schedule(schedule)
    expected = {1: (), 2: (), 3: (2,), 4: (3,), 5: (4,), 6: (4,), 7: (5, 6), 8: (6, 7), 12: (9, 11)}
    if max_iter in expected:
        assert steps == expected[max_iter]


def test_schedule_check_names_the_fault_before_any_engine_runs():
    with pytest.raises(ScheduleError, match=r"lr steps \[4, 6\] with max_iter=6: step\(s\) \[6\] are not inside"):
        check_schedule(replace(EMBEDDED_SCHEDULE, max_iter=6, steps=(4, 6), warmup_iters=1))
    with pytest.raises(ScheduleError, match=r"strictly increasing"):
        check_schedule(replace(EMBEDDED_SCHEDULE, max_iter=10, steps=(5, 5), warmup_iters=1))
    with pytest.raises(ScheduleError, match=r"max_iter=0"):
        check_schedule(replace(EMBEDDED_SCHEDULE, max_iter=0, steps=()))
    # a DetectionJob (what both engines take) refuses it too
    with pytest.raises(ScheduleError, match=r"mask_rcnn schedule: lr steps \[60000, 90000\]"):
        replace(coco_job("mask_rcnn"), schedule=replace(COCO_1X, steps=(60000, 90000)))


def test_scaled_schedules_leave_out_steps_past_the_end_and_say_so():
    tiny = scale_schedule(EMBEDDED_SCHEDULE, 4, length_scale=0.02)  # 3 iterations: steps 2 and 3 -> (2,)
    assert (tiny.max_iter, tiny.steps) == (3, (2,))
    check_schedule(tiny)
    assert "(1 step(s) at or after the last iteration left out)" in describe_schedule(tiny, EMBEDDED_SCHEDULE, 0.02)
    for scale in (0.001, 0.01, 0.05, 0.5, 1, 2):
        check_schedule(scale_schedule(COCO_1X, 16, scale))
        check_schedule(scale_schedule(EMBEDDED_SCHEDULE, 4, scale))


def test_embedded_detectron2_config_uses_the_embedded_heads():
    """Same model in both engines on the embedded set: FPN width, box FC, mask and keypoint convs, sampling."""
    for task in ("mask_rcnn", "keypoint_rcnn"):
        protocol = embedded_protocol(task)
        heads = protocol.heads
        model = parsed(coco_job(task, arch="resnet18", num_gpus=0, batch=4, protocol=protocol))["MODEL"]
        assert model["FPN"]["OUT_CHANNELS"] == heads.fpn_channels == 64
        assert model["FPN"]["NORM"] == "" and model["RESNETS"]["NORM"] == "BN"  # no FPN norm, as torchvision builds it
        assert model["ROI_BOX_HEAD"]["FC_DIM"] == heads.box_representation == 256
        assert model["RPN"]["BATCH_SIZE_PER_IMAGE"] == heads.rpn_batch_size_per_image
        assert model["ROI_HEADS"]["BATCH_SIZE_PER_IMAGE"] == heads.box_batch_size_per_image
        assert (model["RPN"]["PRE_NMS_TOPK_TRAIN"], model["RPN"]["PRE_NMS_TOPK_TEST"], model["RPN"]["POST_NMS_TOPK_TEST"]) == (300, 300, 300)
        if task == "mask_rcnn":
            assert (model["ROI_MASK_HEAD"]["NUM_CONV"], model["ROI_MASK_HEAD"]["CONV_DIM"]) == (2, 64)
        else:
            assert model["ROI_KEYPOINT_HEAD"]["CONV_DIMS"] == [64, 64, 64, 64]
    full = parsed(coco_job("keypoint_rcnn"))["MODEL"]  # COCO keeps Detectron2's standard heads
    assert full["FPN"]["OUT_CHANNELS"] == 256 and full["ROI_KEYPOINT_HEAD"]["CONV_DIMS"] == [512] * 8
    assert full["ROI_BOX_HEAD"]["FC_DIM"] == 1024 and full["ROI_MASK_HEAD"]["CONV_DIM"] == 256


def test_extra_overrides_land_in_their_sections():
    job = replace(coco_job("mask_rcnn"), extra={"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 1.0, "SOLVER.CHECKPOINT_PERIOD": 2})
    cfg = parsed(job)
    assert cfg["MODEL"]["ROI_HEADS"]["SCORE_THRESH_TEST"] == 1.0 and cfg["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 80
    assert cfg["SOLVER"]["CHECKPOINT_PERIOD"] == 2
