"""submitit executors for the runner: auto, local, debug and slurm behind one call site."""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from pretrain.overrides import comma_list
from slurm.jobs import slurm_job_states as slurm_job_states  # re-exported: they used to live here
from slurm.jobs import slurm_live_jobs as slurm_live_jobs
from slurm.profiles import ProfileError, ResourceProfile

EXECUTORS = ("auto", "local", "debug", "slurm")


def slurm_available() -> bool:
    """True when sbatch exists and a controller answers (sinfo returns at least one partition)."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


def resolve_executor(kind: str) -> str:
    if kind not in EXECUTORS:
        raise ValueError(f"unknown executor {kind!r}; valid executors: {', '.join(EXECUTORS)}")
    if kind == "auto":
        return "slurm" if slurm_available() else "local"
    return kind


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


def fit_profile(profile: ResourceProfile, executor: str, notes: list[str]) -> ResourceProfile:
    """Shrink a request that no node can satisfy (a CPU-only box, the local test cluster), saying so."""
    changes: dict[str, Any] = {}
    if executor == "local":
        gpus = local_gpu_count()
        if profile.gpus > gpus:
            changes["gpus"] = gpus
            if profile.tasks_per_node is None:
                changes["tasks_per_node"] = max(gpus, 1)
    elif executor == "slurm":
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
    if changes:
        notes.append(f"no node offers {profile.describe()}; using " + ", ".join(f"{k}={v}" for k, v in changes.items()))
        return dataclasses.replace(profile, **changes)
    return profile


def make_executor(
    executor: str,
    folder: Path,
    profile: ResourceProfile,
    *,
    name: str,
    max_parallel: int | None = None,
    dependency: str | None = None,
    max_num_timeout: int = 3,
):
    """An AutoExecutor configured from a profile; SLURM-only settings carry the slurm_ prefix."""
    import submitit

    folder.mkdir(parents=True, exist_ok=True)
    auto = submitit.AutoExecutor(folder=folder, cluster=executor, slurm_max_num_timeout=max_num_timeout)
    params = profile.submitit_parameters()
    params["name"] = name
    params["slurm_signal_delay_s"] = 60
    if max_parallel:
        params["slurm_array_parallelism"] = int(max_parallel)
    if dependency:
        extra = dict(params.get("slurm_additional_parameters", {}))
        extra["dependency"] = dependency
        params["slurm_additional_parameters"] = extra
    if executor != "slurm":
        params.pop("nodes", None)  # local executors run on this one machine
    auto.update_parameters(**params)
    return auto
