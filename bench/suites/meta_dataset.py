"""Meta-Dataset transfer: few-shot probes on frozen features (episodic) or the Ring paper's linear mode.

Tasks are sources (`<records>/<source>/dataset_spec.json`; default the embedded digits source).
Episodes are drawn once per suite from `episode_seed` and stored as index lists in the shared
folder, so every checkpoint sees the very same episodes (paired comparisons). Metrics are query
accuracies in %, mean +- 1.96 * population std / sqrt(episodes) (the field's convention; every
interval over seeds is Student's t), with per-episode samples.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.intervals import EPISODE_CONVENTION
from bench.options import (
    ViewOptions,
    at_least,
    comma_text,
    device_spelling,
    each_of,
    internal,
    one_of,
    option,
)
from bench.suite import (
    Cell,
    CellOutput,
    InputError,
    Metric,
    Suite,
    Task,
    check_checkpoint_views,
    load_checkpoint_for,
)

MODES = ("episodic", "linear")
SPLIT_NAMES = ("TRAIN", "VALID", "TEST")
PROBE_NAMES = ("ncc", "logreg", "sgd")
SHOTS = ("variable", "5w1s", "5w5s")
DISTANCES = ("cosine", "euclidean")
PROBE_DESCRIPTIONS = {
    "ncc": "nearest centroid of raw pooled features, {distance} scores",
    "logreg": "multinomial logistic regression, L-BFGS (20 iterations from a nearest-centroid warm start), C=10, features centred on the support mean "
              "and L2-normalised",
    "sgd": "linear head on centred features of length 10, SGD lr 0.01 momentum 0.9 dampening 0.9 wd 1e-3, "
           "batch 4, 100 epochs (Closer Look baseline)",
}


def _split(name: str) -> str:
    name = name.strip().upper()
    if name not in SPLIT_NAMES:
        raise ValueError(f"expected one of {', '.join(SPLIT_NAMES)}")
    return name


def _image_size(text: str) -> str:
    text = text.strip().lower()
    if text != "auto" and not (text.isdigit() and int(text) >= 8):
        raise ValueError("expected auto or a size in pixels (84, 126, 224...)")
    return text


@dataclass(frozen=True)
class MetaDatasetOptions(ViewOptions):
    records: str = option("", "folder of converted sources; empty: --data-root, else the embedded digits source")
    sources: tuple[str, ...] = option(("all",), "comma list of source folder names (all: every source found)",
                                      identity=comma_text)
    split: str = option("TEST", "episodic mode: the split episodes are drawn from", check=_split)
    mode: str = option("episodic", "episodic (few-shot probes) or linear (the Ring paper's per-source linear head)",
                       check=one_of(*MODES))
    probes: tuple[str, ...] = option(("ncc", "logreg"), "comma list of ncc, logreg, sgd", check=each_of(*PROBE_NAMES),
                                     identity=comma_text)
    distance: str = option("cosine", "ncc scores: cosine or euclidean", check=one_of(*DISTANCES))
    episodes: int = option(600, "episodes per source and shots setting", check=at_least(1))
    shots: tuple[str, ...] = option(("variable",), "comma list of variable, 5w1s, 5w5s", check=each_of(*SHOTS),
                                    identity=comma_text)
    image_size: str = option("auto", "auto: the checkpoint's size if 84/126/224 (or on the embedded source), else 84",
                             check=_image_size)
    episode_seed: int = option(0, "seeds the episodes and the linear split (shared by every checkpoint)",
                               check=at_least(0))
    batch_size: int = option(128, "feature extraction batch", check=at_least(1))
    linear_epochs: int = option(100, "linear mode: training epochs", check=at_least(1))
    linear_max_per_class: int = option(0, "linear mode: cap images per class (0 = all)", check=at_least(0))
    device: str = option("", "empty: cuda when available", check=device_spelling)
    records_path: Path | None = internal()  # resolved by validate: None for the embedded digits source

    def validate(self, data_root: Path | None) -> MetaDatasetOptions:
        records = Path(self.records.strip()) if self.records.strip() else data_root
        return replace(self, records_path=None if records is None else Path(records))

    @property
    def embedded(self) -> bool:
        return self.records_path is None

    @property
    def source_names(self) -> tuple[str, ...] | None:
        """The sources asked for; None: every source found."""
        return None if self.sources in ((), ("all",)) else self.sources


def records_dir(opts: MetaDatasetOptions) -> Path:
    if opts.embedded:
        from transfer.meta_dataset.embedded import embedded_records

        return embedded_records()
    return opts.records_path


def _usable(spec, opts: MetaDatasetOptions) -> str | None:
    """Why the source cannot be evaluated with these options, or None."""
    if opts.mode == "linear":
        return None
    classes = spec.classes(opts.split)
    if len(classes) < 5:
        return f"its {opts.split} split has {len(classes)} classes, fewer than the 5 an episode needs"
    return None


def selected_sources(opts: MetaDatasetOptions, strict: bool = True) -> tuple[list[str], list[str]]:
    """(source names to evaluate, notes on sources left out because their split cannot make episodes)."""
    from transfer.meta_dataset.embedded import EMBEDDED_SOURCE
    from transfer.meta_dataset.spec import SpecError, find_sources, load_spec

    if opts.embedded:
        names = [EMBEDDED_SOURCE]
        if opts.source_names and set(opts.source_names) != {EMBEDDED_SOURCE}:
            raise InputError(f"option sources={','.join(opts.source_names)}: the embedded records hold only {EMBEDDED_SOURCE!r}; "
                             "pass records=DIR (or --data-root) for real Meta-Dataset sources")
        return names, []
    try:
        folders = find_sources(opts.records_path)
    except SpecError as error:
        raise InputError(str(error)) from None
    found = [f.name for f in folders]
    if opts.source_names:
        missing = [s for s in opts.source_names if s not in found]
        if missing:
            raise InputError(f"{opts.records_path}: no source folder(s) {', '.join(missing)}; found {', '.join(found) or 'none'}")
        candidates = list(opts.source_names)
    else:
        candidates = found
    if not candidates:
        raise InputError(f"{opts.records_path}: no source folders (expected <records>/<source>/dataset_spec.json)")
    names, notes = [], []
    for name in candidates:
        try:
            spec = load_spec(opts.records_path / name)
        except SpecError as error:
            raise InputError(str(error)) from None
        reason = _usable(spec, opts)
        if reason is None:
            names.append(name)
        elif opts.source_names and strict:
            raise InputError(f"{opts.records_path / name}: cannot evaluate source {name}: {reason}")
        else:
            notes.append(f"{name} not evaluated: {reason}")
    if not names:
        raise InputError(f"{opts.records_path}: no source can be evaluated on split {opts.split}: " + "; ".join(notes))
    return names, notes


def episodes_file(shared_dir: Path, source: str, opts: MetaDatasetOptions, shots: str, fingerprint: str) -> Path:
    name = f"{source}-{opts.split}-{shots}-seed{opts.episode_seed}-n{opts.episodes}-{fingerprint}.json"
    return Path(shared_dir) / "episodes" / name


def linear_file(shared_dir: Path, source: str, opts: MetaDatasetOptions, fingerprint: str) -> Path:
    name = f"{source}-seed{opts.episode_seed}-max{opts.linear_max_per_class}-{fingerprint}.json"
    return Path(shared_dir) / "linear_splits" / name


class MetaDatasetSuite(Suite):
    name = "meta_dataset"
    protocol_version = "1"
    sample_unit = "episodes (images in mode=linear)"
    seed_unit = "evaluation seeds (same episodes)"
    sample_interval = EPISODE_CONVENTION
    Options = MetaDatasetOptions

    # the records folder enters the cell id as each source's fingerprint, not as a path (a relative
    # path would change the id with the working directory, and two folders of one name would collide)
    path_options = ("records",)

    def tasks(self, options: MetaDatasetOptions, data_root: Path | None) -> list[Task]:
        opts = options
        names, _ = selected_sources(opts)
        tasks = []
        for source in names:
            if opts.mode == "linear":
                tasks.append(Task(f"{source}/linear", {"source": source, "mode": "linear"}))
                continue
            for shots in opts.shots:
                name = source if shots == "variable" else f"{source}/{shots}"
                tasks.append(Task(name, {"source": source, "mode": "episodic", "split": opts.split, "shots": shots}))
        return tasks

    def dataset_fingerprints(self, options: MetaDatasetOptions, data_root: Path | None,
                             tasks: Sequence[Task]) -> dict[str, Any]:
        """Each source's spec (sha256) and the (name, size) of its class files."""
        from bench.fingerprint import meta_dataset_source_fingerprint

        root = records_dir(options)
        return {task.name: meta_dataset_source_fingerprint(root / task.params["source"]) for task in tasks}

    def check(self, options: MetaDatasetOptions, data_root: Path | None, checkpoints: Sequence[Path]) -> None:
        from transfer.meta_dataset.checker import check_source
        from transfer.meta_dataset.episodes import EpisodeError, EpisodeSampler
        from transfer.meta_dataset.records import RecordError, require_tensorflow
        from transfer.meta_dataset.spec import SPLITS, SpecError

        opts = options
        try:
            require_tensorflow()  # before the embedded records are built: one line naming the extra
        except RecordError as error:
            raise InputError(str(error)) from None
        if not opts.embedded and not opts.records_path.is_dir():
            from_flag = data_root is not None and opts.records_path == Path(data_root)  # records= empty: --records/--data-root
            given = f"--records {opts.records_path}" if from_flag else f"records={opts.records_path}"
            raise InputError(f"{given}: records folder does not exist (expected <records>/<source>/dataset_spec.json)")
        root = records_dir(opts)
        names, notes = selected_sources(replace(opts, records_path=root))  # the built embedded records checked as a folder
        for note in notes:
            print(f"meta_dataset: {note}", file=sys.stderr)
        splits = SPLITS if opts.mode == "linear" else (opts.split,)
        for source in names:
            try:
                spec = check_source(root / source, splits=splits, full=False)
                if opts.mode == "episodic":
                    for shots in opts.shots:
                        EpisodeSampler(spec, opts.split, shots, seed=opts.episode_seed)
            except (SpecError, RecordError) as error:
                raise InputError(str(error)) from None
            except EpisodeError as error:
                raise InputError(f"{root / source}: {error}") from None
        self.check_checkpoints(opts, checkpoints)

    def check_checkpoints(self, options: MetaDatasetOptions, checkpoints: Sequence[Path]) -> None:
        from pretrain.checkpoint import CheckpointError, checkpoint_info

        for path in checkpoints:
            try:
                checkpoint_info(path)  # the plan's resolved info passes at once; a bare path is loaded
            except CheckpointError as error:
                raise InputError(str(error)) from None
            check_checkpoint_views(path, options)

    def prepare(self, options: MetaDatasetOptions, data_root: Path | None, shared_dir: Path) -> None:
        from transfer.meta_dataset.episodes import EpisodeSet, draw_episodes, linear_split
        from transfer.meta_dataset.evaluate import spec_fingerprint
        from transfer.meta_dataset.spec import load_spec

        opts = options
        root = records_dir(opts)
        names, _ = selected_sources(replace(opts, records_path=root))
        for source in names:
            spec = load_spec(root / source)
            fingerprint = spec_fingerprint(spec)
            if opts.mode == "linear":
                path = linear_file(shared_dir, source, opts, fingerprint)
                if not path.is_file():
                    split = linear_split(spec, opts.episode_seed, max_per_class=opts.linear_max_per_class)
                    _write_json(path, {"source": source, "seed": opts.episode_seed, **split})
                continue
            for shots in opts.shots:
                path = episodes_file(shared_dir, source, opts, shots, fingerprint)
                if path.is_file():
                    EpisodeSet.load(path)  # drawn earlier for the same spec, seed and count: reuse
                    continue
                draw_episodes(spec, opts.split, shots, opts.episodes, opts.episode_seed).save(path)

    def run(self, cell: Cell, workdir: Path) -> CellOutput:
        import numpy as np

        from transfer.features import FeatureCache, pick_device
        from transfer.meta_dataset import evaluate
        from transfer.meta_dataset.episodes import EpisodeSet
        from transfer.meta_dataset.spec import load_spec

        opts = cell.settings
        root = records_dir(opts)
        source = cell.task.params["source"]
        spec = load_spec(root / source)
        fingerprint = evaluate.spec_fingerprint(spec)
        encoder = load_checkpoint_for(cell.checkpoint, opts)
        size, size_rule = evaluate.resolve_image_size(opts.image_size, int(encoder.metadata["image_size"]), opts.embedded)
        device = pick_device(opts.device or None)
        cache = FeatureCache(evaluate.feature_cache_root(cell.shared_dir))
        info: dict[str, Any] = {
            "source": source,
            "schema": spec.schema,
            "records": "embedded digits" if opts.embedded else str(root),
            "image_size": size,
            "image_size_rule": size_rule,
            "preprocessing": evaluate.PREPROCESSING,
            "device": str(device),
            **encoder.view_info(),
        }
        started = time.perf_counter()
        if cell.task.params["mode"] == "linear":
            path = linear_file(cell.shared_dir, source, opts, fingerprint)
            split = _read_json(path, "linear split")
            train = evaluate.source_features(encoder, spec, [tuple(p) for p in split["train"]], size, cache, device, opts.batch_size)
            test = evaluate.source_features(encoder, spec, [tuple(p) for p in split["test"]], size, cache, device, opts.batch_size)
            correct = evaluate.run_linear(train, test, seed=cell.seed, epochs=opts.linear_epochs, device=device)
            ids = [f"{source}/{c}/{r}" for c, r in test.images]
            info |= {"protocol": "linear: SGD lr 0.01, momentum 0.9, wd 1e-5, batch 256, frozen pooled features, "
                                 f"{opts.linear_epochs} epochs, per-class 80/20 split (seed {opts.episode_seed})",
                     "train_images": len(train.images), "test_images": len(test.images),
                     "classes": len({c for c, _ in test.images}),
                     "feature_seconds": round(train.seconds + test.seconds, 3)}
            metrics = {"acc/linear": Metric.from_samples(correct * 100.0, ids, interval=self.sample_interval)}
        else:
            shots = cell.task.params["shots"]
            path = episodes_file(cell.shared_dir, source, opts, shots, fingerprint)
            episode_set = EpisodeSet.load(path) if path.is_file() else None
            if episode_set is None:
                raise InputError(f"{path}: episode list missing; Suite.prepare draws it before the cells run")
            table = evaluate.source_features(encoder, spec, episode_set.used_images(), size, cache, device, opts.batch_size)
            accuracies, probe_seconds = evaluate.run_episodes(table, episode_set, opts.probes, opts.distance, device, cell.seed)
            ids = episode_set.episode_ids()
            metrics = {f"acc/{probe}": Metric.from_samples(acc * 100.0, ids, interval=self.sample_interval)
                       for probe, acc in accuracies.items()}
            episodes = episode_set.episodes
            info |= {
                "split": opts.split,
                "shots": shots,
                "episodes": len(episodes),
                "episode_seed": opts.episode_seed,
                "mean_way": float(np.mean([e.way for e in episodes])),
                "mean_support": float(np.mean([e.support_size() for e in episodes])),
                "mean_query": float(np.mean([sum(len(q) for q in e.query) for e in episodes])),
                "excluded_classes": episode_set.excluded_classes,
                "probes": {probe: PROBE_DESCRIPTIONS[probe].format(distance=opts.distance) for probe in opts.probes},
                "images_embedded": len(table.images),
                "feature_seconds": round(table.seconds, 3),
                "features_cached": table.cached,
                "probe_seconds": round(probe_seconds, 3),
            }
        info["seconds"] = round(time.perf_counter() - started, 3)
        return CellOutput(metrics=metrics, info=info)


def _write_json(path: Path, data: dict) -> None:
    import json

    from ringbench_common.atomic_files import atomic_write_text

    atomic_write_text(path, json.dumps(data, separators=(",", ":")))  # unique temporary: runners may overlap


def _read_json(path: Path, what: str) -> dict:
    import json

    if not path.is_file():
        raise InputError(f"{path}: {what} missing; Suite.prepare writes it before the cells run")
    return json.loads(path.read_text())
