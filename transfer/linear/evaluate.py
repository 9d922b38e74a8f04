"""One linear evaluation of one encoder on one dataset: features, linear head, kNN, per-image correctness."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from transfer.features import FeatureCache, pick_device
from transfer.linear.protocol import (
    PROTOCOLS,
    FastRecipe,
    KnnRecipe,
    PaperRecipe,
    cached_features,
    check_labels,
    fit_linear_lbfgs,
    knn_predictions,
    labels_of,
    train_linear_paper,
)

PAPER_RECIPE, FAST_RECIPE, KNN_RECIPE = PaperRecipe(), FastRecipe(), KnnRecipe()


@dataclass
class LinearEvaluation:
    protocol: str
    test_labels: np.ndarray
    linear_predictions: np.ndarray
    knn_predictions: np.ndarray | None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def linear_correct(self) -> np.ndarray:
        return (self.linear_predictions == self.test_labels).astype(np.float64)

    @property
    def knn_correct(self) -> np.ndarray | None:
        if self.knn_predictions is None:
            return None
        return (self.knn_predictions == self.test_labels).astype(np.float64)

    @property
    def linear_top1(self) -> float:
        return float(self.linear_correct.mean() * 100) if self.test_labels.size else float("nan")

    @property
    def knn_top1(self) -> float | None:
        correct = self.knn_correct
        return None if correct is None else float(correct.mean() * 100)


def evaluate_encoder(
    encoder: Any,
    train_images: Dataset,
    test_images: Dataset,
    *,
    dataset_name: str,
    num_classes: int,
    cache: FeatureCache,
    protocol: str = "paper",
    seed: int = 0,
    paper: PaperRecipe = PAPER_RECIPE,
    fast: FastRecipe = FAST_RECIPE,
    knn: KnnRecipe | None = KNN_RECIPE,
    device: torch.device | str | None = None,
    workers: int = 0,
    state_path: Path | None = None,
    train_split: str = "train",
    test_split: str = "test",
    source: str | None = None,
) -> LinearEvaluation:
    """Evaluate `encoder` (a pretrain.checkpoint.LoadedEncoder) with `protocol` ("paper" or "fast").

    The test features (evaluation transform) come from `cache` in both protocols; the fast
    protocol and kNN also read the training features from it.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    device = pick_device(str(device) if device is not None else None)
    train_labels = labels_of(train_images)
    test_labels = labels_of(test_images)
    check_labels(train_labels, num_classes, f"{dataset_name}/{train_split} labels")
    check_labels(test_labels, num_classes, f"{dataset_name}/{test_split} labels")
    info: dict[str, Any] = {"protocol": protocol, "device": str(device), "n_train": len(train_images),
                            "n_test": len(test_images), "num_classes": num_classes, "feature_dim": encoder.feature_dim}
    timings: dict[str, float] = {}

    def features(images: Dataset, split: str) -> np.ndarray:
        misses_before = cache.misses
        start = time.perf_counter()
        array = cached_features(encoder, images, dataset_name, split, cache, device, workers=workers, source=source)
        timings[f"features_{split}_s"] = time.perf_counter() - start
        info[f"features_{split}_cached"] = cache.misses == misses_before
        return array

    need_train_features = protocol == "fast" or knn is not None
    train_features = features(train_images, train_split) if need_train_features else None
    test_features = features(test_images, test_split)

    start = time.perf_counter()
    if protocol == "fast":
        probe, fit_info = fit_linear_lbfgs(train_features, train_labels, num_classes, fast, device)
        info["fast"] = asdict(fast) | fit_info
    else:
        probe, log = train_linear_paper(encoder, train_images, num_classes, paper, seed, device, workers, state_path)
        info["paper"] = asdict(paper) | {
            "epochs_run": log.epochs_run,
            "resumed_from_epoch": log.resumed_from_epoch,
            "final_train_loss": log.epoch_losses[-1] if log.epoch_losses else None,
        }
        timings |= {"paper_data_s": log.seconds_data, "paper_forward_s": log.seconds_forward,
                    "paper_linear_s": log.seconds_linear}
    linear_predictions = probe.predict(test_features)
    timings["linear_s"] = time.perf_counter() - start

    knn_pred = None
    if knn is not None:
        start = time.perf_counter()
        knn_pred = knn_predictions(train_features, train_labels, test_features, num_classes, knn)
        timings["knn_s"] = time.perf_counter() - start
        info["knn"] = asdict(knn)
    info["timings"] = timings
    return LinearEvaluation(protocol, test_labels, linear_predictions, knn_pred, info)
