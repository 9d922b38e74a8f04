"""Real jobs on the local single-node SLURM cluster (python -m slurm.local_cluster start)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from bench.job import CellJob
from bench.plan import build_plan
from bench.store import read_events
from bench.suites import load_suite
from ringbench_testing.bench import plan_and_run, run_bench
from slurm.executors import execution_named, slurm_live_jobs
from slurm.profiles import PROFILES

pytestmark = pytest.mark.slurm


@pytest.fixture
def slurm_env(tmp_path, monkeypatch):
    import os

    from ringbench_testing.bench import REPO

    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return tmp_path


def selftest_job(results: Path, overrides: list[str], index: int = 0) -> tuple[CellJob, object]:
    plan = build_plan("selftest", load_suite("selftest"), results_root=results, option_pairs=overrides)
    planned = plan.cells[index]
    job = CellJob("selftest", planned.cell, planned.cell_id, str(results), "1", None, "slurm")
    return job, plan.store.cell(planned.cell_id)


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_cells_go_out_as_one_job_array_and_each_result_is_written_once(slurm_env):
    results = slurm_env / "results"
    plan, summary = plan_and_run("selftest", results, "slurm", ["n_tasks=5"], max_parallel=2)
    assert summary.states == {"done": 5}
    arrays = {job_id.split("_")[0] for job_id in summary.job_ids}
    assert len(arrays) == 1 and all("_" in job_id for job_id in summary.job_ids)  # A_i ids of one array
    for planned in plan.cells:
        folder = plan.store.cell(planned.cell_id)
        events = [e["event"] for e in read_events(folder.path)]
        assert events.count("result_written") == 1 and events.count("submitted") == 1
        assert folder.read_result()["job"]["job_id"] in summary.job_ids
    sbatch = next(plan.store.jobs_dir.glob("submission_file_*.sh"), None) or next(plan.store.jobs_dir.glob("*.sh"))
    assert "#SBATCH --array=0-4%2" in sbatch.read_text()  # slurm_array_parallelism from --max-parallel


def test_afterok_dependency_orders_jobs_and_blocks_after_a_failure(slurm_env):
    results = slurm_env / "results"
    first, first_folder = selftest_job(results, ["n_tasks=3", "sleep_s=2"], 0)
    second, second_folder = selftest_job(results, ["n_tasks=3", "sleep_s=2"], 1)
    failing, _ = selftest_job(results, ["n_tasks=3", "sleep_s=0", "fail_tasks=2"], 2)
    blocked, blocked_folder = selftest_job(results, ["n_tasks=3", "sleep_s=0", "fail_tasks=2"], 0)
    jobs_dir = results / "jobs"
    base = execution_named("slurm").make_executor(jobs_dir, PROFILES["cpu"], name="chain-a")
    job_a = base.submit(first)
    job_f = base.submit(failing)
    job_b = execution_named("slurm").make_executor(jobs_dir, PROFILES["cpu"], name="chain-b",
                                                   dependency=f"afterok:{job_a.job_id}").submit(second)
    job_c = execution_named("slurm").make_executor(jobs_dir, PROFILES["cpu"], name="chain-c",
                                                   dependency=f"afterok:{job_f.job_id}").submit(blocked)
    wait_for(lambda: second_folder.result_path.exists(), 180, "the dependent job's result")
    a_done = first_folder.read_result()["timings"]["finished_at"]
    b_started = json.loads(second_folder.running_path.read_text())["time"]
    assert b_started >= a_done  # afterok: B started only after A finished successfully
    reason = wait_for(lambda: (subprocess.run(["squeue", "-h", "-j", str(job_c.job_id), "-o", "%r"],
                                              capture_output=True, text=True).stdout.strip()
                               if (subprocess.run(["squeue", "-h", "-j", str(job_f.job_id)], capture_output=True,
                                                  text=True).stdout.strip() == "") else ""),
                      120, "the failed job to leave the queue")
    assert "DependencyNeverSatisfied" in reason
    assert not blocked_folder.running_path.exists()  # never started
    subprocess.run(["scancel", str(job_c.job_id)], check=False)
    assert str(job_c.job_id) not in (slurm_live_jobs([str(job_b.job_id)]) or set())


def test_scontrol_requeue_of_a_running_cell_resumes_and_writes_once(slurm_env):
    results = slurm_env / "results"
    job, folder = selftest_job(results, ["n_tasks=1", "sleep_s=6"])
    submitted = execution_named("slurm").make_executor(results / "jobs", PROFILES["cpu"], name="requeue").submit(job)
    steps = folder.path / "selftest_steps.json"
    wait_for(lambda: steps.exists() and json.loads(steps.read_text())["done"] >= 10, 120, "10 sleep steps")
    out = subprocess.run(["scontrol", "requeue", str(submitted.job_id)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # SLURM holds a requeued batch job for two minutes (reason BeginTime); let it start again at once
    wait_for(lambda: "BeginTime" in subprocess.run(["squeue", "-h", "-j", str(submitted.job_id), "-o", "%r"],
                                                   capture_output=True, text=True).stdout, 60, "the requeued job")
    subprocess.run(["scontrol", "update", f"jobid={submitted.job_id}", "StartTime=now"], check=True)
    wait_for(lambda: folder.result_path.exists(), 240, "the requeued cell's result")
    events = [e["event"] for e in read_events(folder.path)]
    assert events.count("started") == 2 and events.count("result_written") == 1, events
    result = folder.read_result()
    assert result["info"]["resumed_from_step"] >= 10 and result["timings"]["attempt"] == 2


@pytest.mark.slow
def test_two_task_job_rendezvous_through_slurm(slurm_env):
    from slurm.profiles import apply_resource_overrides

    results = slurm_env / "results"
    profiles = apply_resource_overrides(PROFILES, ["cpu.tasks_per_node=2", "cpu.cpus=1"])
    import io

    from bench.execute import run_plan

    plan = build_plan("selftest", load_suite("selftest"), results_root=results, option_pairs=["n_tasks=1"])
    summary = run_plan(plan, execution=execution_named("slurm"), profiles=profiles, stream=io.StringIO(),
                       poll_s=0.3).summary
    logs = "\n".join(p.read_text()[-2000:] for p in plan.store.jobs_dir.glob("*.err"))
    assert summary.states == {"done": 1}, logs
    info = plan.store.cell(plan.cells[0].cell_id).read_result()["info"]
    assert info["world_size"] == 2 and info["all_reduce_sum"] == 3.0


@pytest.mark.slow
def test_pretrain_then_knn_submitted_together_with_afterok(tmp_path, bench_env):
    from ringbench_testing.bench import TINY, check_chain

    results = tmp_path / "results"
    out = run_bench(["--suite", "pretrain", "--then", "knn", "--executor", "slurm", "--results", str(results),
                     "--no-progress", TINY], bench_env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(afterok)" in out.stderr
    check_chain(results)  # the knn suite itself ran as a SLURM array on the trained encoders
    knn_jobs = [json.loads(p.read_text())["job"] for p in (results / "knn" / "cells").glob("*/result.json")]
    assert {job["executor"] for job in knn_jobs} == {"slurm"} and all("_" in job["job_id"] for job in knn_jobs)


def test_an_unknown_partition_is_refused_before_submission(tmp_path, bench_env):
    results = tmp_path / "results"
    out = run_bench(["--suite", "selftest", "--executor", "slurm", "--results", str(results),
                     "--resource", "cpu.partition=nosuch"], bench_env)
    assert out.returncode == 2
    assert "partition 'nosuch' does not exist on this cluster; partitions: local" in out.stderr
    assert not list(results.rglob("submitted.json"))


def test_status_asks_the_scheduler_so_a_requeued_pending_job_is_not_shown_running(slurm_env, capsys):
    import io

    from bench.execute import run_plan
    from bench.status import main as status_main

    results = slurm_env / "results"
    plan = build_plan("selftest", load_suite("selftest"), results_root=results, option_pairs=["n_tasks=1", "sleep_s=6"])
    run_plan(plan, execution=execution_named("slurm"), profiles=PROFILES, wait=False, progress=False,
             stream=io.StringIO())
    folder = plan.store.cell(plan.cells[0].cell_id)
    job_id = folder.submitted()["job_id"]
    try:
        steps = folder.path / "selftest_steps.json"
        wait_for(lambda: steps.exists() and json.loads(steps.read_text())["done"] >= 5, 120, "5 sleep steps")
        out = subprocess.run(["scontrol", "requeue", str(job_id)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        wait_for(lambda: "BeginTime" in subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%r"],
                                                       capture_output=True, text=True).stdout, 60, "the requeued job")
        assert folder.state().state == "running"  # the files alone still say so: attempt 1 wrote running.json
        status_main(["--results", str(results)])
        line = [row for row in capsys.readouterr().out.splitlines() if folder.cell_id in row][0]
        assert " submitted " in line and "pending in the SLURM queue, reason BeginTime" in line, line
        assert "attempt 1 ran on" in line and "probe0000 seed=0" in line, line
    finally:
        subprocess.run(["scancel", str(job_id)], check=False)
