"""The Detectron2 engine: the only module that imports detectron2 (inside functions, never at import time).

Inside the (submitit) job: register the COCO-format datasets, write the generated config, run
Detectron2's DefaultTrainer through `detectron2.engine.launch` (one process per GPU), then read the final
metrics from OUTPUT_DIR/metrics.json. Evaluation is Detectron2's COCOEvaluator with use_fast_impl=False,
i.e. pycocotools' COCOeval, as the torchvision engine uses.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from transfer.detection.configs import (
    CLIP_TYPES,
    FULL_MODEL_CLIP_TYPE,
    DetectionJob,
    VocDetectionJob,
    detectron2_config,
    detectron2_voc_config,
    write_config,
)
from transfer.detection.engines import DETECTRON2_INSTALL_HINT, EngineResult
from transfer.detection.evaluate import IOU_TYPES, metric_names

TRAIN_DATASET = "ringbench_{task}_train"
TEST_DATASET = "ringbench_{task}_val"
PROJECT_CONFIG = "config.yaml"  # the generated standalone config (ours)
DETECTRON2_DUMP = "detectron2_config.yaml"  # Detectron2's full dump of every key after merging ours
VOC_PER_CLASS = "voc_per_class.json"  # the per-class APs behind Detectron2's VOC means (paired statistics)


class MetricsFileError(ValueError):
    """metrics.json is missing or holds no evaluation line."""


def parse_metrics_file(path: str | os.PathLike) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Final evaluation metrics from Detectron2's metrics.json (JSON lines, one per logging step).

    EvalHook writes the flattened results ("bbox/AP", "segm/AP50", "keypoints/AP", possibly prefixed by the
    test set name) on its own line; the last line carrying any of them wins. Returns the shared metric
    names and, per IoU type, the per-category APs ("bbox/AP-zero" -> per_category["bbox"]["zero"]).
    """
    path = Path(path)
    if not path.is_file():
        raise MetricsFileError(f"{path}: no metrics.json; did training finish and evaluate?")
    wanted = {name for iou_type in IOU_TYPES for name in metric_names(iou_type)}
    final: dict[str, float] = {}
    final_per_category: dict[str, dict[str, float]] = {}
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise MetricsFileError(f"{path}:{number}: not a JSON line ({error})") from None
            found: dict[str, float] = {}
            per_category: dict[str, dict[str, float]] = {}
            for key, value in record.items():
                if not isinstance(value, int | float) or isinstance(value, bool):
                    continue
                short = "/".join(key.split("/")[-2:])  # strip a leading test-set name
                iou_type, _, name = short.partition("/")
                if short in wanted:
                    found[short] = float(value)
                elif iou_type in IOU_TYPES and name.startswith("AP-"):
                    per_category.setdefault(iou_type, {})[name[len("AP-") :]] = float(value)
            if found:
                final, final_per_category = found, per_category
    if not final:
        raise MetricsFileError(f"{path}: no evaluation results (no bbox/AP, segm/AP or keypoints/AP line)")
    return final, final_per_category


def _register(job: DetectionJob) -> tuple[str, str]:
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    names = (TRAIN_DATASET.format(task=job.task), TEST_DATASET.format(task=job.task))
    metadata: dict[str, Any] = {}
    if job.task == "keypoint_rcnn":
        metadata = {"keypoint_names": list(job.keypoint_names), "keypoint_flip_map": [list(p) for p in job.keypoint_flip_map]}
    for name, json_file, images in ((names[0], job.train_json, job.train_images), (names[1], job.val_json, job.val_images)):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, metadata, str(json_file), str(images))
    return names


