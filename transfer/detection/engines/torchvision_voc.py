"""Faster R-CNN R-C4 on PASCAL VOC with torchvision: MoCo's detection recipe without Detectron2.

The model is Detectron2's C4 layout built from torchvision parts: the ResNet up to res4 (layer3, stride 16) is
the backbone the RPN reads; each proposal is pooled to 14 x 14 from res4 (ROIAlign with the half-pixel
alignment of Detectron2's ROIAlignV2) and goes through res5 (layer4, first block stride 2) as the box head,
followed by MoCo's extra norm (Res5ROIHeadsExtraNorm) and mean pooling, then a linear classifier and box
regressor initialised as Detectron2's (N(0, 0.01), N(0, 0.001), zero biases). Every layer trains (FREEZE_AT 0)
with batch-statistics BN (SyncBN under DDP on GPUs: MoCo's naiveSyncBN); precise BN re-estimates every BN,
res5 and its extra norm included, from full training forwards, as Detectron2's PreciseBN hook does. Metrics are
transfer.detection.voc_eval (Detectron2's voc_eval, VOC07 11-point AP on VOC2007 test).

Remaining differences from Detectron2: torchvision's RPN and box losses are smooth-L1 with beta 1/9 (Detectron2:
L1), its box regressor also has a background column, and torchvision's image transform resizes with its own
interpolation.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from ringbench_common.progress import progress_bar
from transfer.detection.configs import C4HeadSpec, VocDetectionJob
from transfer.detection.convert import ConversionError, validate_torchvision_state_dict
from transfer.detection.engines import EngineResult
from transfer.detection.engines.torchvision_engine import (
    _collate,
    _seed_everything,
    apply_input_view,
    placed_for_training,
    train_and_evaluate,
    train_loop,
)
from transfer.detection.voc_data import VocDetectionDataset, read_split, voc_splits
from transfer.detection.voc_eval import VocDetection, evaluate_voc

TRUNK_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")
RES5_PREFIX = "layer4."
STRIDE = 16  # res4


def block_out_channels(layer: nn.Sequential) -> int:
    """Output width of a ResNet stage (Bottleneck: conv3, BasicBlock: conv2)."""
    last = layer[-1]
    return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels


class C4Trunk(nn.Module):
    """A torchvision ResNet's stem and layer1-3 (Detectron2's res2-res4), returning {"res4": features}."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3 = resnet.layer1, resnet.layer2, resnet.layer3
        self.out_channels = block_out_channels(resnet.layer3)

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return OrderedDict([("res4", self.layer3(self.layer2(self.layer1(x))))])


def aligned_roi_pool(resolution: int) -> nn.Module:
    """Each proposal pooled to `resolution` (14: Detectron2's C4) from res4 with aligned ROIAlign (Detectron2's ROIAlignV2, sampling 0).
    A MultiScaleRoIAlign subclass because FasterRCNN accepts only that type; the single level needs none of its
    level mapping."""
    from torchvision.ops import MultiScaleRoIAlign

    class AlignedRoIPool(MultiScaleRoIAlign):
        def forward(self, features, proposals, image_shapes):
            from torchvision.ops import roi_align

            return roi_align(features["res4"], proposals, output_size=self.output_size, spatial_scale=1.0 / STRIDE,
                             sampling_ratio=0, aligned=True)

    return AlignedRoIPool(["res4"], resolution, 0)


