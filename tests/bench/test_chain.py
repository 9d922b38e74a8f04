"""--suite pretrain --then knn: the evaluation suite runs on the encoders the pretraining cells produce."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.bench.conftest import run_bench

TINY = 'overrides={"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 32, "image_size": 8, "knn_every": 0}'


def check_chain(results) -> None:
    pretrain = pd.read_csv(results / "pretrain.csv")
    assert sorted(pretrain["model"].unique()) == ["digits_default_nce", "digits_default_ring"]
    encoders = []
    for result_path in (results / "pretrain" / "cells").glob("*/result.json"):
        encoder = json.loads(result_path.read_text())["info"]["encoder"]
        assert encoder.startswith(str(result_path.parent.resolve()))  # trained inside its own cell folder
        encoders.append(encoder)
    knn = [json.loads(p.read_text()) for p in (results / "knn" / "cells").glob("*/result.json")]
    assert sorted(r["checkpoint"]["path"] for r in knn) == sorted(encoders)
    assert {r["checkpoint"]["sampler"] for r in knn} == {"nce", "ring"}
    paired = pd.read_csv(results / "knn_paired.csv")
    assert len(paired) == 2 and set(paired["n"]) == {360}  # the twins share method, data, epochs, seed


@pytest.mark.slow
def test_pretrain_then_knn_in_the_debug_executor(tmp_path, bench_env):
    results = tmp_path / "results"
    out = run_bench(["--suite", "pretrain", "--then", "knn", "--executor", "debug", "--results", str(results),
                     "--no-progress", TINY], bench_env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    check_chain(results)


def test_then_is_refused_for_other_suites(tmp_path, bench_env):
    out = run_bench(["--suite", "selftest", "--then", "knn", "--results", str(tmp_path)], bench_env)
    assert out.returncode == 2 and "--then chains evaluation suites after --suite pretrain only" in out.stderr


@pytest.mark.slow
def test_pretrain_then_knn_evaluates_snapshots_while_training_on_the_local_executor(tmp_path, bench_env):
    from bench.store import read_events

    results = tmp_path / "results"
    snapshots = TINY.replace('"epochs": 1', '"epochs": 2, "snapshot_every": 1')
    out = run_bench(["--suite", "pretrain", "--then", "knn", "--executor", "local", "--results", str(results),
                     "--no-progress", snapshots], bench_env, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    cells = [p for p in (results / "knn" / "cells").iterdir() if p.is_dir()]
    stored = [json.loads((c / "result.json").read_text()) for c in cells]
    assert sorted((r["checkpoint"]["sampler"], r["checkpoint"]["epoch"]) for r in stored) == [
        ("nce", 1), ("nce", 2), ("ring", 1), ("ring", 2)]
    for cell in cells:  # each encoder's cell was submitted once: the follower's, not again by the chain
        events = [e["event"] for e in read_events(cell)]
        assert events.count("submitted") == 1 and events.count("result_written") == 1
    curves = pd.read_csv(results / "knn_curves.csv")
    assert len(curves) == 2 * 2 * 2 and not curves.duplicated(["model", "metric", "epoch"]).any()
    assert set(pd.read_csv(results / "knn.csv")["epochs"]) == {2}  # the ranking holds the final encoders
