"""The voc_det suite: fine-tune each encoder as MoCo's PASCAL VOC detector and report AP50 / AP / AP75.

One task, `<data>/faster_rcnn_c4`: Faster R-CNN R-C4 with Res5ROIHeadsExtraNorm, BN fine-tuned in every layer
(naiveSyncBN, FREEZE_AT 0), trained on voc_2007_trainval + voc_2012_trainval (train_years=2007 for 07 alone),
tested on voc_2007_test with VOC07 11-point AP (AP50), the mean over IoU 0.50:0.95 (AP) and AP75, as MoCo's
detection/configs/pascal_voc_R_50_C4_24k_moco.yaml (24k iterations, batch 16, lr 0.02). `<data>` is `voc0712`
with --data-root (VOCdevkit layout) or `digits` without: the embedded digits VOC set, built on first use,
fine-tuned with the torchvision engine on CPU.

Engines: `detectron2` (PascalVOCDetectionEvaluator) or `torchvision` (the C4 model of
transfer.detection.engines.torchvision_voc and transfer.detection.voc_eval, which matches Detectron2's
voc_eval); `auto` picks Detectron2 when importable for real data, torchvision for the embedded set.

Seeds: five fine-tuning seeds with --data-root (MoCo's README reports the mean of 5 trials); three on the embedded
set, to keep its default run at a few minutes (--seeds 0,1,2,3,4 for five).
The published rows of bench/published/voc_det.csv (MoCo's README) appear beside the measured ones.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.options import SuiteOptions, at_least, comma_text, internal, option, whole_as_int
from bench.suite import (
    Cell,
    CellOutput,
    InputError,
    Metric,
    Suite,
    Task,
    load_checkpoint_for,
)
from bench.suites.coco_det import (
    DETECTION_CMC_FEATURES,
    cpu_threads_for_cell,
    detection_checkpoint_metadata,
    parse_detectron2_opts,
    random_control_encoder,
    resolve_detection_engine,
)
from bench.suites.coco_det import _detectron2_opts as _checked_detectron2_opts
from bench.suites.coco_det import _engine as _checked_engine

if TYPE_CHECKING:
    from pretrain.checkpoint import CheckpointInfo

EMBEDDED_DIR = "digits_voc"
TASK = "faster_rcnn_c4"
METRICS = ("AP50", "AP", "AP75")  # bbox/<name>; each carries the per-class APs as samples
PUBLISHED_FILE = Path(__file__).resolve().parents[1] / "published" / "voc_det.csv"


def _train_years(years: tuple[str, ...]) -> tuple[str, ...]:
    from transfer.detection.voc_data import YEARS

    if not years or any(year not in YEARS for year in years) or len(set(years)) != len(years):
        raise ValueError("expected 2007 and/or 2012, each once (MoCo: 2007,2012)")
    return tuple(sorted(years))


def _schedule_scale(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError("expected a number > 0 (1 = MoCo's 24k iterations)")
    return value


@dataclass(frozen=True)
class VocDetOptions(SuiteOptions):
    engine: str = option("auto", "auto | detectron2 | torchvision (auto: Detectron2 when importable for real "
                         "data, torchvision for the embedded set)", check=_checked_engine)
    train_years: tuple[str, ...] = option(("2007", "2012"), "trainval sets trained on: MoCo's 2007,2012, or 2007 "
                                          "alone", check=_train_years, identity=comma_text)
    schedule_scale: float = option(1.0, "multiplies iterations and lr steps (1 = 24k iterations at batch 16)",
                                   check=_schedule_scale, identity=whole_as_int)
    ims_per_batch: int = option(0, "total batch over all GPUs; 0 = 16 on VOC, 4 on the embedded set (lr scales "
                                "linearly)", check=at_least(0))
    max_iter: int = option(0, "explicit iteration count (steps at 3/4 and 11/12 of it); 0 = from the schedule",
                           check=at_least(0))
    force_rgb_input: bool = option(False, "feed RGB to an encoder trained on another view (CMC's L encoder)")
    detectron2_opts: str = option("", "Detectron2 config overrides, 'KEY VALUE ...' (engine=detectron2 only)",
                                  check=_checked_detectron2_opts)
    resolved_engine: str = internal("")  # the engine `auto` became for this data, resolved once by validate

    # Detection fine-tunes one backbone: for CMC files the L encoder (on its lightness view), never the ab one.
    cmc_features = DETECTION_CMC_FEATURES

    @property
    def detectron2_pairs(self) -> tuple[tuple[str, Any], ...]:
        return parse_detectron2_opts(self.detectron2_opts)

    def validate(self, data_root: Path | None) -> VocDetOptions:
        """Resolve the engine once for this data and check the Detectron2 overrides against it."""
        engine = resolve_detection_engine("voc_det", self.engine, embedded=is_embedded(data_root),
                                          detectron2_pairs=self.detectron2_pairs)
        return replace(self, resolved_engine=engine)


def is_embedded(data_root: Path | None) -> bool:
    """No --data-root, or a --data-root holding a built embedded digits VOC set."""
    from transfer.detection.voc_embedded import MARKER

    return data_root is None or (Path(data_root) / MARKER).is_file()


def voc_classes(root: Path) -> tuple[str, ...]:
    """The evaluated classes: the embedded set's ten, else the 20 VOC classes."""
    from transfer.detection.voc_data import VOC_CLASSES
    from transfer.detection.voc_embedded import embedded_classes

    return embedded_classes(root) or VOC_CLASSES


