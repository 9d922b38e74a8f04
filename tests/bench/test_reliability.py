"""Crash safety: a runner killed mid-suite loses and duplicates nothing; simultaneous writers lose nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from bench.leaderboard import write_suite_tables
from bench.store import ResultStore, read_events
from ringbench_testing.bench import REPO, plan_and_run


def _results(store: ResultStore) -> int:
    return sum(1 for folder in store.iter_cells() if folder.result_path.exists())


@pytest.mark.slow
def test_sigkill_of_the_runner_then_rerun_keeps_every_cell_once(job_env, bench_env):
    results = job_env / "results"
    args = [sys.executable, "-m", "bench.run", "--suite", "selftest", "--executor", "local", "--results", str(results),
            "--max-parallel", "2", "--no-progress", "--no-leaderboard", "n_tasks=6", "sleep_s=1.5"]
    runner = subprocess.Popen(args, cwd=REPO, env=bench_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    store = ResultStore(results, "selftest")
    deadline = time.time() + 120
    while time.time() < deadline and _results(store) < 2:
        time.sleep(0.1)
    assert _results(store) >= 2, runner.communicate(timeout=5)[0]
    runner.kill()  # SIGKILL: no cleanup, its local jobs become orphans and keep running
    runner.wait()
    finished_before = {f.cell_id for f in store.iter_cells() if f.result_path.exists()}
    assert len(finished_before) < 6
    rerun = subprocess.run(args, cwd=REPO, env=bench_env, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr
    folders = list(store.iter_cells())
    assert len(folders) == 6
    for folder in folders:
        events = [e["event"] for e in read_events(folder.path)]
        assert events.count("result_written") == 1, (folder.cell_id, events)
        assert events.count("started") == 1, (folder.cell_id, events)  # nothing computed twice
        assert folder.read_result()["cell_id"] == folder.cell_id
    assert f"kept {len(finished_before)}" in rerun.stderr


def test_many_tasks_finishing_at_once_write_without_loss(job_env):
    results = job_env / "results"
    plan, summary = plan_and_run("selftest", results, "local", ["n_tasks=10"], max_parallel=10)
    assert summary.states == {"done": 10}
    write_suite_tables(results, "selftest", plot=False)
    table = pd.read_csv(results / "selftest.csv")
    assert sorted(table["task"]) == [f"probe{i:04d}" for i in range(10)]
    for planned in plan.cells:
        result = plan.store.cell(planned.cell_id).read_result()
        index = planned.cell.task.params["index"]
        assert result["metrics"]["value"]["samples"] == [float((index * 7 + s) % 10) for s in range(8)]


def test_a_killed_job_is_reported_as_lost_not_left_running(job_env, bench_env):
    """A job that dies without writing anything (OOM killer, node loss) ends as failed with a reason."""
    import threading

    results = job_env / "results"
    store = ResultStore(results, "selftest")

    def kill_when_running():
        deadline = time.time() + 60
        while time.time() < deadline:
            for folder in store.iter_cells():
                running = folder.running()
                if running:
                    os.kill(int(running["pid"]), signal.SIGKILL)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_running)
    killer.start()
    plan, summary = plan_and_run("selftest", results, "local", ["n_tasks=1", "sleep_s=3"])
    killer.join()
    assert summary.states == {"failed": 1}
    error = plan.store.cell(plan.cells[0].cell_id).error()
    assert error is not None and "without writing a result" in error["message"]


def test_two_runners_started_at_once_submit_each_cell_exactly_once(job_env, bench_env):
    """The second runner sees the first one's claims (taken under the suite lock) and watches those
    cells; with one cell at a time the first runner holds queued cells for seconds, which an
    unlocked second runner would submit again."""
    results = job_env / "results"
    args = [sys.executable, "-m", "bench.run", "--suite", "selftest", "--executor", "local", "--results", str(results),
            "--max-parallel", "1", "--no-progress", "--no-leaderboard", "n_tasks=4", "sleep_s=0.5"]
    runners = [subprocess.Popen(args, cwd=REPO, env=bench_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [runner.communicate(timeout=240) for runner in runners]
    for runner, (_, err) in zip(runners, outputs):
        assert runner.returncode == 0, err
    store = ResultStore(results, "selftest")
    folders = list(store.iter_cells())
    assert len(folders) == 4
    for folder in folders:
        events = [e["event"] for e in read_events(folder.path)]
        assert events.count("submitted") == 1, (folder.cell_id, events)
        assert events.count("started") == 1, (folder.cell_id, events)
        assert folder.state().state == "done" and not folder.claim_path.exists()
    submitted = [int(err.split("submitted ")[1].split(",")[0]) for _, err in outputs]
    watched = [int(err.split("watched ")[1].split(";")[0]) for _, err in outputs]
    assert sum(submitted) == 4 and sum(submitted) + sum(watched) == 8, [err for _, err in outputs]