class Res5BoxHead(nn.Module):
    """res5 on the pooled proposals, MoCo's extra norm after it, then the mean over the 7 x 7 positions."""

    def __init__(self, layer4: nn.Module, norm_layer: type[nn.Module]):
        super().__init__()
        self.res5 = layer4
        self.out_channels = block_out_channels(layer4)
        self.norm = norm_layer(self.out_channels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.norm(self.res5(pooled)).mean(dim=(2, 3))


def build_c4_model(job: VocDetectionJob, norm_layer: type[nn.Module] = nn.BatchNorm2d) -> nn.Module:
    """Faster R-CNN C4 for `job` (weights loaded separately by `load_encoder_into_c4`)."""
    import torchvision
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    heads: C4HeadSpec = job.heads
    resnet = getattr(torchvision.models, job.arch)(weights=None, norm_layer=norm_layer)
    trunk = C4Trunk(resnet)
    box_head = Res5BoxHead(resnet.layer4, norm_layer)
    predictor = FastRCNNPredictor(box_head.out_channels, len(job.classes) + 1)
    for layer, std in ((predictor.cls_score, 0.01), (predictor.bbox_pred, 0.001)):
        nn.init.normal_(layer.weight, std=std)
        nn.init.zeros_(layer.bias)
    model = FasterRCNN(
        trunk,
        min_size=tuple(job.input.min_size_train),
        max_size=job.input.max_size_train,
        image_mean=list(job.pixel_mean),
        image_std=list(job.pixel_std),
        rpn_anchor_generator=AnchorGenerator((tuple(heads.anchor_sizes),), ((0.5, 1.0, 2.0),)),
        rpn_pre_nms_top_n_train=heads.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=heads.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=heads.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=heads.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=heads.rpn_batch_size_per_image,
        box_roi_pool=aligned_roi_pool(heads.pooler_resolution),
        box_head=box_head,
        box_predictor=predictor,
        box_batch_size_per_image=heads.box_batch_size_per_image,
        box_detections_per_img=100,
    )
    apply_input_view(model, job.input_view)
    return model


def load_encoder_into_c4(model: nn.Module, state_dict: dict[str, torch.Tensor], arch: str, where: str) -> None:
    """The encoder's stem and layer1-3 into the trunk, its layer4 into the res5 box head; strict on both (the
    extra norm and the heads start fresh, as in MoCo)."""
    validate_torchvision_state_dict(state_dict, arch, where)
    trunk = {k: v for k, v in state_dict.items() if k.startswith(TRUNK_PREFIXES)}
    res5 = {k[len(RES5_PREFIX):]: v for k, v in state_dict.items() if k.startswith(RES5_PREFIX)}
    left = sorted(set(state_dict) - set(trunk) - {RES5_PREFIX + k for k in res5})
    if left:
        raise ConversionError(f"{where}: tensors outside the stem and layer1-4: {', '.join(left[:5])}")
    for module, part, name in ((model.backbone, trunk, "trunk (stem, layer1-3)"), (model.roi_heads.box_head.res5, res5, "res5 (layer4)")):
        expected = set(module.state_dict())
        missing, unexpected = sorted(expected - set(part)), sorted(set(part) - expected)
        if missing or unexpected:
            raise ConversionError(f"{where}: does not fit the C4 {name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        module.load_state_dict(part, strict=True)


@torch.no_grad()
def precise_bn_everywhere(model: nn.Module, batches, num_iters: int, device: torch.device) -> int:
    """Every BN's running statistics as the exact mean over `num_iters` training forwards (proposal sampling
    included, so res5 and its extra norm see what they see in training), as Detectron2's PreciseBN."""
    from transfer.detection.engines.torchvision_engine import _to_device

    core = model.module if hasattr(model, "module") else model
    norms = [m for m in core.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or num_iters <= 0:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    core.train()
    for _ in progress_bar(range(num_iters), desc="precise BN", leave=False, disable=None):
        images, targets = _to_device(*next(batches), device)
        core(images, [{k: v for k, v in t.items() if k in ("boxes", "labels")} for t in targets])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return num_iters


@torch.no_grad()
def predict_voc(model: nn.Module, dataset: VocDetectionDataset, job: VocDetectionJob, device: torch.device,
                batch_size: int = 8) -> list[VocDetection]:
    core = model.module if hasattr(model, "module") else model
    core.eval()
    core.transform.min_size = (job.input.min_size_test,)
    core.transform.max_size = job.input.max_size_test
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate, num_workers=0)
    detections = []
    for images, targets in progress_bar(loader, desc="evaluate", unit="batch", leave=False, disable=None):
        outputs = core([image.to(device) for image in images])
        for output, target in zip(outputs, targets):
            image_id = dataset.images[int(target["index"])].image_id
            for box, score, label in zip(output["boxes"].cpu().tolist(), output["scores"].cpu().tolist(),
                                         output["labels"].cpu().tolist()):
                detections.append(VocDetection(image_id, int(label) - 1, float(score), tuple(box)))
    core.transform.min_size = tuple(job.input.min_size_train)
    core.transform.max_size = job.input.max_size_train
    return detections


def _run_voc(rank, world_size, job: VocDetectionJob, encoder_state_dict, heads, where: str, device: torch.device,
             checkpoint_period: int):
    _seed_everything(job.seed + rank)
    model = build_c4_model(job, nn.BatchNorm2d)
    load_encoder_into_c4(model, encoder_state_dict, job.arch, where)
    model, sync_bn = placed_for_training(model, world_size, device, job.schedule.ims_per_batch)
    train_splits, test_split = voc_splits(job.data_root, job.train_years)
    train_images = [image for split in train_splits for image in read_split(split, job.classes)]
    dataset = VocDetectionDataset(train_images, job.classes, train=True, horizontal_flip=job.input.horizontal_flip)
    loop = train_loop(model, dataset, job, rank, world_size, device, checkpoint_period, "voc faster_rcnn_c4")
    precise_started = time.perf_counter()
    precise_iters = precise_bn_everywhere(model, loop.batches, job.precise_bn_iters, device)
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()
        if rank != 0:
            return {}, {}, {}
    eval_started = time.perf_counter()
    test_images = read_split(test_split, job.classes)
    detections = predict_voc(model, VocDetectionDataset(test_images, job.classes, train=False), job, device)
    evaluation = evaluate_voc(test_images, job.classes, detections, use_07_metric=True)
    eval_seconds = time.perf_counter() - eval_started
    (job.output_dir / "last_state.pt").unlink(missing_ok=True)
    info = {
        "engine": "torchvision",
        "task": job.task,
        "arch": job.arch,
        "device": str(device),
        "world_size": world_size,
        "norm": "SyncBN" if sync_bn else "BN",
        "iterations": job.schedule.max_iter - loop.start,
        "resumed_from": loop.start,
        "schedule": job.schedule.to_json(),
        "heads": asdict(job.heads),
        "input": asdict(job.input),
        "train_images": len(dataset),
        "test_images": len(test_images),
        "precise_bn_iters": precise_iters,
        "final_loss": {k: round(v, 5) for k, v in loop.smoothed.items()},
        "train_seconds": round(loop.train_seconds, 2),
        "precise_bn_seconds": round(eval_started - precise_started, 2),
        "eval_seconds": round(eval_seconds, 2),
        "train_cpu_seconds": round(loop.train_cpu_seconds, 2),
        "total_cpu_seconds": round(time.process_time() - loop.cpu_started, 2),
        "torch_threads": torch.get_num_threads(),
        "detections": len(detections),
    }
    metrics = {f"bbox/{name}": value for name, value in evaluation.metrics.items()}
    return metrics, evaluation.per_class, info


def run_voc_detection(job: VocDetectionJob, state_dict: dict[str, Any], workdir, where: str) -> EngineResult:
    """The VOC engine registry's entry: fine-tune the C4 model from the loaded encoder weights and evaluate."""
    return train_and_evaluate(job, state_dict, job.heads, where=where, runner=_run_voc)
