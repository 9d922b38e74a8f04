"""The fine-tuning protocol shared by both engines, and the Detectron2 YAML it becomes.

Protocol (MoCo's, for torchvision-style self-supervised ResNets):
- Mask R-CNN R50-FPN 1x for boxes and masks, Keypoint R-CNN R50-FPN 1x for keypoints; MoCo's R50-C4
  recipe (Res5ROIHeadsExtraNorm) as an option for boxes and masks.
- The four torchvision overrides: INPUT.FORMAT RGB, PIXEL_MEAN/PIXEL_STD = the encoder's mean/std x 255
  (ImageNet: 123.675, 116.28, 103.53 / 58.395, 57.12, 57.375), RESNETS.STRIDE_IN_1X1 False.
- Fine-tuned normalisation: SyncBN in backbone and FPN on several GPUs (heads standard, as MoCo did),
  plain BN on one GPU or CPU (SyncBN has nothing to sync there); FREEZE_AT 0; precise BN before eval.
- Keypoints: D2's keypoint recipe (box SMOOTH_L1_BETA 0.5, 1500 post-NMS proposals per image) plus the
  1000-iteration warmup and full-model gradient-norm clipping, which keep fine-tuned BN from diverging
  (MoCo issue #23 reports NaN after ~700 iterations without them).
- Schedules are written for a reference batch of 16 images; a different total batch scales the learning
  rate linearly and the iterations, steps and warmup inversely (Detectron2's auto_scale_workers rule).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

TASKS = ("mask_rcnn", "keypoint_rcnn")
RECIPES = ("fpn", "c4")
REFERENCE_BATCH = 16
FULL_MODEL_CLIP_TYPE = "full_model"
# What the Detectron2 engine's trainer accepts: stock Detectron2's per-parameter "value" and "norm", plus full_model.
CLIP_TYPES = ("value", "norm", FULL_MODEL_CLIP_TYPE)
# The torchvision engine's head initialisation (torchvision_engine.detectron2_head_init), a task param of
# its cells: it changed the engine's numbers, so results of the old initialisation are not reused.
TORCHVISION_HEAD_INIT = "detectron2"
# MoCo's C4 recipe is 2x on COCO (coco_R_50_C4_2x: 180k iterations); FPN is Detectron2's 1x.
DEFAULT_SCHEDULE_SCALE = {"fpn": 1.0, "c4": 2.0}


@dataclass(frozen=True)
class Schedule:
    """SGD schedule in iterations, as Detectron2's SOLVER section."""

    ims_per_batch: int
    base_lr: float
    max_iter: int
    steps: tuple[int, ...]
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 1e-4
    gamma: float = 0.1
    clip_grad_norm: float | None = None  # full-model L2 norm clipping

    def lr_at(self, iteration: int) -> float:
        """Warmup (linear from warmup_factor) then step decay: Detectron2's WarmupMultiStepLR."""
        factor = self.gamma ** sum(1 for step in self.steps if iteration >= step)
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return self.base_lr * factor

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# Detectron2 1x at batch 16 (about 12 COCO epochs).
COCO_1X = Schedule(ims_per_batch=16, base_lr=0.02, max_iter=90000, steps=(60000, 80000))
COCO_1X_KEYPOINTS = replace(COCO_1X, clip_grad_norm=10.0)


class ScheduleError(ValueError):
    """A schedule Detectron2 (fvcore's MultiStepParamScheduler) or our loop cannot run; the message says why."""


