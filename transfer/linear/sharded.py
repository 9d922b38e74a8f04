"""Feature extraction split over the tasks of one job (one task per GPU), shards merged by rank 0.

Every task of a multi-task submitit job (or a torchrun-style launch) extracts a contiguous slice
of the dataset on its own GPU and writes it as a shard file; rank 0 waits for all shards,
concatenates them in order and stores the result in the same FeatureCache entry a single-process
extraction would write, so everything downstream reads it as a cache hit.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from transfer.features import FeatureCache, cache_key, save_array_atomic
from transfer.linear.protocol import (
    compute_features,
    data_source,
    default_workers,
    feature_cache_parts,
    open_linear_split,
)


class ShardError(RuntimeError):
    """A task failed or did not deliver its shard in time."""


@dataclass(frozen=True)
class ShardContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_leader(self) -> bool:
        return self.rank == 0


def shard_context() -> ShardContext:
    """This task's rank: torch.distributed's env variables when set (bench jobs and torchrun export
    them), else submitit's job environment, else a single task."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return ShardContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                            int(os.environ.get("LOCAL_RANK", 0)))
    try:
        import submitit

        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job
        return ShardContext()
    return ShardContext(env.global_rank, env.num_tasks, env.local_rank)


def shard_range(n: int, rank: int, world_size: int) -> range:
    """The contiguous slice of [0, n) that `rank` extracts; slices are in rank order and cover [0, n)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def task_device(context: ShardContext) -> torch.device:
    """Each local task on its own GPU; CPU when there is none."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    return torch.device(f"cuda:{context.local_rank % count}" if count > 1 else "cuda")


def sharded_cached_features(
    encoder: Any,
    dataset: Dataset,
    dataset_name: str,
    split: str,
    cache: FeatureCache,
    context: ShardContext | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 256,
    workers: int = 0,
    timeout_s: float = 24 * 3600,
    poll_s: float = 0.5,
    source: str | None = None,
) -> np.ndarray | None:
    """Extract this task's shard; rank 0 merges and returns the full (N, D) array, others return None."""
    context = context or shard_context()
    parts = feature_cache_parts(encoder, dataset, dataset_name, split, source)
    key = cache_key(**parts)
    if cache.path(key).is_file():
        return cache.get_or_compute(parts, lambda: np.zeros(0)) if context.is_leader else None
    shard_dir = cache.root / f"{key}.shards-of-{context.world_size}"
    shard_path = shard_dir / f"{context.rank:04d}.npy"
    error_path = shard_dir / f"{context.rank:04d}.error"
    if not shard_path.is_file():
        indices = shard_range(len(dataset), context.rank, context.world_size)
        try:
            features = compute_features(encoder, Subset(dataset, indices), device or task_device(context),
                                        batch_size, workers, desc=f"{dataset_name}/{split} shard {context.rank}")
            save_array_atomic(shard_path, features)
        except BaseException as error:
            shard_dir.mkdir(parents=True, exist_ok=True)
            error_path.write_text(f"{type(error).__name__}: {error}")
            raise
    if not context.is_leader:
        return None
    paths = [shard_dir / f"{rank:04d}.npy" for rank in range(context.world_size)]
    deadline = time.monotonic() + timeout_s
    while not all(path.is_file() for path in paths):
        failed = sorted(shard_dir.glob("*.error"))
        if failed:
            raise ShardError(f"feature shard task failed: {failed[0]}: {failed[0].read_text().strip()}")
        if time.monotonic() > deadline:
            missing = [str(path) for path in paths if not path.is_file()]
            raise ShardError(f"feature shards missing after {timeout_s:.0f} s: {', '.join(missing)}")
        time.sleep(poll_s)
    merged = np.concatenate([np.load(path, allow_pickle=False) for path in paths])
    if merged.shape[0] != len(dataset):
        raise ShardError(f"merged shards hold {merged.shape[0]} rows for {len(dataset)} images in {shard_dir}")
    array = cache.get_or_compute(parts, lambda: merged)
    for path in shard_dir.iterdir():
        path.unlink(missing_ok=True)
    shard_dir.rmdir()
    return array


def extract_split_features(
    checkpoint: str,
    dataset: str,
    split: str,
    cache_dir: str,
    data_root: str | None = None,
    batch_size: int = 256,
    cmc_features: str = "concat",
    force_rgb_input: bool = False,
) -> tuple[int, int] | None:
    """Job entry point (one task per GPU): fill the linear suite's feature cache for one split.

    Submit it with submitit and `tasks_per_node` = GPUs; each task extracts its slice, rank 0
    merges and returns the (N, D) shape, the others return None. `cmc_features` and `force_rgb_input`
    must match the suite's options for the cells to find the features. Cells pointed at the same cache
    folder (the suite's `shared/features`) then read the features as cache hits.
    """
    from pretrain.checkpoint import load_encoder

    encoder = load_encoder(checkpoint, cmc_features=cmc_features, force_rgb_input=force_rgb_input)
    images = open_linear_split(dataset, data_root, split, int(encoder.metadata["image_size"]))
    features = sharded_cached_features(encoder, images, dataset, split, FeatureCache(cache_dir),
                                       batch_size=batch_size, workers=default_workers(),
                                       source=data_source(dataset, data_root))
    return None if features is None else tuple(features.shape)
