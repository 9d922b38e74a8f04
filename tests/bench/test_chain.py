"""--suite pretrain --then knn: the evaluation suite runs on the encoders the pretraining cells produce."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ringbench_testing.bench import TINY, check_chain, run_bench


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
    out = run_bench(["--suite", "pretrain", snapshots, "--then", "knn", "--executor", "local", "--results",
                     str(results), "--no-progress"], bench_env, timeout=1200)
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


@pytest.mark.slow
def test_then_passes_options_to_its_suite(tmp_path, bench_env):
    results = tmp_path / "results"
    out = run_bench(["--suite", "pretrain", TINY, "--then", "knn", "ks=5", "--executor", "debug", "--results",
                     str(results), "--no-progress"], bench_env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    knn = [json.loads(p.read_text()) for p in (results / "knn" / "cells").glob("*/result.json")]
    assert len(knn) == 2 and all(r["task"]["params"]["ks"] == [5] for r in knn)
    assert all(set(r["metrics"]) == {"acc/k5"} for r in knn), [sorted(r["metrics"]) for r in knn]


def test_then_options_are_checked_before_anything_runs(tmp_path, bench_env):
    out = run_bench(["--suite", "pretrain", "--then", "knn", "k=5", "--results", str(tmp_path)], bench_env)
    assert out.returncode == 2 and "unknown knn option 'k' (did you mean ks?)" in out.stderr
    assert not (tmp_path / "pretrain").exists()
    out = run_bench(["--suite", "pretrain", "--then", "knn, linear", "--dry-run", "--results", str(tmp_path)],
                    bench_env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "then: knn, linear on the encoders these cells produce" in out.stdout


def test_parse_then_splits_names_and_their_options():
    from bench.execute import parse_then
    from bench.suite import InputError

    assert parse_then(["knn", "ks=5", "linear"]) == [("knn", ["ks=5"]), ("linear", [])]
    assert parse_then(["knn, linear", "epochs=3"]) == [("knn", []), ("linear", ["epochs=3"])]
    with pytest.raises(InputError, match="name the suite before its options"):
        parse_then(["ks=5"])
    with pytest.raises(InputError, match="twice"):
        parse_then(["knn", "knn"])