def check_schedule(schedule: Schedule, where: str = "schedule") -> None:
    """What both engines need: max_iter >= 1, lr steps strictly increasing and strictly inside (0, max_iter),
    warmup within the run. fvcore refuses a step at or after the last iteration ("Milestone must be smaller
    than total number of updates") and repeated steps, so this is checked before any job starts."""
    if schedule.ims_per_batch < 1:
        raise ScheduleError(f"{where}: ims_per_batch={schedule.ims_per_batch}; expected >= 1")
    if schedule.max_iter < 1:
        raise ScheduleError(f"{where}: max_iter={schedule.max_iter}; expected >= 1")
    steps = list(schedule.steps)
    bad = [step for step in steps if not 0 < step < schedule.max_iter]
    if bad:
        raise ScheduleError(
            f"{where}: lr steps {steps} with max_iter={schedule.max_iter}: step(s) {bad} are not inside (0, max_iter). "
            "Detectron2 refuses a step at or after the last iteration; such a step never lowers the lr anyway, "
            "so leave it out (lr_steps() does) or lengthen the run"
        )
    if any(later <= earlier for earlier, later in zip(steps, steps[1:])):
        raise ScheduleError(f"{where}: lr steps {steps} must be strictly increasing")
    if not 0 <= schedule.warmup_iters <= schedule.max_iter:
        raise ScheduleError(f"{where}: warmup_iters={schedule.warmup_iters}; expected 0..max_iter ({schedule.max_iter})")


def lr_steps(max_iter: int, steps: tuple[int | float, ...]) -> tuple[int, ...]:
    """Rounded steps with those at or after the last iteration dropped (they could never lower the lr)."""
    kept = sorted({max(1, round(step)) for step in steps})
    return tuple(step for step in kept if step < max_iter)


def steps_for_max_iter(max_iter: int) -> tuple[int, ...]:
    """Steps at 3/4 and 11/12 of an explicit max_iter (Detectron2's 1x proportions), e.g. for smoke runs."""
    return lr_steps(max_iter, (max_iter * 3 / 4, max_iter * 11 / 12))


