"""Execution classes: how cells reach compute, behind one small interface, found by name in a registry.

    execution = resolve_execution("auto")          # SlurmExecution when a controller answers, else LocalExecution
    profile = execution.fit_profile(PROFILES["eval"], notes)   # what a resource request becomes here
    executor = execution.make_executor(folder, profile, name="rb-knn-eval")
    job = execution.submit(executor, fn)           # or submit_array(executor, fns): one SLURM array
    recorded = recorded_job(json.load(open("submitted.json")))  # the recorded name, parsed once
    recorded.alive(LiveJobs.query([recorded]))     # True / False / None (this machine cannot tell)

Each class says how the runner drives it (`Driving`): in-process one job at a time (debug), a pool of
local processes (local), or every cell of a profile as one scheduler array (slurm). Callers ask the
object (`jobs_outlive_runner`, `supports_dependencies`, `driving`), never its name; the registry below
is the one place a name is looked at. Adding an executor is one class and one registry line.
"""

from __future__ import annotations

import dataclasses
import enum
import glob
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ringbench_common.overrides import comma_list
from slurm.jobs import cancel_jobs, process_alive, queue_state
from slurm.jobs import slurm_job_states as slurm_job_states  # re-exported: they used to live here
from slurm.jobs import slurm_live_jobs as slurm_live_jobs
from slurm.local_cluster import pid_alive
from slurm.profiles import ProfileError, ResourceProfile

AUTO = "auto"  # not a class: resolve_execution picks the available execution with the highest affinity


class UnknownExecutor(ValueError):
    """An executor name that is not registered; the message lists the valid names."""


class Driving(enum.Enum):
    """How the runner drives an execution's jobs."""

    IN_PROCESS = "in-process"  # one job at a time inside the runner (pdb post-mortem on failure)
    PROCESS_POOL = "process-pool"  # up to --max-parallel child processes on this machine
    BATCH_ARRAY = "batch-array"  # every cell of a profile submitted at once as one scheduler array


