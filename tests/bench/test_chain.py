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
    assert out.returncode == 2 and "unknown option 'k' for suite knn" in out.stderr
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
