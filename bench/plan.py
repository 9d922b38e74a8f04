"""Turn a suite, its options and checkpoints into a plan: the cells, their ids and resources."""

from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bench.store import CellState, ResultStore, cell_id
from bench.suite import Cell, InputError, Suite, comma_list

IDENTITY_KEYS = ("method", "sampler", "sampler_params", "arch", "stem", "pretrain_dataset", "epochs", "seed",
                 "image_size", "code_version")


def parse_value(key: str, text: str, default: Any) -> Any:
    """Convert a command-line string to the type of the option's default."""
    try:
        if isinstance(default, bool):
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, list | tuple):
            items = list(comma_list(text))
            if default and not isinstance(default[0], str):
                items = [type(default[0])(item) for item in items]
            return type(default)(items)
        if isinstance(default, dict):
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError
            return value
    except (ValueError, json.JSONDecodeError):
        kind = type(default).__name__
        raise InputError(f"option {key}={text!r}: expected a {kind} like the default {default!r}") from None
    if default is None:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def parse_options(suite: Suite, pairs: Iterable[str]) -> dict[str, Any]:
    options = dict(suite.options)
    for pair in pairs:
        if "=" not in pair:
            raise InputError(f"{pair!r} is not a key=value override; valid keys for {suite.name}: "
                             f"{', '.join(sorted(suite.options)) or '(none)'}")
        key, _, text = pair.partition("=")
        if key not in suite.options:
            raise InputError(f"unknown option {key!r} for suite {suite.name}; valid keys: "
                             f"{', '.join(sorted(suite.options)) or '(none)'}")
        options[key] = parse_value(key, text, suite.options[key])
    return options


def expand_checkpoints(specs: Sequence[str]) -> list[Path]:
    """Paths, comma lists, globs or folders (every *.pt inside) -> existing files, in order, no duplicates."""
    paths: list[Path] = []
    for spec in specs:
        for item in [s for s in spec.split(",") if s.strip()]:
            item = os.path.expanduser(item.strip())
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


def _identity_cache_path() -> Path:
    from pretrain.embedded import cache_root

    return cache_root() / "checkpoint_identities.json"


def checkpoint_identity(path: Path) -> dict[str, Any]:
    """Who a checkpoint is, from load_encoder (which also refuses a bad file with CheckpointError).

    Identities are cached by (path, size, mtime) so planning a known checkpoint needs no torch import;
    a changed file gets a new key and is loaded and validated again.
    """
    from bench.store import atomic_write_json, read_json

    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_path = _identity_cache_path()
    try:
        cache = read_json(cache_path)
    except (OSError, ValueError):
        cache = {}
    if isinstance(cache, dict) and isinstance(cache.get(key), dict):
        return cache[key]
    from pretrain.checkpoint import load_encoder

    loaded = load_encoder(resolved)
    identity = {"path": str(resolved), "sha256": loaded.sha256}
    identity.update({name: loaded.metadata.get(name) for name in IDENTITY_KEYS})
    cache = cache if isinstance(cache, dict) else {}
    cache[key] = identity
    try:
        atomic_write_json(cache_path, cache, fsync=False)
    except OSError:
        pass  # a read-only cache only costs the next run a reload
    return identity


@dataclass
class PlannedCell:
    cell: Cell
    cell_id: str  # "" for a cell of an embedded encoder not trained yet (a dry run's plan)
    checkpoint: dict[str, Any] | None
    state: CellState = field(default_factory=lambda: CellState("pending"))

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
    # embedded encoders still to be trained (only in a plan built with train_embedded=False, a dry run)
    untrained: list[Path] = field(default_factory=list)
    untrained_note: str = ""


def _untrained_identity(path: Path, recipe: str, seed: int) -> dict[str, Any]:
    """Who an embedded encoder will be, from its recipe (for a dry run's listing; no cell id yet)."""
    from pretrain.recipes import recipe_config

    config = recipe_config(recipe)
    return {"path": str(path), "sha256": None, "method": config.method, "sampler": config.sampler,
            "pretrain_dataset": config.dataset, "epochs": config.epochs, "seed": seed, "untrained": True}


def build_plan(
    suite_name: str,
    suite: Suite,
    *,
    results_root: Path,
    option_pairs: Sequence[str] = (),
    checkpoint_specs: Sequence[str] = (),
    data_root: Path | None = None,
    seeds: Sequence[int] | None = None,
    identities: Mapping[Path, dict[str, Any]] | None = None,
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
    options = parse_options(suite, option_pairs)
    if data_root is not None and not Path(data_root).exists():
        raise InputError(f"{data_root_flag} {data_root}: no such folder")
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
    suite.check(options, data_root, [path for path in checkpoints if path not in untrained])
    tasks = suite.tasks(options, data_root)
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
            suite.check_checkpoints(options, untrained)
            untrained = []
    identities = dict(identities or {})
    sources: list[tuple[Path | None, dict[str, Any] | None]] = [(None, None)]
    if suite.uses_checkpoints:
        runs = dict(zip(embedded.embedded_paths(pretrain_seeds), embedded.embedded_runs(pretrain_seeds)))
        sources = []
        for path in checkpoints:
            if path in untrained:
                identities[path] = _untrained_identity(path, *runs[path])
            elif path not in identities:
                identities[path] = checkpoint_identity(path)
            sources.append((path, identities[path]))
    cells = []
    for path, identity in sources:
        for task in tasks:
            for seed in seeds:
                cid = "" if identity and identity.get("untrained") else cell_id(
                    suite=suite.name,
                    task_name=task.name,
                    params=task.params,
                    seed=seed,
                    protocol_version=suite.protocol_version,
                    checkpoint_sha256=identity["sha256"] if identity else None,
                    options=options,
                )
                cell = Cell(suite=suite.name, task=task, checkpoint=path, seed=seed, options=options,
                            data_root=data_root, shared_dir=store.shared_dir)
                cells.append(PlannedCell(cell, cid, identity))
    return Plan(suite_name, suite, options, data_root, checkpoints, seeds, store, cells, untrained, note)
