"""The runner through submitit's local and debug executors, with the selftest suite (real processes)."""

from __future__ import annotations

import json
import os
import signal
import time

import pandas as pd
import pytest

from bench.job import CellJob
from bench.leaderboard import write_suite_tables
from bench.store import read_events
from ringbench_testing.bench import plan_and_run, run_bench


def test_failed_cell_is_reported_and_missing_not_zero(job_env, bench_env):
    results = job_env / "results"
    plan, summary = plan_and_run("selftest", results, "local", ["n_tasks=3", "fail_tasks=1"], max_parallel=3)
    assert summary.states == {"done": 2, "failed": 1}
    failed = [p for p in plan.cells if p.cell.task.params["index"] == 1][0]
    error = json.loads((plan.store.cell(failed.cell_id).path / "error.json").read_text())
    assert "fails on purpose" in error["message"] and "Traceback" in error["traceback"]
    status = run_bench(["--results", str(results)], bench_env, module="bench.status")
    assert status.returncode == 1
    assert f"{failed.cell_id}  failed" in status.stdout and "RuntimeError: selftest task probe0001 fails" in status.stdout
    write_suite_tables(results, "selftest", plot=False)
    table = pd.read_csv(results / "selftest.csv")
    assert sorted(table["task"]) == ["probe0000", "probe0002"]  # the failed task has no row, no zero
    assert "failed " + failed.cell_id in (results / "selftest.md").read_text()
    # a rerun resubmits only the failed cell (still failing) and keeps the finished ones
    _, again = plan_and_run("selftest", results, "local", ["n_tasks=3", "fail_tasks=1"])
    assert (again.skipped_done, again.submitted) == (2, 1)


def test_corrupt_result_is_detected_reported_and_recomputed(job_env):
    results = job_env / "results"
    plan, _ = plan_and_run("selftest", results, "debug", ["n_tasks=2"])
    target = plan.store.cell(plan.cells[0].cell_id)
    original = target.read_result()["metrics"]
    target.result_path.write_text(target.result_path.read_text()[:40])  # truncated
    import io

    stream = io.StringIO()
    write_suite_tables(results, "selftest", plot=False, stream=stream)
    assert "corrupt result" in stream.getvalue() and str(target.result_path) in stream.getvalue()
    assert len(pd.read_csv(results / "selftest.csv")) == 1  # never tabulated
    _, summary = plan_and_run("selftest", results, "debug", ["n_tasks=2"])
    assert (summary.recomputed_corrupt, summary.submitted, summary.skipped_done) == (1, 1, 1)
    assert target.read_result()["metrics"]["value"]["mean"] == original["value"]["mean"]
    assert list(target.path.glob("result.corrupt-*.json"))  # kept aside for inspection


def test_force_recomputes_and_keeps_the_old_result_aside(job_env):
    results = job_env / "results"
    plan_and_run("selftest", results, "debug", ["n_tasks=1"])
    plan, summary = plan_and_run("selftest", results, "debug", ["n_tasks=1"], force=True)
    assert summary.submitted == 1
    folder = plan.store.cell(plan.cells[0].cell_id)
    assert list(folder.path.glob("result.replaced-*.json"))
    assert [e["event"] for e in read_events(folder.path)].count("result_written") == 2


def test_preempted_local_job_requeues_and_resumes_from_its_folder(job_env):
    """The preemption signal (USR2) reaches the running task; submitit calls checkpoint(), which returns
    a fresh CellJob; the local controller restarts it and it continues from the step file in its folder."""
    from bench.plan import build_plan
    from bench.suites import load_suite
    from slurm.executors import execution_named
    from slurm.profiles import PROFILES

    results = job_env / "results"
    suite = load_suite("selftest")
    plan = build_plan("selftest", suite, results_root=results, option_pairs=["n_tasks=1", "sleep_s=6"])
    planned = plan.cells[0]
    job = CellJob("selftest", planned.cell, planned.cell_id, str(results), "1", None, "local")
    executor = execution_named("local").make_executor(plan.store.jobs_dir, PROFILES["cpu"], name="requeue-test")
    submitted = executor.submit(job)
    steps = plan.store.cell(planned.cell_id).path / "selftest_steps.json"
    deadline = time.time() + 60
    while time.time() < deadline and not (steps.exists() and json.loads(steps.read_text())["done"] >= 5):
        time.sleep(0.1)
    assert steps.exists(), submitted.stderr()
    task_pid = json.loads((plan.store.cell(planned.cell_id).running_path).read_text())["pid"]
    os.kill(task_pid, signal.SIGUSR2)  # what SLURM sends before a preemption or time limit
    summary = submitted.result()
    folder = plan.store.cell(planned.cell_id)
    events = [e["event"] for e in read_events(folder.path)]
    assert events.count("checkpointed") == 1 and events.count("started") == 2, events
    assert events.count("result_written") == 1
    result = folder.read_result()
    assert result["info"]["resumed_from_step"] >= 5 and result["timings"]["attempt"] == 2
    assert summary == {"value": result["metrics"]["value"]["mean"]}


@pytest.mark.slow
def test_two_task_job_rendezvous_over_env_through_the_local_executor(job_env):
    results = job_env / "results"
    from slurm.profiles import PROFILES, apply_resource_overrides

    profiles = apply_resource_overrides(PROFILES, ["cpu.tasks_per_node=2"])
    import io

    from bench.execute import run_suite
    from slurm.executors import execution_named

    run = run_suite("selftest", results_root=results, execution=execution_named("local"), profiles=profiles,
                    option_pairs=["n_tasks=1"], stream=io.StringIO(), poll_s=0.2)
    plan, summary = run.plan, run.summary
    assert summary.states == {"done": 1}, (plan.store.jobs_dir, list(plan.store.jobs_dir.glob("*err")))
    info = plan.store.cell(plan.cells[0].cell_id).read_result()["info"]
    assert info["world_size"] == 2 and info["all_reduce_sum"] == 3.0


def test_status_reports_a_cell_whose_job_vanished_as_lost(job_env, bench_env):
    from bench.store import ResultStore, atomic_write_json

    results = job_env / "results"
    folder = ResultStore(results, "selftest").cell("0" * 20)
    dead = 2**22 + 12345  # above the default pid_max: no such process
    atomic_write_json(folder.submitted_path, {"time": time.time(), "executor": "local", "job_id": str(dead),
                                              "host": __import__("socket").gethostname(), "task": "probe0000",
                                              "seed": 0, "checkpoint": None})
    out = run_bench(["--results", str(results)], bench_env, module="bench.status")
    assert out.returncode == 1
    assert f"{'0' * 20}  lost      probe0000 seed=0 job {dead}: job {dead} ended without writing a result" in out.stdout
