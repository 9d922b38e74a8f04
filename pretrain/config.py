"""The training configuration: typed sections on OmegaConf structured configs, validated before anything runs.

    TrainConfig
      sampler  name + the parameters of every registered sampler (built from the registry)
      method   name, backbone, embedding, temperature, bank / queue sizes and momenta
      data     dataset name and root, image size, augmentation, loader workers
      optim    batch size, epochs, SGD and the lr schedule
      (top)    kNN monitor, seed, device, precision

Overrides are dotted (`sampler.w_out=0.2`, `optim.epochs=5`); the flat keys of earlier versions
(`w_out=0.2`, `epochs=5`) still work as aliases, with a one-line notice.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from typing import Any

from pretrain.backbones import ARCHS, STEMS
from pretrain.data import augmentation_for, check_dataset_name
from pretrain.methods import MethodSettings, check_combination
from pretrain.samplers import SAMPLER_CLASSES, NegativeSampler, build_sampler, sampler_parameters
from ringbench_common.overrides import OverrideError, override_fields

LR_SCHEDULES = ("step", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
LOADERS = ("auto", "pil", "cpu", "gpu")  # see pretrain.augment; auto: pil on CPU, gpu (JPEG files) or cpu on CUDA
SWITCHES = ("auto", "on", "off")


class ConfigError(ValueError):
    """A bad recipe name, override key or value."""


def _sampler_section() -> type:
    """The `sampler` section: `name` plus every registered sampler's parameters (a parameter shared by
    several samplers, such as w_out, must have one type and default)."""
    fields: dict[str, tuple[Any, Any]] = {"name": (str, "nce")}
    for name, cls in SAMPLER_CLASSES.items():
        hints = typing.get_type_hints(cls.Params)
        for param in dataclasses.fields(cls.Params):
            entry = (hints[param.name], param.default)
            if fields.setdefault(param.name, entry) != entry:
                raise TypeError(f"sampler {name!r} declares {param.name}: {entry} but another sampler "
                                f"declares {fields[param.name]}")
    section = dataclasses.make_dataclass(
        "SamplerSection", [(key, kind, field(default=default)) for key, (kind, default) in fields.items()],
        namespace={"__doc__": "Which negative sampler and its parameters (a parameter of another sampler is refused "
                              "when given: apply_overrides).",
                   "build": _build_sampler, "__module__": __name__})
    return section


def _build_sampler(self, epochs: int) -> NegativeSampler:
    """The named sampler from its own parameters, its schedule spread over `epochs`."""
    return build_sampler(self.name, epochs=epochs, **{key: getattr(self, key) for key in sampler_parameters(self.name)})


SamplerSection = _sampler_section()


def _method_section() -> type:
    """The `method` section: `name` plus MethodSettings' fields (declared once, in pretrain.methods), without the
    input normalisation, which comes from the dataset."""
    hints = typing.get_type_hints(MethodSettings)
    fields = [("name", str, field(default="moco"))]  # ir | cmc | moco | simclr
    fields += [(f.name, hints[f.name], field(default=f.default)) for f in dataclasses.fields(MethodSettings)
               if f.name not in RUNTIME_METHOD_SETTINGS]
    return dataclasses.make_dataclass("MethodSection", fields, namespace={
        "__doc__": "Which method and its settings (pretrain.methods.MethodSettings).", "settings": _method_settings,
        "__module__": __name__})


RUNTIME_METHOD_SETTINGS = ("mean", "std")  # filled from the dataset, not configured


def _method_settings(self, mean, std) -> MethodSettings:
    """The method's settings with the dataset's normalisation."""
    values = {key: value for key, value in dataclasses.asdict(self).items() if key != "name"}
    return MethodSettings(**values, mean=tuple(mean), std=tuple(std))


MethodSection = _method_section()


@dataclass
class DataSection:
    name: str = "cifar10"
    root: str = ""
    image_size: int = 32
    crop_min_scale: float = 0.2
    hflip: bool = True
    augmentation: str = "auto"  # auto (the method's own: cmc for CMC, else mocov2) | mocov2 | cmc
    workers: int = 0
    skip_undecodable: bool = False  # skip (and count in the metrics) image files that do not decode; else an error names them


@dataclass
class OptimSection:
    """The paper's SGD recipe."""

    batch_size: int = 256  # global, split across ranks
    epochs: int = 200
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "step"
    lr_milestones: tuple[float, ...] = (0.68, 0.83)  # fractions of the epochs where the lr drops 10x
    max_steps_per_epoch: int = 0  # 0: whole epochs

    def __post_init__(self) -> None:
        self.lr_milestones = tuple(self.lr_milestones)


