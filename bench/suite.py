"""What a suite is: the contract between the runner and the transfer tasks.

A suite is a registered, declarative list of tasks. The runner expands it into cells
(checkpoint x task x seed), submits each cell as a job, and stores what `Suite.run` returns
as the cell's `result.json`. Suites never read each other's files.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pretrain.overrides import comma_list as comma_list  # re-exported for the suites


class InputError(ValueError):
    """Bad input found before submission; the message names the file, key or value and what was expected."""


DEVICE_PATTERN = re.compile(r"(cpu|cuda(:\d+)?|mps)")


def check_device_option(where: str, value: Any) -> str:
    """A `device` option: empty (CUDA when the job sees one, else CPU), cpu, cuda, cuda:N or mps.

    Only the spelling is checked up front: the job may run on another machine than the runner."""
    text = str(value).strip()
    if text and not DEVICE_PATTERN.fullmatch(text):
        raise InputError(f"{where} device={value!r}: expected cpu, cuda, cuda:N or mps (empty: CUDA when available)")
    return text


def check_int_option(where: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{where} {key}={value!r}: expected an integer >= {minimum}")
    return value


# Options of every suite that embeds images for a checkpoint: which CMC encoders to evaluate and the
# explicit override that feeds RGB to an encoder trained on another view. Part of the cell identity.
VIEW_OPTIONS: dict[str, Any] = {
    "cmc_features": "concat",  # CMC only: l | ab | concat (L + ab features, CMC's own evaluation)
    "force_rgb_input": False,  # feed RGB to the exported backbone whatever view it was trained on
}


def view_options(options: Any) -> dict[str, Any]:
    """`cmc_features` and `force_rgb_input` from a suite's options (a mapping or its typed object), checked;
    an InputError names the bad value."""
    from pretrain.views import CMC_FEATURES

    def get(key):
        if isinstance(options, Mapping):
            return options.get(key, VIEW_OPTIONS[key])
        return getattr(options, key, VIEW_OPTIONS[key])

    features = str(get("cmc_features")).strip().lower()
    if features not in CMC_FEATURES:
        raise InputError(f"option cmc_features={get('cmc_features')!r}: expected one of {', '.join(CMC_FEATURES)}")
    force = get("force_rgb_input")
    if not isinstance(force, bool):
        text = str(force).strip().lower()
        if text not in ("1", "true", "on", "yes", "0", "false", "off", "no"):
            raise InputError(f"option force_rgb_input={force!r}: expected true or false")
        force = text in ("1", "true", "on", "yes")
    return {"cmc_features": features, "force_rgb_input": force}


def check_checkpoint_views(path: Any, options: Any, cmc_features: str | None = None) -> None:
    """Up front, from metadata only: refuse a checkpoint the chosen views cannot evaluate (an InputError)."""
    from pretrain.checkpoint import CheckpointError, checkpoint_info, resolve_views

    chosen = view_options(options)
    try:
        resolve_views(checkpoint_info(path).metadata, str(path), cmc_features or chosen["cmc_features"],
                      chosen["force_rgb_input"])
    except CheckpointError as error:
        raise InputError(str(error)) from None


def load_checkpoint_for(path: Any, options: Any, cmc_features: str | None = None):
    """`load_encoder` with the suite's view options (`cmc_features` overrides the option, e.g. detection's
    "l"); a refused file is an InputError naming it and why."""
    from pretrain.checkpoint import CheckpointError, load_encoder

    chosen = view_options(options)
    try:
        return load_encoder(path, cmc_features=cmc_features or chosen["cmc_features"],
                            force_rgb_input=chosen["force_rgb_input"])
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
    options: Mapping[str, Any]  # the suite options after key=value overrides (part of the cell's identity)
    data_root: Path | None
    shared_dir: Path  # per-suite folder written by `Suite.prepare` (episodes, embedded data, caches)
    settings: Any = None  # the same options typed by `Suite.parse_options`, parsed once by the plan


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
        cls, samples: Sequence[float], sample_ids: Sequence[str] | None = None, higher_is_better: bool = True
    ) -> Metric:
        """Mean and 1.96 * population std / sqrt(n), as Meta-Dataset papers report."""
        values = np.asarray(samples, dtype=np.float64)
        if values.size == 0:
            raise ValueError("a metric needs at least one sample")
        std = float(values.std())  # population std (ddof=0)
        return cls(
            mean=float(values.mean()),
            std=std,
            n=int(values.size),
            ci95=1.96 * std / math.sqrt(values.size),
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
            "ci95": self.ci95,
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
    """Subclass, set the class attributes, and register the class path in bench/suites/__init__.py."""

    name: ClassVar[str]
    protocol_version: ClassVar[str] = "1"  # bump when results stop being comparable
    options: ClassVar[dict[str, Any]] = {}  # valid key=value overrides and their defaults
    default_seeds: ClassVar[tuple[int, ...]] = (0,)
    uses_checkpoints: ClassVar[bool] = True  # False: cells are task x seed (e.g. the estimator check)
    # What a metric's per-sample values are and what its seeds vary, for saying what an interval covers
    sample_unit: ClassVar[str] = "samples"
    seed_unit: ClassVar[str] = "evaluation seeds"
    produces_checkpoints: ClassVar[bool] = False  # True: cells write encoders that `--then` suites evaluate

    def parse_options(self, options: Mapping[str, Any], data_root: Path | None = None) -> Any:
        """The options as the suite's typed object (a frozen dataclass), parsed once per plan and handed to
        `check`, `tasks`, `dataset_fingerprints`, `prepare` and every cell (`Cell.settings`). Each suite
        declares its own; it must accept its typed object too (returned as is), so a suite's methods
        called with either are parsed at most once. The default keeps the mapping."""
        return options

    def settings_for(self, cell: Cell) -> Any:
        """The cell's typed options: those the plan parsed once, or (a cell built by hand) parsed here."""
        if cell.settings is not None:
            return cell.settings
        return self.parse_options(cell.options, cell.data_root)

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

    @classmethod
    def complete_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """The suite's defaults overridden by `options`; an unknown key is an InputError listing the valid ones."""
        unknown = sorted(set(options) - set(cls.options))
        if unknown:
            raise InputError(f"unknown {cls.name} option(s) {', '.join(unknown)}; valid: {', '.join(cls.options)}")
        return dict(cls.options) | dict(options)

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
    def tasks(self, options: Mapping[str, Any], data_root: Path | None) -> list[Task]:
        """The declarative task list for these options."""

    def dataset_fingerprints(self, options: Mapping[str, Any], data_root: Path | None,
                             tasks: Sequence[Task]) -> dict[str, Any]:
        """Task name -> the `bench.fingerprint.DatasetFingerprint` of the data it reads (part of the
        cell id and of result.json). Called after `check`; suites that read no data return {}."""
        return {}

    def check(self, options: Mapping[str, Any], data_root: Path | None, checkpoints: Sequence[Path]) -> None:  # noqa: B027
        """Validate data and checkpoints up front; raise InputError naming what is wrong.

        The runner calls it before anything is trained or submitted; when the embedded pair still has to
        be trained, `checkpoints` holds only those that exist, and `check_checkpoints` sees the rest later."""

    def check_checkpoints(self, options: Mapping[str, Any], checkpoints: Sequence[Path]) -> None:  # noqa: B027
        """Suite-specific checks of checkpoint files (suites call it from `check` too)."""

    def prepare(self, options: Mapping[str, Any], data_root: Path | None, shared_dir: Path) -> None:  # noqa: B027
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
