"""bench.status names every cell and says who holds it: pending, queued (claimed by a runner), lost."""

from __future__ import annotations

import io
import subprocess
import sys

from bench.execute import build_runner
from bench.plan import build_plan
from bench.status import main as status_main
from bench.store import atomic_write_json
from bench.suites import load_suite
from slurm.executors import execution_named
from slurm.profiles import PROFILES


def _status_lines(results, capsys) -> list[str]:
    capsys.readouterr()
    status_main(["--results", str(results)])
    return capsys.readouterr().out.splitlines()[1:]


def test_cells_claimed_but_never_submitted_are_named_and_their_owner_checked(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RINGBENCH_CACHE", str(tmp_path / "cache"))
    results = tmp_path / "results"
    plan = build_plan("selftest", load_suite("selftest"), results_root=results, option_pairs=["n_tasks=3"])
    runner = build_runner(plan, execution=execution_named("local"), profiles=PROFILES, progress=False,
                          stream=io.StringIO())
    _, _, to_submit = runner.classify()
    assert len(to_submit) == 3
    lines = _status_lines(results, capsys)
    assert all(" queued " in line and "claimed by runner" in line for line in lines), lines  # this process, alive
    runner._release_claims(to_submit)  # an interrupted runner gives its claims back
    lines = _status_lines(results, capsys)
    assert sorted(line.split()[2] for line in lines) == ["probe0000", "probe0001", "probe0002"], lines
    assert all(" pending " in line and "seed=0" in line and "?" not in line for line in lines), lines
    # a claim left by a runner that died (SIGKILL) before submitting: lost, and named
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = plan.store.cell(plan.cells[0].cell_id)
    import socket
    import time

    atomic_write_json(folder.claim_path, {"time": time.time(), "executor": "runner", "runner_pid": int(dead.stdout),
                                          "host": socket.gethostname()})
    line = [row for row in _status_lines(results, capsys) if folder.cell_id in row][0]
    assert " lost " in line and "ended before submitting it" in line and "probe0000 seed=0" in line, line
