"""Mask R-CNN / Keypoint R-CNN with a ResNet-FPN from torchvision.models.detection, our own training loop.

Same schedule semantics as Detectron2 (iterations, linear warmup, step decay, total batch, linearly
scaled lr), all backbone stages trainable with batch-statistics BN (SyncBN under DDP on GPUs), precise
BN before evaluation, COCOeval metrics, and Detectron2's head initialisation (detectron2_head_init).
Differences from Detectron2 that remain: torchvision's box regression loss is smooth-L1 with beta 1/9
(Detectron2: L1, and 0.5 in its keypoint recipe), ROIAlign without the half-pixel alignment of
Detectron2's ROIAlignV2, and torchvision's heads (4-conv mask head, 8-conv keypoint head; lighter widths
only where `HeadSpec` says so).
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ringbench_common.atomic_files import atomic_write
from ringbench_common.progress import progress_bar
from transfer.detection.coco_data import CocoDetectionDataset, CocoSplit
from transfer.detection.configs import DetectionJob, HeadSpec
from transfer.detection.convert import build_fpn_backbone, load_backbone_body, validate_torchvision_state_dict
from transfer.detection.engines import EngineResult, NonFiniteLossError
from transfer.detection.evaluate import evaluate_coco_detailed


def build_model(job: DetectionJob, heads: HeadSpec, norm_layer: type[nn.Module] = nn.BatchNorm2d) -> nn.Module:
    """Mask R-CNN or Keypoint R-CNN around a trainable ResNet-FPN, fed the encoder's input view; backbone
    weights are loaded separately."""
    from torchvision.models.detection import KeypointRCNN, MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    if job.recipe != "fpn":
        raise ValueError("the torchvision engine implements the FPN recipe only; the C4 recipe needs engine=detectron2")
    backbone = build_fpn_backbone(job.arch, norm_layer, heads.fpn_channels)
    num_classes = job.num_classes + 1  # + background
    common: dict[str, Any] = {
        "min_size": tuple(job.input.min_size_train),
        "max_size": job.input.max_size_train,
        "image_mean": list(job.pixel_mean),
        "image_std": list(job.pixel_std),
        "rpn_anchor_generator": AnchorGenerator(tuple((size,) for size in job.anchor_sizes), ((0.5, 1.0, 2.0),) * len(job.anchor_sizes)),
        "rpn_pre_nms_top_n_train": heads.rpn_pre_nms_top_n_train,
        "rpn_pre_nms_top_n_test": heads.rpn_pre_nms_top_n_test,
        "rpn_post_nms_top_n_train": 1500 if job.task == "keypoint_rcnn" else 1000,  # Detectron2's values
        "rpn_post_nms_top_n_test": heads.rpn_post_nms_top_n_test,
        "rpn_batch_size_per_image": heads.rpn_batch_size_per_image,
        "box_batch_size_per_image": heads.box_batch_size_per_image,
        "box_head": TwoMLPHead(heads.fpn_channels * 7 * 7, heads.box_representation),
        "box_predictor": FastRCNNPredictor(heads.box_representation, num_classes),
    }
    if job.task == "mask_rcnn":
        model = MaskRCNN(
            backbone,
            mask_head=MaskRCNNHeads(heads.fpn_channels, list(heads.mask_head_layers), 1),
            mask_predictor=MaskRCNNPredictor(heads.mask_head_layers[-1], heads.mask_predictor_channels, num_classes),
            **common,
        )
    else:
        model = KeypointRCNN(
            backbone,
            keypoint_head=KeypointRCNNHeads(heads.fpn_channels, list(heads.keypoint_head_layers)),
            keypoint_predictor=KeypointRCNNPredictor(heads.keypoint_head_layers[-1], len(job.keypoint_names)),
            **common,
        )
    detectron2_head_init(model)
    apply_input_view(model, job.input_view)
    return model


def detectron2_head_init(model: nn.Module) -> None:
    """Initialise the heads as Detectron2 does where torchvision differs: the box head's FC layers
    c2_xavier_fill (kaiming_uniform, a=1; torchvision: nn.Linear's default, a bound sqrt(3) times
    smaller), the box classifier N(0, 0.01) and box regressor N(0, 0.001) (torchvision: nn.Linear's
    default, std ~0.018 with random biases), the mask logits N(0, 0.001); all their biases zero. The RPN,
    FPN, mask and keypoint convs already match. On the embedded set this alone moved torchvision's
    Keypoint R-CNN box AP from 21.2 to 25.5 (Detectron2: 26.1), see the README."""
    box_head, box_predictor = model.roi_heads.box_head, model.roi_heads.box_predictor
    for layer in (box_head.fc6, box_head.fc7):
        nn.init.kaiming_uniform_(layer.weight, a=1)
        nn.init.zeros_(layer.bias)
    for layer, std in ((box_predictor.cls_score, 0.01), (box_predictor.bbox_pred, 0.001)):
        nn.init.normal_(layer.weight, std=std)
        nn.init.zeros_(layer.bias)
    mask_predictor = getattr(model.roi_heads, "mask_predictor", None)
    if mask_predictor is not None:
        nn.init.normal_(mask_predictor.mask_fcn_logits.weight, std=0.001)
        nn.init.zeros_(mask_predictor.mask_fcn_logits.bias)


def apply_input_view(model: nn.Module, view: str) -> None:
    """Feed the detector's backbone the encoder's input view: the view is rendered on each [0, 1] RGB
    image right before the model's own normalisation (training, precise BN and evaluation alike)."""
    from pretrain.views import view_pixels

    if view == "rgb":
        return
    normalize = model.transform.normalize
    model.transform.normalize = lambda image: normalize(view_pixels(image, view))


