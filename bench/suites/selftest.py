"""selftest: a CPU-only suite that exercises the runner itself, not a model.

Use it to check an executor or a cluster end to end (`python -m bench.run --suite selftest
--executor slurm`), and in the runner's own tests: cells can sleep (to be killed or requeued
mid-way), fail on purpose, resume from a step file in their folder, and check a multi-task
job's `env://` rendezvous with a gloo all-reduce.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.suite import Cell, CellOutput, InputError, Metric, Suite, Task


class SelfTestSuite(Suite):
    name = "selftest"
    protocol_version = "1"
    uses_checkpoints = False
    reads_data_root = False
    default_seeds = (0,)
    options = {
        "n_tasks": 4,  # number of tasks (cells per seed)
        "sleep_s": 0.0,  # wall time each cell spends, in 0.1 s steps that survive a requeue
        "fail_tasks": [-1],  # task indices that raise on purpose (-1: none)
        "n_samples": 8,  # per-sample values stored for paired statistics
        "profile": "cpu",
    }

    def check(self, options: Mapping[str, Any], data_root: Path | None, checkpoints) -> None:
        if options["n_tasks"] < 1:
            raise InputError(f"selftest n_tasks={options['n_tasks']}: expected at least 1")
        if options["sleep_s"] < 0:
            raise InputError(f"selftest sleep_s={options['sleep_s']}: expected a non-negative number")

    def tasks(self, options: Mapping[str, Any], data_root: Path | None) -> list[Task]:
        return [Task(name=f"probe{i:04d}", params={"index": i}, profile=options["profile"])
                for i in range(options["n_tasks"])]

    def run(self, cell: Cell, workdir: Path) -> CellOutput:
        index = int(cell.task.params["index"])
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        info: dict[str, Any] = {"engine": "selftest", "world_size": world_size}
        if world_size > 1:
            info.update(self._all_reduce_check(world_size))
        # resumable sleep: progress lives in the cell folder, found again after a requeue
        steps = int(round(cell.options["sleep_s"] * 10))
        step_file = workdir / "selftest_steps.json"
        done_steps = json.loads(step_file.read_text())["done"] if step_file.exists() else 0
        info["resumed_from_step"] = done_steps
        for step in range(done_steps, steps):
            time.sleep(0.1)
            if int(os.environ.get("RANK", "0")) == 0:  # atomic, so a kill or a reader never sees half a file
                tmp = step_file.with_name(f".{step_file.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps({"done": step + 1}))
                os.replace(tmp, step_file)
        if index in list(cell.options["fail_tasks"]):
            raise RuntimeError(f"selftest task {cell.task.name} fails on purpose (fail_tasks)")
        n = int(cell.options["n_samples"])
        values = [float((index * 7 + cell.seed * 3 + s) % 10) for s in range(n)]
        return CellOutput(
            metrics={"value": Metric.from_samples(values, [f"s{s}" for s in range(n)])},
            info=info,
        )

    @staticmethod
    def _all_reduce_check(world_size: int) -> dict[str, Any]:
        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method="env://")
        try:
            rank = dist.get_rank()
            value = torch.tensor([float(rank + 1)])
            dist.all_reduce(value)
            expected = world_size * (world_size + 1) / 2
            if value.item() != expected:
                raise RuntimeError(f"all_reduce gave {value.item()}, expected {expected}")
            return {"all_reduce_sum": value.item(), "rank_hosts": os.environ.get("MASTER_ADDR"),
                    "master_port": os.environ.get("MASTER_PORT")}
        finally:
            dist.destroy_process_group()
