"""--follow on the real local SLURM cluster: a snapshot's cells go out as they appear, once, across a restart."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from test_follow import check_each_encoder_evaluated_once, follow_args, start_pretraining

from ringbench_testing.bench import REPO, run_bench

pytestmark = pytest.mark.slurm


@pytest.mark.slow
def test_follow_submits_each_snapshot_to_slurm_once_across_a_restart(tmp_path, bench_env):
    run, results = tmp_path / "run", tmp_path / "results"
    training = start_pretraining(run, bench_env)
    deadline = time.time() + 600
    while not (run / "config.json").exists():
        assert training.poll() is None and time.time() < deadline, training.stderr.read()[-2000:]
        time.sleep(0.5)
    follower = subprocess.Popen([sys.executable, "-m", "bench.run", *follow_args(run, results, "slurm")], cwd=REPO,
                                env=bench_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not list((results / "knn" / "cells").glob("*/submitted.json")):  # the first array is in the queue
        assert follower.poll() is None and time.time() < deadline, follower.stderr.read()[-3000:]
        time.sleep(0.3)
    follower.send_signal(signal.SIGKILL)  # its SLURM jobs stay queued or running; the restart adopts them
    follower.wait()
    again = run_bench(follow_args(run, results, "slurm"), bench_env, timeout=1200)
    assert training.wait(timeout=600) == 0, training.stderr.read()[-2000:]
    assert again.returncode == 0, again.stderr[-3000:]
    assert "watched 1" in again.stderr or "kept 1" in again.stderr  # the first snapshot was not submitted again
    check_each_encoder_evaluated_once(run, results, "slurm")
