"""A few iterations of each task with the torchvision engine on CPU, then COCOeval."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from transfer.detection.configs import DetectionJob, Schedule, embedded_protocol
from transfer.detection.engines import NonFiniteLossError
from transfer.detection.engines.torchvision_engine import build_model, load_encoder_into, train_and_evaluate


def tiny_job(root: Path, task: str, out: Path, iterations: int = 3) -> DetectionJob:
    kind = "person_keypoints" if task == "keypoint_rcnn" else "instances"
    protocol = embedded_protocol(task)
    return DetectionJob(
        task=task, recipe="fpn", arch="resnet18",
        train_json=root / f"annotations/{kind}_train2017.json", train_images=root / "train2017",
        val_json=root / f"annotations/{kind}_val2017.json", val_images=root / "val2017",
        num_classes=10,  # the ten digit categories, for keypoints too
        schedule=Schedule(ims_per_batch=2, base_lr=0.005, max_iter=iterations, steps=(iterations - 1,), warmup_iters=1,
                          clip_grad_norm=10.0),
        input=protocol.input, pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.25, 0.25, 0.25), output_dir=out,
        anchor_sizes=protocol.anchor_sizes,
        keypoint_names=("top", "bottom", "left_extreme", "right_extreme") if task == "keypoint_rcnn" else (),
        keypoint_flip_map=(("left_extreme", "right_extreme"),) if task == "keypoint_rcnn" else (),
        keypoint_oks_sigmas=(0.08,) * 4 if task == "keypoint_rcnn" else (),
        precise_bn_iters=2,
    )


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pretrain.events import tensorflow_free_tensorboard

    tensorflow_free_tensorboard()
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def encoder_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize(("task", "iou_types"), [("mask_rcnn", ("bbox", "segm")), ("keypoint_rcnn", ("bbox", "keypoints"))])
def test_few_iterations_then_cocoeval(tmp_path, small_coco, encoder_r18, task, iou_types):
    torch.manual_seed(0)
    job = tiny_job(small_coco, task, tmp_path / "out")
    result = train_and_evaluate(job, encoder_state(encoder_r18), embedded_protocol(task).heads)
    for iou_type in iou_types:
        value = result.metrics[f"{iou_type}/AP"]
        assert 0.0 <= value <= 100.0
        assert math.isfinite(result.metrics[f"{iou_type}/AP50"])
    assert result.info["engine"] == "torchvision" and result.info["iterations"] == 3
    assert result.info["norm"] == "BN" and result.info["precise_bn_iters"] == 2
    log = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert log[0]["iteration"] == 0 and log[-1]["iteration"] == 2
    assert all(math.isfinite(entry["total_loss"]) for entry in log)
    assert log[0]["lr"] == pytest.approx(0.005 * 0.001)  # warmup starts at warmup_factor x lr
    scalars = _scalars(tmp_path / "out" / "tensorboard")  # the same curves as TensorBoard events
    assert [step for step, _ in scalars["lr"]] == [entry["iteration"] for entry in log]
    assert scalars["loss/total_loss"][-1][1] == pytest.approx(log[-1]["total_loss"], rel=1e-5)
    assert "loss/loss_classifier" in scalars
    categories = result.per_category["bbox"]
    if categories:
        assert sum(categories.values()) / len(categories) == pytest.approx(result.metrics["bbox/AP"], abs=1e-6)


def test_backbone_weights_are_the_encoders(small_coco, tmp_path, encoder_r18):
    job = tiny_job(small_coco, "mask_rcnn", tmp_path)
    model = build_model(job, embedded_protocol("mask_rcnn").heads)
    state = encoder_state(encoder_r18)
    load_encoder_into(model, state, "resnet18", str(encoder_r18))
    assert torch.equal(model.backbone.body.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert torch.equal(model.backbone.body.bn1.running_var, state["bn1.running_var"])
    assert all(p.requires_grad for p in model.backbone.body.parameters())  # FREEZE_AT 0: every stage trains


def test_nan_loss_stops_the_run_with_a_message(tmp_path, small_coco, encoder_r18):
    state = encoder_state(encoder_r18)
    state["conv1.weight"] = torch.full_like(state["conv1.weight"], float("nan"))
    job = replace(tiny_job(small_coco, "mask_rcnn", tmp_path / "out"), precise_bn_iters=0)
    with pytest.raises(NonFiniteLossError, match=r"mask_rcnn: loss became nan at iteration 0 \(lr .*loss_classifier=nan"):
        train_and_evaluate(job, state, embedded_protocol("mask_rcnn").heads)


def test_class_count_mismatch_names_the_json(tmp_path, small_coco, encoder_r18):
    job = replace(tiny_job(small_coco, "keypoint_rcnn", tmp_path / "out"), num_classes=1)
    with pytest.raises(ValueError, match=r"person_keypoints_train2017.json: 10 categories but the job was built for num_classes=1"):
        train_and_evaluate(job, encoder_state(encoder_r18), embedded_protocol("keypoint_rcnn").heads)


def test_torchvision_engine_refuses_c4(small_coco, tmp_path):
    job = replace(tiny_job(small_coco, "mask_rcnn", tmp_path), arch="resnet50")
    with pytest.raises(ValueError, match="C4 recipe needs engine=detectron2"):
        build_model(replace(job, recipe="c4"), embedded_protocol("mask_rcnn").heads)


def test_fast_backbone_runs_bf16_channels_last_and_hands_float_features(small_coco, tmp_path):
    """What CUDA runs (forced here on the CPU's bf16 autocast): state dict unchanged, float32 features
    close to the fp32 backbone's."""
    from transfer.detection.engines.torchvision_engine import fast_backbone

    job = tiny_job(small_coco, "mask_rcnn", tmp_path)
    torch.manual_seed(0)
    plain = build_model(job, embedded_protocol("mask_rcnn").heads).eval()
    torch.manual_seed(0)
    fast = fast_backbone(build_model(job, embedded_protocol("mask_rcnn").heads).eval(), torch.device("cpu"), enabled=True)
    assert fast.state_dict().keys() == plain.state_dict().keys()
    assert fast.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = plain.backbone(images), fast.backbone(images)
    assert list(got) == list(expected)
    for name in expected:
        assert got[name].dtype == torch.float32
        scale = expected[name].abs().mean()
        assert (got[name] - expected[name]).abs().mean() < 0.05 * scale, name


def test_the_detector_feeds_its_backbone_the_encoders_input_view(small_coco, tmp_path):
    from pretrain.views import view_pixels

    image = torch.rand(3, 20, 24)
    plain = build_model(tiny_job(small_coco, "mask_rcnn", tmp_path), embedded_protocol("mask_rcnn").heads)
    job = replace(tiny_job(small_coco, "mask_rcnn", tmp_path), input_view="lightness")
    viewed = build_model(job, embedded_protocol("mask_rcnn").heads)
    grey = view_pixels(image, "lightness")
    assert torch.allclose(viewed.transform.normalize(image), plain.transform.normalize(grey), atol=1e-6)
    assert not torch.allclose(viewed.transform.normalize(image), plain.transform.normalize(image), atol=1e-2)
    # the transform feeds training, precise BN and evaluation alike: the batched tensors are grey
    batched, _ = viewed.transform([image])
    assert torch.allclose(batched.tensors[0, 0], batched.tensors[0, 2], atol=1e-4)  # equal mean/std per channel


@pytest.mark.parametrize("task", ["mask_rcnn", "keypoint_rcnn"])
def test_heads_start_as_detectron2s(small_coco, tmp_path, task):
    """Box FCs c2_xavier_fill, box classifier N(0, 0.01), box regressor N(0, 0.001), mask logits N(0, 0.001),
    zero biases: torchvision's defaults here scored 4-5 AP below Detectron2 on the embedded set."""
    torch.manual_seed(0)
    model = build_model(tiny_job(small_coco, task, tmp_path), embedded_protocol(task).heads)
    heads = model.roi_heads
    for layer in (heads.box_head.fc6, heads.box_head.fc7):
        bound = (3.0 / layer.weight.shape[1]) ** 0.5  # kaiming_uniform with a=1
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
        assert layer.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.05)
        assert not layer.bias.any()
    assert heads.box_predictor.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert heads.box_predictor.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert not heads.box_predictor.cls_score.bias.any() and not heads.box_predictor.bbox_pred.bias.any()
    if task == "mask_rcnn":
        assert heads.mask_predictor.mask_fcn_logits.weight.std().item() == pytest.approx(0.001, rel=0.2)
        assert not heads.mask_predictor.mask_fcn_logits.bias.any()


def test_torchvision_cells_name_their_head_init():
    """The init changed the engine's numbers: its cells carry it, so results from before are not reused."""
    from bench.suites.coco_det import CocoDetSuite

    suite = CocoDetSuite()
    tasks = suite.tasks(suite.parse_options({"engine": "torchvision"}), None)
    assert {t.params.get("head_init") for t in tasks} == {"detectron2"}
