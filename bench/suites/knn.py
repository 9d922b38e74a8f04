"""knn: weighted k-nearest-neighbour accuracy of frozen encoders on the embedded digits.

The bank is the digits train split, the queries the held-out test split (pretrain.data's fixed
stratified 80/20 split); images are preprocessed with the encoder's own image size and
normalisation (from its metadata), and each encoder sees the input view it was trained on (CMC: L and
ab features concatenated by default, `cmc_features=l|ab|concat`). One task per checkpoint reports one metric per k
("acc/k20", "acc/k200"), so features are extracted once; per-image correctness is stored so two
encoders can be compared on the same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.options import ViewOptions, at_least, device_spelling, each_at_least, option, positive
from bench.suite import Cell, CellOutput, Metric, Suite, Task, check_checkpoint_views, load_checkpoint_for


@dataclass(frozen=True)
class KnnOptions(ViewOptions):
    ks: tuple[int, ...] = option((20, 200), "one metric per k", check=each_at_least(1))
    temperature: float = option(0.07, "exp(similarity / temperature) vote weights (Wu et al. 2018)", check=positive)
    batch_size: int = option(256, "feature extraction batch", check=at_least(1))
    device: str = option("", "empty: cuda when available", check=device_spelling)


class KnnSuite(Suite):
    name = "knn"
    protocol_version = "1"
    sample_unit = "test images (one deterministic evaluation)"
    default_seeds = (0,)  # kNN is deterministic; more seeds would only repeat the number
    reads_data_root = False  # the embedded digits split only
    Options = KnnOptions

    def check(self, options: KnnOptions, data_root: Path | None, checkpoints: Sequence[Path]) -> None:
        self.check_checkpoints(options, checkpoints)

    def check_checkpoints(self, options: KnnOptions, checkpoints: Sequence[Path]) -> None:
        for path in checkpoints:
            check_checkpoint_views(path, options)

    def dataset_fingerprints(self, options: KnnOptions, data_root: Path | None,
                             tasks: Sequence[Task]) -> dict[str, Any]:
        from bench.fingerprint import standard_dataset_fingerprint

        return {task.name: standard_dataset_fingerprint("digits", None) for task in tasks}

    def tasks(self, options: KnnOptions, data_root: Path | None) -> list[Task]:
        params = {"dataset": "digits", "split": "test", "ks": list(options.ks), "temperature": options.temperature}
        return [Task(name="digits", params=params, profile="eval")]

    def run(self, cell: Cell, workdir: Path) -> CellOutput:
        import numpy as np
        import torch

        from pretrain.knn import knn_predict
        from transfer.features import FeatureCache, pick_device

        opts = cell.settings
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
