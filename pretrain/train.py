"""The training loop and the `python -m pretrain.train` command.

    python -m pretrain.train --recipe digits_moco_ring [key=value ...] [--out DIR] [--resume]

An output folder holds config.json, metrics.jsonl (one JSON record per epoch), tensorboard/ (the
same curves as TensorBoard events), train.state.pt (everything needed to resume exactly, rewritten
atomically every epoch), encoder_e{epoch:04d}.pt snapshots every `snapshot_every` epochs and, at the
end, encoder.pt (the exported backbone, read with `pretrain.checkpoint.load_encoder`). Snapshots and
encoder.pt are published atomically (rename), so a watcher never sees half a file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from pretrain import distributed
from pretrain.augment import AugmentLaws, BatchColourAugment, DeviceViewPipeline, normalise, to_unit_float
from pretrain.checkpoint import atomic_torch_save, code_version, encoder_metadata, save_encoder
from pretrain.config import ConfigError, TrainConfig
from pretrain.data import (
    MONITOR_SPLITS,
    PRETRAIN_SPLIT,
    EncodedImages,
    MultiViewDataset,
    TransformedImages,
    UInt8Views,
    UndecodableSkips,
    collate_encoded,
    dataset_stats,
    eval_transform_uint8,
    open_dataset,
    pretrain_transform,
)
from pretrain.gpu_fallbacks import CompileGuard, autocast_for, resolve_precision, warn
from pretrain.images import DeviceDecoder, UndecodableImage, device_decoder_works, worker_error_message
from pretrain.knn import knn_accuracy
from pretrain.methods import build_method
from pretrain.recipes import recipe_config, recipe_names
from pretrain.views import feature_model
from ringbench_common.progress import progress_bar

STATE_FORMAT = "ringbench-train-state"
STATE_VERSION = 1
STATE_FILE, ENCODER_FILE, METRICS_FILE, CONFIG_FILE = "train.state.pt", "encoder.pt", "metrics.jsonl", "config.json"
TENSORBOARD_DIR = "tensorboard"
SNAPSHOT_GLOB = "encoder_e*.pt"
# Keys that may differ between the run that wrote a state and the one resuming it.
# (loader, memory format and compilation decide how the run executes, not what it computes: they change
# float rounding only, and a requeued job may land on another kind of node)
RESUME_FREE_KEYS = {"data.workers", "device", "data.root", "knn_every", "snapshot_every", "loader", "channels_last", "compile"}
# torch.compile costs about a minute of warm-up; below this many steps it does not pay (see README)
COMPILE_MIN_STEPS = 5000


def snapshot_name(epoch: int) -> str:
    """The file name of the encoder snapshot taken after `epoch` (1-based) epochs."""
    return f"encoder_e{epoch:04d}.pt"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class ResumeError(ValueError):
    """A training state that cannot be resumed (missing, truncated, foreign, or another config)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(name)


def config_differences(saved: dict, config: TrainConfig) -> list[str]:
    """Dotted keys whose saved value differs from `config`'s, RESUME_FREE_KEYS aside (a key the saved
    config predates counts as its default)."""
    saved, current = TrainConfig.from_dict(saved).flat_dict(), config.flat_dict()
    return sorted(k for k in current if k not in RESUME_FREE_KEYS and saved.get(k) != current[k])


def resolve_loader(name: str, device: torch.device, images) -> str:
    """auto: torchvision's PIL pipeline on CPU (the results of CPU runs stay as they were); on CUDA the
    GPU path for JPEG folders and the uint8 CPU path for datasets held in arrays."""
    if name != "auto":
        return name
    if device.type != "cuda":
        return "pil"
    return "gpu" if getattr(images, "files", None) is not None else "cpu"


def resolve_switch(name: str, device: torch.device, default_on_cuda: bool = True) -> bool:
    if name == "auto":
        return device.type == "cuda" and default_on_cuda
    return name == "on"


