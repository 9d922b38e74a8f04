"""The training configuration: one flat, typed dataclass, validated before anything runs."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field

from pretrain.annealing import check_policy
from pretrain.backbones import ARCHS, STEMS
from pretrain.data import check_dataset_name
from pretrain.methods import MethodSettings, check_combination
from pretrain.samplers import SamplerConfig, check_sampler_name

LR_SCHEDULES = ("step", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")


class ConfigError(ValueError):
    """A bad recipe name, override key or value."""


@dataclass
class TrainConfig:
    # what is trained
    method: str = "moco"
    sampler: str = "nce"
    arch: str = "resnet18"
    stem: str = "imagenet"
    embed_dim: int = 128
    temperature: float = 0.07
    # negatives
    w_out: float = 0.1  # target outer cut (fraction of the pool) for ring / ball
    w_in: float = 0.1  # inner cut as a fraction of the kept outer set
    anneal: str = "linear"  # constant | linear | step (ring / ball only)
    anneal_epochs: int = -1  # -1: half of the epochs
    anneal_steps: int = 4
    tau_plus: float = 0.1
    beta: float = 1.0
    mochi_hardest: int = 1024
    mochi_mixed: int = 512
    mochi_query_mixed: int = 256
    num_negatives: int = 4096
    bank_momentum: float = 0.5
    queue_size: int = 65536
    key_momentum: float = 0.999
    ring_threshold_sample: int = 0  # 0: exact ring cuts for banks; >0: cuts from this many sampled columns
    # data
    dataset: str = "cifar10"
    data_root: str = ""
    image_size: int = 32
    crop_min_scale: float = 0.2
    hflip: bool = True
    workers: int = 0
    # optimisation (the paper's SGD recipe)
    batch_size: int = 256  # global, split across ranks
    epochs: int = 200
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "step"
    lr_milestones: tuple[float, ...] = (0.68, 0.83)  # fractions of the epochs where the lr drops 10x
    max_steps_per_epoch: int = 0  # 0: whole epochs
    # monitor and run
    knn_k: int = 200
    knn_temperature: float = 0.07
    knn_every: int = 1
    knn_max_train: int = 20000
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast on GPU, fp32 on CPU
    deterministic: bool = True
    recipe: str = field(default="", metadata={"internal": True})

    def resolved_anneal_epochs(self) -> int:
        return self.epochs // 2 if self.anneal_epochs < 0 else self.anneal_epochs

    def sampler_config(self) -> SamplerConfig:
        return SamplerConfig(self.sampler, self.w_out, self.w_in, self.tau_plus, self.beta,
                             self.mochi_hardest, self.mochi_mixed, self.mochi_query_mixed)

    def method_settings(self, mean, std) -> MethodSettings:
        return MethodSettings(self.arch, self.stem, self.embed_dim, self.temperature, self.num_negatives,
                              self.bank_momentum, self.queue_size, self.key_momentum, self.ring_threshold_sample,
                              tuple(mean), tuple(std))

    def validate(self) -> TrainConfig:
        try:
            check_sampler_name(self.sampler)
            check_combination(self.method, self.sampler)
            self.sampler_config()
            check_policy(self.anneal)
            check_dataset_name(self.dataset)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        checks = [
            (self.arch in ARCHS, f"arch {self.arch!r}; valid: {', '.join(ARCHS)}"),
            (self.stem in STEMS, f"stem {self.stem!r}; valid: {', '.join(STEMS)}"),
            (self.lr_schedule in LR_SCHEDULES, f"lr_schedule {self.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}"),
            (self.precision in PRECISIONS, f"precision {self.precision!r}; valid: {', '.join(PRECISIONS)}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 2, f"batch_size must be >= 2, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (0 <= self.bank_momentum < 1, f"bank_momentum must lie in [0, 1), got {self.bank_momentum}"),
            (0 <= self.key_momentum < 1, f"key_momentum must lie in [0, 1), got {self.key_momentum}"),
            (self.queue_size >= 1, f"queue_size must be >= 1, got {self.queue_size}"),
            (self.num_negatives >= 2, f"num_negatives (K: softmax terms of a memory-bank method, the positive "
                                      f"included) must be >= 2, got {self.num_negatives}"),
            (0 < self.crop_min_scale <= 1, f"crop_min_scale must lie in (0, 1], got {self.crop_min_scale}"),
            (all(0 < m < 1 for m in self.lr_milestones), f"lr_milestones must be fractions in (0, 1), got {self.lr_milestones}"),
            (self.image_size >= 8, f"image_size must be >= 8, got {self.image_size}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.sampler == "mochi" and self.queue_size < 2:
            raise ConfigError("sampler 'mochi' needs a queue (queue_size >= 2)")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"lr_milestones": list(self.lr_milestones)}

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        values = dict(values)
        if "lr_milestones" in values:
            values["lr_milestones"] = tuple(values["lr_milestones"])
        return cls(**values)


def config_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig) if not f.metadata.get("internal")]


def _parse_value(key: str, kind, text: str):
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if typing.get_origin(kind) is tuple:
            return tuple(float(part) for part in text.split(",") if part.strip())
        return text
    except ValueError:
        raise ConfigError(f"override {key}={text!r}: expected a {getattr(kind, '__name__', kind)}") from None


def apply_overrides(config: TrainConfig, overrides: dict | list[str]) -> TrainConfig:
    """Apply `key=value` strings or a {key: value} dict; unknown keys list the valid ones."""
    if isinstance(overrides, list):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not key=value")
            key, value = item.split("=", 1)
            pairs[key.strip()] = value
        overrides = pairs
    hints = typing.get_type_hints(TrainConfig)
    keys = config_keys()
    changes = {}
    for key, value in overrides.items():
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}; valid keys: {', '.join(keys)}")
        kind = hints[key]
        changes[key] = _parse_value(key, kind, value) if isinstance(value, str) and kind is not str else value
        if typing.get_origin(kind) is tuple and not isinstance(changes[key], tuple):
            changes[key] = tuple(changes[key])
    return dataclasses.replace(config, **changes)
