"""Job liveness and scheduler queries: the one place that asks SLURM (squeue, scancel) or the process
table whether a job still lives. The execution classes in `slurm.executors` ask here.

    live = slurm_live_jobs(["123_0", "124"])          # ids still queued or running (None: squeue failed)
    process_alive("node1", 4711)                      # True / False / None (another host: cannot tell)
"""

from __future__ import annotations

import socket
import subprocess

from slurm.local_cluster import pid_alive


def slurm_live_jobs(job_ids: list[str]) -> set[str] | None:
    """Which of these SLURM job ids (plain or array `A_i`) are still queued or running; None if unknown."""
    if not job_ids:
        return set()
    mains = sorted({j.split("_")[0] for j in job_ids})
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(mains)], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        if "Invalid job id" in out.stderr:
            return set()
        return None
    return set(out.stdout.split())


def slurm_job_states(job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """(state, reason) of each of these job ids (plain or array `A_i`) that squeue still lists, e.g.
    ("PENDING", "BeginTime") for a requeued job waiting to start again; a job absent from the answer
    has left the queue. None when the scheduler does not answer."""
    if not job_ids:
        return {}
    mains = sorted({j.split("_")[0] for j in job_ids})
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(mains)],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return {} if "Invalid job id" in out.stderr else None
    states = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


def process_alive(host: str | None, pid: int | str | None) -> bool | None:
    """Does process `pid` run on `host`? None when `host` is another machine (this one cannot tell)."""
    if host != socket.gethostname():
        return None
    return str(pid).isdigit() and pid_alive(int(pid))


def queue_state(job_id: str) -> str | None:
    """squeue's "STATE REASON" for a job (e.g. "PENDING DependencyNeverSatisfied"), None once it left the queue."""
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True)
    return out.stdout.strip() or None


def cancel_jobs(job_ids: list[str]) -> None:
    """scancel these jobs (already finished ones are ignored by SLURM)."""
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True)