def scale_schedule(reference: Schedule, total_batch: int, length_scale: float = 1.0) -> Schedule:
    """Linear scaling to `total_batch`; `length_scale` shortens or lengthens the run (iterations and steps).

    Warmup follows the batch scaling only and is capped at a fifth of the run, so short runs still train.
    Steps that land at or after the last iteration are dropped (`lr_steps`).
    """
    if total_batch < 1:
        raise ValueError(f"total batch must be >= 1, got {total_batch}")
    if not length_scale > 0:
        raise ValueError(f"schedule scale must be > 0, got {length_scale}")
    factor = total_batch / reference.ims_per_batch
    max_iter = max(1, round(reference.max_iter * length_scale / factor))
    steps = lr_steps(max_iter, tuple(step * length_scale / factor for step in reference.steps))
    warmup = min(max(0, round(reference.warmup_iters / factor)), max_iter // 5)
    return replace(reference, ims_per_batch=total_batch, base_lr=reference.base_lr * factor, max_iter=max_iter, steps=steps, warmup_iters=warmup)


@dataclass(frozen=True)
class InputSpec:
    """Image sizes (shorter side, multi-scale at train time) and flipping."""

    min_size_train: tuple[int, ...] = (640, 672, 704, 736, 768, 800)
    max_size_train: int = 1333
    min_size_test: int = 800
    max_size_test: int = 1333
    horizontal_flip: bool = True


@dataclass(frozen=True)
class HeadSpec:
    """Widths of the FPN and R-CNN heads (torchvision engine); defaults are the standard COCO heads."""

    fpn_channels: int = 256
    box_representation: int = 1024
    mask_head_layers: tuple[int, ...] = (256, 256, 256, 256)
    mask_predictor_channels: int = 256
    keypoint_head_layers: tuple[int, ...] = (512,) * 8
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    # Norm in the FPN (MoCo: BN / SyncBN in backbone and FPN). Detectron2 engine only: the torchvision engine
    # builds its FPN without norm, so the embedded protocol (measured with it) leaves it out in both engines.
    fpn_norm: bool = True


@dataclass(frozen=True)
class DetectionJob:
    """One fine-tuning run, engine-independent."""

    task: str  # "mask_rcnn" (bbox + segm) or "keypoint_rcnn" (bbox + keypoints)
    recipe: str  # "fpn" or "c4"
    arch: str  # resnet18 or resnet50
    train_json: Path
    train_images: Path
    val_json: Path
    val_images: Path
    num_classes: int
    schedule: Schedule
    input: InputSpec
    pixel_mean: tuple[float, float, float]  # 0-1 scale, RGB
    pixel_std: tuple[float, float, float]
    output_dir: Path
    seed: int = 0
    num_gpus: int = 0  # 0 = CPU
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    keypoint_names: tuple[str, ...] = ()
    keypoint_flip_map: tuple[tuple[str, str], ...] = ()
    keypoint_oks_sigmas: tuple[float, ...] = ()
    precise_bn_iters: int = 200
    num_workers: int = 4
    input_view: str = "rgb"  # pretrain.views: what the encoder was trained on (CMC's L encoder: lightness)
    heads: HeadSpec = field(default_factory=HeadSpec)  # FPN recipe: head widths and sampling, both engines
    extra: dict[str, Any] = field(default_factory=dict)  # Detectron2 config overrides, "SECTION.KEY": value

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; valid: {', '.join(TASKS)}")
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; valid: {', '.join(RECIPES)}")
        check_detection_recipe(self.task, self.recipe, self.arch)
        check_schedule(self.schedule, f"{self.task} schedule")

    @property
    def iou_types(self) -> tuple[str, ...]:
        return ("bbox", "segm") if self.task == "mask_rcnn" else ("bbox", "keypoints")

    @property
    def norm(self) -> str:
        """Detectron2 norm name. FPN: SyncBN when several GPUs share the batch, plain BN otherwise. C4: MoCo's
        Base-RCNN-C4-BN uses naiveSyncBN (backbone and res5 head), which is plain BN in a single process."""
        if self.recipe == "c4":
            return "naiveSyncBN"
        return "SyncBN" if self.num_gpus > 1 else "BN"


@dataclass(frozen=True)
class Protocol:
    """Everything about a run that is fixed by the data: reference schedule, input sizes, anchors, heads."""

    name: str
    schedule: Schedule  # at its reference batch; scaled with `scale_schedule`
    input: InputSpec
    anchor_sizes: tuple[int, ...]
    heads: HeadSpec
    precise_bn_iters: int


def coco_protocol(task: str) -> Protocol:
    """Detectron2's R50-FPN 1x (Mask R-CNN or Keypoint R-CNN) with the MoCo fine-tuning changes."""
    schedule = COCO_1X_KEYPOINTS if task == "keypoint_rcnn" else COCO_1X
    return Protocol("coco_1x", schedule, InputSpec(), (32, 64, 128, 256, 512), HeadSpec(), precise_bn_iters=200)


# The embedded digits: 96 px canvases, CPU-sized heads, 150 iterations at batch 4 (about 9 epochs of the 64
# train canvases) and MoCo's lr scaled linearly (0.02 x 4/16). Longer runs let even a random backbone catch up
# on this easy domain (measured on 512 canvases, Mask R-CNN box AP, seed 0: 150 iterations random 23.0 vs NCE
# 37.1; 300 iterations 52.0 vs 55.7).
EMBEDDED_SCHEDULE = Schedule(ims_per_batch=4, base_lr=0.005, max_iter=150, steps=(112, 137), warmup_iters=30, clip_grad_norm=10.0)
EMBEDDED_HEADS = HeadSpec(
    fpn_channels=64,
    box_representation=256,
    mask_head_layers=(64, 64),
    mask_predictor_channels=64,
    keypoint_head_layers=(64, 64, 64, 64),
    rpn_batch_size_per_image=128,
    box_batch_size_per_image=64,
    rpn_pre_nms_top_n_train=300,
    rpn_pre_nms_top_n_test=300,
    rpn_post_nms_top_n_test=300,
    fpn_norm=False,  # as the torchvision engine; with BN in the FPN Detectron2's RPN barely learns in 150 iterations
)


def embedded_protocol(task: str, canvas: int = 96) -> Protocol:
    """No resizing (the canvas is the input size), anchors 16-256 for 24-40 px digits, no flips for either
    task: a mirrored digit is not its digit class (keypoints are annotated per digit class too)."""
    inputs = InputSpec((canvas,), canvas, canvas, canvas, horizontal_flip=False)
    return Protocol("digits", EMBEDDED_SCHEDULE, inputs, (16, 32, 64, 128, 256), EMBEDDED_HEADS, precise_bn_iters=20)


def check_detection_recipe(task: str, recipe: str, arch: str) -> None:
    if recipe == "c4" and arch != "resnet50":
        raise ValueError(
            f"the C4 recipe needs resnet50: its res5 box head is built from bottleneck blocks, which a {arch} "
            "(basic blocks) cannot supply; use recipe=fpn for resnet18"
        )
    if recipe == "c4" and task == "keypoint_rcnn":
        raise ValueError("the C4 recipe covers boxes and masks only; keypoints use the FPN recipe (Keypoint R-CNN R50-FPN)")


def _depth(arch: str) -> int:
    return {"resnet18": 18, "resnet50": 50}[arch]


def detectron2_config(job: DetectionJob, weights: str | Path, train_dataset: str, test_dataset: str) -> dict[str, Any]:
    """A standalone Detectron2 YACS config (no _BASE_, no model_zoo) for `job`."""
    schedule = job.schedule
    depth = _depth(job.arch)
    resnets: dict[str, Any] = {
        "DEPTH": depth,
        "NORM": job.norm,
        "STRIDE_IN_1X1": False,  # torchvision ResNets stride in the 3x3 conv
        "RES2_OUT_CHANNELS": 64 if depth < 50 else 256,
    }
    model: dict[str, Any] = {
        "META_ARCHITECTURE": "GeneralizedRCNN",
        "WEIGHTS": str(weights),
        "DEVICE": "cuda" if job.num_gpus > 0 else "cpu",
        "MASK_ON": job.task == "mask_rcnn",
        "KEYPOINT_ON": job.task == "keypoint_rcnn",
        "PIXEL_MEAN": [round(255.0 * v, 4) for v in job.pixel_mean],
        "PIXEL_STD": [round(255.0 * v, 4) for v in job.pixel_std],
        "RESNETS": resnets,
        "ROI_HEADS": {"NUM_CLASSES": job.num_classes},
    }
    if job.recipe == "fpn":
        heads = job.heads
        model["BACKBONE"] = {"NAME": "build_resnet_fpn_backbone", "FREEZE_AT": 0}
        resnets["OUT_FEATURES"] = ["res2", "res3", "res4", "res5"]
        model["FPN"] = {"IN_FEATURES": ["res2", "res3", "res4", "res5"], "NORM": job.norm if heads.fpn_norm else "",
                        "OUT_CHANNELS": heads.fpn_channels}
        model["ANCHOR_GENERATOR"] = {"SIZES": [[size] for size in job.anchor_sizes], "ASPECT_RATIOS": [[0.5, 1.0, 2.0]]}
        model["RPN"] = {
            "IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"],
            "PRE_NMS_TOPK_TRAIN": heads.rpn_pre_nms_top_n_train,
            "PRE_NMS_TOPK_TEST": heads.rpn_pre_nms_top_n_test,
            "POST_NMS_TOPK_TRAIN": 1500 if job.task == "keypoint_rcnn" else 1000,
            "POST_NMS_TOPK_TEST": heads.rpn_post_nms_top_n_test,
            "BATCH_SIZE_PER_IMAGE": heads.rpn_batch_size_per_image,
        }
        model["ROI_HEADS"].update(
            {"NAME": "StandardROIHeads", "IN_FEATURES": ["p2", "p3", "p4", "p5"], "BATCH_SIZE_PER_IMAGE": heads.box_batch_size_per_image}
        )
        model["ROI_BOX_HEAD"] = {"NAME": "FastRCNNConvFCHead", "NUM_FC": 2, "FC_DIM": heads.box_representation, "POOLER_RESOLUTION": 7}
        mask_width = _uniform_width(heads.mask_head_layers, "mask_head_layers")
        if heads.mask_predictor_channels != mask_width:
            raise ValueError(
                f"Detectron2's mask head uses one width for its convs and its deconv: mask_predictor_channels="
                f"{heads.mask_predictor_channels} must equal the mask_head_layers width {mask_width}"
            )
        model["ROI_MASK_HEAD"] = {
            "NAME": "MaskRCNNConvUpsampleHead", "NUM_CONV": len(heads.mask_head_layers), "CONV_DIM": mask_width, "POOLER_RESOLUTION": 14
        }
    else:  # MoCo's C4: res5 is the box head, followed by one extra norm
        model["BACKBONE"] = {"NAME": "build_resnet_backbone", "FREEZE_AT": 0}
        resnets["OUT_FEATURES"] = ["res4"]
        model["ANCHOR_GENERATOR"] = {"SIZES": [list(job.anchor_sizes)], "ASPECT_RATIOS": [[0.5, 1.0, 2.0]]}
        model["RPN"] = {"PRE_NMS_TOPK_TEST": 6000, "POST_NMS_TOPK_TEST": 1000}
        model["ROI_HEADS"].update({"NAME": "Res5ROIHeadsExtraNorm", "IN_FEATURES": ["res4"]})
    if job.task == "keypoint_rcnn":
        model["ROI_BOX_HEAD"]["SMOOTH_L1_BETA"] = 0.5  # plain L1 lowers keypoint AP
        model["ROI_KEYPOINT_HEAD"] = {"NUM_KEYPOINTS": len(job.keypoint_names), "CONV_DIMS": list(job.heads.keypoint_head_layers)}
    solver: dict[str, Any] = {
        "IMS_PER_BATCH": schedule.ims_per_batch,
        "BASE_LR": schedule.base_lr,
        "MAX_ITER": schedule.max_iter,
        "STEPS": list(schedule.steps),
        "GAMMA": schedule.gamma,
        "WARMUP_ITERS": schedule.warmup_iters,
        "WARMUP_FACTOR": schedule.warmup_factor,
        "MOMENTUM": schedule.momentum,
        "WEIGHT_DECAY": schedule.weight_decay,
        "CHECKPOINT_PERIOD": max(1, min(5000, schedule.max_iter)),
        "REFERENCE_WORLD_SIZE": 0,  # batch and lr are already scaled here; do not rescale again
        # "full_model" (one L2 norm over every parameter, as torch.nn.utils.clip_grad_norm_ and the torchvision
        # engine) is the DETR / Mask2Former convention, not a stock Detectron2 value: the engine's trainer
        # implements it in build_optimizer (detectron2_engine.with_full_model_clipping).
        "CLIP_GRADIENTS": {
            "ENABLED": schedule.clip_grad_norm is not None,
            "CLIP_TYPE": FULL_MODEL_CLIP_TYPE,
            "CLIP_VALUE": float(schedule.clip_grad_norm or 1.0),
            "NORM_TYPE": 2.0,
        },
    }
    test: dict[str, Any] = {
        "EVAL_PERIOD": 0,  # evaluate once, after the last iteration
        "PRECISE_BN": {"ENABLED": True, "NUM_ITER": job.precise_bn_iters},
        "DETECTIONS_PER_IMAGE": 100,
    }
    if job.task == "keypoint_rcnn":
        test["KEYPOINT_OKS_SIGMAS"] = list(job.keypoint_oks_sigmas)
    config = {
        "VERSION": 2,
        "MODEL": model,
        "DATASETS": {"TRAIN": [train_dataset], "TEST": [test_dataset]},
        # CPU: load in the training process, as the torchvision engine does (workers only compete for the cores)
        "DATALOADER": {"NUM_WORKERS": job.num_workers if job.num_gpus > 0 else 0, "FILTER_EMPTY_ANNOTATIONS": True},
        "INPUT": {
            "FORMAT": "RGB",
            "MIN_SIZE_TRAIN": list(job.input.min_size_train),
            "MAX_SIZE_TRAIN": job.input.max_size_train,
            "MIN_SIZE_TEST": job.input.min_size_test,
            "MAX_SIZE_TEST": job.input.max_size_test,
            "MASK_FORMAT": "polygon",
            "RANDOM_FLIP": "horizontal" if job.input.horizontal_flip else "none",
        },
        "SOLVER": solver,
        "TEST": test,
        "OUTPUT_DIR": str(job.output_dir),
        "SEED": job.seed,
    }
    for dotted, value in job.extra.items():
        *sections, key = dotted.split(".")
        node = config
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    return config