def _register_voc(job: VocDetectionJob) -> None:
    """MoCo's dataset names (voc_2007_trainval, voc_2012_trainval, voc_2007_test) on the job's --data-root,
    replacing Detectron2's built-in registrations of the same names ($DETECTRON2_DATASETS)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.pascal_voc import register_pascal_voc

    from transfer.detection.voc_data import voc_splits

    train, test = voc_splits(job.data_root, job.train_years)
    for split in [*train, test]:
        if split.name in DatasetCatalog.list():
            DatasetCatalog.remove(split.name)
            MetadataCatalog.remove(split.name)
        register_pascal_voc(split.name, str(split.root), split.split, int(split.year), list(job.classes))


BASIC_BLOCKS_IN_RES5 = {18: 2, 34: 3}  # torchvision's layer4 of resnet18 / resnet34


def _register_extra_norm_head() -> None:
    """MoCo's Res5ROIHeadsExtraNorm: the C4 res5 head followed by one extra norm (RESNETS.NORM).

    Stock Res5ROIHeads always builds res5 from bottleneck blocks; for a basic-block encoder (DEPTH 18 or 34) this
    head builds the encoder's own res5 instead (basic blocks, 512 channels, first block stride 2), so its
    pretrained layer4 loads and the model is the torchvision engine's C4 layout."""
    from detectron2.layers import get_norm
    from detectron2.modeling.backbone.resnet import BasicBlock, ResNet
    from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads
    from torch import nn

    if "Res5ROIHeadsExtraNorm" in ROI_HEADS_REGISTRY:
        return

    @ROI_HEADS_REGISTRY.register()
    class Res5ROIHeadsExtraNorm(Res5ROIHeads):
        @classmethod
        def _build_res5_block(cls, cfg):
            depth = cfg.MODEL.RESNETS.DEPTH
            if depth in BASIC_BLOCKS_IN_RES5:
                out_channels = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS * 8
                blocks = ResNet.make_stage(BasicBlock, BASIC_BLOCKS_IN_RES5[depth],
                                           stride_per_block=[2] + [1] * (BASIC_BLOCKS_IN_RES5[depth] - 1),
                                           in_channels=out_channels // 2, out_channels=out_channels,
                                           norm=cfg.MODEL.RESNETS.NORM)
                seq = nn.Sequential(*blocks)
            else:
                seq, out_channels = super()._build_res5_block(cfg)
            seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
            return seq, out_channels


def with_full_model_clipping(optimizer, max_norm: float, norm_type: float = 2.0):
    """Clip the gradient norm over every parameter of every group before each step (in place, returns it).

    Stock Detectron2 clips per parameter ("value", "norm"); DETR and Mask2Former add "full_model", which is
    torch.nn.utils.clip_grad_norm_ over the whole model, as the torchvision engine does. Same mechanism as
    Detectron2's own clipping: the optimizer's class becomes a subclass whose step() clips first.
    """
    import itertools

    import torch

    if not max_norm > 0:
        raise ValueError(f"full-model gradient clipping needs CLIP_VALUE > 0, got {max_norm}")
    base = type(optimizer)

    class FullModelGradientClipping(base):
        def step(self, closure=None):
            params = itertools.chain.from_iterable(group["params"] for group in self.param_groups)
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure)

    FullModelGradientClipping.__name__ = f"{base.__name__}WithFullModelGradientClip"
    optimizer.__class__ = FullModelGradientClipping
    return optimizer


def clip_gradients_plan(clip: dict[str, Any]) -> tuple[str, float, float] | None:
    """(clip type, value, norm type) from SOLVER.CLIP_GRADIENTS, or None when disabled; refuses unknown types."""
    if not clip.get("ENABLED", False):
        return None
    clip_type = str(clip.get("CLIP_TYPE"))
    if clip_type not in CLIP_TYPES:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE={clip_type!r}: expected one of {', '.join(CLIP_TYPES)}")
    return clip_type, float(clip["CLIP_VALUE"]), float(clip.get("NORM_TYPE", 2.0))


def score_no_predictions(results: dict[str, dict[str, float]], num_predictions: int) -> dict[str, dict[str, float]]:
    """Detectron2's COCOEvaluator reports NaN for every metric when the model predicted nothing; nothing
    detected is zero recall, so score it AP 0 (as evaluate.py and the torchvision engine do). With any
    prediction the results are returned as they are (a NaN there means a size range without ground truth)."""
    if num_predictions > 0:
        return results
    return {task: {name: 0.0 for name in values} for task, values in results.items()}


def run_state(output_dir: Path) -> str:
    """"fresh", "unfinished" (a requeued run: resume from last_checkpoint) or "finished" (model_final exists:
    a rerun or --force, which must train again rather than "resume" at the last iteration)."""
    marker = output_dir / "last_checkpoint"
    if (output_dir / "model_final.pth").is_file() or (marker.is_file() and marker.read_text().strip() == "model_final.pth"):
        return "finished"
    if marker.is_file() and (output_dir / marker.read_text().strip()).is_file():
        return "unfinished"
    return "fresh"


def clear_finished_run(output_dir: Path, keep: tuple[str, ...]) -> list[str]:
    """Remove what a finished run left (checkpoints, metrics.json, events, inference/) so nothing of it is
    reused or mixed into the new run; `keep` names files written for this run (its config)."""
    import shutil

    removed = []
    for entry in sorted(output_dir.iterdir()):
        if entry.name in keep:
            continue
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        removed.append(entry.name)
    return removed


