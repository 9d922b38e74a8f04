"""python -m bench.status: each cell's state for a results folder, from the cell files.

States: done, failed (with the first line of its error), running, submitted (waiting in the
scheduler's queue), queued (claimed by a runner that has not submitted it yet), pending (planned,
never submitted), corrupt (a result.json that cannot be read; `bench.run` recomputes it) and lost
(its job or runner is gone without writing a result). For SLURM jobs the scheduler (squeue) is
asked, so a requeued job waiting to start again shows as submitted (pending), not as running.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from bench.store import CellFolder, CellState, ResultStore, suites_in
from slurm.executors import Execution, RecordedJob, execution_named


def _label(folder: CellFolder) -> str:
    """Task and checkpoint from the result, or from the submitted job's cell if there is no result yet."""
    try:
        result = folder.read_result()
        task, checkpoint, seed = result["task"]["name"], result.get("checkpoint") or {}, result["seed"]
    except Exception:  # noqa: BLE001 - no readable result: the submission marker, else the cell description
        marker = folder.submitted() or folder.description() or {}
        task, checkpoint, seed = marker.get("task", "?"), marker.get("checkpoint") or {}, marker.get("seed", "?")
    who = f"{checkpoint.get('method')}/{checkpoint.get('sampler')} " if checkpoint else ""
    return f"{who}{task} seed={seed}"


def live_states(folders: list[tuple[CellFolder, CellState]]) -> list[tuple[CellFolder, CellState]]:
    """Correct the files' view with the scheduler's and the process table's: a SLURM job squeue lists
    as PENDING is submitted (even after an attempt ran: a requeue), one it lists as RUNNING is
    running, and a cell whose job or claiming runner no longer exists is lost."""
    from bench.runner import CLAIM_OWNER, owner_alive

    jobs = {folder.cell_id: RecordedJob(execution_named(state.executor), str(state.job_id or ""),
                                        (folder.submitted() or {}).get("host"))
            for folder, state in folders if state.state in ("submitted", "running") and state.executor}
    ids: dict[Execution, list[str]] = {}
    for job in jobs.values():
        if job.job_id:
            ids.setdefault(job.execution, []).append(job.job_id)
    queues = {execution: execution.queue_states(job_ids) for execution, job_ids in ids.items()}
    out = []
    for folder, state in folders:
        if state.state in ("submitted", "running"):
            job = jobs.get(folder.cell_id)
            gone = True  # no job recorded (running.json without submitted.json): nothing will finish it
            if job is not None:
                queue = queues.get(job.execution, {})
                live = None if queue is None else set(queue)
                gone = job.execution.job_alive(job.job_id, job.host, live) is False
                if queue and job.job_id in queue:
                    state = _scheduler_state(folder, state, job.execution, *queue[job.job_id])
            if gone and not folder.result_path.exists():
                state = CellState("lost", f"job {state.job_id} ended without writing a result", state.job_id,
                                  state.executor)
        elif state.state == "queued":
            claim = folder.claim() or {}
            if not owner_alive(claim) and not folder.result_path.exists():
                state = CellState("lost", f"runner {claim.get('runner_pid')} on {claim.get('host')} claimed the cell "
                                  "and ended before submitting it", None, CLAIM_OWNER)
        out.append((folder, state))
    return out


def _scheduler_state(folder: CellFolder, state: CellState, execution: Execution, slurm_state: str,
                     reason: str) -> CellState:
    """The cell's state as the scheduler's queue tells it (SLURM's state names)."""
    running = folder.running() or {}
    attempt = running.get("attempt")
    if slurm_state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED"):
        before = f"; attempt {attempt} ran on {running.get('host')}" if state.state == "running" and attempt else ""
        why = f", reason {reason}" if reason and reason != "None" else ""
        return CellState("submitted", f"{slurm_state.lower()} in the {execution.display_name} queue{why}{before}",
                         state.job_id,
                         state.executor)
    if slurm_state in ("RUNNING", "COMPLETING", "CONFIGURING"):
        detail = f"attempt {attempt} on {running.get('host')}" if state.state == "running" else "starting"
        return CellState("running", f"{detail} ({execution.display_name} {slurm_state})", state.job_id,
                         state.executor)
    return CellState(state.state, f"{execution.display_name} {slurm_state}" + (f", reason {reason}" if reason else ""),
                     state.job_id, state.executor)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.status", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=None, help="results folder (default results/)")
    parser.add_argument("--suite", action="append", default=[], help="only these suites (repeatable)")
    parser.add_argument("--state", action="append", default=[],
                        help="only cells in these states (done, failed, running, submitted, pending, corrupt, lost)")
    parser.add_argument("--summary", action="store_true", help="counts per state only")
    args = parser.parse_args(argv)
    from bench.store import results_root_default

    root = args.results or results_root_default()
    names = args.suite or suites_in(root)
    if not names:
        print(f"no suites with cells under {root}", file=sys.stderr)
        return 2
    unknown = [n for n in names if n not in suites_in(root)]
    if unknown:
        print(f"error: no cells for suite(s) {', '.join(unknown)} under {root}; "
              f"suites with cells: {', '.join(suites_in(root)) or '(none)'}", file=sys.stderr)
        return 2
    any_failed = False
    for name in names:
        store = ResultStore(root, name)
        cells = live_states([(folder, folder.state()) for folder in store.iter_cells()])
        counts = Counter(state.state for _, state in cells)
        any_failed |= bool(counts.get("failed") or counts.get("lost") or counts.get("corrupt"))
        print(f"{name}: {len(cells)} cells: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        if args.summary:
            continue
        for folder, state in cells:
            if args.state and state.state not in args.state:
                continue
            job = f" job {state.job_id}" if state.job_id else ""
            detail = f": {state.detail}" if state.detail else ""
            print(f"  {folder.cell_id}  {state.state:9s} {_label(folder)}{job}{detail}")
    return 1 if any_failed else 0


if __name__ == "__main__":
    sys.exit(main())