def _uniform_width(layers: tuple[int, ...], name: str) -> int:
    if not layers or len(set(layers)) != 1:
        raise ValueError(f"Detectron2's heads use one conv width: {name}={list(layers)} must repeat a single value")
    return layers[0]


def config_yaml(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None)


def write_config(config: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_yaml(config))
    return path


def describe_schedule(schedule: Schedule, reference: Schedule, length_scale: float, max_iter_override: int = 0) -> str:
    """The stated scaling, e.g. for logs and result info."""
    factor = schedule.ims_per_batch / reference.ims_per_batch
    if max_iter_override:
        iterations = f"{schedule.max_iter} iterations (max_iter={max_iter_override})"
    else:
        iterations = f"{schedule.max_iter} iterations = {reference.max_iter} x {length_scale:g} / {factor:g}"
    dropped = len(reference.steps) - len(schedule.steps)
    left_out = f" ({dropped} step(s) at or after the last iteration left out)" if dropped > 0 else ""
    return (
        f"batch {schedule.ims_per_batch} (reference {reference.ims_per_batch}): lr {reference.base_lr:g} x {factor:g} = "
        f"{schedule.base_lr:g}; {iterations}; steps {list(schedule.steps)}{left_out}; warmup {schedule.warmup_iters}"
    )


