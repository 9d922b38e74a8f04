"""`python -m bench.run --suite linear` end to end on the embedded digits through submitit's local executor."""

from __future__ import annotations

import json

import numpy as np
import pytest
from linear_fixtures import write_encoder

from bench.run import main as bench_run
from pretrain.checkpoint import load_encoder
from transfer.features import FeatureCache
from transfer.linear.protocol import cached_features, compute_features, open_linear_split


@pytest.mark.slow
def test_paper_and_fast_protocols_through_the_local_executor(tmp_path, monkeypatch):
    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RINGBENCH_WORKERS", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the jobs share two cores
    nce = write_encoder(tmp_path / "nce.pt", seed=0, sampler="nce")
    ring = write_encoder(tmp_path / "ring.pt", seed=0, weights_seed=1, sampler="ring")  # NCE's twin
    results = tmp_path / "results"
    common = ["--suite", "linear", "--executor", "local", "--checkpoints", f"{nce},{ring}", "--results", str(results),
              "--no-progress"]
    # fast first, two tasks per cell: each task extracts half of every split, rank 0 merges and fits
    two_tasks = ["--resource", "linear.tasks_per_node=2", "--resource", "linear.gpus=0"]
    assert bench_run(common + two_tasks + ["protocol=fast", "--no-leaderboard"]) == 0
    assert bench_run(common + ["epochs=1"]) == 0
    stored = [json.loads(path.read_text()) for path in sorted((results / "linear" / "cells").glob("*/result.json"))]
    assert sorted((r["task"]["name"], r["checkpoint"]["sampler"]) for r in stored) == [
        ("digits/fast", "nce"), ("digits/fast", "ring"), ("digits/paper-1ep", "nce"), ("digits/paper-1ep", "ring")]
    for result in stored:
        linear, knn = result["metrics"]["top1/linear"], result["metrics"]["top1/knn"]
        assert linear["n"] == knn["n"] == 360  # the embedded digits' test split
        assert linear["sample_ids"] == [str(i) for i in range(360)]
        assert knn["mean"] > 50.0  # chance is 10%; even a random encoder's features keep the strokes
        assert result["info"]["protocol"] == result["task"]["params"]["protocol"]
        if result["info"]["protocol"] == "fast":
            assert linear["mean"] > 50.0
            assert result["info"]["world_size"] == 2
        else:  # one epoch is 6 SGD steps at lr 0.01: too few to learn, but the run is complete
            assert result["info"]["paper"]["epochs_run"] == 1 and result["info"]["paper"]["final_train_loss"] > 0
            assert result["info"]["world_size"] == 1
        # the paper cells read the features the sharded fast cells merged
        assert result["info"]["features_test_cached"] and result["info"]["features_train_cached"]
    # the merged shards are the features a single process extracts
    encoder = load_encoder(nce)
    images = open_linear_split("digits", None, "test", encoder.metadata["image_size"])
    cache = FeatureCache(results / "linear" / "shared" / "features")
    merged = cached_features(encoder, images, "digits", "test", cache, "cpu", source="embedded")
    assert cache.misses == 0
    np.testing.assert_allclose(merged, compute_features(encoder, images, "cpu"), rtol=1e-4, atol=1e-5)
    # the leaderboard pairs Ring with its NCE twin image by image (exact sign test = McNemar here)
    import pandas as pd

    paired = pd.read_csv(results / "linear_paired.csv")
    assert sorted(zip(paired["task"], paired["metric"])) == [
        ("digits/fast", "top1/knn"), ("digits/fast", "top1/linear"),
        ("digits/paper-1ep", "top1/knn"), ("digits/paper-1ep", "top1/linear")]
    assert (paired["n"] == 360).all()
    assert paired["p_sign"].between(0, 1).all()
    # a second run keeps every stored cell
    assert bench_run(common + two_tasks + ["protocol=fast", "--no-leaderboard"]) == 0
    assert len(list((results / "linear" / "cells").glob("*/result.json"))) == 4
