"""--suite pretrain --then knn: the evaluation suite runs on the encoders the pretraining cells produce."""

from __future__ import annotations

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