# ---------------------------------------------------------------- PASCAL VOC (MoCo's R50-C4, 24k iterations)

# MoCo detection/configs/pascal_voc_R_50_C4_24k.yaml: batch 16, lr 0.02, steps (18000, 22000), 24000 iterations,
# warmup 100 (Detectron2's default warmup factor 0.001, momentum 0.9, weight decay 1e-4, gamma 0.1)
VOC_24K = Schedule(ims_per_batch=16, base_lr=0.02, max_iter=24000, steps=(18000, 22000), warmup_iters=100)
VOC_INPUT = InputSpec(min_size_train=tuple(range(480, 801, 32)), min_size_test=800)
VOC_TRAIN_DATASETS = {"2007": "voc_2007_trainval", "2012": "voc_2012_trainval"}
VOC_TEST_DATASET = "voc_2007_test"


@dataclass(frozen=True)
class C4HeadSpec:
    """The C4 recipe's RPN and box sampling (Detectron2's defaults, which MoCo keeps) and anchors."""

    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # one feature map (res4, stride 16)
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    rpn_pre_nms_top_n_train: int = 12000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 6000
    rpn_post_nms_top_n_test: int = 1000
    pooler_resolution: int = 14  # ROI_BOX_HEAD.POOLER_RESOLUTION: res5 runs on it (7 x 7 after its stride 2)

    def detectron2_overrides(self) -> dict[str, Any]:
        """What differs from Detectron2's defaults, as config keys (nothing for the real protocol)."""
        reference, out = C4HeadSpec(), {}
        keys = {"anchor_sizes": "ANCHOR_GENERATOR.SIZES", "rpn_batch_size_per_image": "RPN.BATCH_SIZE_PER_IMAGE",
                "box_batch_size_per_image": "ROI_HEADS.BATCH_SIZE_PER_IMAGE",
                "rpn_pre_nms_top_n_train": "RPN.PRE_NMS_TOPK_TRAIN", "rpn_post_nms_top_n_train": "RPN.POST_NMS_TOPK_TRAIN",
                "pooler_resolution": "ROI_BOX_HEAD.POOLER_RESOLUTION"}
        for name, key in keys.items():
            if getattr(self, name) != getattr(reference, name):
                value = getattr(self, name)
                out[key] = [list(value)] if name == "anchor_sizes" else value
        return out


