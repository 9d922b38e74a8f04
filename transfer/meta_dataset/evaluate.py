"""Frozen-encoder evaluation on a Meta-Dataset source: cached features, episodic probes, linear mode.

Preprocessing (stated in every result): decode to RGB, squash to S x S with bilinear resizing
(align_corners, as Meta-Dataset's decoder), scale to [0, 1], then the checkpoint's own mean/std;
the encoder's `.model` then applies the input view(s) it was trained on (pretrain.views).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transfer.features import FeatureCache, extract_features
from transfer.meta_dataset import records
from transfer.meta_dataset.episodes import EpisodeSet
from transfer.meta_dataset.probes import EpisodeRows, evaluate_probes, train_linear
from transfer.meta_dataset.spec import SPEC_FILE, SourceSpec

STANDARD_SIZES = (84, 126, 224)
PREPROCESSING = "rgb, squash SxS bilinear align_corners, [0,1], checkpoint mean/std"
PREPROCESSING_VERSION = 1


def resolve_image_size(option: str | int, checkpoint_size: int, embedded: bool) -> tuple[int, str]:
    """The evaluation image size and the rule that chose it."""
    text = str(option).strip().lower()
    if text not in ("", "auto"):
        size = int(text)
        return size, f"image_size={size} (set by the user)"
    if checkpoint_size in STANDARD_SIZES:
        return checkpoint_size, f"{checkpoint_size}: the checkpoint's pretraining size, a standard Meta-Dataset size"
    if embedded:
        return checkpoint_size, (
            f"{checkpoint_size}: the checkpoint's pretraining size (the embedded digits are 8 px originals, "
            "so a standard 84/126/224 size would only upsample further)"
        )
    return 84, f"84: Meta-Dataset's default, since the checkpoint's size {checkpoint_size} is not 84/126/224"


def spec_fingerprint(spec: SourceSpec) -> str:
    return hashlib.sha256((spec.path / SPEC_FILE).read_bytes()).hexdigest()[:16]


def image_batches(
    spec: SourceSpec, images: Sequence[tuple[int, int]], size: int, mean: Sequence[float], std: Sequence[float],
    batch_size: int,
) -> Iterator[torch.Tensor]:
    """Normalised (B, 3, S, S) batches of the (class id, record) pairs, in order; checks labels."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    pending: list[torch.Tensor] = []
    pending_rows = 0
    position = 0
    while position < len(images):
        class_id = images[position][0]
        end = position
        while end < len(images) and images[end][0] == class_id:
            end += 1
        indices = [record for _, record in images[position:end]]
        path = spec.class_file(class_id)
        found = records.read_records(path, indices)
        for index, (_, label) in zip(indices, found):
            if label != class_id:
                raise records.RecordError(f"{path}: record {index} has label {label}, expected the class id {class_id}")
        pixels = records.decode_images([blob for blob, _ in found], size, where=[f"{path} record {i}" for i in indices])
        tensor = (torch.from_numpy(pixels).permute(0, 3, 1, 2) - mean_t) / std_t
        pending.append(tensor)
        pending_rows += len(tensor)
        while pending_rows >= batch_size:
            merged = torch.cat(pending)
            yield merged[:batch_size]
            pending, pending_rows = [merged[batch_size:]], len(merged) - batch_size
        position = end
    if pending_rows:
        yield torch.cat(pending)


@dataclass
class FeatureTable:
    features: np.ndarray  # (M, D) aligned with `images`
    images: list[tuple[int, int]]
    seconds: float
    cached: bool

    def rows(self) -> dict[tuple[int, int], int]:
        return {pair: row for row, pair in enumerate(self.images)}


def source_features(
    encoder, spec: SourceSpec, images: Sequence[tuple[int, int]], size: int, cache: FeatureCache,
    device: str | torch.device | None = None, batch_size: int = 128,
) -> FeatureTable:
    """Features of the given images, computed once per (checkpoint, source, size, image set) and cached."""
    images = sorted(set((int(c), int(r)) for c, r in images))
    digest = hashlib.sha256(np.asarray(images, dtype=np.int64).tobytes()).hexdigest()[:16]
    parts = {
        "kind": "meta_dataset",
        "checkpoint_sha256": encoder.sha256,
        "source": spec.name,
        "spec": spec_fingerprint(spec),
        "image_size": size,
        "preprocessing": PREPROCESSING_VERSION,
        "images": digest,
        "count": len(images),
        "views": encoder.view_info(),
    }
    metadata = encoder.metadata
    start = time.perf_counter()
    misses = cache.misses
    array = cache.get_or_compute(
        parts,
        lambda: extract_features(
            encoder.model,
            image_batches(spec, images, size, metadata["mean"], metadata["std"], batch_size),
            device=device,
            total=(len(images) + batch_size - 1) // batch_size,
            desc=f"{spec.name} features",
        ),
    )
    if array.shape[0] != len(images):
        raise RuntimeError(f"feature cache {cache.path('?')}: {array.shape[0]} rows for {len(images)} images")
    return FeatureTable(array, images, time.perf_counter() - start, cached=cache.misses == misses)


def episode_rows(episode_set: EpisodeSet, table: FeatureTable) -> list[EpisodeRows]:
    index = table.rows()
    out = []
    for episode in episode_set.episodes:
        s_rows, s_labels, q_rows, q_labels = [], [], [], []
        for label, (class_id, support, query) in enumerate(zip(episode.classes, episode.support, episode.query)):
            s_rows += [index[(class_id, r)] for r in support]
            s_labels += [label] * len(support)
            q_rows += [index[(class_id, r)] for r in query]
            q_labels += [label] * len(query)
        out.append(EpisodeRows(np.array(s_rows), np.array(s_labels), np.array(q_rows), np.array(q_labels)))
    return out


def run_episodes(
    table: FeatureTable, episode_set: EpisodeSet, probes: Sequence[str], distance: str = "cosine",
    device: str | torch.device = "cpu", seed: int = 0,
) -> tuple[dict[str, np.ndarray], float]:
    """Per-episode accuracies per probe, and the seconds the probes took."""
    rows = episode_rows(episode_set, table)
    start = time.perf_counter()
    accuracies = evaluate_probes(table.features, rows, probes, distance=distance, device=device, seed=seed)
    return accuracies, time.perf_counter() - start


def run_linear(
    train: FeatureTable, test: FeatureTable, seed: int, epochs: int = 100, device: str | torch.device = "cpu",
) -> np.ndarray:
    """The Ring paper's protocol: per-test-image correctness (0/1) of a linear head trained on `train`."""
    classes = sorted({c for c, _ in train.images} | {c for c, _ in test.images})
    label_of = {c: i for i, c in enumerate(classes)}
    train_y = np.array([label_of[c] for c, _ in train.images])
    test_y = np.array([label_of[c] for c, _ in test.images])
    head = train_linear(train.features, train_y, len(classes), seed=seed, epochs=epochs, device=device)
    with torch.no_grad():
        logits = head(torch.as_tensor(test.features, device=head.weight.device))
    return (logits.argmax(1).cpu().numpy() == test_y).astype(np.float64)


def feature_cache_root(shared_dir: Path) -> Path:
    """$RINGBENCH_CACHE/meta_dataset/features when set (shared across runs), else the suite's shared_dir."""
    import os

    if os.environ.get("RINGBENCH_CACHE"):
        return Path(os.environ["RINGBENCH_CACHE"]) / "meta_dataset" / "features"
    return shared_dir / "features"