class _CellLogging:
    """Detectron2's and fvcore's log lines to stderr (main process) and OUTPUT_DIR/log.txt for one cell.

    Detectron2's setup_logger adds handlers on every call with a new output dir, so cells sharing a
    process would print each line once per earlier cell; these handlers are removed when the cell ends.
    """

    NAMES = ("detectron2", "fvcore")

    def __init__(self, output_dir: Path, rank: int):
        self.output_dir, self.rank, self.handlers = output_dir, rank, []

    def __enter__(self):
        import logging
        import sys

        formatter = logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s", datefmt="%m/%d %H:%M:%S")
        if self.rank == 0:
            self.handlers.append(logging.StreamHandler(sys.stderr))
        name = "log.txt" if self.rank == 0 else f"log.txt.rank{self.rank}"
        self.handlers.append(logging.FileHandler(self.output_dir / name))
        for handler in self.handlers:
            handler.setFormatter(formatter)
        for logger_name in self.NAMES:
            logger = logging.getLogger(logger_name)
            logger.setLevel(logging.INFO)  # DefaultTrainer calls setup_logger() only when INFO is off
            logger.propagate = False
            for handler in self.handlers:
                logger.addHandler(handler)
        return self

    def __exit__(self, *exc):
        import logging

        for logger_name in self.NAMES:
            for handler in self.handlers:
                logging.getLogger(logger_name).removeHandler(handler)
        for handler in self.handlers:
            handler.close()
        return False


def read_image_as_stored(file_name: str, format: str | None = None):
    """detectron2's `read_image` for RGB and BGR as every RingBench loader reads images: PIL's
    convert("RGB") of the stored pixels, without detectron2's EXIF rotation (COCO's boxes are drawn on
    the stored pixels), and an error naming the file when it does not decode. Other formats (masks)
    go to detectron2's own reader."""
    import numpy as np

    from pretrain.images import read_rgb

    if format not in ("RGB", "BGR"):
        from detectron2.data.detection_utils import read_image

        return read_image(file_name, format)
    array = np.asarray(read_rgb(file_name))
    return np.ascontiguousarray(array[:, :, ::-1]) if format == "BGR" else array


class StoredPixelsMapper:
    """A DatasetMapper whose images are read by `read_image_as_stored` (picklable for loader workers)."""

    def __init__(self, mapper):
        self.mapper = mapper

    def __call__(self, dataset_dict):
        from unittest import mock

        from detectron2.data import detection_utils

        with mock.patch.object(detection_utils, "read_image", read_image_as_stored):
            return self.mapper(dataset_dict)


def _viewed_mapper(cfg, is_train: bool, view: str):
    """Detectron2's DatasetMapper with its usual augmentations followed by the encoder's input view."""
    import functools

    from detectron2.data import DatasetMapper
    from detectron2.data import detection_utils as utils
    from detectron2.data import transforms as T

    from pretrain.views import view_pixels_uint8

    augmentations = utils.build_augmentation(cfg, is_train)
    if is_train and cfg.INPUT.CROP.ENABLED:
        augmentations.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    if view != "rgb":
        if cfg.INPUT.FORMAT != "RGB":
            raise ValueError(f"input view {view!r} needs INPUT.FORMAT RGB, the config has {cfg.INPUT.FORMAT}")
        augmentations.append(T.ColorTransform(functools.partial(view_pixels_uint8, view=view)))  # picklable for workers
    return StoredPixelsMapper(DatasetMapper(cfg, is_train, augmentations=augmentations))


def _per_class_voc_evaluator(base: type, dataset_name: str, job: VocDetectionJob, output_dir: Path):
    """Detectron2's PascalVOCDetectionEvaluator, whose means stay the cell's metrics, keeping the detections too:
    after evaluating, transfer.detection.voc_eval (which agrees with Detectron2's voc_eval within 1e-6 AP, see
    tests/transfer/detection/test_voc_eval.py) scores the same detections per class into VOC_PER_CLASS, the
    samples of the paired Ring-vs-NCE statistics. Detectron2's evaluator reports means only."""
    from detectron2.utils import comm

    from ringbench_common.atomic_files import atomic_write_text
    from transfer.detection.voc_data import read_split, voc_splits
    from transfer.detection.voc_eval import METRICS, VocDetection, evaluate_voc

    class PerClassVocEvaluator(base):
        def reset(self):
            super().reset()
            self._detections: list[VocDetection] = []

        def process(self, inputs, outputs):
            super().process(inputs, outputs)
            for given, output in zip(inputs, outputs):
                instances = output["instances"].to("cpu")
                for box, score, label in zip(instances.pred_boxes.tensor.tolist(), instances.scores.tolist(),
                                             instances.pred_classes.tolist()):
                    self._detections.append(VocDetection(given["image_id"], int(label), float(score), tuple(box)))

        def evaluate(self):
            result = super().evaluate()  # gathers its own predictions; None on other ranks
            gathered = comm.gather(self._detections, dst=0)
            if not comm.is_main_process():
                return result
            _, test = voc_splits(job.data_root, job.train_years)
            ours = evaluate_voc(read_split(test, job.classes), job.classes,
                                [detection for part in gathered for detection in part], use_07_metric=True)
            differences = {key: abs(ours.metrics[key] - float(result["bbox"][key])) for key in METRICS}
            if max(differences.values()) > 1e-3:  # never pair per-class values that do not add up to the metric
                print(f"detectron2: the per-class VOC APs differ from PascalVOCDetectionEvaluator's means by "
                      f"{differences}; only the means are kept", file=sys.stderr)
            else:
                atomic_write_text(output_dir / VOC_PER_CLASS, json.dumps(ours.per_class, indent=1, sort_keys=True))
            return result

    return PerClassVocEvaluator(dataset_name)