@dataclass(frozen=True)
class VocProtocol:
    name: str
    schedule: Schedule
    input: InputSpec
    heads: C4HeadSpec
    precise_bn_iters: int


def voc_protocol() -> VocProtocol:
    return VocProtocol("voc_24k", VOC_24K, VOC_INPUT, C4HeadSpec(), precise_bn_iters=200)


# The embedded digits VOC set: 96 px canvases, no resizing or flips (a mirrored digit is not its class),
# anchors for 17-40 px digits, CPU-sized sampling and a 4 x 4 pooler (res5 runs once per proposal: at 14 x 14 and
# 64 proposals per image it cost 18 s per iteration on a loaded 2-core machine; the canvas's res4 map is only
# 6 x 6), 150 iterations at batch 4 with MoCo's lr scaled (0.02 x 4/16)
# and full-model clipping (BN fine-tuned from a small batch), as the embedded COCO recipe.
EMBEDDED_VOC_SCHEDULE = Schedule(ims_per_batch=4, base_lr=0.005, max_iter=150, steps=(112, 137), warmup_iters=30,
                                 clip_grad_norm=10.0)
EMBEDDED_C4_HEADS = C4HeadSpec(anchor_sizes=(16, 32, 64), rpn_batch_size_per_image=128, box_batch_size_per_image=16,
                               rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=200,
                               rpn_post_nms_top_n_test=50, pooler_resolution=4)