def to_device_views(views: list[torch.Tensor], device: torch.device, channels_last: bool) -> list[torch.Tensor]:
    views = [view.to(device, non_blocking=True) for view in views]
    if channels_last:
        views = [view.contiguous(memory_format=torch.channels_last) for view in views]
    return views


def lr_at(config: TrainConfig, epoch: int) -> float:
    if config.optim.lr_schedule == "cosine":
        return config.optim.lr * 0.5 * (1 + math.cos(math.pi * epoch / config.optim.epochs))
    if config.optim.lr_schedule == "step":
        drops = sum(epoch >= int(fraction * config.optim.epochs) for fraction in config.optim.lr_milestones)
        return config.optim.lr * 0.1**drops
    return config.optim.lr


def _rng_state() -> dict:
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))


def read_state(path: Path) -> dict:
    """Load and check a training-state file; refuse anything else with a clear message."""
    if not path.is_file():
        raise ResumeError(f"{path}: no training state to resume (run without --resume to start fresh)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ResumeError(f"{path}: not a readable training state, truncated or foreign "
                          f"({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ResumeError(f"{path}: not a RingBench training state (expected format={STATE_FORMAT!r}); "
                          "encoder files cannot be resumed")
    if state.get("format_version") != STATE_VERSION:
        raise ResumeError(f"{path}: training-state version {state.get('format_version')!r}, this code reads {STATE_VERSION}")
    for key in ("config", "epoch", "method", "optimizer", "rng", "sampler_generator"):
        if key not in state:
            raise ResumeError(f"{path}: training state lacks {key!r}")
    return state


