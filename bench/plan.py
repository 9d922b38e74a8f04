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
from ringbench_common.overrides import comma_list, split_pair

if TYPE_CHECKING:
    from pretrain.checkpoint import CheckpointInfo


def parse_seeds(text: str | None, flag: str = "--seeds", stream: TextIO | None = None) -> list[int] | None:
    """A comma list of seeds (None: the flag was not given, so the default applies). An empty list is an
    error, not the default; a repeated seed runs once, with a notice on `stream` (default stderr)."""
    if text is None:
        return None
    try:
        seeds = [int(s) for s in comma_list(text)]
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected a comma list of integers, e.g. 0,1,2") from None
    if not seeds:
        raise InputError(f"{flag} {text!r}: expected a comma list of integers, e.g. 0,1,2 (leave {flag} out for "
                         "the default)")
    if flag == "--pretrain-seeds" and any(seed < 0 for seed in seeds):
        raise InputError(f"{flag} {text!r}: expected integers >= 0")
    unique = list(dict.fromkeys(seeds))
    if len(unique) < len(seeds):
        repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
        print(f"note: {flag} {text} repeats seed(s) {', '.join(map(str, repeated))}; each seed runs once: "
              f"{','.join(map(str, unique))}", file=stream or sys.stderr)
    return unique


IDENTITY_KEYS = ("method", "sampler", "sampler_params", "arch", "stem", "pretrain_dataset", "epochs", "seed",
                 "image_size", "code_version", "epoch", "w_out")  # epoch, w_out: where a snapshot sits on its run
IMPORT_IDENTITY_KEYS = ("source_file", "source_sha256", "format", "mapping_version")


# A key=value option of every suite: how the data's fingerprint is taken (bench.fingerprint), not a suite option
FINGERPRINT_OPTION = "fingerprint"


def fingerprint_mode_of(pairs: Iterable[str]) -> str:
    """The `fingerprint=sizes|content` among key=value pairs (default sizes); a bad value is an InputError."""
    from bench.fingerprint import FINGERPRINT_MODES, SIZES

    mode = SIZES
    for pair in pairs:
        if "=" in pair and split_pair(pair)[0] == FINGERPRINT_OPTION:
            mode = split_pair(pair)[1].strip().lower()
            if mode not in FINGERPRINT_MODES:
                raise InputError(f"option fingerprint={split_pair(pair)[1]!r}: expected one of "
                                 + ", ".join(f"{name} ({what})" for name, what in FINGERPRINT_MODES.items()))
    return mode


def parse_suite_options(suite: Suite, pairs: Iterable[str]) -> dict[str, Any]:
    """The suite's defaults with `key=value` pairs applied, typed by its `Options` declaration: the identity
    mapping that cells carry and result.json stores. `fingerprint=` is checked here and read by
    `fingerprint_mode_of`; a key given twice with two values is an error, not "the last one wins"."""
    pairs = list(pairs)
    fingerprint_mode_of(pairs)
    given: dict[str, str] = {}
    for pair in pairs:
        if "=" not in pair:
            continue  # from_pairs names it
        key, text = split_pair(pair)
        if key in given and given[key].strip() != text.strip():
            raise InputError(f"option {key} given twice for suite {suite.name} ({key}={given[key]} and "
                             f"{key}={text}); give it once")
        given[key] = text
    kept = [pair for pair in pairs if "=" not in pair or split_pair(pair)[0] != FINGERPRINT_OPTION
            or FINGERPRINT_OPTION in suite.options]
    return suite.Options.from_pairs(kept)


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


def resolve_checkpoint(path: Path, stream: TextIO | None = None) -> CheckpointInfo:
    """The checkpoint's CheckpointInfo (path, sha256, metadata), loaded and validated only when its content
    is new (cached by sha256), so planning a known checkpoint needs no torch.

    A published checkpoint (MoCo, SwAV, ...) is imported into the cache first (pretrain.importers; the
    report goes to `stream` once) and the info is the imported encoder's; a refused file is an InputError."""
    from pretrain.checkpoint import checkpoint_info
    from pretrain.importers import ImportRefused, encoder_for

    try:
        encoder = encoder_for(path, stream=stream)
    except ImportRefused as refused:
        raise InputError(f"--checkpoints {refused}") from None
    return checkpoint_info(encoder, _info_cache_path())


def checkpoint_identity(info: CheckpointInfo) -> dict[str, Any]:
    """The part of a checkpoint's metadata that identifies it in results and leaderboards; an imported
    encoder adds its source (file, sha256, format, mapping version)."""
    identity = {"path": str(info.path), "sha256": info.sha256} | {name: info.metadata.get(name) for name in IDENTITY_KEYS}
    imported = info.metadata.get("imported")
    if isinstance(imported, dict):
        identity["imported"] = {key: imported.get(key) for key in IMPORT_IDENTITY_KEYS}
    return identity


def cell_checkpoint_sha256(identity: dict[str, Any]) -> str:
    """The checkpoint part of a cell id: the encoder file's sha256, or for an imported encoder its source's
    sha256 and mapping version (a changed file or mapping is never a reused result)."""
    from pretrain.importers import import_identity

    imported = identity.get("imported")
    return import_identity({"imported": imported}) if isinstance(imported, dict) else identity["sha256"]


