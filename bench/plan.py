"""Turn a suite, its options and checkpoints into a plan: the cells, their ids and resources."""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from bench.store import CellState, ResultStore, cell_id
from bench.suite import Cell, InputError, Suite
from pretrain.overrides import comma_list

if TYPE_CHECKING:
    from pretrain.checkpoint import CheckpointInfo

IDENTITY_KEYS = ("method", "sampler", "sampler_params", "arch", "stem", "pretrain_dataset", "epochs", "seed",
                 "image_size", "code_version", "epoch", "w_out")  # epoch, w_out: where a snapshot sits on its run


def parse_suite_options(suite: Suite, pairs: Iterable[str]) -> dict[str, Any]:
    """The suite's defaults with `key=value` pairs applied, typed by its `Options` declaration: the identity
    mapping that cells carry and result.json stores."""
    return suite.Options.from_pairs(pairs)


def expand_checkpoints(specs: Sequence[str]) -> list[Path]:
    """Paths, comma lists, globs or folders (every *.pt inside) -> existing files, in order, no duplicates."""
    paths: list[Path] = []
    for spec in specs:
        for item in comma_list(spec):
            item = os.path.expanduser(item)
            if glob.has_magic(item):
                matches = sorted(glob.glob(item, recursive=True))
                if not matches:
                    raise InputError(f"--checkpoints {item!r}: the pattern matches no file")
                paths.extend(Path(m) for m in matches)
            elif os.path.isdir(item):
                matches = sorted(Path(item).glob("*.pt"))
                if not matches:
                    raise InputError(f"--checkpoints {item}: the folder holds no *.pt encoder file")
                paths.extend(matches)
            elif os.path.isfile(item):
                paths.append(Path(item))
            else:
                raise InputError(f"--checkpoints {item}: no such file or folder")
    unique: dict[Path, None] = {}
    for path in paths:
        unique.setdefault(path.resolve(), None)
    return list(unique)


def _info_cache_path() -> Path:
    from pretrain.embedded import cache_root

    return cache_root() / "checkpoint_infos.json"


def resolve_checkpoint(path: Path) -> CheckpointInfo:
    """The checkpoint's CheckpointInfo (path, sha256, metadata), loaded and validated only when the file is
    new or changed (cached by path, size and mtime), so planning a known checkpoint needs no torch."""
    from pretrain.checkpoint import checkpoint_info

    return checkpoint_info(path, _info_cache_path())


def checkpoint_identity(info: CheckpointInfo) -> dict[str, Any]:
    """The part of a checkpoint's metadata that identifies it in results and leaderboards."""
    return {"path": str(info.path), "sha256": info.sha256} | {name: info.metadata.get(name) for name in IDENTITY_KEYS}


@dataclass
class PlannedCell:
    cell: Cell
    cell_id: str  # "" for a cell of an embedded encoder not trained yet (a dry run's plan)
    checkpoint: dict[str, Any] | None
    state: CellState = field(default_factory=lambda: CellState("pending"))
    dataset: dict[str, Any] | None = None  # DatasetFingerprint.to_json() of the data the cell reads

    @property
    def label(self) -> str:
        who = ""
        if self.checkpoint:
            who = f"{self.checkpoint.get('method')}/{self.checkpoint.get('sampler')} "
            if self.checkpoint.get("untrained"):
                who += f"pretraining seed {self.checkpoint.get('seed')} "
        return f"{who}{self.cell.task.name} seed={self.cell.seed}"


@dataclass
class Plan:
    suite_name: str
    suite: Suite
    options: dict[str, Any]
    data_root: Path | None
    checkpoints: list[Path]
    seeds: list[int]
    store: ResultStore
    cells: list[PlannedCell]
    settings: Any = None  # the suite's typed options (Suite.parse_options), parsed once; every cell carries them
    # embedded encoders still to be trained (only in a plan built with train_embedded=False, a dry run)
    untrained: list[Path] = field(default_factory=list)
    untrained_note: str = ""


def _untrained_identity(path: Path, recipe: str, seed: int) -> dict[str, Any]:
    """Who an embedded encoder will be, from its recipe (for a dry run's listing; no cell id yet)."""
    from pretrain.recipes import recipe_config

    config = recipe_config(recipe)
    return {"path": str(path), "sha256": None, "method": config.method.name, "sampler": config.sampler.name,
            "pretrain_dataset": config.data.name, "epochs": config.optim.epochs, "seed": seed, "untrained": True}


