"""Job liveness (no cluster needed) and the layering rule that slurm/ never imports bench/."""

import ast
import os
import socket
import subprocess
import sys
from pathlib import Path

import slurm
from slurm.jobs import job_alive


def test_local_jobs_are_alive_while_their_process_runs():
    host = socket.gethostname()
    assert job_alive("local", str(os.getpid()), host, None) is True
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    assert job_alive("local", str(finished.pid), host, None) is False
    assert job_alive("local", str(os.getpid()), host + "-elsewhere", None) is None  # cannot tell from here


def test_slurm_jobs_follow_the_queue_and_debug_jobs_end_with_their_runner():
    assert job_alive("slurm", "12_3", None, {"12_3", "14"}) is True
    assert job_alive("slurm", "13", None, {"12_3"}) is False
    assert job_alive("slurm", "13", None, None) is None  # squeue unavailable
    assert job_alive("debug", "1", None, set()) is False


def test_slurm_imports_nothing_from_bench():
    offenders = []
    for path in Path(slurm.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {name}" for name in names if name == "bench" or name.startswith("bench.")]
    assert offenders == []
