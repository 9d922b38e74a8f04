"""The linear suite: linear evaluation (the Ring paper's headline protocol) and kNN on frozen features.

Tasks are datasets (CIFAR-10, CIFAR-100, STL-10, ImageNet from --data-root in their standard
layouts; the embedded digits with no --data-root), each under the chosen protocol:
  paper  per-epoch training with augmentation through the frozen encoder (the released code's
         SGD recipe, 100 epochs by default);
  fast   features extracted once without augmentation and cached, linear layer by L-BFGS.
Per-image correctness is stored with the test image indices as sample ids, so the leaderboard
pairs Ring and NCE checkpoints image by image.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.options import ViewOptions, at_least, comma_text, option
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


@dataclass(frozen=True)
class LinearDataset:
    name: str
    train_split: str
    test_split: str
    num_classes: int
    layout: str  # what --data-root must contain, for error messages and the README

    def expected_classes(self, imagenet_classes: int) -> int:
        """The class count of this dataset (ImageNet's is an option: a class subset may be used)."""
        if self.name == "imagenet":
            return int(imagenet_classes)
        return self.num_classes


DATASETS: dict[str, LinearDataset] = {
    "cifar10": LinearDataset("cifar10", "train", "test", 10, "DATA_ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}"),
    "cifar100": LinearDataset("cifar100", "train", "test", 100, "DATA_ROOT/cifar-100-python/{train, test, meta}"),
    "stl10": LinearDataset("stl10", "train", "test", 10,
                           "DATA_ROOT/stl10_binary/{train_X.bin, train_y.bin, test_X.bin, test_y.bin, class_names.txt}"),
    "imagenet": LinearDataset("imagenet", "train", "val", 1000, "DATA_ROOT/imagenet/{train,val}/<class>/<image> (ImageFolder)"),
    "digits": LinearDataset("digits", "train", "test", 10, "embedded (scikit-learn's bundled digits), no --data-root"),
}
REAL_DATASETS = ("cifar10", "cifar100", "stl10", "imagenet")
METRIC_LINEAR = "top1/linear"
METRIC_KNN = "top1/knn"


def _datasets(names: tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(names))
    if names == ("auto",):
        return names
    bad = [name for name in names if name not in DATASETS]
    if bad or not names:
        raise ValueError(f"unknown {', '.join(bad) or '(empty)'}; valid: auto or a comma list of {', '.join(DATASETS)}")
    return names


def _protocol(name: str) -> str:
    from transfer.linear.protocol import PROTOCOLS

    if name not in PROTOCOLS:
        raise ValueError(f"expected one of {', '.join(PROTOCOLS)}")
    return name


@dataclass(frozen=True)
class LinearOptions(ViewOptions):
    datasets: tuple[str, ...] = option(("auto",), "auto: digits without --data-root, else every standard dataset "
                                       "found there; or a comma list", check=_datasets, identity=comma_text)
    protocol: str = option("paper", "paper | fast", check=_protocol)
    epochs: int = option(100, "paper protocol epochs", check=at_least(1))
    knn: bool = option(True, "kNN (k 200, t 0.07, cosine) from the cached features")
    knn_k: int = option(200, "kNN neighbours", check=at_least(1))
    fast_iters: int = option(100, "L-BFGS iterations of the fast protocol", check=at_least(1))
    imagenet_classes: int = option(1000, "class folders expected under imagenet/train (e.g. 100 for a subset)",
                                   check=at_least(2))

    @property
    def chosen_datasets(self) -> tuple[str, ...] | None:
        """The datasets asked for; None: auto."""
        return None if self.datasets == ("auto",) else self.datasets


_REPORTED_ABSENT: set[tuple[Path, tuple[str, ...]]] = set()


def found_datasets(data_root: Path) -> list[str]:
    """The standard datasets whose folder (pretrain.data's layout) exists under `data_root`."""
    from pretrain.data import FOLDER

    return [name for name in REAL_DATASETS if (data_root / FOLDER[name]).is_dir() or data_root.name == FOLDER[name]]


def selected_datasets(opts: LinearOptions, data_root: Path | None) -> list[str]:
    if opts.chosen_datasets is not None:
        real = [name for name in opts.chosen_datasets if name != "digits"]
        if real and data_root is None:
            raise InputError(f"datasets {', '.join(real)} need --data-root (expected layout: "
                             + "; ".join(DATASETS[name].layout for name in real) + ")")
        return list(opts.chosen_datasets)
    if data_root is None:
        return ["digits"]
    if not data_root.is_dir():
        raise InputError(f"--data-root {data_root}: no such folder")
    found = found_datasets(data_root)
    if not found:
        raise InputError(f"--data-root {data_root} holds none of the linear datasets; expected one or more of: "
                         + "; ".join(DATASETS[name].layout for name in REAL_DATASETS))
    absent = [name for name in REAL_DATASETS if name not in found]
    if absent and (data_root, tuple(absent)) not in _REPORTED_ABSENT:
        _REPORTED_ABSENT.add((data_root, tuple(absent)))  # check() and the plan both list the tasks
        print(f"linear: datasets=auto evaluates {', '.join(found)}; not found under {data_root}: {', '.join(absent)}",
              file=sys.stderr)
    return found


def open_split(dataset: str, data_root: Path | None, split: str, image_size: int | None = None):
    from transfer.linear.protocol import open_linear_split

    return open_linear_split(dataset, data_root, split, image_size)


class LinearSuite(Suite):
    name = "linear"
    protocol_version = "1"
    sample_unit = "test images (one training of the classifier)"
    seed_unit = "classifier training seeds"
    Options = LinearOptions
    default_seeds = (0,)

    def tasks(self, options: LinearOptions, data_root: Path | None) -> list[Task]:
        opts = options
        tasks = []
        for name in selected_datasets(opts, data_root):
            spec = DATASETS[name]
            protocol_name = opts.protocol if opts.protocol == "fast" or opts.epochs == 100 else f"paper-{opts.epochs}ep"
            params: dict[str, Any] = {
                "dataset": name,
                "protocol": opts.protocol,
                "train_split": spec.train_split,
                "test_split": spec.test_split,
                "num_classes": spec.expected_classes(opts.imagenet_classes),
                "knn": opts.knn,
            }
            if opts.protocol == "paper":
                params["epochs"] = opts.epochs
            tasks.append(Task(name=f"{name}/{protocol_name}", params=params, profile="linear"))
        return tasks

    def dataset_fingerprints(self, options: LinearOptions, data_root: Path | None,
                             tasks: Sequence[Task]) -> dict[str, Any]:
        from bench.fingerprint import standard_dataset_fingerprint

        return {task.name: standard_dataset_fingerprint(task.params["dataset"], data_root) for task in tasks}

    def check(self, options: LinearOptions, data_root: Path | None, checkpoints: Sequence[Path]) -> None:
        from pretrain.data import DatasetError

        opts = options
        for task in self.tasks(opts, data_root):
            name = task.params["dataset"]
            spec = DATASETS[name]
            expected = int(task.params["num_classes"])
            splits = {}
            for split in (spec.train_split, spec.test_split):
                try:
                    splits[split] = open_split(name, data_root, split)
                except DatasetError as error:
                    raise InputError(f"linear/{name}: {error} (expected layout: {spec.layout})") from None
                if len(splits[split]) == 0:
                    raise InputError(f"linear/{name}: the {split} split is empty (expected layout: {spec.layout})")
            for split, images in splits.items():
                if int(images.num_classes) != expected:
                    hint = " (set imagenet_classes=N for a class subset)" if name == "imagenet" else ""
                    raise InputError(f"linear/{name}: the {split} split has {images.num_classes} classes, "
                                     f"expected {expected}{hint}")
            if opts.knn and opts.knn_k > len(splits[spec.train_split]):
                print(f"linear/{name}: knn_k={opts.knn_k} exceeds the {len(splits[spec.train_split])} training "
                      "images; kNN uses all of them", file=sys.stderr)
        self.check_checkpoints(opts, checkpoints)

    def check_checkpoints(self, options: LinearOptions, checkpoints: Sequence[Path]) -> None:
        from pretrain.checkpoint import CheckpointError, checkpoint_info

        for path in checkpoints:
            try:
                checkpoint_info(path)  # the plan's resolved info passes at once; a bare path is loaded
            except CheckpointError as error:
                raise InputError(f"linear: checkpoint refused: {error}") from None
            try:
                check_checkpoint_views(path, options)
            except InputError as error:
                raise InputError(f"linear: checkpoint refused: {error}") from None

    def run(self, cell: Cell, workdir: Path) -> CellOutput:

        from transfer.features import FeatureCache
        from transfer.linear.evaluate import evaluate_encoder
        from transfer.linear.protocol import FastRecipe, KnnRecipe, PaperRecipe, data_source, default_workers
        from transfer.linear.sharded import shard_context, sharded_cached_features

        if cell.checkpoint is None:
            raise InputError("the linear suite evaluates a checkpoint; the cell has none")
        opts = cell.settings
        params = cell.task.params
        name = params["dataset"]
        encoder = load_checkpoint_for(cell.checkpoint, opts)
        image_size = int(encoder.metadata["image_size"])
        train = open_split(name, cell.data_root, params["train_split"], image_size)
        test = open_split(name, cell.data_root, params["test_split"], image_size)
        source = data_source(name, cell.data_root)
        num_classes = int(params["num_classes"])
        for split, images in ((params["train_split"], train), (params["test_split"], test)):
            if int(images.num_classes) != num_classes:
                raise InputError(f"linear/{name}: the {split} split has {images.num_classes} classes, expected {num_classes}")
        workers = default_workers()
        cache = FeatureCache(Path(cell.shared_dir) / "features")
        context = shard_context()
        if context.world_size > 1:  # one task per GPU: every task extracts a slice, rank 0 goes on
            for split, images in ((params["train_split"], train), (params["test_split"], test)):
                sharded_cached_features(encoder, images, name, split, cache, context, workers=workers, source=source)
            if not context.is_leader:
                return CellOutput(metrics={}, info={"rank": context.rank, "role": "feature shard"})
        evaluation = evaluate_encoder(
            encoder, train, test,
            dataset_name=name,
            num_classes=num_classes,
            cache=cache,
            protocol=params["protocol"],
            seed=cell.seed,
            paper=PaperRecipe(epochs=int(params.get("epochs", PaperRecipe.epochs))),
            fast=FastRecipe(max_iter=opts.fast_iters),
            knn=KnnRecipe(k=opts.knn_k) if params["knn"] else None,
            device=None,
            workers=workers,
            state_path=Path(workdir) / "linear_state.pt",
            train_split=params["train_split"],
            test_split=params["test_split"],
            source=source,
        )
        ids = [str(index) for index in range(len(evaluation.test_labels))]
        metrics = {METRIC_LINEAR: Metric.from_samples(evaluation.linear_correct * 100.0, ids)}
        if evaluation.knn_correct is not None:
            metrics[METRIC_KNN] = Metric.from_samples(evaluation.knn_correct * 100.0, ids)
        info = dict(evaluation.info)
        info |= {"engine": f"linear-{params['protocol']}", "dataset": name, "world_size": context.world_size,
                 "image_size": encoder.metadata["image_size"], "checkpoint_method": encoder.metadata["method"],
                 "checkpoint_sampler": encoder.metadata["sampler"], "workers": workers, **encoder.view_info(),
                 "feature_cache": {"hits": cache.hits, "misses": cache.misses}}
        return CellOutput(metrics=metrics, info=info)