class Trainer:
    """One training run in `out_dir`, single process or one rank of a DDP job."""

    def __init__(self, config: TrainConfig, out_dir: str | os.PathLike, resume: bool = False,
                 show_progress: bool = True, allow_distributed: bool = True, on_step=None):
        self.config = config.validate()
        # on_step(epoch, step, steps_per_epoch), after every optimizer step: progress for a caller that
        # trains in another process (the embedded pair) and shows one bar for all its trainings
        self.on_step = on_step
        self.out_dir = Path(out_dir)
        self.device = resolve_device(config.device)
        if allow_distributed:
            distributed.init_from_env(self.device)
        self.rank, self.world = (distributed.rank(), distributed.world_size()) if allow_distributed else (0, 1)
        if config.optim.batch_size % self.world:
            raise ConfigError(f"batch_size {config.optim.batch_size} is not divisible by {self.world} processes")
        self.show_progress = show_progress and self.rank == 0
        self.precision, precision_fallback = resolve_precision(config.precision, self.device)
        self.fallbacks: dict[str, str] = {}  # feature -> why it fell back (in every metrics record)
        if precision_fallback is not None:
            self._fall_back("precision", precision_fallback)
        self.state_path = self.out_dir / STATE_FILE
        self.encoder_path = self.out_dir / ENCODER_FILE
        self.metrics_path = self.out_dir / METRICS_FILE
        state = read_state(self.state_path) if resume else None
        if state is None and self.state_path.exists():
            raise ResumeError(f"{self.out_dir} already holds a training state ({STATE_FILE}); "
                              "pass --resume to continue it or choose another --out")
        if state is not None:
            self._check_resumable(state)
        self._build(state)

    def _check_resumable(self, state: dict) -> None:
        saved, current = TrainConfig.from_dict(state["config"]).flat_dict(), self.config.flat_dict()
        differing = config_differences(state["config"], self.config)
        if differing:
            details = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {current[k]!r}" for k in differing[:6])
            raise ResumeError(f"{self.state_path}: written by a different config ({details}); "
                              "resume with the same recipe and overrides")

    def _build(self, state: dict | None) -> None:
        config = self.config
        torch.manual_seed(config.seed)  # identical model and memory initialisation on every rank
        self.mean, self.std = dataset_stats(config.data.name)
        root = config.data.root or None
        self.images = open_dataset(config.data.name, root, PRETRAIN_SPLIT[config.data.name], **self._size_kw())
        settings = config.method.settings(self.mean, self.std)
        self.sampler = config.build_sampler()
        self.method = build_method(config.method.name, settings, self.sampler, len(self.images),
                                   seed=config.seed).to(self.device)
        self.channels_last = resolve_switch(config.channels_last, self.device)
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.method.wrap_distributed(lambda module: DistributedDataParallel(module, device_ids=device_ids))
        parameters = [p for name in self.method.trainable_encoders()
                      for p in getattr(self.method, name).parameters()]
        self.optimizer = torch.optim.SGD(parameters, lr=config.optim.lr, momentum=config.optim.momentum,
                                         weight_decay=config.optim.weight_decay)
        self.generator = torch.Generator().manual_seed(config.seed * 1000 + self.rank + 1)
        self.start_epoch = 0
        torch.manual_seed(config.seed * 1000 + self.rank)  # augmentation stream, distinct per rank
        if state is not None:
            self.method.load_state_dict(state["method"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.generator.set_state(state["sampler_generator"][self.rank % len(state["sampler_generator"])])
            rng = state["rng"]
            _set_rng_state(rng[self.rank % len(rng)])
            self.start_epoch = int(state["epoch"])
            if len(rng) != self.world and self.rank == 0:
                print(f"warning: state written by {len(rng)} processes, resuming with {self.world}: "
                      "data order and augmentations will differ from an uninterrupted run", file=sys.stderr)
        self.loader_kind = resolve_loader(config.loader, self.device, self.images)
        if self.loader_kind == "gpu":
            broken = device_decoder_works(self.device)
            if broken is not None:
                self.loader_kind = "cpu"
                self._fall_back("loader", f"the GPU JPEG decoder does not work on {self.device} ({broken}); "
                                          "using loader=cpu")
        laws = AugmentLaws.recipe(config.data.image_size, config.data.crop_min_scale, config.data.hflip,
                                  augmentation=config.resolved_augmentation())
        collate = None
        self.skips = UndecodableSkips() if config.data.skip_undecodable else None
        if self.loader_kind == "pil":
            self.transform = pretrain_transform(config.data.image_size, self.mean, self.std, config.data.crop_min_scale,
                                                config.data.hflip, augmentation=config.resolved_augmentation())
            self.views = MultiViewDataset(self.images, self.transform, self.method.num_views, skips=self.skips)
        elif self.loader_kind == "cpu":
            self.views = UInt8Views(self.images, laws, self.method.num_views, skips=self.skips)
            self.colour = BatchColourAugment(laws, self.mean, self.std)
        else:
            self.views = EncodedImages(self.images)
            self.device_views = DeviceViewPipeline(laws, self.mean, self.std, self.method.num_views,
                                                   decoder=DeviceDecoder(skip_undecodable=config.data.skip_undecodable))
            collate = collate_encoded
        self.data_sampler = DistributedSampler(self.views, num_replicas=self.world, rank=self.rank, shuffle=True,
                                               seed=config.seed, drop_last=True)
        self.loader = DataLoader(self.views, batch_size=config.optim.batch_size // self.world, sampler=self.data_sampler,
                                 num_workers=config.data.workers, drop_last=True, collate_fn=collate,
                                 pin_memory=self.device.type == "cuda", persistent_workers=False)
        if len(self.loader) == 0:
            raise ConfigError(f"{len(self.images)} images give no full batch of {config.optim.batch_size // self.world}")
        steps = len(self.loader) if config.optim.max_steps_per_epoch <= 0 else min(len(self.loader), config.optim.max_steps_per_epoch)
        self.compile_guard = None
        if resolve_switch(config.compile, self.device, config.optim.epochs * steps >= COMPILE_MIN_STEPS):
            self.compile_guard = CompileGuard()
            self.method.compile_encoders(self.compile_guard.wrap)

    @property
    def compiled(self) -> bool:
        """Whether the encoders run compiled now (False after a fall back to eager)."""
        return self.compile_guard is not None and self.compile_guard.failure is None

    def _fall_back(self, feature: str, reason: str) -> None:
        if feature not in self.fallbacks:
            self.fallbacks[feature] = reason
            if self.rank == 0:
                warn(reason)

    def execution_record(self) -> dict:
        """How the run executed (in every metrics record): loader, precision, compilation, and why any
        of them fell back from what the config asked."""
        if self.compile_guard is not None and self.compile_guard.failure is not None:
            self.fallbacks.setdefault("compile", f"torch.compile failed ({self.compile_guard.failure}); eager")
        record = {"loader": self.loader_kind, "precision": self.precision,
                  "compile": "on" if self.compiled else "off"}
        if self.fallbacks:
            record["fallbacks"] = dict(self.fallbacks)
        return record

    def _decode_record(self, epoch: int) -> dict:
        """The epoch's decoding counts (GPU decoder fallbacks, skipped files), logged once per epoch."""
        record = {}
        if self.loader_kind == "gpu":
            counts = self.device_views.decoder.counts
            fallbacks, decoded, skipped = (sum(values) for values in zip(*self._gather_objects(
                (counts.cpu_fallbacks, counts.device, counts.skipped))))  # every rank's files
            record["decode_cpu_fallbacks"] = fallbacks
            if fallbacks and self.rank == 0:
                warn(f"epoch {epoch + 1}: {fallbacks} of {fallbacks + decoded} files decoded on the CPU instead "
                     f"of {self.device} (e.g. {'; '.join(counts.examples)})")
            counts.reset()
        else:
            skipped = sum(self._gather_objects(self.skips.take() if self.skips is not None else 0))
        if self.config.data.skip_undecodable:
            record["skipped_undecodable"] = skipped
            if skipped and self.rank == 0:
                warn(f"epoch {epoch + 1}: skipped {skipped} undecodable files (data.skip_undecodable=true)")
        return record

    def batch_views(self, batch) -> tuple[list[torch.Tensor], torch.Tensor]:
        """A loader batch -> (the views on the device, normalised float, in the model's memory format; index)."""
        if self.loader_kind == "pil":
            *views, index = batch
        elif self.loader_kind == "cpu":
            stacked, index = batch  # (B, views, 3, S, S) uint8
            stacked = stacked.to(self.device, non_blocking=True)
            merged = self.colour(stacked.transpose(0, 1).reshape(-1, *stacked.shape[2:]))
            views = list(merged.split(stacked.shape[0]))
        else:
            items, index = batch
            names = [self.images.files[i] for i in index.tolist()] if self.images.files is not None else None
            views, index = self.device_views.views_and_index(items, index, self.device, names=names)
        return to_device_views(views, self.device, self.channels_last), index.to(self.device)

    def _size_kw(self) -> dict:
        return {"image_size": self.config.data.image_size} if self.config.data.name == "digits" else {}

    # ------------------------------------------------------------------------------------------ monitor
    @torch.no_grad()
    def features(self, images) -> np.ndarray:
        """The method's own evaluation features (CMC: L + ab), each encoder on its input view."""
        model = feature_model(self.method.export_encoders(), self.method.default_features(), self.mean, self.std)
        was_training = model.training
        model.eval()
        loader = DataLoader(TransformedImages(images, eval_transform_uint8(self.config.data.image_size)),
                            batch_size=256, num_workers=self.config.data.workers, pin_memory=self.device.type == "cuda")
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        chunks = []
        for batch, _ in loader:  # uint8 to the device, normalised there (bit-identical to eval_transform)
            batch = normalise(to_unit_float(batch.to(self.device, non_blocking=True)), mean, std)
            with self._autocast():
                chunks.append(model(to_device_views([batch], self.device, self.channels_last)[0]).float().cpu())
        model.train(was_training)
        return torch.cat(chunks).numpy()

    def knn_monitor(self) -> float:
        train_split, test_split = MONITOR_SPLITS[self.config.data.name]
        root = self.config.data.root or None
        train = open_dataset(self.config.data.name, root, train_split, **self._size_kw())
        test = open_dataset(self.config.data.name, root, test_split, **self._size_kw())
        if len(train) > self.config.knn_max_train:
            keep = np.sort(np.random.default_rng(0).choice(len(train), self.config.knn_max_train, replace=False))
            train = _Subset(train, keep)
        return knn_accuracy(self.features(train), train.labels, self.features(test), test.labels,
                            k=self.config.knn_k, temperature=self.config.knn_temperature)

    def _autocast(self):
        if self.precision == "bf16":
            return autocast_for(self.precision, self.device)
        return nullcontext()

    # ------------------------------------------------------------------------------------------ state
    def _gather_objects(self, value) -> list:
        if self.world == 1:
            return [value]
        gathered = [None] * self.world
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def save_state(self, epoch: int) -> None:
        rng = self._gather_objects(_rng_state())
        generators = self._gather_objects(self.generator.get_state())
        if self.rank != 0:
            return
        state = {
            "format": STATE_FORMAT, "format_version": STATE_VERSION, "config": self.config.to_dict(),
            "epoch": epoch, "method": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
            "rng": rng, "sampler_generator": generators, "code_version": code_version(),
        }
        atomic_torch_save(state, self.state_path)

    def _log(self, record: dict) -> None:
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def _trim_metrics(self) -> None:
        """Keep only the records of epochs the state holds (a crash may have logged one more)."""
        if not self.metrics_path.exists():
            return
        kept = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("epoch", 0) <= self.start_epoch]
        self.metrics_path.write_text("".join(line + "\n" for line in kept))

    # ------------------------------------------------------------------------------------------ loop
    def train_epoch(self, epoch: int) -> dict:
        config = self.config
        lr = lr_at(config, epoch)
        self.sampler.set_epoch(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.method.train()
        self.data_sampler.set_epoch(epoch)
        steps = len(self.loader) if config.optim.max_steps_per_epoch <= 0 else min(len(self.loader), config.optim.max_steps_per_epoch)
        total, count, started = 0.0, 0, time.perf_counter()
        progress = progress_bar(total=steps, desc=f"epoch {epoch + 1}/{config.optim.epochs}",
                                disable=not self.show_progress,
                        leave=False, dynamic_ncols=True)
        for step, batch in enumerate(_named_worker_errors(self.loader)):
            if step >= steps:
                break
            views, index = self.batch_views(batch)
            with self._autocast():
                loss = self.method.loss(views, index, self.generator)
            if not torch.isfinite(loss):
                last = f"{self.state_path} (epoch {epoch})" if epoch > 0 else "none (first epoch)"
                raise TrainingDiverged(
                    f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                    f"(global step {epoch * steps + step + 1}); stopped. Last good checkpoint: {last}"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.method.after_step()
            total += loss.item()
            count += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}")
            if self.on_step is not None:
                self.on_step(epoch, step + 1, steps)
        progress.close()
        seconds = time.perf_counter() - started
        return {"epoch": epoch + 1, "loss": total / max(count, 1), "lr": lr, **self.sampler.epoch_record(),
                "steps": count, "train_seconds": round(seconds, 3),
                "images_per_s": round(count * config.optim.batch_size / seconds, 2) if seconds > 0 else None,
                **self._decode_record(epoch), **self.execution_record()}

    def fit(self, until_epoch: int | None = None) -> Path | None:
        """Train the remaining epochs; returns the encoder path (rank 0) or None (other ranks).

        `until_epoch` stops early after that many epochs (state saved, nothing exported), as a job
        that runs out of time would; a later `--resume` continues from there.
        """
        previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        if self.device.type == "cpu" and self.config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            return self._fit(until_epoch)
        finally:  # the flag is process-wide: give callers back their own setting
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])

    def _fit(self, until_epoch: int | None) -> Path | None:
        config = self.config
        stop = config.optim.epochs if until_epoch is None else min(until_epoch, config.optim.epochs)
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
            self._trim_metrics()
        events = self._event_writer() if self.rank == 0 else None
        record = {}
        try:
            for epoch in range(self.start_epoch, stop):
                record = self._run_epoch(epoch, events)
        finally:
            if events is not None:
                events.close()
        distributed.barrier()
        if self.rank != 0 or stop < config.optim.epochs:
            return None
        return self.export(record.get("knn_top1"))

    def _event_writer(self):
        """TensorBoard events beside metrics.jsonl (step = epoch); a resumed run drops what a killed
        attempt logged past the saved state, as metrics.jsonl does."""
        from pretrain.events import summary_writer

        return summary_writer(self.out_dir / TENSORBOARD_DIR, purge_step=self.start_epoch + 1 if self.start_epoch else None)

    def _run_epoch(self, epoch: int, events) -> dict:
        config = self.config
        record = self.train_epoch(epoch)
        last = epoch + 1 == config.optim.epochs
        if self.rank == 0 and config.knn_every > 0 and ((epoch + 1) % config.knn_every == 0 or last):
            started = time.perf_counter()
            record["knn_top1"] = self.knn_monitor()
            record["knn_seconds"] = round(time.perf_counter() - started, 3)
        distributed.barrier()
        # the snapshot goes out before the state that skips past its epoch, so a crash cannot lose it
        if self.rank == 0 and config.snapshot_every > 0 and (epoch + 1) % config.snapshot_every == 0 and not last:
            self.write_snapshot(epoch + 1, record.get("knn_top1"))
        if self.rank == 0:  # the line first: a kill before the state only repeats the epoch on resume
            self._log(record)
            self._log_events(events, record)
        self.save_state(epoch + 1)
        if self.rank == 0:
            if self.show_progress:
                knn = f", kNN {record['knn_top1']:.4f}" if "knn_top1" in record else ""
                tqdm.write(f"epoch {epoch + 1}/{config.optim.epochs}: loss {record['loss']:.4f}{knn}")
        return record

    @staticmethod
    def _log_events(events, record: dict) -> None:
        step = record["epoch"]
        for tag, key in (("train/loss", "loss"), ("train/lr", "lr"), ("train/w_out", "w_out"),
                         ("train/images_per_s", "images_per_s"), ("monitor/knn_top1", "knn_top1")):
            if record.get(key) is not None:
                events.add_scalar(tag, record[key], step)
        events.flush()

    def write_snapshot(self, epoch: int, knn_top1: float | None = None) -> Path | None:
        """encoder_e{epoch:04d}.pt; one already there (written before a crash) is kept as it is."""
        path = self.out_dir / snapshot_name(epoch)
        if path.exists():
            return None
        return self.export(knn_top1, path=path, epoch=epoch)

    def export(self, knn_top1: float | None = None, path: Path | None = None, epoch: int | None = None) -> Path:
        """The encoder after `epoch` epochs (default: all of them) to `path` (default encoder.pt)."""
        config = self.config
        epoch = config.optim.epochs if epoch is None else epoch
        if knn_top1 is None and path is None and self.metrics_path.exists():
            records = [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]
            knn_top1 = next((r["knn_top1"] for r in reversed(records) if "knn_top1" in r), None)
        w_out_at = getattr(self.sampler, "w_out_at", None)  # annealed band samplers (ring, ball)
        (_, (backbone, view)), *extra = self.method.export_encoders().items()
        metadata = encoder_metadata(
            method=config.method.name, sampler=config.sampler.name, sampler_params=self.sampler.metadata(),
            arch=config.method.arch, stem=config.method.stem, pretrain_dataset=config.data.name,
            epochs=config.optim.epochs, image_size=config.data.image_size, mean=self.mean, std=self.std,
            config=config.to_dict(), seed=config.seed, code_version=code_version(), recipe=config.recipe,
            knn_top1=knn_top1, knn_features="+".join(self.method.default_features()), input_view=view,
            # where on the training curve this encoder is; w_out is the band used during that epoch
            epoch=epoch, w_out=w_out_at(epoch - 1) if w_out_at is not None else None,
        )
        return save_encoder(path or self.encoder_path, backbone, metadata, extra=dict(extra))