@dataclass
class TrainConfig:
    sampler: SamplerSection = field(default_factory=SamplerSection)
    method: MethodSection = field(default_factory=MethodSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    # monitor and run
    knn_k: int = 200
    knn_temperature: float = 0.07
    knn_every: int = 1
    knn_max_train: int = 20000
    snapshot_every: int = 0  # write encoder_e{epoch:04d}.pt every this many epochs; 0: only the final encoder.pt
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast on GPU, fp32 on CPU
    loader: str = "auto"  # input pipeline: pil | cpu (uint8, colour on the device) | gpu (nvJPEG + batched ops)
    channels_last: str = "auto"  # auto: on CUDA only
    compile: str = "auto"  # torch.compile of the encoders; auto: on CUDA for runs of >= 5,000 steps
    deterministic: bool = True
    recipe: str = field(default="", metadata={"internal": True})

    def resolved_augmentation(self) -> str:
        """The augmentation pipeline: `auto` is the method's own (CMC's crop + flip for cmc, else MoCo v2)."""
        return augmentation_for(self.method.name, self.data.augmentation)

    def build_sampler(self) -> NegativeSampler:
        """The configured negative sampler, validated, with its schedule spread over the run."""
        return self.sampler.build(self.optim.epochs)

    def validate(self) -> TrainConfig:
        method, data, optim = self.method, self.data, self.optim
        try:
            sampler = self.build_sampler()
            check_combination(method.name, sampler)
            check_dataset_name(data.name)
            self.resolved_augmentation()
        except ValueError as error:
            raise ConfigError(str(error)) from None
        checks = [
            (method.arch in ARCHS, f"method.arch {method.arch!r}; valid: {', '.join(ARCHS)}"),
            (method.stem in STEMS, f"method.stem {method.stem!r}; valid: {', '.join(STEMS)}"),
            (optim.lr_schedule in LR_SCHEDULES,
             f"optim.lr_schedule {optim.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}"),
            (self.precision in PRECISIONS, f"precision {self.precision!r}; valid: {', '.join(PRECISIONS)}"),
            (self.loader in LOADERS, f"loader {self.loader!r}; valid: {', '.join(LOADERS)}"),
            (self.channels_last in SWITCHES, f"channels_last {self.channels_last!r}; valid: {', '.join(SWITCHES)}"),
            (self.compile in SWITCHES, f"compile {self.compile!r}; valid: {', '.join(SWITCHES)}"),
            (optim.epochs >= 1, f"optim.epochs must be >= 1, got {optim.epochs}"),
            (optim.batch_size >= 2, f"optim.batch_size must be >= 2, got {optim.batch_size}"),
            (optim.lr > 0, f"optim.lr must be > 0, got {optim.lr}"),
            (method.temperature > 0, f"method.temperature must be > 0, got {method.temperature}"),
            (0 <= method.bank_momentum < 1, f"method.bank_momentum must lie in [0, 1), got {method.bank_momentum}"),
            (0 <= method.key_momentum < 1, f"method.key_momentum must lie in [0, 1), got {method.key_momentum}"),
            (method.queue_size >= 1, f"method.queue_size must be >= 1, got {method.queue_size}"),
            (method.num_negatives >= 2, f"method.num_negatives (K: softmax terms of a memory-bank method, the "
                                        f"positive included) must be >= 2, got {method.num_negatives}"),
            (0 < data.crop_min_scale <= 1, f"data.crop_min_scale must lie in (0, 1], got {data.crop_min_scale}"),
            (all(0 < m < 1 for m in optim.lr_milestones),
             f"optim.lr_milestones must be fractions in (0, 1), got {optim.lr_milestones}"),
            (data.image_size >= 8, f"data.image_size must be >= 8, got {data.image_size}"),
            (self.snapshot_every >= 0, f"snapshot_every must be >= 0 (0: only the final encoder), got {self.snapshot_every}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if sampler.needs_queue and method.queue_size < 2:
            raise ConfigError(f"sampler {sampler.name!r} needs a queue (method.queue_size >= 2)")
        return self

    def to_dict(self) -> dict:
        """Nested plain values (lists for tuples), as written to config.json and checkpoints."""
        return _plain(dataclasses.asdict(self))

    def flat_dict(self) -> dict[str, Any]:
        """Dotted key -> value, every leaf."""
        return _flatten(self.to_dict())

    def to_yaml(self) -> str:
        from omegaconf import OmegaConf

        return OmegaConf.to_yaml(OmegaConf.structured(self))

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """From `to_dict()` output, or the flat dicts older versions stored (their keys are aliases)."""
        values = dict(values)
        recipe = values.pop("recipe", "")
        config = apply_overrides(cls(), _flatten(values), notice=False, check_sampler=False)
        config.recipe = recipe
        return config


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _aliases() -> dict[str, str]:
    """Flat keys of earlier versions -> dotted keys."""
    aliases = {"sampler": "sampler.name", "method": "method.name", "dataset": "data.name", "data_root": "data.root",
               "ring_threshold_sample": "method.threshold_sample", "mochi_hardest": "sampler.hardest",
               "mochi_mixed": "sampler.mixed", "mochi_query_mixed": "sampler.query_mixed"}
    for section in ("sampler", "method", "data", "optim"):
        for key in (f.name for f in dataclasses.fields(TrainConfig.__dataclass_fields__[section].default_factory)):
            if key != "name":
                aliases.setdefault(key, f"{section}.{key}")
    return aliases


ALIASES = _aliases()
_noticed: set[str] = set()


def _notice(old: str, new: str) -> None:
    if old not in _noticed:
        _noticed.add(old)
        print(f"notice: config key {old!r} is now {new!r}", file=sys.stderr)


def config_keys() -> list[str]:
    from ringbench_common.overrides import field_kinds

    return list(field_kinds(TrainConfig))


def _given_keys(overrides: dict | list[str]) -> list[str]:
    """The dotted keys an override set names (aliases resolved)."""
    keys = list(overrides) if isinstance(overrides, dict) else [item.partition("=")[0].strip() for item in overrides]
    known = set(config_keys())
    return [key if key in known else ALIASES.get(key, key) for key in keys]


def refuse_foreign_sampler_parameters(name: str, keys: list[str]) -> None:
    """A `sampler.X` the chosen sampler does not have is an error naming the sampler's own parameters (the
    section holds every sampler's parameters, so it would otherwise be accepted and silently unused)."""
    try:
        own = sampler_parameters(name)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    foreign = [key.partition(".")[2] for key in keys
               if key.startswith("sampler.") and key != "sampler.name" and key.partition(".")[2] not in own]
    if foreign:
        raise ConfigError(f"sampler {name!r} has no parameter {', '.join(foreign)}; "
                          f"its parameters: {', '.join(own) or 'none'}")


def apply_overrides(config: TrainConfig, overrides: dict | list[str], notice: bool = True,
                    check_sampler: bool = True) -> TrainConfig:
    """Apply `key=value` strings or a {key: value} dict (dotted keys; flat aliases with a notice).

    Values are typed by the dataclass and checked by OmegaConf's structured config; an unknown key
    gets close matches and the list of valid keys. A sampler parameter given here must belong to the
    sampler the config names afterwards (`check_sampler=False` reads back a stored config, which holds
    every sampler's parameters)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    recipe = config.recipe
    try:
        changed = override_fields(config, overrides, label="override ", aliases=ALIASES,
                                   on_alias=_notice if notice else None, what="config key")
    except OverrideError as error:
        raise ConfigError(str(error)) from None
    if check_sampler:
        refuse_foreign_sampler_parameters(changed.sampler.name, _given_keys(overrides))
    try:
        typed = OmegaConf.to_object(OmegaConf.structured(changed))
    except OmegaConfBaseException as error:
        raise ConfigError(f"override: {error.msg if hasattr(error, 'msg') else error}".splitlines()[0]) from None
    typed.recipe = recipe
    return typed
