"""What a suite is: the contract between the runner and the transfer tasks.

A suite is a registered, declarative list of tasks. The runner expands it into cells
(checkpoint x task x seed), submits each cell as a job, and stores what `Suite.run` returns
as the cell's `result.json`. Suites never read each other's files.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bench.intervals import STUDENT_T, half_width_from_population_std
from bench.options import InputError as InputError  # re-exported: the suites' and the runner's error
from bench.options import SuiteOptions, ViewOptions
from ringbench_common.overrides import comma_list as comma_list  # re-exported for the suites


def check_checkpoint_views(path: Any, options: ViewOptions, cmc_features: str | None = None) -> None:
    """Up front, from metadata only: refuse a checkpoint the chosen views cannot evaluate (an InputError)."""
    from pretrain.checkpoint import CheckpointError, checkpoint_info, resolve_views

    try:
        resolve_views(checkpoint_info(path).metadata, str(path), cmc_features or options.cmc_features,
                      options.force_rgb_input)
    except CheckpointError as error:
        raise InputError(str(error)) from None


def load_checkpoint_for(path: Any, options: ViewOptions, cmc_features: str | None = None):
    """`load_encoder` with the suite's view options (`cmc_features` overrides the option, e.g. detection's
    "l"); a refused file is an InputError naming it and why."""
    from pretrain.checkpoint import CheckpointError, load_encoder

    try:
        return load_encoder(path, cmc_features=cmc_features or options.cmc_features,
                            force_rgb_input=options.force_rgb_input)
    except CheckpointError as error:
        raise InputError(str(error)) from None


@dataclass(frozen=True)
class Task:
    """One evaluation of a checkpoint. `params` is JSON-serialisable and part of the cell identity."""

    name: str  # unique within the suite, e.g. "omniglot" or "digits/mask_rcnn"
    params: Mapping[str, Any] = field(default_factory=dict)
    profile: str = "eval"  # resource profile name in slurm/profiles.py


@dataclass(frozen=True)
class Cell:
    """Everything a job needs to evaluate one checkpoint on one task with one seed."""

    suite: str
    task: Task
    checkpoint: Path | None  # None for suites that evaluate no checkpoint (uses_checkpoints = False)
    seed: int
    options: Mapping[str, Any]  # the identity mapping of the options (result.json's "options", in the cell id)
    data_root: Path | None
    shared_dir: Path  # per-suite folder written by `Suite.prepare` (episodes, embedded data, caches)
    settings: SuiteOptions  # the same options typed (`Suite.parse_options`, parsed once by the plan): what `run` reads


@dataclass
class Metric:
    """One reported number: mean over samples (episodes, images, seeds) with its 95% interval.

    `samples` keeps the per-sample values (aligned with `sample_ids`) so paired statistics
    (Ring vs NCE on the same episodes) can be computed later from the stored files alone.
    """

    mean: float
    std: float = 0.0
    n: int = 1
    ci95: float = 0.0
    samples: list[float] | None = None
    sample_ids: list[str] | None = None
    higher_is_better: bool = True

    @classmethod
    def from_samples(
        cls, samples: Sequence[float], sample_ids: Sequence[str] | None = None, higher_is_better: bool = True,
        interval: str = STUDENT_T,
    ) -> Metric:
        """Mean, population std and the 95% half-width: Student's t (t(0.975, n - 1) * sd / sqrt(n), sd with
        ddof = 1), or with interval=EPISODE_CONVENTION 1.96 * population std / sqrt(n), as Meta-Dataset
        papers report over episodes. One sample has no interval (NaN)."""
        values = np.asarray(samples, dtype=np.float64)
        if values.size == 0:
            raise ValueError("a metric needs at least one sample")
        std = float(values.std())  # population std (ddof=0)
        return cls(
            mean=float(values.mean()),
            std=std,
            n=int(values.size),
            ci95=float(half_width_from_population_std(std, values.size, interval)),
            samples=[float(v) for v in values],
            sample_ids=None if sample_ids is None else [str(s) for s in sample_ids],
            higher_is_better=higher_is_better,
        )

    @classmethod
    def scalar(cls, value: float, higher_is_better: bool = True) -> Metric:
        return cls(mean=float(value), higher_is_better=higher_is_better)

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "std": self.std,
            "n": self.n,
            "ci95": self.ci95 if math.isfinite(self.ci95) else None,  # one sample: no interval
            "samples": self.samples,
            "sample_ids": self.sample_ids,
            "higher_is_better": self.higher_is_better,
        }


@dataclass
class CellOutput:
    """What `Suite.run` returns: metrics keyed by name (e.g. "acc/ncc", "bbox/AP") plus free-form info."""

    metrics: dict[str, Metric]
    info: dict[str, Any] = field(default_factory=dict)  # engine, image size, timings...



def identity_options(options: Mapping[str, Any], path_options: Sequence[str] = (),
                     neutral_defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The options that make a cell's identity, for the cell id and the leaderboard alike: without data
    paths (the fingerprint stands for the data) and without options added later left at their neutral
    default (Suite.identity_neutral_defaults)."""
    neutral = neutral_defaults or {}
    return {key: value for key, value in options.items()
            if key not in path_options and not (key in neutral and value == neutral[key])}

