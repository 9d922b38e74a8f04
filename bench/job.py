"""A cell as a submitit job: a checkpointable callable that writes the cell's result.json.

The callable holds only plain, small values (the Cell, the results root, the checkpoint identity);
everything that changes while it runs (partial state, resume files) lives in the cell folder and is
found there at start-up. `checkpoint()` returns a fresh instance, so a requeued job never resumes
from a path baked into a stale pickle.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.store import (
    SCHEMA_VERSION,
    CellFolder,
    CorruptResult,
    append_event,
    atomic_write_json,
    publish_json_once,
    read_events,
)
from bench.suite import Cell, CellOutput, comma_list


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    num_nodes: int = 1


def pin_device_for_local_rank(local_rank: int) -> None:
    """Give each local task its own GPU: the local_rank-th of the GPUs this job may see."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or visible.strip() == "":
        return
    devices = list(comma_list(visible))
    if devices and devices[0] not in ("NoDevFiles",):
        os.environ["CUDA_VISIBLE_DEVICES"] = devices[local_rank % len(devices)]


def setup_distributed() -> DistributedContext:
    """Export MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK for `init_process_group("env://")`.

    Only for multi-task jobs (one task per GPU, possibly on several nodes); a single-task job, the
    debug executor or a direct call sees rank 0 of 1 and its environment is left untouched.
    """
    import submitit

    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (direct call)
        return DistributedContext()
    if env.num_tasks <= 1:
        return DistributedContext()
    hostnames = env.hostnames
    port = 20000 + int.from_bytes(str(env.job_id).encode()[-8:].rjust(8, b"\0"), "big") % 40000
    os.environ.update(
        {
            "MASTER_ADDR": hostnames[0],
            "MASTER_PORT": os.environ.get("RINGBENCH_MASTER_PORT", str(port)),
            "RANK": str(env.global_rank),
            "WORLD_SIZE": str(env.num_tasks),
            "LOCAL_RANK": str(env.local_rank),
            "LOCAL_WORLD_SIZE": str(env.num_tasks // max(env.num_nodes, 1)),
        }
    )
    pin_device_for_local_rank(env.local_rank)
    return DistributedContext(env.global_rank, env.local_rank, env.num_tasks, env.num_nodes)


def current_job_id() -> str | None:
    for key in ("SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID"):
        if key in os.environ:
            if key == "SLURM_ARRAY_JOB_ID" and "SLURM_ARRAY_TASK_ID" in os.environ:
                return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
            return os.environ[key]
    for key in ("SUBMITIT_LOCAL_JOB_ID", "SUBMITIT_DEBUG_JOB_ID"):
        if key in os.environ:
            return os.environ[key]
    return None


def build_result(job: CellJob, output: CellOutput, started: float, run_s: float, attempt: int) -> dict[str, Any]:
    from pretrain.version import code_version

    cell = job.cell
    if not isinstance(output, CellOutput) or not output.metrics:
        raise TypeError(f"suite {cell.suite!r} returned {type(output).__name__} without metrics; expected a CellOutput")
    info = dict(output.info)
    return {
        "schema_version": SCHEMA_VERSION,
        "cell_id": job.cell_id,
        "suite": cell.suite,
        "protocol_version": job.protocol_version,
        "task": {"name": cell.task.name, "params": dict(cell.task.params), "profile": cell.task.profile},
        "seed": cell.seed,
        "options": dict(cell.options),
        "data_root": None if cell.data_root is None else str(cell.data_root),
        "dataset": job.dataset,  # the fingerprint that is part of the cell id (None: the suite reads no data)
        "checkpoint": job.checkpoint_identity,
        "metrics": {name: metric.to_json() for name, metric in output.metrics.items()},
        "info": info,
        "engine": info.get("engine"),
        "code_version": code_version(),
        "timings": {
            "started_at": started,
            "finished_at": time.time(),
            "run_s": run_s,
            "attempt": attempt,
        },
        "job": {"executor": job.executor, "job_id": current_job_id(), "host": socket.gethostname()},
    }


@dataclass
class CellJob:
    """Evaluate one cell and store its result; safe to run again (a finished cell is not recomputed)."""

    suite_name: str  # registry name or "module:Class"
    cell: Cell
    cell_id: str
    results_root: str
    protocol_version: str
    checkpoint_identity: dict[str, Any] | None
    executor: str = "local"
    dataset: dict[str, Any] | None = None  # DatasetFingerprint.to_json() of the data the cell reads

    @property
    def folder(self) -> CellFolder:
        return CellFolder(Path(self.results_root) / self.cell.suite / "cells" / self.cell_id)

    def summary(self, result: dict[str, Any]) -> dict[str, float]:
        return {name: metric["mean"] for name, metric in result["metrics"].items()}

    def __call__(self) -> dict[str, float] | None:
        from bench.suites import load_suite

        context = setup_distributed()
        folder = self.folder
        is_writer = context.rank == 0
        if folder.result_path.exists():
            try:
                existing = folder.read_result()
                if is_writer:
                    append_event(folder.path, "skipped_existing_result", job_id=current_job_id())
                return self.summary(existing)
            except CorruptResult:
                pass  # recompute; the publish step below moves the corrupt file aside
        attempt = 1 + sum(1 for e in read_events(folder.path) if e["event"] == "started")
        started = time.time()
        if is_writer:
            atomic_write_json(
                folder.running_path,
                {"time": started, "host": socket.gethostname(), "pid": os.getpid(), "job_id": current_job_id(),
                 "executor": self.executor, "attempt": attempt, "world_size": context.world_size},
            )
            append_event(folder.path, "started", job_id=current_job_id(), attempt=attempt)
        try:
            suite = load_suite(self.suite_name)
            output = suite.run(self.cell, folder.path)
            if not is_writer:
                return None
            result = build_result(self, output, started, time.time() - started, attempt)
        except BaseException as error:
            if is_writer:
                atomic_write_json(
                    folder.error_path,
                    {"time": time.time(), "type": type(error).__name__, "message": f"{type(error).__name__}: {error}",
                     "traceback": traceback.format_exc(), "job_id": current_job_id(), "attempt": attempt},
                )
                append_event(folder.path, "failed", job_id=current_job_id(), error=f"{type(error).__name__}: {error}")
            raise
        if folder.result_path.exists():
            try:
                folder.read_result()
            except CorruptResult:
                folder.quarantine_result("corrupt")
        if publish_json_once(folder.result_path, result):
            append_event(folder.path, "result_written", job_id=current_job_id(), attempt=attempt)
            folder.error_path.unlink(missing_ok=True)
        else:  # another attempt finished first; its result stands
            append_event(folder.path, "result_exists_discarded", job_id=current_job_id(), attempt=attempt)
            result = folder.read_result()
        return self.summary(result)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Requeue with a fresh instance: resume state is looked up in the cell folder at start-up."""
        import submitit

        append_event(self.folder.path, "checkpointed", job_id=current_job_id())
        fresh = CellJob(**{name: getattr(self, name) for name in self.__dataclass_fields__})
        return submitit.helpers.DelayedSubmission(fresh)
