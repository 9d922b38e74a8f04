"""Resource profiles per job kind, turned into submitit parameters.

A Task names its profile (`Task.profile`); the runner looks it up here and applies command-line
overrides (`--resource eval.gpus=2`, or `--resource timeout_min=30` for every profile).
Generic names (timeout_min, mem_gb, cpus_per_task, gpus_per_node, nodes, tasks_per_node) mean the
same thing to every executor; SLURM-only settings are sent with the `slurm_` prefix, which the local
and debug executors ignore, so one call site serves every executor.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ringbench_common.overrides import OverrideError, parse_override, split_pair


class ProfileError(ValueError):
    """A bad resource profile or `--resource` override; the message names the key, value or profile."""


@dataclass(frozen=True)
class ResourceProfile:
    gpus: int = 1  # per node; one task per GPU unless tasks_per_node is set
    cpus: int = 8  # per task
    mem_gb: int = 32  # per node
    timeout_min: int = 120
    nodes: int = 1
    tasks_per_node: int | None = None  # None: max(gpus, 1)
    partition: str | None = None  # None: the cluster's default partition
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None

    @property
    def tasks(self) -> int:
        return self.tasks_per_node if self.tasks_per_node is not None else max(self.gpus, 1)

    def describe(self) -> str:
        parts = [f"{self.nodes}x{self.tasks} task(s)", f"{self.gpus} gpu/node", f"{self.cpus} cpu/task",
                 f"{self.mem_gb} GB", f"{self.timeout_min} min"]
        if self.partition:
            parts.append(f"partition={self.partition}")
        return ", ".join(parts)

    def submitit_parameters(self) -> dict[str, Any]:
        """Generic parameters plus `slurm_`-prefixed ones (ignored by the local and debug executors)."""
        params: dict[str, Any] = {
            "timeout_min": int(self.timeout_min),
            "mem_gb": int(self.mem_gb),
            "cpus_per_task": int(self.cpus),
            "gpus_per_node": int(self.gpus),
            "tasks_per_node": int(self.tasks),
            "nodes": int(self.nodes),
        }
        if self.partition:
            params["slurm_partition"] = self.partition
        extra = {key: value for key, value in (("account", self.account), ("qos", self.qos)) if value}
        if self.constraint:
            params["slurm_constraint"] = self.constraint
        if extra:
            params["slurm_additional_parameters"] = extra
        return params


PROFILES: dict[str, ResourceProfile] = {
    # contrastive pretraining: DDP, one task per GPU
    "pretrain": ResourceProfile(gpus=4, cpus=10, mem_gb=128, timeout_min=24 * 60),
    # frozen-feature evaluation (few-shot episodes, kNN)
    "eval": ResourceProfile(gpus=1, cpus=8, mem_gb=32, timeout_min=120),
    "fewshot": ResourceProfile(gpus=1, cpus=8, mem_gb=48, timeout_min=240),
    # Detectron2 fine-tuning (Mask R-CNN / keypoints): 8 GPUs as in MoCo's detection configs
    "detection": ResourceProfile(gpus=8, cpus=8, mem_gb=256, timeout_min=24 * 60),
    # linear probe on frozen features
    "linear": ResourceProfile(gpus=1, cpus=8, mem_gb=32, timeout_min=6 * 60),
    # CPU-only checks (estimator and runner self-tests)
    "cpu": ResourceProfile(gpus=0, cpus=1, mem_gb=4, timeout_min=30),
}

FIELDS = {f.name: f for f in dataclasses.fields(ResourceProfile)}
HINTS = {name: kind for name, kind in typing.get_type_hints(ResourceProfile).items() if name in FIELDS}
ALIASES = {"gpus_per_node": "gpus", "cpus_per_task": "cpus", "time": "timeout_min", "mem": "mem_gb"}


def apply_resource_overrides(profiles: dict[str, ResourceProfile], overrides: Iterable[str]) -> dict[str, ResourceProfile]:
    """Apply `[PROFILE.]KEY=VALUE` strings; a key without a profile applies to every profile."""
    result = dict(profiles)
    for item in overrides:
        if "=" not in item:
            raise ProfileError(f"--resource {item!r}: expected [PROFILE.]KEY=VALUE, e.g. eval.gpus=2 or timeout_min=30")
        target, value = split_pair(item)
        profile_name, _, key = target.rpartition(".")
        try:
            key, converted = parse_override((key, value), HINTS, what="resource key", label="", aliases=ALIASES)
        except OverrideError as error:
            raise ProfileError(f"--resource {item!r}: {error}") from None
        if profile_name and profile_name not in result:
            raise ProfileError(f"--resource {item!r}: unknown profile {profile_name!r}; valid profiles: {', '.join(result)}")
        for name in [profile_name] if profile_name else list(result):
            result[name] = dataclasses.replace(result[name], **{key: converted})
    return result


def get_profile(profiles: dict[str, ResourceProfile], name: str) -> ResourceProfile:
    if name not in profiles:
        raise ProfileError(f"unknown resource profile {name!r}; valid profiles: {', '.join(profiles)}")
    return profiles[name]