class Suite(ABC):
    """Subclass, set the class attributes, and register the class path in bench/suites/__init__.py.

    Options are declared once, as the suite's `Options` class (a frozen `bench.options.SuiteOptions`
    dataclass; `ViewOptions` adds cmc_features and force_rgb_input for suites that embed images):

        @dataclass(frozen=True)
        class MyOptions(ViewOptions):
            epochs: int = option(10, "training epochs", check=at_least(1))
            tasks: tuple[str, ...] = option(("a", "b"), "comma list of a, b", check=each_of("a", "b"))

            def validate(self, data_root):  # optional: checks across fields, values resolved once
                return self

        class MySuite(Suite):
            name = "mine"
            Options = MyOptions

    The plan parses `key=value` pairs into the identity mapping (`Cell.options`) and then, once, into the
    typed object (`Cell.settings`); `check`, `tasks`, `dataset_fingerprints`, `prepare`, `check_checkpoints`
    receive that object and `run` reads `cell.settings`. An unknown key gets one "unknown key, did you mean"
    message. `options` (the defaults' identity mapping) is derived from `Options`; never declare it.
    """

    name: ClassVar[str]
    protocol_version: ClassVar[str] = "1"  # bump when results stop being comparable
    Options: ClassVar[type[SuiteOptions]] = SuiteOptions  # the one declaration of the suite's options
    options: ClassVar[dict[str, Any]] = {}  # derived from Options: the defaults as result.json stores them
    default_seeds: ClassVar[tuple[int, ...]] = (0,)
    uses_checkpoints: ClassVar[bool] = True  # False: cells are task x seed (e.g. the estimator check)
    # What a metric's per-sample values are and what its seeds vary, for saying what an interval covers
    sample_unit: ClassVar[str] = "samples"
    seed_unit: ClassVar[str] = "evaluation seeds"
    # The quantile of an interval over one cell's samples (bench.intervals): Student's t unless a field's
    # convention says otherwise (Meta-Dataset's episodes)
    sample_interval: ClassVar[str] = STUDENT_T
    produces_checkpoints: ClassVar[bool] = False  # True: cells write encoders that `--then` suites evaluate

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Options" in cls.__dict__:
            cls.Options.where = getattr(cls, "name", cls.__name__)
            cls.options = cls.Options.defaults()

    def parse_options(self, options: Mapping[str, Any], data_root: Path | None = None) -> SuiteOptions:
        """The identity mapping as the typed `Options` object, checked (the plan calls it once)."""
        return self.Options.parse(options, data_root)

    def produced_checkpoint(self, result: Mapping[str, Any]) -> Path | None:
        """The encoder a finished cell of a checkpoint-producing suite wrote (from its result.json)."""
        return None

    reads_data_root: ClassVar[bool] = True  # False: the suite reads no dataset folder and refuses --data-root
    # options that name a data folder: the dataset fingerprint stands for them in the cell id, so
    # moving the folder or giving it as a relative path keeps the id
    path_options: ClassVar[tuple[str, ...]] = ()
    # Options added after results were stored: at these values they are left out of the cell id and of
    # the leaderboard's identity, so the results stored before the option existed keep counting.
    identity_neutral_defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def identity_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options that make a cell's identity (see identity_options)."""
        return identity_options(options, cls.path_options, cls.identity_neutral_defaults)

    def seeds_for(self, data_root: Path | None) -> tuple[int, ...]:
        """The seeds run when --seeds is not given."""
        return self.default_seeds

    def default_checkpoints(self, pretrain_seeds: Sequence[int] | None = None) -> list[Path]:
        """The embedded NCE and Ring encoders (per pretraining seed, default 0), trained once on the bundled
        digits and cached, followed by the suite's control checkpoints."""
        from pretrain.embedded import default_encoders

        return default_encoders(pretrain_seeds) + self.control_checkpoints()

    def control_checkpoints(self) -> list[Path]:
        """Checkpoints evaluated next to the embedded pair when no --checkpoints are given (e.g. a random
        backbone); built without training."""
        return []

    @abstractmethod
    def tasks(self, options: SuiteOptions, data_root: Path | None) -> list[Task]:
        """The declarative task list for these options."""

    def dataset_fingerprints(self, options: SuiteOptions, data_root: Path | None,
                             tasks: Sequence[Task]) -> dict[str, Any]:
        """Task name -> the `bench.fingerprint.DatasetFingerprint` of the data it reads (part of the
        cell id and of result.json). Called after `check`; suites that read no data return {}."""
        return {}

    def check(self, options: SuiteOptions, data_root: Path | None, checkpoints: Sequence[Path]) -> None:  # noqa: B027
        """Validate data and checkpoints up front; raise InputError naming what is wrong.

        The runner calls it before anything is trained or submitted; when the embedded pair still has to
        be trained, `checkpoints` holds only those that exist, and `check_checkpoints` sees the rest later."""

    def check_checkpoints(self, options: SuiteOptions, checkpoints: Sequence[Path]) -> None:  # noqa: B027
        """Suite-specific checks of checkpoint files (suites call it from `check` too)."""

    def prepare(self, options: SuiteOptions, data_root: Path | None, shared_dir: Path) -> None:  # noqa: B027
        """One-time work before submission, shared by all cells (embedded data, episode lists)."""

    @abstractmethod
    def run(self, cell: Cell, workdir: Path) -> CellOutput:
        """Evaluate one cell inside the job. `workdir` is the cell's own folder (scratch, resume state)."""

    # Optional leaderboard hooks (bench.leaderboard calls them; the defaults keep the generic output).
    # `ranked` is the leaderboard frame: one row per (model, task, metric) with mean, std, n, ci95, rank.

    def leaderboard_markdown(self, ranked: Any) -> str | None:
        """Markdown that replaces the generic models-by-columns table in <suite>.md; None keeps it."""
        return None

    def published_rows(self) -> Any:
        """Published reference numbers (a frame from bench.published.read_published) that the leaderboard shows
        beside the measured rows, marked as cited; None (the default) shows none."""
        return None

    def leaderboard_figure(self, ranked: Any, path: Path) -> bool:
        """Draw <suite>.png at `path` from the ranked frame; False (the default) keeps the generic plot."""
        return False
