"""The result store: one folder per cell, `result.json` written atomically and exactly once.

Layout under a results root (default `results/`):

    <suite>/cells/<cell_id>/result.json    the stored result (schema below, SCHEMA_VERSION)
    <suite>/cells/<cell_id>/error.json     the last failure (type, message, traceback)
    <suite>/cells/<cell_id>/cell.json      what the cell is (task, seed, checkpoint, dataset, options)
    <suite>/cells/<cell_id>/claim.json     the runner that will submit it (written under the suite lock)
    <suite>/cells/<cell_id>/submitted.json which executor/job owns the cell right now
    <suite>/cells/<cell_id>/running.json   written by the job when it starts (host, pid, attempt)
    <suite>/cells/<cell_id>/events.jsonl   append-only history (submitted, started, result, failed...)
    <suite>/shared/                        Suite.prepare output shared by all cells
    <suite>/jobs/                          submitit logs and pickles
    <suite>/.runner.lock                   held (fcntl) while a runner classifies and claims cells

Files are the only source of truth: tables and status are rebuilt from them, never from live job
objects. `result.json` is published with a hard link from a fsynced temporary file, so it appears
complete or not at all, and a second writer (a requeued job, a duplicate array task) cannot replace it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ringbench_common.atomic_files import create_temporary, disk_full

SCHEMA_VERSION = 1
RESULT = "result.json"
ERROR = "error.json"
RUNNING = "running.json"
SUBMITTED = "submitted.json"
CLAIM = "claim.json"
CELL = "cell.json"
LOCK = ".runner.lock"
EVENTS = "events.jsonl"

RESULT_KEYS = ("schema_version", "cell_id", "suite", "task", "seed", "metrics", "checkpoint", "code_version")


def results_root_default() -> Path:
    """Where results live unless --results says otherwise: $RINGBENCH_RESULTS, else ./results."""
    return Path(os.environ.get("RINGBENCH_RESULTS", "results"))


class CorruptResult(Exception):
    """A result.json that exists but cannot be tabulated (truncated, not JSON, missing keys)."""


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def cell_id(
    *,
    suite: str,
    task_name: str,
    params: Mapping[str, Any],
    seed: int,
    protocol_version: str,
    checkpoint_sha256: str | None,
    options: Mapping[str, Any],
    dataset_sha256: str | None = None,
) -> str:
    """Stable identity of a cell: same inputs, same id, on every machine and Python run.

    `dataset_sha256` is the fingerprint of the data the cell reads (bench.fingerprint); suites that
    read none pass None and keep the ids they had before fingerprints existed. `options` must not
    hold data paths (Suite.path_options): the fingerprint stands for the data, wherever it lives."""
    identity = {
        "checkpoint_sha256": checkpoint_sha256,
        "suite": suite,
        "task": task_name,
        "params": dict(params),
        "seed": int(seed),
        "protocol_version": str(protocol_version),
        "options": dict(options),
    }
    if dataset_sha256 is not None:
        identity["dataset_sha256"] = str(dataset_sha256)
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:20]


def _write_temporary(path: Path, text: str, fsync: bool = True) -> Path:
    """`text` in a new temporary beside `path`; on a full disk the partial file is removed and a
    DiskFullError names `path` and the free space."""
    try:
        fd, tmp = create_temporary(path)
    except OSError as error:
        raise disk_full(error, path) or error from None
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
    except BaseException as error:
        full = disk_full(error, path)
        tmp.unlink(missing_ok=True)
        raise full or error from None
    return tmp


def atomic_write_json(path: str | os.PathLike, value: Any, fsync: bool = True) -> None:
    """Temporary file in the same folder, (fsync,) rename: readers never see half a file.

    Markers that can be rebuilt (submitted.json) skip the fsync; results never do.
    """
    path = Path(path)
    tmp = _write_temporary(path, json.dumps(value, indent=1, default=str), fsync)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish_json_once(path: str | os.PathLike, value: Any) -> bool:
    """Atomically create `path` unless it exists. Returns False (and writes nothing) if it did."""
    path = Path(path)
    tmp = _write_temporary(path, json.dumps(value, indent=1, default=str))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as handle:
        return json.load(handle)


def validate_result(result: Any, where: str) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise CorruptResult(f"{where}: expected a JSON object, found {type(result).__name__}")
    missing = [key for key in RESULT_KEYS if key not in result]
    if missing:
        raise CorruptResult(f"{where}: missing keys {', '.join(missing)}")
    if result["schema_version"] != SCHEMA_VERSION:
        raise CorruptResult(f"{where}: schema_version {result['schema_version']!r}, this code reads {SCHEMA_VERSION}")
    metrics = result["metrics"]
    if not isinstance(metrics, dict) or not metrics:
        raise CorruptResult(f"{where}: 'metrics' must be a non-empty object")
    for name, metric in metrics.items():
        if not isinstance(metric, dict) or not isinstance(metric.get("mean"), int | float):
            raise CorruptResult(f"{where}: metric {name!r} has no numeric 'mean'")
    return result


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a result.json; raise CorruptResult naming the file and the problem."""
    try:
        result = read_json(path)
    except json.JSONDecodeError as error:
        raise CorruptResult(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
    except UnicodeDecodeError as error:
        raise CorruptResult(f"{path}: not UTF-8 text ({error.reason})") from None
    return validate_result(result, str(path))


def append_event(folder: Path, event: str, **fields: Any) -> None:
    """One JSON line per event; a single O_APPEND write of a short line is atomic on local filesystems."""
    record = {"event": event, "time": time.time(), "host": socket.gethostname(), "pid": os.getpid(), **fields}
    line = (json.dumps(record, default=str) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # less the umask
    try:
        os.write(fd, line)
    except OSError as error:
        raise disk_full(error, folder / EVENTS) or error from None
    finally:
        os.close(fd)


def read_events(folder: Path) -> list[dict[str, Any]]:
    path = folder / EVENTS
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash mid-write; the rest of the history still counts
    return events


@dataclass(frozen=True)
class CellState:
    state: str  # done, failed, running, submitted, queued (claimed by a runner, not yet submitted), pending, corrupt
    detail: str = ""
    job_id: str | None = None
    executor: str | None = None


def _first_line(text: str) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


class CellFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def cell_id(self) -> str:
        return self.path.name

    result_path = property(lambda self: self.path / RESULT)
    error_path = property(lambda self: self.path / ERROR)
    running_path = property(lambda self: self.path / RUNNING)
    submitted_path = property(lambda self: self.path / SUBMITTED)
    claim_path = property(lambda self: self.path / CLAIM)
    description_path = property(lambda self: self.path / CELL)

    def read_result(self) -> dict[str, Any]:
        return read_result(self.result_path)

    def _read_optional(self, path: Path) -> dict[str, Any] | None:
        try:
            value = read_json(path)
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def submitted(self) -> dict[str, Any] | None:
        return self._read_optional(self.submitted_path)

    def claim(self) -> dict[str, Any] | None:
        return self._read_optional(self.claim_path)

    def description(self) -> dict[str, Any] | None:
        return self._read_optional(self.description_path)

    def running(self) -> dict[str, Any] | None:
        return self._read_optional(self.running_path)

    def error(self) -> dict[str, Any] | None:
        return self._read_optional(self.error_path)

    def state(self) -> CellState:
        """The state as the files tell it (a job that died silently still looks submitted/running)."""
        if self.result_path.exists():
            try:
                self.read_result()
            except CorruptResult as error:
                return CellState("corrupt", str(error))
            except OSError as error:
                return CellState("corrupt", f"{self.result_path}: {error}")
            return CellState("done")
        submitted = self.submitted() or {}
        running = self.running()
        error = self.error()
        job_id, executor = submitted.get("job_id"), submitted.get("executor")
        claim = self.claim() or {}
        claimed_at = claim.get("time", 0)
        # a claim newer than the submission and the last failure: a runner will submit the cell
        if claim and claimed_at > submitted.get("time", 0) and claimed_at > (error or {}).get("time", 0):
            return CellState("queued", f"claimed by runner {claim.get('runner_pid')} on {claim.get('host')}",
                             None, "runner")
        # a failure only counts if it is newer than the latest submission
        if error and error.get("time", 0) >= submitted.get("time", 0):
            return CellState("failed", _first_line(error.get("message", "")), job_id, executor)
        if running and running.get("time", 0) >= submitted.get("time", 0):
            return CellState("running", f"attempt {running.get('attempt', 1)} on {running.get('host')}", job_id, executor)
        if submitted:
            return CellState("submitted", "", job_id, executor)
        return CellState("pending")

    def quarantine_result(self, reason: str) -> Path:
        """Move a corrupt or replaced result aside (kept for inspection, never tabulated)."""
        target = self.path / f"result.{reason}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.json"
        os.replace(self.result_path, target)
        append_event(self.path, "result_moved", reason=reason, to=target.name)
        return target


class ResultStore:
    """Paths of one suite's results under a results root."""

    def __init__(self, root: str | os.PathLike, suite: str):
        self.root = Path(root)
        self.suite = suite

    suite_dir = property(lambda self: self.root / self.suite)
    cells_dir = property(lambda self: self.suite_dir / "cells")
    shared_dir = property(lambda self: self.suite_dir / "shared")
    jobs_dir = property(lambda self: self.suite_dir / "jobs")

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across processes (and hosts, where the filesystem supports flock): held while a
        runner classifies the cells and claims those it will submit, so overlapping runs never
        submit a cell twice."""
        self.suite_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.suite_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def cell(self, cell_id: str) -> CellFolder:
        return CellFolder(self.cells_dir / cell_id)

    def iter_cells(self) -> Iterator[CellFolder]:
        if not self.cells_dir.is_dir():
            return
        for entry in sorted(os.scandir(self.cells_dir), key=lambda e: e.name):
            if entry.is_dir():
                yield CellFolder(Path(entry.path))


def suites_in(root: str | os.PathLike) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "cells").is_dir())