def build_plan(
    suite_name: str,
    suite: Suite,
    *,
    results_root: Path,
    option_pairs: Sequence[str] = (),
    checkpoint_specs: Sequence[str] = (),
    data_root: Path | None = None,
    seeds: Sequence[int] | None = None,
    infos: Mapping[Path, CheckpointInfo] | None = None,
    task_names: Sequence[str] | None = None,
    pretrain_seeds: Sequence[int] | None = None,
    train_embedded: bool = True,
    data_root_flag: str = "--data-root",
    stream: TextIO | None = None,
) -> Plan:
    """Validate everything that can be checked up front and expand checkpoint x task x seed.

    Every check of the user's input (options, data, given checkpoints) runs before the embedded encoders
    are trained. With train_embedded=False (a dry run) nothing is trained: cells of embedded encoders not
    cached yet are listed without an id. `pretrain_seeds` picks the embedded pair's pretraining seeds."""
    from pretrain import embedded

    stream = stream or sys.stderr
    options = parse_suite_options(suite, option_pairs)
    if data_root is not None and not suite.reads_data_root:
        raise InputError(f"suite {suite.name} reads no dataset folder (it evaluates on its own embedded data), so "
                         f"{data_root_flag} {data_root} would be ignored; drop {data_root_flag}")
    if data_root is not None and not Path(data_root).exists():
        raise InputError(f"{data_root_flag} {data_root}: no such folder")
    if data_root is not None:  # jobs may start in another folder; the id does not depend on the path
        data_root = Path(os.path.abspath(Path(data_root).expanduser()))
    for key in suite.path_options:
        if isinstance(options.get(key), str) and options[key].strip():
            options[key] = os.path.abspath(os.path.expanduser(options[key].strip()))
    store = ResultStore(results_root, suite.name)
    untrained: list[Path] = []
    if suite.uses_checkpoints:
        if checkpoint_specs and pretrain_seeds:
            raise InputError("--pretrain-seeds picks the embedded pair's pretraining seeds; with --checkpoints "
                             "each file keeps the seed it was trained with (see its metadata)")
        try:
            pretrain_seeds = embedded.parse_pretrain_seeds(pretrain_seeds)
        except ValueError as error:
            raise InputError(f"--pretrain-seeds: {error}") from None
        if checkpoint_specs:
            checkpoints = expand_checkpoints(checkpoint_specs)
        else:
            checkpoints = embedded.embedded_paths(pretrain_seeds) + suite.control_checkpoints()
            untrained = [path for path in checkpoints if not path.is_file()]
        if not checkpoints:
            raise InputError(f"suite {suite.name} needs at least one checkpoint (--checkpoints)")
    else:
        if checkpoint_specs:
            raise InputError(f"suite {suite.name} evaluates no checkpoint; drop --checkpoints")
        if pretrain_seeds:
            raise InputError(f"suite {suite.name} evaluates no checkpoint; --pretrain-seeds does not apply")
        checkpoints = []
    seeds = list(seeds) if seeds else list(suite.seeds_for(data_root))
    known = dict(infos or {})
    for path in checkpoints:  # each checkpoint resolved once per plan; suites read its metadata from here
        if path not in known and path not in untrained:
            known[path] = resolve_checkpoint(path)
    resolved = [known[path] for path in checkpoints if path not in untrained]
    settings = suite.parse_options(options, data_root)  # parsed once; check, tasks and the cells get the typed object
    suite.check(settings, data_root, resolved)  # every user input, before any training
    tasks = suite.tasks(settings, data_root)
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        raise InputError(f"suite {suite.name} lists a task name twice: {sorted({n for n in names if names.count(n) > 1})}")
    if task_names:
        unknown = [name for name in task_names if name not in names]
        if unknown:
            raise InputError(f"unknown task(s) {', '.join(map(repr, unknown))} for suite {suite.name} with these "
                             f"options; valid tasks: {', '.join(names)}")
        tasks = [task for task in tasks if task.name in set(task_names)]
    note = ""
    if untrained:
        note = embedded.describe_training(len(untrained))
        if train_embedded:
            print(f"{suite.name}: training the embedded NCE and Ring encoders first (not cached under "
                  f"{embedded.encoders_dir()}; {note}); the cells follow", file=stream, flush=True)
            embedded.default_encoders(pretrain_seeds, stream=stream)
            for path in untrained:
                known[path] = resolve_checkpoint(path)
            suite.check_checkpoints(settings, [known[path] for path in untrained])
            resolved = [known[path] for path in checkpoints]
            untrained = []
    fingerprints = suite.dataset_fingerprints(settings, data_root, tasks)
    identity_options = suite.identity_options(options)
    sources: list[tuple[Path | None, dict[str, Any] | None]] = [(None, None)]
    if suite.uses_checkpoints:
        runs = dict(zip(embedded.embedded_paths(pretrain_seeds), embedded.embedded_runs(pretrain_seeds)))
        sources = [(path, _untrained_identity(path, *runs[path]) if path in untrained
                    else checkpoint_identity(known[path])) for path in checkpoints]
    cells = []
    for path, identity in sources:
        for task in tasks:
            fingerprint = fingerprints.get(task.name)
            for seed in seeds:
                cid = "" if identity and identity.get("untrained") else cell_id(
                    suite=suite.name,
                    task_name=task.name,
                    params=task.params,
                    seed=seed,
                    protocol_version=suite.protocol_version,
                    checkpoint_sha256=identity["sha256"] if identity else None,
                    options=identity_options,
                    dataset_sha256=fingerprint.sha256 if fingerprint is not None else None,
                )
                cell = Cell(suite=suite.name, task=task, checkpoint=path, seed=seed, options=options,
                            data_root=data_root, shared_dir=store.shared_dir, settings=settings)
                cells.append(PlannedCell(cell, cid, identity,
                                         dataset=fingerprint.to_json() if fingerprint is not None else None))
    return Plan(suite_name, suite, options, data_root, [info.path for info in resolved] + untrained or checkpoints,
                seeds, store, cells, settings, untrained, note)