def _trainer_class(job: DetectionJob):
    """DefaultTrainer with pycocotools evaluation (no predictions = AP 0) and full-model gradient clipping."""
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
    from detectron2.solver import build_optimizer

    class Evaluator(COCOEvaluator):
        def _eval_predictions(self, predictions, img_ids=None):
            super()._eval_predictions(predictions, img_ids)
            count = sum(len(p.get("instances", ())) for p in predictions)
            self._results = type(self._results)(score_no_predictions(dict(self._results), count))

    class Trainer(DefaultTrainer):
        # the encoder's input view is rendered on every image after decoding (train, precise BN, test)
        @classmethod
        def build_train_loader(cls, cfg):
            from detectron2.data import build_detection_train_loader

            return build_detection_train_loader(cfg, mapper=_viewed_mapper(cfg, True, job.input_view))

        @classmethod
        def build_test_loader(cls, cfg, dataset_name):
            from detectron2.data import build_detection_test_loader

            return build_detection_test_loader(cfg, dataset_name, mapper=_viewed_mapper(cfg, False, job.input_view))

        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            if isinstance(job, VocDetectionJob):  # VOC07 11-point AP at IoU 0.50:0.95, as MoCo evaluates
                return _per_class_voc_evaluator(PascalVOCDetectionEvaluator, dataset_name, job, Path(cfg.OUTPUT_DIR))
            return Evaluator(
                dataset_name,
                tasks=job.iou_types,
                distributed=True,
                output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"),
                use_fast_impl=False,
                kpt_oks_sigmas=tuple(job.keypoint_oks_sigmas),
            )

        @classmethod
        def build_optimizer(cls, cfg, model):
            plan = clip_gradients_plan(dict(cfg.SOLVER.CLIP_GRADIENTS))
            if plan is None or plan[0] != FULL_MODEL_CLIP_TYPE:
                return build_optimizer(cfg, model)  # stock: none, or per-parameter value / norm clipping
            unclipped = cfg.clone()
            unclipped.defrost()
            unclipped.SOLVER.CLIP_GRADIENTS.ENABLED = False
            return with_full_model_clipping(build_optimizer(unclipped, model), plan[1], plan[2])

    return Trainer


def unknown_config_keys(dotted_keys: list[str]) -> list[str]:
    """The keys that Detectron2's default config (with this engine's additions) does not have."""
    from detectron2.config import get_cfg

    cfg, unknown = get_cfg(), []
    for dotted in dotted_keys:
        node = cfg
        for part in dotted.split("."):
            if not hasattr(node, "keys") or part not in node:
                unknown.append(dotted)
                break
            node = node[part]
    return unknown


def _trainer_main(job: DetectionJob, config_path: str) -> dict[str, Any]:
    """Runs in every launched process: register, build the config, train, evaluate."""
    from detectron2.config import get_cfg
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng

    _register_voc(job) if isinstance(job, VocDetectionJob) else _register(job)
    _register_extra_norm_head()
    cfg = get_cfg()
    cfg.merge_from_file(config_path)
    cfg.freeze()
    rank = comm.get_rank()
    output_dir = Path(cfg.OUTPUT_DIR)
    # What default_setup does, except that it overwrites OUTPUT_DIR/config.yaml (the project's config) and
    # adds log handlers per call: Detectron2's full dump goes beside ours, logging is per cell.
    if rank == 0:
        (output_dir / DETECTRON2_DUMP).write_text(cfg.dump())
    seed_all_rng(cfg.SEED + rank)
    with _CellLogging(output_dir, rank):
        trainer = _trainer_class(job)(cfg)
        # Resume only an unfinished run (a requeued job); train_and_evaluate cleared a finished one.
        trainer.resume_or_load(resume=run_state(output_dir) == "unfinished")
        return trainer.train()