def load_encoder_into(model: nn.Module, state_dict: dict[str, torch.Tensor], arch: str, where: str) -> None:
    validate_torchvision_state_dict(state_dict, arch, where)
    load_backbone_body(model.backbone.body, state_dict, where)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _collate(batch):
    return tuple(zip(*batch))


def _infinite_indices(length: int, seed: int, rank: int, world_size: int) -> Iterator[int]:
    """Shuffled epochs from one seeded generator; each rank takes its own stride (DDP sharding)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(length, generator=generator).tolist()
        yield from order[rank::world_size]


class _InfiniteSampler(torch.utils.data.Sampler):
    def __init__(self, length: int, seed: int, rank: int, world_size: int):
        self.length, self.seed, self.rank, self.world_size = length, seed, rank, world_size

    def __iter__(self):
        return _infinite_indices(self.length, self.seed, self.rank, self.world_size)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights and biases, none on norm parameters (Detectron2's WEIGHT_DECAY_NORM 0)."""
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    decay, no_decay = [], []
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if param.requires_grad:
                (no_decay if isinstance(module, norm_types) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fast_backbone(model: nn.Module, device: torch.device, enabled: bool | None = None) -> nn.Module:
    """On CUDA, the backbone + FPN (most of the FLOPs) run channels_last under bf16 autocast and hand
    float32 features to the heads: box decoding and losses in bf16 would round coordinates to ~4 px at
    800 px. The forward is wrapped on the instance, so state dicts and checkpoints are unchanged."""
    if not (device.type == "cuda" if enabled is None else enabled):
        return model
    backbone = model.backbone
    backbone.to(memory_format=torch.channels_last)
    plain_forward = backbone.forward

    def forward(images):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            features = plain_forward(images.contiguous(memory_format=torch.channels_last))
        return type(features)((name, value.float()) for name, value in features.items())

    backbone.forward = forward
    return model


def _to_device(images, targets, device):
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
    return images, targets


@torch.no_grad()
def precise_bn(model: nn.Module, batches: Iterator, num_iters: int, device: torch.device) -> int:
    """Re-estimate BN running statistics of backbone and FPN as the exact mean over `num_iters` batches."""
    core = model.module if hasattr(model, "module") else model
    norms = [m for m in core.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or num_iters <= 0:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = exact mean over the batches seen
    core.train()
    for _ in progress_bar(range(num_iters), desc="precise BN", leave=False, disable=None):
        images, _targets = next(batches)
        images = [image.to(device) for image in images]
        image_list, _ = core.transform(images)
        core.backbone(image_list.tensors)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return num_iters


@torch.no_grad()
def predict_coco(model: nn.Module, split: CocoSplit, job: DetectionJob, device: torch.device, batch_size: int = 8) -> dict[str, list[dict[str, Any]]]:
    """Run the model on every image of `split`; return COCO result lists per IoU type."""
    from pycocotools import mask as mask_utils

    dataset = CocoDetectionDataset(split, with_masks=False, with_keypoints=False, train=False)
    category_ids = dataset.category_ids
    core = model.module if hasattr(model, "module") else model
    core.eval()
    core.transform.min_size = (job.input.min_size_test,)
    core.transform.max_size = job.input.max_size_test
    results: dict[str, list[dict[str, Any]]] = {iou_type: [] for iou_type in job.iou_types}
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate, num_workers=0)
    for images, targets in progress_bar(loader, desc="evaluate", unit="batch", leave=False, disable=None):
        outputs = core([image.to(device) for image in images])
        for output, target in zip(outputs, targets):
            image_id = int(target["image_id"])
            boxes = output["boxes"].cpu().numpy()
            scores = output["scores"].cpu().numpy()
            labels = output["labels"].cpu().numpy()
            for index in range(len(scores)):
                x0, y0, x1, y1 = (float(v) for v in boxes[index])
                base = {"image_id": image_id, "category_id": category_ids[int(labels[index]) - 1], "score": float(scores[index])}
                results["bbox"].append({**base, "bbox": [x0, y0, x1 - x0, y1 - y0]})
                if "segm" in results:
                    mask = (output["masks"][index, 0] > 0.5).cpu().numpy().astype(np.uint8)
                    rle = mask_utils.encode(np.asfortranarray(mask))
                    rle["counts"] = rle["counts"].decode("ascii")
                    results["segm"].append({**base, "segmentation": rle})
                if "keypoints" in results:
                    keypoints = output["keypoints"][index].cpu().numpy()
                    results["keypoints"].append({**base, "keypoints": [float(v) for v in keypoints.reshape(-1)]})
    core.transform.min_size = tuple(job.input.min_size_train)
    core.transform.max_size = job.input.max_size_train
    return results


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def distributed_env() -> tuple[int, int, int] | None:
    """(rank, local_rank, world_size) when this process is one task of a multi-task job (RANK/WORLD_SIZE set)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world_size


def train_and_evaluate(
    job: DetectionJob,
    encoder_state_dict: dict[str, torch.Tensor],
    heads: HeadSpec | None = None,
    where: str = "encoder",
    device: str | None = None,
    checkpoint_period: int = 2000,
    runner=None,
) -> EngineResult:
    """Fine-tune and evaluate one job with `runner` (default: the COCO job's `_run`; a module-level function
    with `_run`'s signature, e.g. the VOC job's). Three ways to run:

    - inside a multi-task job (RANK/WORLD_SIZE exported, one task per GPU, possibly several nodes):
      join the process group with env://, DDP + SyncBN (gloo and plain BN on CPU);
    - one process that sees several GPUs (job.num_gpus > 1): spawn one process per GPU;
    - otherwise one process on one device.
    Only rank 0 evaluates and returns metrics; other ranks return an empty result.
    """
    heads = heads or HeadSpec()
    runner = runner or _run
    job.output_dir.mkdir(parents=True, exist_ok=True)
    validate_torchvision_state_dict(encoder_state_dict, job.arch, where)
    if job.schedule.ims_per_batch < 1:
        raise ValueError("ims_per_batch must be >= 1")
    env = distributed_env()
    if env is not None:
        import torch.distributed as dist

        rank, local_rank, world_size = env
        use_cuda = torch.cuda.is_available()
        chosen = torch.device("cuda", local_rank % torch.cuda.device_count()) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(chosen)
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://", rank=rank, world_size=world_size)
        try:
            metrics, per_category, info = runner(rank, world_size, job, encoder_state_dict, heads, where, chosen, checkpoint_period)
        finally:
            dist.destroy_process_group()
        return EngineResult(metrics, info, per_category)
    if job.num_gpus > 1:
        if not torch.cuda.is_available() or torch.cuda.device_count() < job.num_gpus:
            raise RuntimeError(f"num_gpus={job.num_gpus} but {torch.cuda.device_count()} CUDA devices are visible")
        port = _free_port()
        torch.multiprocessing.spawn(
            _worker, args=(job.num_gpus, port, job, encoder_state_dict, heads, where, checkpoint_period, runner), nprocs=job.num_gpus, join=True
        )
        result = json.loads((job.output_dir / "final_metrics.json").read_text())
        return EngineResult(result["metrics"], result["info"], result["per_category"])
    chosen = torch.device(device) if device else torch.device("cuda" if (job.num_gpus > 0 and torch.cuda.is_available()) else "cpu")
    metrics, per_category, info = runner(0, 1, job, encoder_state_dict, heads, where, chosen, checkpoint_period)
    return EngineResult(metrics, info, per_category)


def _worker(rank, world_size, port, job, encoder_state_dict, heads, where, checkpoint_period, runner=None):
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        metrics, per_category, info = (runner or _run)(rank, world_size, job, encoder_state_dict, heads, where,
                                                       torch.device("cuda", rank), checkpoint_period)
        if rank == 0:
            payload = {"metrics": metrics, "per_category": per_category, "info": info}
            (job.output_dir / "final_metrics.json").write_text(json.dumps(payload))
    finally:
        dist.destroy_process_group()


@dataclass
class TrainLoop:
    """What the fine-tuning loop leaves: the batch stream (precise BN reads on), smoothed losses, timings."""

    batches: Iterator
    smoothed: dict[str, float]
    start: int
    train_seconds: float
    train_cpu_seconds: float
    cpu_started: float


def train_loop(model: nn.Module, dataset, job, rank: int, world_size: int, device: torch.device,
               checkpoint_period: int, label: str) -> TrainLoop:
    """Detectron2-style iterations over `dataset` (lr warmup and steps, optional full-model clipping, resume
    from last_state.pt, metrics.jsonl and TensorBoard on rank 0), shared by every torchvision detection job."""
    schedule = job.schedule
    per_device_batch = schedule.ims_per_batch // world_size
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=per_device_batch,
        sampler=_InfiniteSampler(len(dataset), job.seed, rank, world_size),
        collate_fn=_collate,
        num_workers=job.num_workers if device.type == "cuda" else 0,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    batches = iter(loader)
    optimizer = torch.optim.SGD(_param_groups(model, schedule.weight_decay), lr=schedule.base_lr, momentum=schedule.momentum)
    state_file = job.output_dir / "last_state.pt"
    start = 0
    if state_file.is_file():  # a requeued job resumes where it stopped
        state = torch.load(state_file, map_location=device, weights_only=True)
        (model.module if world_size > 1 else model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["iteration"])
    log_path = job.output_dir / "metrics.jsonl"
    started = time.perf_counter()
    cpu_started = time.process_time()
    model.train()
    smoothed: dict[str, float] = {}
    # TensorBoard curves next to metrics.jsonl; purge_step drops what a killed attempt logged past the state
    events = None
    if rank == 0:
        from pretrain.events import summary_writer

        events = summary_writer(job.output_dir / "tensorboard", purge_step=start or None)
    progress = progress_bar(range(start, schedule.max_iter), desc=f"{label} train", unit="it", disable=None if rank == 0 else True)
    for iteration in progress:
        lr = schedule.lr_at(iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, targets = _to_device(*next(batches), device)
        loss_dict = model(images, targets)
        loss = sum(loss_dict.values())
        if not torch.isfinite(loss):
            terms = ", ".join(f"{k}={float(v):.4g}" for k, v in loss_dict.items())
            raise NonFiniteLossError(
                f"{label}: loss became {float(loss)} at iteration {iteration} (lr {lr:.4g}; {terms}); "
                "lower the lr, lengthen the warmup or enable gradient clipping"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if schedule.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), schedule.clip_grad_norm)
        optimizer.step()
        for key, value in {"total_loss": loss, **loss_dict}.items():
            number = float(value.detach())
            smoothed[key] = 0.9 * smoothed.get(key, number) + 0.1 * number
        if rank == 0 and (iteration % 20 == 0 or iteration == schedule.max_iter - 1):
            progress.set_postfix(loss=f"{smoothed['total_loss']:.3f}", lr=f"{lr:.3g}")
            with open(log_path, "a") as handle:
                handle.write(json.dumps({"iteration": iteration, "lr": lr, **smoothed}) + "\n")
            events.add_scalar("lr", lr, iteration)
            for key, value in smoothed.items():
                events.add_scalar(f"loss/{key}", value, iteration)
            events.flush()
        if rank == 0 and checkpoint_period and (iteration + 1) % checkpoint_period == 0 and iteration + 1 < schedule.max_iter:
            core = model.module if world_size > 1 else model
            state = {"model": core.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration + 1}
            atomic_write(state_file, lambda handle, state=state: torch.save(state, handle), fsync=False)
    if events is not None:
        events.close()
    return TrainLoop(batches, smoothed, start, time.perf_counter() - started, time.process_time() - cpu_started, cpu_started)


def placed_for_training(model: nn.Module, world_size: int, device: torch.device,
                        ims_per_batch: int) -> tuple[nn.Module, bool]:
    """The loaded detector on its device, SyncBN and DDP-wrapped across processes; (model, whether SyncBN)."""
    sync_bn = world_size > 1 and device.type == "cuda"  # SyncBatchNorm runs on CUDA only
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    fast_backbone(model, device)
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if ims_per_batch % world_size:
        raise ValueError(f"total batch {ims_per_batch} does not split over {world_size} processes")
    return model, sync_bn


def _run(rank, world_size, job: DetectionJob, encoder_state_dict, heads: HeadSpec, where: str, device: torch.device, checkpoint_period: int):
    _seed_everything(job.seed + rank)
    schedule = job.schedule
    model = build_model(job, heads, nn.BatchNorm2d)
    load_encoder_into(model, encoder_state_dict, job.arch, where)
    model, sync_bn = placed_for_training(model, world_size, device, schedule.ims_per_batch)
    train_split = CocoSplit("keypoints" if job.task == "keypoint_rcnn" else "instances", "train", job.train_json, job.train_images)
    val_split = CocoSplit(train_split.kind, "val", job.val_json, job.val_images)
    dataset = CocoDetectionDataset(
        train_split, with_masks=job.task == "mask_rcnn", with_keypoints=job.task == "keypoint_rcnn", train=True, horizontal_flip=job.input.horizontal_flip
    )
    if len(dataset.category_ids) != job.num_classes:
        raise ValueError(
            f"{job.train_json}: {len(dataset.category_ids)} categories but the job was built for num_classes={job.num_classes}"
        )
    loop = train_loop(model, dataset, job, rank, world_size, device, checkpoint_period, job.task)
    batches, smoothed, start = loop.batches, loop.smoothed, loop.start
    train_seconds, train_cpu_seconds, cpu_started = loop.train_seconds, loop.train_cpu_seconds, loop.cpu_started
    precise_started = time.perf_counter()
    precise_iters = precise_bn(model, batches, job.precise_bn_iters, device)
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()
        if rank != 0:
            return {}, {}, {}
    eval_started = time.perf_counter()
    results = predict_coco(model, val_split, job, device)
    metrics, per_category = evaluate_coco_detailed(job.val_json, results, job.keypoint_oks_sigmas or None)
    eval_seconds = time.perf_counter() - eval_started
    total_cpu_seconds = time.process_time() - cpu_started
    (job.output_dir / "last_state.pt").unlink(missing_ok=True)
    info = {
        "engine": "torchvision",
        "task": job.task,
        "arch": job.arch,
        "recipe": job.recipe,
        "device": str(device),
        "world_size": world_size,
        "norm": "SyncBN" if sync_bn else "BN",
        "iterations": schedule.max_iter - start,
        "resumed_from": start,
        "schedule": schedule.to_json(),
        "heads": asdict(heads),
        "input": asdict(job.input),
        "anchor_sizes": list(job.anchor_sizes),
        "precise_bn_iters": precise_iters,
        "final_loss": {k: round(v, 5) for k, v in smoothed.items()},
        "train_seconds": round(train_seconds, 2),
        "precise_bn_seconds": round(eval_started - precise_started, 2),
        "eval_seconds": round(eval_seconds, 2),
        # CPU time of this process (all its threads): a contention-free measure of the work on shared machines
        "train_cpu_seconds": round(train_cpu_seconds, 2),
        "total_cpu_seconds": round(total_cpu_seconds, 2),
        "torch_threads": torch.get_num_threads(),
        "detections": {k: len(v) for k, v in results.items()},
    }
    return metrics, per_category, info


def run_detection(job: DetectionJob, state_dict, heads, workdir, where: str) -> EngineResult:
    """The engine registry's entry: fine-tune from the loaded encoder weights."""
    return train_and_evaluate(job, state_dict, heads, where=where)
