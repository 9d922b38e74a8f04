import multiprocessing
import os

import pytest
import torch

from pretrain import embedded
from pretrain.checkpoint import load_encoder

TINY = {"epochs": 1, "image_size": 16, "batch_size": 16, "max_steps_per_epoch": 1, "knn_every": 0}


def _call(cache, queue):
    os.environ["RINGBENCH_CACHE"] = cache
    torch.set_num_threads(1)
    embedded.EMBEDDED_OVERRIDES.update(TINY)
    queue.put([str(p) for p in embedded.default_encoders()])


@pytest.mark.slow
def test_concurrent_callers_train_once_and_later_calls_are_cached(tmp_path, monkeypatch):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_call, args=(str(tmp_path), queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert results[0] == results[1]
    nce, ring = (load_encoder(path) for path in results[0])
    assert (nce.metadata["sampler"], ring.metadata["sampler"]) == ("nce", "ring")
    assert nce.metadata["method"] == ring.metadata["method"] and nce.metadata["stem"] == "imagenet"
    for path in results[0]:  # one training each: one metrics record, one state
        metrics = os.path.join(os.path.dirname(path), "metrics.jsonl")
        assert len(open(metrics).read().splitlines()) == 1
    mtimes = [os.stat(p).st_mtime_ns for p in results[0]]
    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path))
    assert [str(p) for p in embedded.default_encoders()] == results[0]
    assert [os.stat(p).st_mtime_ns for p in results[0]] == mtimes
    assert str(tmp_path / "encoders") in results[0][0]