def embedded_voc_protocol(canvas: int = 96) -> VocProtocol:
    inputs = InputSpec((canvas,), canvas, canvas, canvas, horizontal_flip=False)
    return VocProtocol("digits_voc", EMBEDDED_VOC_SCHEDULE, inputs, EMBEDDED_C4_HEADS, precise_bn_iters=20)


@dataclass(frozen=True)
class VocDetectionJob:
    """One VOC fine-tuning run (Faster R-CNN C4), engine-independent."""

    arch: str  # resnet18 (embedded encoders: basic-block res5 head, torchvision engine) or resnet50
    data_root: Path  # holds VOCdevkit/VOC<year> or VOC<year>
    train_years: tuple[str, ...]  # ("2007", "2012") = MoCo's voc_2007_trainval + voc_2012_trainval
    classes: tuple[str, ...]  # the evaluated classes, in label order (the 20 VOC classes on real data)
    schedule: Schedule
    input: InputSpec
    pixel_mean: tuple[float, float, float]  # 0-1 scale, RGB
    pixel_std: tuple[float, float, float]
    output_dir: Path
    seed: int = 0
    num_gpus: int = 0
    heads: C4HeadSpec = field(default_factory=C4HeadSpec)
    precise_bn_iters: int = 200
    num_workers: int = 4
    input_view: str = "rgb"
    extra: dict[str, Any] = field(default_factory=dict)  # Detectron2 config overrides, "SECTION.KEY": value
    task: str = "faster_rcnn_c4"
    norm: str = "naiveSyncBN"  # MoCo's Base-RCNN-C4-BN (plain BN in one process)

    def __post_init__(self) -> None:
        if self.arch not in ("resnet18", "resnet50"):
            raise ValueError(f"unknown arch {self.arch!r}; VOC detection supports resnet18 and resnet50")
        check_schedule(self.schedule, "voc schedule")

    @property
    def train_datasets(self) -> tuple[str, ...]:
        return tuple(VOC_TRAIN_DATASETS[year] for year in self.train_years)


