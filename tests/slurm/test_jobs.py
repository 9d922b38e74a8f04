"""Execution classes (no cluster needed): the registry, recorded jobs' liveness, cancelling, and the
layering rule that slurm/ never imports bench/."""

import ast
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import slurm
from slurm import executors
from slurm.executors import (
    EXECUTIONS,
    DebugExecution,
    Driving,
    LiveJobs,
    LocalExecution,
    RecordedJob,
    SlurmExecution,
    UnknownExecutor,
    execution_named,
    recorded_job,
    resolve_execution,
)


def test_local_jobs_are_alive_while_their_process_runs():
    host = socket.gethostname()
    local = execution_named("local")
    assert RecordedJob(local, str(os.getpid()), host).alive(LiveJobs()) is True
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    assert RecordedJob(local, str(finished.pid), host).alive(LiveJobs()) is False
    assert RecordedJob(local, str(os.getpid()), host + "-elsewhere").alive(LiveJobs()) is None  # cannot tell


def test_slurm_jobs_follow_the_queue_and_debug_jobs_end_with_their_runner():
    slurm_execution = execution_named("slurm")
    answered = LiveJobs({slurm_execution: {"12_3", "14"}})
    assert RecordedJob(slurm_execution, "12_3").alive(answered) is True
    assert RecordedJob(slurm_execution, "13").alive(answered) is False
    assert RecordedJob(slurm_execution, "13").alive(LiveJobs({slurm_execution: None})) is None  # squeue failed
    assert RecordedJob(slurm_execution, "13").alive(LiveJobs()) is None  # never asked
    assert RecordedJob(execution_named("debug"), "1").alive(answered) is False


def test_records_written_before_the_classes_still_parse_to_their_execution():
    """submitted.json keeps the plain executor name; each parses once, through the registry."""
    host = socket.gethostname()
    for name, cls in EXECUTIONS.items():
        job = recorded_job({"time": 1.0, "executor": name, "job_id": "77_1", "host": host, "task": "probe0000"})
        assert type(job.execution) is cls and job.execution.name == name
        assert (job.job_id, job.host) == ("77_1", host)
    assert recorded_job({}) is None  # no job recorded
    with pytest.raises(UnknownExecutor, match="unknown executor 'slrum'; valid executors: auto, local, debug, slurm"):
        recorded_job({"executor": "slrum", "job_id": "1"})


def test_a_typo_lists_the_valid_names_and_auto_prefers_a_reachable_scheduler(monkeypatch):
    with pytest.raises(UnknownExecutor, match="valid executors: auto, local, debug, slurm"):
        resolve_execution("lcoal")
    monkeypatch.setattr(executors, "slurm_available", lambda: True)
    assert resolve_execution("auto") == SlurmExecution()
    monkeypatch.setattr(executors, "slurm_available", lambda: False)
    assert resolve_execution("auto") == LocalExecution()
    assert resolve_execution("debug") == DebugExecution() != LocalExecution()  # never chosen by auto


def test_each_execution_says_how_it_is_driven_and_what_outlives_the_runner():
    assert {name: cls.driving for name, cls in EXECUTIONS.items()} == {
        "local": Driving.PROCESS_POOL, "debug": Driving.IN_PROCESS, "slurm": Driving.BATCH_ARRAY}
    assert [name for name, cls in EXECUTIONS.items() if cls.jobs_outlive_runner] == ["slurm"]
    assert SlurmExecution().parallelism(None) == "all at once (array)" and SlurmExecution().parallelism(4) == "4"
    assert LocalExecution().parallelism(None) == str(os.cpu_count())


def test_live_jobs_ask_each_execution_once_for_all_its_jobs(monkeypatch):
    asked = []
    monkeypatch.setattr(SlurmExecution, "live_jobs", lambda self, ids: asked.append(sorted(ids)) or {"5_0"})
    slurm_execution, local = SlurmExecution(), LocalExecution()
    jobs = [RecordedJob(slurm_execution, "5_0"), RecordedJob(slurm_execution, "5_1"),
            RecordedJob(local, str(os.getpid()), socket.gethostname())]
    live = LiveJobs.query(jobs)
    assert asked == [["5_0", "5_1"]]  # one squeue call; the local job needs none
    assert [job.alive(live) for job in jobs] == [True, False, True]


def test_cancelling_a_local_job_stops_its_process():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        LocalExecution().cancel([str(sleeper.pid)])
        assert sleeper.wait(timeout=10) != 0
    finally:
        if sleeper.poll() is None:
            sleeper.kill()


def test_slurm_imports_nothing_from_bench():
    offenders = []
    for path in Path(slurm.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {name}" for name in names if name == "bench" or name.startswith("bench.")]
    assert offenders == []
