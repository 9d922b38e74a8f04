"""knn: weighted k-nearest-neighbour accuracy of frozen encoders on the embedded digits.

The bank is the digits train split, the queries the held-out test split (pretrain.data's fixed
stratified 80/20 split); images are preprocessed with the encoder's own image size and
normalisation (from its metadata), and each encoder sees the input view it was trained on (CMC: L and
ab features concatenated by default, `cmc_features=l|ab|concat`). One task per checkpoint reports one metric per k
("acc/k20", "acc/k200"), so features are extracted once; per-image correctness is stored so two
encoders can be compared on the same images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.suite import (
    VIEW_OPTIONS,
    Cell,
    CellOutput,
    InputError,
    Metric,
    Suite,
    Task,
    check_checkpoint_views,
    check_device_option,
    check_int_option,
    load_checkpoint_for,
    view_options,
)


@dataclass(frozen=True)
class KnnOptions:
    ks: tuple[int, ...]  # one metric per k
    temperature: float
    batch_size: int
    device: str  # "": cuda when available
    cmc_features: str = "concat"
    force_rgb_input: bool = False

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> KnnOptions:
        merged = KnnSuite.complete_options(options)
        ks = merged["ks"]
        if (not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks)):
            raise InputError(f"knn ks={list(ks)}: expected a comma list of positive integers")
        temperature = merged["temperature"]
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not temperature > 0:
            raise InputError(f"knn temperature={temperature}: expected a positive number")
        return cls(ks=tuple(ks), temperature=float(temperature),
                   batch_size=check_int_option("knn", "batch_size", merged["batch_size"], 1),
                   device=check_device_option("knn", merged["device"]), **view_options(merged))


class KnnSuite(Suite):
    name = "knn"
    protocol_version = "1"
    sample_unit = "test images (one deterministic evaluation)"
    default_seeds = (0,)  # kNN is deterministic; more seeds would only repeat the number
    reads_data_root = False  # the embedded digits split only
    options = {
        "ks": [20, 200],  # one metric per k
        "temperature": 0.07,  # exp(similarity / temperature) vote weights (Wu et al. 2018)
        "batch_size": 256,
        "device": "",  # "" picks cuda when available
        **VIEW_OPTIONS,
    }

    def parse_options(self, options: Mapping[str, Any] | KnnOptions, data_root: Path | None = None) -> KnnOptions:
        return options if isinstance(options, KnnOptions) else KnnOptions.parse(options)

    def check(self, options: Mapping[str, Any] | KnnOptions, data_root: Path | None,
              checkpoints: Sequence[Path]) -> None:
        self.check_checkpoints(self.parse_options(options), checkpoints)

    def check_checkpoints(self, options: Mapping[str, Any] | KnnOptions, checkpoints: Sequence[Path]) -> None:
        opts = self.parse_options(options)
        for path in checkpoints:
            check_checkpoint_views(path, opts)

    def dataset_fingerprints(self, options: Mapping[str, Any], data_root: Path | None,
                             tasks: Sequence[Task]) -> dict[str, Any]:
        from bench.fingerprint import standard_dataset_fingerprint

        return {task.name: standard_dataset_fingerprint("digits", None) for task in tasks}

    def tasks(self, options: Mapping[str, Any] | KnnOptions, data_root: Path | None) -> list[Task]:
        opts = self.parse_options(options)
        params = {"dataset": "digits", "split": "test", "ks": list(opts.ks), "temperature": opts.temperature}
        return [Task(name="digits", params=params, profile="eval")]

    def run(self, cell: Cell, workdir: Path) -> CellOutput:
        import numpy as np
        import torch

        from pretrain.knn import knn_predict
        from transfer.features import FeatureCache, pick_device

        opts = self.settings_for(cell)
        encoder = load_checkpoint_for(cell.checkpoint, opts)
        meta = encoder.metadata
        device = pick_device(opts.device or None)
        cache = FeatureCache(Path(cell.shared_dir) / "features")
        torch.manual_seed(cell.seed)

        def features(split: str) -> tuple[np.ndarray, np.ndarray]:
            from pretrain.data import open_dataset

            images = open_dataset("digits", split=split, image_size=meta["image_size"])
            parts = {"checkpoint": encoder.sha256, "dataset": "digits", "split": split,
                     "image_size": meta["image_size"], "mean": meta["mean"], "std": meta["std"],
                     "views": encoder.view_info()}
            feats = cache.get_or_compute(parts, lambda: self._extract(encoder.model, images, meta, device,
                                                                       opts.batch_size))
            return feats, images.labels

        bank, bank_labels = features("train")
        queries, query_labels = features(cell.task.params["split"])
        num_classes = int(max(bank_labels.max(), query_labels.max()) + 1)
        ids = [f"digits/{cell.task.params['split']}/{i}" for i in range(len(query_labels))]
        metrics = {}
        for k in cell.task.params["ks"]:
            predicted = knn_predict(bank, bank_labels, queries, k=int(k),
                                    temperature=float(cell.task.params["temperature"]), num_classes=num_classes)
            correct = (predicted.numpy() == query_labels).astype(np.float64) * 100.0
            metrics[f"acc/k{int(k)}"] = Metric.from_samples(correct, ids)
        return CellOutput(
            metrics=metrics,
            info={"engine": "torch-knn", "device": str(device), "bank_size": int(len(bank_labels)),
                  "image_size": meta["image_size"], **encoder.view_info()},
        )

    @staticmethod
    def _extract(model, images, meta, device, batch_size: int):
        import torch

        from pretrain.data import eval_transform_uint8
        from transfer.features import extract_features

        transform = eval_transform_uint8(meta["image_size"])  # uint8 to the device, normalised there

        def batches():
            for start in range(0, len(images), batch_size):
                stop = min(start + batch_size, len(images))
                yield torch.stack([transform(images.image(i)) for i in range(start, stop)])

        total = (len(images) + batch_size - 1) // batch_size
        return extract_features(model, batches(), device, total=total, desc=f"knn {images.split}",
                                mean=meta["mean"], std=meta["std"])
