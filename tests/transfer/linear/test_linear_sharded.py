"""Feature extraction split over the tasks of one submitit job, merged by rank 0."""

from __future__ import annotations

import numpy as np
import pytest

from pretrain.checkpoint import load_encoder
from transfer.features import FeatureCache
from transfer.linear.protocol import cached_features, compute_features, open_linear_split
from transfer.linear.sharded import (
    ShardContext,
    ShardError,
    extract_split_features,
    shard_range,
    sharded_cached_features,
)


@pytest.mark.parametrize(("n", "world"), [(10, 3), (2, 4), (360, 2), (0, 2)])
def test_shards_are_contiguous_in_rank_order_and_cover_everything(n, world):
    ranges = [shard_range(n, rank, world) for rank in range(world)]
    assert [i for r in ranges for i in r] == list(range(n))
    assert max(len(r) for r in ranges) - min(len(r) for r in ranges) <= 1


@pytest.mark.slow
def test_two_task_local_job_gives_the_single_process_features(tmp_path, encoder_file, monkeypatch):
    import submitit

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("RINGBENCH_WORKERS", "0")
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(tasks_per_node=2, timeout_min=10)
    job = executor.submit(extract_split_features, str(encoder_file), "digits", "test", str(tmp_path / "cache"))
    assert job.results() == [(360, 512), None]  # rank 0 merged, rank 1 delivered its shard
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    assert not list((tmp_path / "cache").glob("*.shards-of-*"))  # shards removed after the merge
    encoder = load_encoder(encoder_file)
    images = open_linear_split("digits", None, "test", encoder.metadata["image_size"])
    cache = FeatureCache(tmp_path / "cache")
    merged = cached_features(encoder, images, "digits", "test", cache, "cpu", source="embedded")
    assert (cache.hits, cache.misses) == (1, 0)  # the suite's own lookup finds the merged features
    np.testing.assert_allclose(merged, compute_features(encoder, images, "cpu"), rtol=1e-4, atol=1e-5)


def test_leader_reports_a_failed_shard_instead_of_waiting(tmp_path, loaded_encoder):
    images = open_linear_split("digits", None, "test", loaded_encoder.metadata["image_size"])
    cache = FeatureCache(tmp_path)
    from transfer.features import cache_key
    from transfer.linear.protocol import feature_cache_parts

    key = cache_key(**feature_cache_parts(loaded_encoder, images, "digits", "test", "embedded"))
    shard_dir = tmp_path / f"{key}.shards-of-2"
    shard_dir.mkdir()
    np.save(shard_dir / "0000.npy", np.zeros((180, 512), dtype=np.float32))  # rank 0's shard already done
    (shard_dir / "0001.error").write_text("RuntimeError: CUDA out of memory")
    with pytest.raises(ShardError, match="0001.error: RuntimeError: CUDA out of memory"):
        sharded_cached_features(loaded_encoder, images, "digits", "test", cache, ShardContext(0, 2, 0),
                                device="cpu", source="embedded", timeout_s=30)
    with pytest.raises(ShardError, match="missing after 0 s"):
        (shard_dir / "0001.error").unlink()
        sharded_cached_features(loaded_encoder, images, "digits", "test", cache, ShardContext(0, 2, 0),
                                device="cpu", source="embedded", timeout_s=0.2, poll_s=0.05)