def detectron2_voc_config(job: VocDetectionJob, weights: str | Path) -> dict[str, Any]:
    """A standalone Detectron2 config for `job`: MoCo's pascal_voc_R_50_C4_24k_moco.yaml (with its bases) written
    out, every other key left at Detectron2's default. The dataset names are MoCo's; the engine registers them
    on --data-root. Differences from MoCo's file: docs/voc.md (and the test that diffs the two)."""
    schedule = job.schedule
    model: dict[str, Any] = {
        "META_ARCHITECTURE": "GeneralizedRCNN",
        "WEIGHTS": str(weights),
        "DEVICE": "cuda" if job.num_gpus > 0 else "cpu",
        "MASK_ON": False,
        "PIXEL_MEAN": [round(255.0 * v, 4) for v in job.pixel_mean],
        "PIXEL_STD": [round(255.0 * v, 4) for v in job.pixel_std],
        "BACKBONE": {"FREEZE_AT": 0},
        "RESNETS": {"NORM": job.norm, "STRIDE_IN_1X1": False},
        "RPN": {"PRE_NMS_TOPK_TEST": job.heads.rpn_pre_nms_top_n_test, "POST_NMS_TOPK_TEST": job.heads.rpn_post_nms_top_n_test},
        "ROI_HEADS": {"NAME": "Res5ROIHeadsExtraNorm", "NUM_CLASSES": len(job.classes)},
    }
    if job.arch != "resnet50":
        model["RESNETS"].update({"DEPTH": _depth(job.arch), "RES2_OUT_CHANNELS": 64})
    solver: dict[str, Any] = {
        "IMS_PER_BATCH": schedule.ims_per_batch,
        "BASE_LR": schedule.base_lr,
        "STEPS": list(schedule.steps),
        "MAX_ITER": schedule.max_iter,
        "WARMUP_ITERS": schedule.warmup_iters,
    }
    if schedule.clip_grad_norm is not None:
        solver["CLIP_GRADIENTS"] = {"ENABLED": True, "CLIP_TYPE": FULL_MODEL_CLIP_TYPE,
                                    "CLIP_VALUE": float(schedule.clip_grad_norm), "NORM_TYPE": 2.0}
    inputs: dict[str, Any] = {"FORMAT": "RGB", "MIN_SIZE_TRAIN": list(job.input.min_size_train), "MIN_SIZE_TEST": job.input.min_size_test}
    if job.input != VOC_INPUT:  # the embedded canvases: no resizing, no flips
        inputs.update({"MAX_SIZE_TRAIN": job.input.max_size_train, "MAX_SIZE_TEST": job.input.max_size_test,
                       "RANDOM_FLIP": "horizontal" if job.input.horizontal_flip else "none"})
    test: dict[str, Any] = {"PRECISE_BN": {"ENABLED": True}}
    if job.precise_bn_iters != 200:
        test["PRECISE_BN"]["NUM_ITER"] = job.precise_bn_iters
    config: dict[str, Any] = {
        "MODEL": model,
        "DATASETS": {"TRAIN": list(job.train_datasets), "TEST": [VOC_TEST_DATASET]},
        "INPUT": inputs,
        "SOLVER": solver,
        "TEST": test,
        "OUTPUT_DIR": str(job.output_dir),
        "SEED": job.seed,
    }
    if job.num_gpus == 0:  # CPU: load in the training process (workers only compete for the cores)
        config["DATALOADER"] = {"NUM_WORKERS": 0}
    for dotted, value in {**{f"MODEL.{k}": v for k, v in job.heads.detectron2_overrides().items()}, **job.extra}.items():
        *sections, key = dotted.split(".")
        node = config
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    return config