def _named_worker_errors(loader):
    """Iterate a DataLoader; an undecodable file found in a worker process is raised here with its
    one-line message (the worker's traceback stays out of the error)."""
    try:
        yield from loader
    except UndecodableImage as error:
        raise UndecodableImage(worker_error_message(error)) from None


class _Subset:
    """A fixed subset of a LabelledImages with the same `.image` / `.labels` interface."""

    def __init__(self, images, keep: np.ndarray):
        self._images, self._keep = images, keep
        self.labels = images.labels[keep]

    def __len__(self) -> int:
        return len(self._keep)

    def image(self, index: int):
        return self._images.image(int(self._keep[index]))


def train(config: TrainConfig, out_dir: str | os.PathLike, resume: bool = False, show_progress: bool = True,
          allow_distributed: bool = True, on_step=None) -> Path | None:
    return Trainer(config, out_dir, resume=resume, show_progress=show_progress,
                   allow_distributed=allow_distributed, on_step=on_step).fit()


def check_recipe(recipe_name: str, overrides: dict | None = None) -> TrainConfig:
    """Validate a recipe, its overrides and its dataset on disk without training (for up-front checks).

    Raises ConfigError or DatasetError (both ValueError) with a message naming the bad key or path."""
    config = recipe_config(recipe_name, overrides or {})
    size = {"image_size": config.data.image_size} if config.data.name == "digits" else {}
    open_dataset(config.data.name, config.data.root or None, PRETRAIN_SPLIT[config.data.name], **size)
    for split in MONITOR_SPLITS[config.data.name]:
        open_dataset(config.data.name, config.data.root or None, split, **size)
    return config