@dataclass(frozen=True)
class Execution:
    """The interface: what a resource request becomes, submitting, a recorded job's liveness, cancelling.

    Stateless and frozen: instances compare equal by class, hash, and pickle into jobs."""

    name: ClassVar[str]
    display_name: ClassVar[str]  # in messages, e.g. "pending in the SLURM queue"
    submitit_cluster: ClassVar[str]  # submitit's AutoExecutor cluster
    driving: ClassVar[Driving]
    jobs_outlive_runner: ClassVar[bool] = False  # --no-wait possible; an unknown job state counts as alive
    supports_dependencies: ClassVar[bool] = False  # afterok follow-up jobs (`--then` submitted at once)
    runs_here: ClassVar[bool] = True  # jobs run on this machine, so its devices can be checked up front

    @classmethod
    def affinity(cls) -> int:
        """For `auto`: the available execution with the highest affinity wins; below 0 never."""
        return -1

    def fit_profile(self, profile: ResourceProfile, notes: list[str]) -> ResourceProfile:
        """Shrink a request that no node here can satisfy, saying so in `notes`."""
        return profile

    def submitit_parameters(self, profile: ResourceProfile) -> dict[str, Any]:
        """Generic parameters plus `slurm_`-prefixed ones, which submitit's local executors ignore."""
        params = profile.submitit_parameters()
        params.pop("nodes", None)  # local executors run on this one machine
        return params

    def make_executor(self, folder: Path, profile: ResourceProfile, *, name: str, max_parallel: int | None = None,
                      dependency: str | None = None, max_num_timeout: int = 3):
        """A submitit executor configured from a profile."""
        import submitit

        folder.mkdir(parents=True, exist_ok=True)
        auto = submitit.AutoExecutor(folder=folder, cluster=self.submitit_cluster,
                                     slurm_max_num_timeout=max_num_timeout)
        params = self.submitit_parameters(profile)
        params["name"] = name
        params["slurm_signal_delay_s"] = 60
        if max_parallel:
            params["slurm_array_parallelism"] = int(max_parallel)
        if dependency:
            extra = dict(params.get("slurm_additional_parameters", {}))
            extra["dependency"] = dependency
            params["slurm_additional_parameters"] = extra
        auto.update_parameters(**params)
        return auto

    def submit(self, executor, fn):
        return executor.submit(fn)

    def submit_array(self, executor, fns: list) -> list:
        """Submit several jobs; an execution with arrays submits them as one."""
        return [executor.submit(fn) for fn in fns]

    def run_in_process(self, job) -> None:
        """Run a submitted job to its end inside this process (only `Driving.IN_PROCESS` executions)."""
        raise NotImplementedError(f"the {self.name} executor does not run jobs in process")

    def live_jobs(self, job_ids: list[str]) -> set[str] | None:
        """Which of these job ids are queued or running, when a scheduler must be asked; None if unknown."""
        return set()

    def job_alive(self, job_id: str, host: str | None, live: set[str] | None) -> bool | None:
        """Is this recorded job still queued or running? None when this machine cannot tell."""
        return False

    def queue_states(self, job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
        """(state, reason) of the jobs a scheduler still lists; {} without a scheduler, None if it does not answer."""
        return {}

    def queue_state(self, job_id: str) -> str | None:
        """"STATE REASON" of a job in the scheduler's queue, None once it left it (or without a scheduler)."""
        return None

    def cancel(self, job_ids: list[str]) -> None:
        """Stop these jobs; finished ones are ignored."""

    def parallelism(self, max_parallel: int | None) -> str:
        """How many cells run at once, for the --dry-run view."""
        return str(max_parallel or os.cpu_count())


@dataclass(frozen=True)
class DebugExecution(Execution):
    """submitit's debug executor: each job runs inside the runner, one at a time, and ends with it."""

    name = "debug"
    display_name = "debug"
    submitit_cluster = "debug"
    driving = Driving.IN_PROCESS

    def run_in_process(self, job) -> None:
        if sys.stdin is not None and sys.stdin.isatty():
            try:
                job.results()  # pdb post-mortem on failure, as submitit's debug executor does
            except Exception:  # noqa: BLE001 - the cell's error.json records it
                pass
            return
        os.environ["SUBMITIT_DEBUG_JOB_ID"] = str(job.job_id)
        try:
            job.exception()
        finally:
            os.environ.pop("SUBMITIT_DEBUG_JOB_ID", None)


@dataclass(frozen=True)
class LocalExecution(Execution):
    """submitit's local executor: each job is a child process of the runner on this machine."""

    name = "local"
    display_name = "local"
    submitit_cluster = "local"
    driving = Driving.PROCESS_POOL

    @classmethod
    def affinity(cls) -> int:
        return 1

    def fit_profile(self, profile: ResourceProfile, notes: list[str]) -> ResourceProfile:
        changes: dict[str, Any] = {}
        gpus = local_gpu_count()
        if profile.gpus > gpus:
            changes["gpus"] = gpus
            if profile.tasks_per_node is None:
                changes["tasks_per_node"] = max(gpus, 1)
        return _apply_changes(profile, changes, notes)

    def job_alive(self, job_id: str, host: str | None, live: set[str] | None) -> bool | None:
        return process_alive(host, job_id)  # the job id of a local job is its process id

    def cancel(self, job_ids: list[str]) -> None:
        for job_id in job_ids:  # process ids of jobs this machine started
            if job_id.isdigit() and pid_alive(int(job_id)):
                os.kill(int(job_id), signal.SIGTERM)


@dataclass(frozen=True)
class SlurmExecution(Execution):
    """submitit's SLURM executor: jobs wait in the scheduler's queue and outlive the runner."""

    name = "slurm"
    display_name = "SLURM"
    submitit_cluster = "slurm"
    driving = Driving.BATCH_ARRAY
    jobs_outlive_runner = True
    runs_here = False
    supports_dependencies = True

    @classmethod
    def affinity(cls) -> int:
        return 2 if slurm_available() else -1

    def fit_profile(self, profile: ResourceProfile, notes: list[str]) -> ResourceProfile:
        changes: dict[str, Any] = {}
        if profile.partition:
            partitions = slurm_partitions()
            if partitions is not None and profile.partition not in partitions:
                raise ProfileError(f"partition {profile.partition!r} does not exist on this cluster; "
                                   f"partitions: {', '.join(partitions) or '(none)'}")
        limits = slurm_node_limits(profile.partition)
        if limits:
            if profile.gpus > limits["gpus"]:
                changes["gpus"] = limits["gpus"]
                if profile.tasks_per_node is None:
                    changes["tasks_per_node"] = max(min(profile.tasks, limits["gpus"]), 1)
            tasks = changes.get("tasks_per_node", profile.tasks)
            if profile.cpus * tasks > limits["cpus"]:
                changes["cpus"] = max(limits["cpus"] // tasks, 1)
            if profile.mem_gb > limits["mem_gb"]:
                changes["mem_gb"] = limits["mem_gb"]
        return _apply_changes(profile, changes, notes)

    def submitit_parameters(self, profile: ResourceProfile) -> dict[str, Any]:
        return profile.submitit_parameters()

    def submit_array(self, executor, fns: list) -> list:
        with executor.batch():  # one sbatch call: a job array
            jobs = [executor.submit(fn) for fn in fns]
        return jobs

    def live_jobs(self, job_ids: list[str]) -> set[str] | None:
        return slurm_live_jobs(job_ids)

    def job_alive(self, job_id: str, host: str | None, live: set[str] | None) -> bool | None:
        return None if live is None else job_id in live

    def queue_states(self, job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
        return slurm_job_states(job_ids)

    def queue_state(self, job_id: str) -> str | None:
        return queue_state(job_id)

    def cancel(self, job_ids: list[str]) -> None:
        cancel_jobs(job_ids)

    def parallelism(self, max_parallel: int | None) -> str:
        return str(max_parallel or "all at once (array)")


# The registry: the one place an executor name is looked at.
EXECUTIONS: dict[str, type[Execution]] = {cls.name: cls for cls in (LocalExecution, DebugExecution, SlurmExecution)}
EXECUTOR_CHOICES = (AUTO, *EXECUTIONS)


def execution_named(name: str) -> Execution:
    """The registered execution of this name (no `auto`); a typo lists the valid names."""
    if name not in EXECUTIONS:
        raise UnknownExecutor(f"unknown executor {name!r}; valid executors: {', '.join(EXECUTOR_CHOICES)}")
    return EXECUTIONS[name]()


def resolve_execution(name: str) -> Execution:
    """A registered name, or `auto`: the available execution with the highest affinity (SLURM, else local)."""
    if name != AUTO:
        return execution_named(name)
    ranked = sorted(EXECUTIONS.values(), key=lambda cls: cls.affinity(), reverse=True)
    return ranked[0]()


@dataclass(frozen=True)
class RecordedJob:
    """A job as a cell's submitted.json records it, its executor name parsed once."""

    execution: Execution
    job_id: str
    host: str | None = None

    def alive(self, live: LiveJobs) -> bool | None:
        return self.execution.job_alive(self.job_id, self.host, live.of(self.execution))


def recorded_job(record: Mapping[str, Any]) -> RecordedJob | None:
    """The job a submitted.json record names; None when it names none (no executor recorded)."""
    name = record.get("executor")
    if not name:
        return None
    return RecordedJob(execution_named(str(name)), str(record.get("job_id") or ""), record.get("host"))


class LiveJobs:
    """One answer per execution about which of its jobs are alive: the scheduler is asked once per kind."""

    def __init__(self, answers: Mapping[Execution, set[str] | None] | None = None):
        self._answers = dict(answers or {})

    @classmethod
    def query(cls, jobs: Iterable[RecordedJob]) -> LiveJobs:
        ids: dict[Execution, list[str]] = {}
        for job in jobs:
            ids.setdefault(job.execution, []).append(job.job_id)
        return cls({execution: execution.live_jobs(job_ids) for execution, job_ids in ids.items()})

    def of(self, execution: Execution) -> set[str] | None:
        """The live job ids of this execution; None when it was not asked or did not answer."""
        return self._answers.get(execution)


def _apply_changes(profile: ResourceProfile, changes: dict[str, Any], notes: list[str]) -> ResourceProfile:
    if not changes:
        return profile
    notes.append(f"no node offers {profile.describe()}; using " + ", ".join(f"{k}={v}" for k, v in changes.items()))
    return dataclasses.replace(profile, **changes)


def slurm_available() -> bool:
    """True when sbatch exists and a controller answers (sinfo returns at least one partition)."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


def local_gpu_count() -> int:
    """GPUs on this machine without importing torch (the runner stays light)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in comma_list(visible) if d != "-1"])
    return len(glob.glob("/dev/nvidia[0-9]*"))


def slurm_partitions() -> list[str] | None:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return [p.rstrip("*") for p in out.stdout.split()]


def slurm_node_limits(partition: str | None) -> dict[str, int] | None:
    """Largest CPUs, memory (GB) and GPUs of any node in the partition, from sinfo; None if unknown."""
    command = ["sinfo", "-h", "-N", "-o", "%c|%m|%G"]
    if partition:
        command += ["-p", partition]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    cpus = mem = gpus = 0
    for line in out.stdout.strip().splitlines():
        c, m, gres = (line.split("|") + ["", "", ""])[:3]
        try:
            cpus, mem = max(cpus, int(c.rstrip("+"))), max(mem, int(m.rstrip("+")) // 1024)
        except ValueError:
            continue
        for item in gres.split(","):
            if item.startswith("gpu"):
                count = item.split("(")[0].rsplit(":", 1)[-1]
                gpus = max(gpus, int(count) if count.isdigit() else 1)
    return {"cpus": cpus, "mem_gb": max(mem, 1), "gpus": gpus}


__all__ = ["AUTO", "EXECUTIONS", "EXECUTOR_CHOICES", "DebugExecution", "Driving", "Execution", "LiveJobs",
           "LocalExecution", "RecordedJob", "SlurmExecution", "UnknownExecutor", "execution_named",
           "recorded_job", "resolve_execution"]