def _join_existing_processes(job: DetectionJob, config_path: str, world_size: int) -> None:
    """What detectron2's launch does per worker, for processes the scheduler already started (env://)."""
    import torch
    import torch.distributed as dist
    from detectron2.utils import comm

    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", init_method="env://")
    comm.create_local_process_group(local_world_size)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    comm.synchronize()
    try:
        _trainer_main(job, config_path)
    finally:
        dist.destroy_process_group()


def _cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (launch spawns one per GPU)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def train_and_evaluate(job: DetectionJob | VocDetectionJob, weights_pkl: str | os.PathLike, dist_url: str = "auto") -> EngineResult:
    """Fine-tune with Detectron2 on this node's GPUs (one process each) and return the final metrics."""
    try:
        from detectron2.engine import launch
    except ImportError as error:
        raise ModuleNotFoundError(f"engine=detectron2 needs detectron2 ({error}). {DETECTRON2_INSTALL_HINT}") from None

    job.output_dir.mkdir(parents=True, exist_ok=True)
    train_name, test_name = TRAIN_DATASET.format(task=job.task), TEST_DATASET.format(task=job.task)
    if isinstance(job, VocDetectionJob):
        config = detectron2_voc_config(job, weights_pkl)
    else:
        config = detectron2_config(job, weights_pkl, train_name, test_name)
    clip_gradients_plan(config["SOLVER"].get("CLIP_GRADIENTS", {}))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    state = run_state(job.output_dir)
    if state == "finished" and int(os.environ.get("RANK", "0")) == 0:
        removed = clear_finished_run(job.output_dir, keep=())
        print(f"detectron2: {job.output_dir} held a finished run; starting clean (removed {', '.join(removed)})", file=sys.stderr)
    elif state == "unfinished":
        print(f"detectron2: resuming the unfinished run in {job.output_dir} from its last_checkpoint", file=sys.stderr)
    config_path = write_config(config, job.output_dir / PROJECT_CONFIG)
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    if world_size > 1:  # already one task per GPU (a multi-task job): join them instead of spawning
        _join_existing_processes(job, str(config_path), world_size)
        if int(os.environ["RANK"]) != 0:
            return EngineResult({}, {"engine": "detectron2", "role": "worker"})
    else:
        launch(
            _trainer_main,
            num_gpus_per_machine=max(1, job.num_gpus),
            num_machines=1,
            machine_rank=0,
            dist_url=dist_url,
            args=(job, str(config_path)),
        )
    metrics, per_category = parse_metrics_file(job.output_dir / "metrics.json")
    if isinstance(job, VocDetectionJob) and (job.output_dir / VOC_PER_CLASS).is_file():
        per_category = json.loads((job.output_dir / VOC_PER_CLASS).read_text())  # metric -> class -> AP
    info = {
        "engine": "detectron2",
        "task": job.task,
        "arch": job.arch,
        "recipe": getattr(job, "recipe", "c4"),
        "norm": job.norm,
        "num_gpus": job.num_gpus,
        "config": str(config_path),
        "detectron2_config": str(job.output_dir / DETECTRON2_DUMP),
        "resumed": state == "unfinished",
        "schedule": job.schedule.to_json(),
        "train_and_eval_seconds": round(time.perf_counter() - started, 2),
        "total_cpu_seconds": round(_cpu_seconds() - cpu_started, 2),  # as the torchvision engines record it
    }
    return EngineResult(metrics, info, per_category)


def run_detection(job: DetectionJob, state_dict, heads, workdir, where: str) -> EngineResult:
    """The engine registry's entry: convert the loaded weights once, then fine-tune (`heads` is torchvision's)."""
    from transfer.detection.convert import write_detectron2_weights

    weights = write_detectron2_weights(state_dict, job.arch, Path(workdir) / "backbone_detectron2.pkl", where)
    return train_and_evaluate(job, weights)


def run_voc_detection(job: VocDetectionJob, state_dict, workdir, where: str) -> EngineResult:
    """The VOC engine registry's entry: MoCo's converted weights, MoCo's config, PascalVOCDetectionEvaluator."""
    from transfer.detection.convert import write_detectron2_weights

    weights = write_detectron2_weights(state_dict, job.arch, Path(workdir) / "backbone_detectron2.pkl", where)
    return train_and_evaluate(job, weights)