def train_recipe(recipe_name: str, overrides: dict | None, out_dir: str | os.PathLike,
                 show_progress: bool = True, allow_distributed: bool = True, on_step=None) -> Path:
    """Train a recipe into `out_dir` and return its encoder path; resumes from the folder's state if
    present (so a requeued job continues), and returns at once if the run already finished."""
    config = recipe_config(recipe_name, overrides or {})
    out_dir = Path(out_dir)
    state_path, encoder_path = out_dir / STATE_FILE, out_dir / ENCODER_FILE
    resume = state_path.exists()
    if resume and encoder_path.exists():
        state = read_state(state_path)
        if state["epoch"] >= config.optim.epochs and not config_differences(state["config"], config):
            return encoder_path
    path = train(config, out_dir, resume=resume, show_progress=show_progress, allow_distributed=allow_distributed,
                 on_step=on_step)
    if path is None:  # a non-zero rank of a DDP job
        return encoder_path
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", help="named recipe (see --list)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--out", help="output folder (default runs/pretrain/<recipe>)")
    parser.add_argument("--resume", action="store_true", help="continue the training state in --out exactly")
    parser.add_argument("--list", action="store_true", help="list the recipes and exit")
    parser.add_argument("--show-config", action="store_true", help="print the resolved config (YAML) and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(recipe_names()))
        return 0
    if not args.recipe:
        parser.error("--recipe is required (see --list)")
    try:
        config = recipe_config(args.recipe, args.overrides)
        if args.show_config:
            print(config.to_yaml(), end="")
            return 0
        out_dir = Path(args.out or Path("runs") / "pretrain" / args.recipe)
        started = time.perf_counter()
        path = train(config, out_dir, resume=args.resume)
    except (ConfigError, ResumeError, TrainingDiverged, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if path is not None:
        print(f"encoder: {path} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