def options_for_checkpoint(suite: Suite, options: dict[str, Any], metadata: Mapping[str, Any]) -> dict[str, Any]:
    """`options` with the view options that cannot change this checkpoint's features put back to their defaults:
    `cmc_features` on a file that is not CMC, `force_rgb_input` on a non-CMC file already fed RGB. Such a
    file's cells are then the same work, under the same id and setting, whatever those options say."""
    cmc = metadata.get("method") == "cmc"
    inert = {"cmc_features": not cmc, "force_rgb_input": not cmc and metadata.get("input_view") in (None, "rgb")}
    return options | {key: suite.options[key] for key in inert
                      if key in options and key in suite.options and inert[key] and options[key] != suite.options[key]}


def check_device_here(options: Mapping[str, Any], where: str) -> None:
    """The `device` option names a device this machine has (the local and debug executors run jobs here)."""
    device = str(options.get("device") or "").strip()
    if not device or device == "cpu":
        return
    import torch

    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            have = f"CUDA devices cuda:0 to cuda:{count - 1}" if count else "no CUDA device"
            raise InputError(f"{where} device={device}: this machine has {have}, and the local and debug executors "
                             "run the jobs here; choose another device (cpu, or empty for CUDA when available)")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{where} device=mps: MPS is not available on this machine, where the local and debug "
                         "executors run the jobs; choose cpu (or empty for CUDA when available)")


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
    devices_here: bool = False,
) -> Plan:
    """Validate everything that can be checked up front and expand checkpoint x task x seed.

    Every check of the user's input (options, data, given checkpoints) runs before the embedded encoders
    are trained. With train_embedded=False (a dry run) nothing is trained: cells of embedded encoders not
    cached yet are listed without an id. `pretrain_seeds` picks the embedded pair's pretraining seeds.
    `devices_here`: the jobs run on this machine (local, debug), so the `device` option must exist here;
    otherwise (SLURM) the node checks it when the job starts."""
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
            if data_root is not None and os.path.realpath(options[key]) != os.path.realpath(data_root):
                raise InputError(f"{key}={options[key]} and {data_root_flag} {data_root} name two folders for the "
                                 "same data; give one of them")
    if devices_here:
        check_device_here(options, suite.name)
    elif str(options.get("device") or "").strip() not in ("", "cpu"):
        print(f"note: {suite.name} device={options['device']} is checked on the node where each job runs "
              "(this executor does not run the jobs here)", file=stream)
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
            known[path] = resolve_checkpoint(path, stream)
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
    from bench.fingerprint import fingerprint_mode

    with fingerprint_mode(fingerprint_mode_of(option_pairs)):
        fingerprints = suite.dataset_fingerprints(settings, data_root, tasks)
    # (the checkpoint as given, the file the cells evaluate: an imported encoder for a published file, its identity)
    sources: list[tuple[Path | None, Path | None, dict[str, Any] | None]] = [(None, None, None)]
    if suite.uses_checkpoints:
        runs = dict(zip(embedded.embedded_paths(pretrain_seeds), embedded.embedded_runs(pretrain_seeds)))
        sources = [(given, given, _untrained_identity(given, *runs[given])) if given in untrained
                   else (given, known[given].path, checkpoint_identity(known[given])) for given in checkpoints]
    cells = []
    inert: dict[str, list[str]] = {}  # view option -> the checkpoints it cannot affect
    for given, path, identity in sources:
        cell_options = options
        if identity is not None:
            metadata = identity if given in untrained else known[given].metadata
            cell_options = options_for_checkpoint(suite, options, metadata)
            for key in cell_options:
                if cell_options[key] != options[key]:
                    inert.setdefault(key, []).append(f"{identity.get('method')}/{identity.get('sampler')}")
        identity_options = suite.identity_options(cell_options)
        for task in tasks:
            fingerprint = fingerprints.get(task.name)
            for seed in seeds:
                cid = "" if identity and identity.get("untrained") else cell_id(
                    suite=suite.name,
                    task_name=task.name,
                    params=task.params,
                    seed=seed,
                    protocol_version=suite.protocol_version,
                    checkpoint_sha256=cell_checkpoint_sha256(identity) if identity else None,
                    options=identity_options,
                    dataset_sha256=fingerprint.sha256 if fingerprint is not None else None,
                )
                cell = Cell(suite=suite.name, task=task, checkpoint=path, seed=seed, options=cell_options,
                            data_root=data_root, shared_dir=store.shared_dir, settings=settings)
                cells.append(PlannedCell(cell, cid, identity,
                                         dataset=fingerprint.to_json() if fingerprint is not None else None))
    def shown(value: Any) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value)

    for key, who in inert.items():
        print(f"note: {key}={shown(options[key])} cannot change the features of {len(who)} checkpoint(s) "
              f"({', '.join(sorted(set(who)))}): they are evaluated and identified as with the default "
              f"{key}={shown(suite.options[key])}", file=stream)
    return Plan(suite_name, suite, options, data_root, [info.path for info in resolved] + untrained or checkpoints,
                seeds, store, cells, settings, untrained, note)