def cell_schedule(embedded: bool, schedule_scale: float, ims_per_batch: int, max_iter: int):
    """(protocol, schedule): MoCo's 24k schedule (or the embedded one) scaled to the batch and length asked for."""
    from transfer.detection.configs import (
        check_schedule,
        embedded_voc_protocol,
        scale_schedule,
        steps_for_max_iter,
        voc_protocol,
    )

    protocol = embedded_voc_protocol() if embedded else voc_protocol()
    batch = ims_per_batch or protocol.schedule.ims_per_batch
    schedule = scale_schedule(protocol.schedule, batch, schedule_scale)
    if max_iter:
        schedule = replace(schedule, max_iter=max_iter, steps=steps_for_max_iter(max_iter),
                           warmup_iters=min(schedule.warmup_iters, max_iter // 5))
    check_schedule(schedule, f"voc_det (ims_per_batch={batch}, schedule_scale={schedule_scale:g}, max_iter={max_iter})")
    return protocol, schedule


class VocDetSuite(Suite):
    name = "voc_det"
    protocol_version = "1"
    sample_unit = "classes (per-class AP; one fine-tuning run)"
    seed_unit = "fine-tuning seeds"
    Options = VocDetOptions
    default_seeds = (0, 1, 2, 3, 4)  # MoCo's README: the mean of 5 trials
    # The embedded set: three, so the default run (three encoders) stays at about 5 min of wall time on 2 cores
    # (67-85 CPU-s per cell measured); --seeds 0,1,2,3,4 gives MoCo's five there too.
    embedded_default_seeds = (0, 1, 2)

    def seeds_for(self, data_root: Path | None) -> tuple[int, ...]:
        return self.embedded_default_seeds if data_root is None else self.default_seeds

    def control_checkpoints(self) -> list[Path]:
        return [random_control_encoder()]

    def tasks(self, options: VocDetOptions, data_root: Path | None) -> list[Task]:
        opts, engine = options, options.resolved_engine
        embedded = is_embedded(data_root)
        dataset = "digits" if embedded else "voc" + "".join(year[2:] for year in opts.train_years)
        params = {"dataset": dataset, "task": TASK, "engine": engine, "train_years": list(opts.train_years),
                  "schedule_scale": opts.schedule_scale, "ims_per_batch": opts.ims_per_batch, "max_iter": opts.max_iter}
        return [Task(name=f"{dataset}/{TASK}", params=params, profile="cpu" if embedded else "detection")]

    def dataset_fingerprints(self, options: VocDetOptions, data_root: Path | None,
                             tasks: Sequence[Task]) -> dict[str, Any]:
        """Embedded: the digits file and the builder's parameters; a VOCdevkit: each image set read (sha256),
        the sha256 of every annotation it lists and the size of every JPEG."""
        from bench.fingerprint import embedded_fingerprint, voc_fingerprint
        from transfer.detection.voc_data import voc_splits

        opts = options
        out = {}
        for task in tasks:
            if data_root is None:
                from transfer.detection.voc_embedded import default_parameters

                out[task.name] = embedded_fingerprint("digits_voc", default_parameters())
            else:
                train, test = voc_splits(data_root, opts.train_years)
                out[task.name] = voc_fingerprint(task.params["dataset"], [*train, test])
        return out

    def check(self, options: VocDetOptions, data_root: Path | None,
              checkpoints: Sequence[Path | CheckpointInfo]) -> None:
        from transfer.detection.configs import ScheduleError
        from transfer.detection.voc_data import VocDataError, check_voc_root

        opts = options  # the engine was resolved and the Detectron2 keys checked once, when parsed
        try:
            cell_schedule(is_embedded(data_root), opts.schedule_scale, opts.ims_per_batch, opts.max_iter)
        except ScheduleError as error:
            raise InputError(str(error)) from None
        if data_root is not None:
            try:
                summaries = check_voc_root(data_root, opts.train_years, voc_classes(Path(data_root)))
            except VocDataError as error:
                raise InputError(f"voc_det: {error}") from None
            for summary in summaries.values():
                if summary.images_without_objects:
                    print(f"voc_det: {summary.split}: {summary.images_without_objects} of {summary.num_images} images "
                          "have no object; training skips them (as Detectron2 does)", file=sys.stderr)
        self.check_checkpoints(opts, checkpoints)

    def check_checkpoints(self, options: VocDetOptions, checkpoints: Sequence[Path]) -> None:
        for path in checkpoints:
            detection_checkpoint_metadata("voc_det", path, options)

    def prepare(self, options: VocDetOptions, data_root: Path | None, shared_dir: Path) -> None:
        if data_root is None:
            from transfer.detection.voc_embedded import build_embedded_voc

            build_embedded_voc(Path(shared_dir) / EMBEDDED_DIR)

    def published_rows(self):
        """MoCo's README table (published, cited: not measured here) for the leaderboard."""
        from bench.published import read_published

        return read_published(PUBLISHED_FILE)

    def leaderboard_markdown(self, ranked: Any) -> str | None:
        """The generic table over VOC's three numbers (AP50 first, as MoCo reports them), not bbox/AP alone."""
        from bench.leaderboard import markdown_table

        rows = ranked[ranked["metric"].isin([f"bbox/{name}" for name in METRICS])].copy()
        if rows.empty:
            return None
        rows["avg_rank"] = rows.groupby(["suite", "entry"], dropna=False)["rank"].transform("mean")
        return markdown_table(rows)

    def run(self, cell: Cell, workdir: Path) -> CellOutput:
        import torch

        from transfer.detection.configs import VocDetectionJob, describe_schedule, detectron2_voc_config
        from transfer.detection.engines import run_voc_detection
        from transfer.detection.voc_embedded import build_embedded_voc

        if cell.checkpoint is None:
            raise InputError("the voc_det suite fine-tunes a checkpoint; the cell has none")
        params = cell.task.params
        engine = params["engine"]
        root = build_embedded_voc(Path(cell.shared_dir) / EMBEDDED_DIR) if cell.data_root is None else Path(cell.data_root)
        embedded = params["dataset"] == "digits"
        protocol, schedule = cell_schedule(embedded, float(params["schedule_scale"]), int(params["ims_per_batch"]),
                                           int(params["max_iter"]))
        encoder = load_checkpoint_for(cell.checkpoint, cell.settings)
        meta = encoder.metadata
        num_gpus = torch.cuda.device_count()
        threads = cpu_threads_for_cell() if num_gpus == 0 else None
        if threads:
            torch.set_num_threads(threads)
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        job = VocDetectionJob(
            arch=meta["arch"],
            data_root=root,
            train_years=tuple(params["train_years"]),
            classes=voc_classes(root),
            schedule=schedule,
            input=protocol.input,
            pixel_mean=tuple(float(v) for v in meta["mean"]),
            pixel_std=tuple(float(v) for v in meta["std"]),
            output_dir=Path(workdir) / "output",
            seed=cell.seed,
            num_gpus=max(num_gpus, world_size if num_gpus else 0),
            heads=protocol.heads,
            precise_bn_iters=protocol.precise_bn_iters,
            input_view=encoder.backbone_view,
            extra=dict(cell.settings.detectron2_pairs),
        )
        stated = describe_schedule(schedule, protocol.schedule, float(params["schedule_scale"]), int(params["max_iter"]))
        print(f"voc_det {cell.task.name}: {engine} engine, {job.norm}, {stated}", file=sys.stderr)
        result = run_voc_detection(engine, job, encoder.backbone.state_dict(), workdir, str(cell.checkpoint))
        if not result.metrics:  # a non-leader task of a multi-GPU job
            return CellOutput(metrics={}, info={"engine": engine, "role": "worker"})
        metrics: dict[str, Metric] = {}
        for name in METRICS:
            value = result.metrics[f"bbox/{name}"]
            per_class = result.per_category.get(name, {})
            if per_class and abs(sum(per_class.values()) / len(per_class) - value) < 1e-3:
                names = sorted(per_class)
                metrics[f"bbox/{name}"] = Metric.from_samples([per_class[c] for c in names], names)
            else:  # no per-class values that add up to the metric: the mean alone, said so in the info
                metrics[f"bbox/{name}"] = Metric.scalar(value)
        scalars = sorted(name for name, metric in metrics.items() if not metric.samples)
        info = dict(result.info) | {
            "engine": engine,
            "dataset": params["dataset"],
            "protocol": protocol.name,
            "schedule_stated": stated,
            "checkpoint_method": meta["method"],
            "checkpoint_sampler": meta["sampler"],
            # the configuration of this run, as Detectron2 config keys (what MoCo's yaml sets, plus ours)
            "protocol_config": detectron2_voc_config(job, "<the encoder, converted to Detectron2 names>"),
            **encoder.view_info(),
            "metric_samples": ("each AP carries the per-class APs as samples (their mean is the VOC AP)" if not scalars
                               else f"{', '.join(scalars)}: the mean only (no per-class APs: no paired statistics)"),
        }
        return CellOutput(metrics=metrics, info=info)
