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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.options import SuiteOptions, at_least, option
from bench.suite import Cell, CellOutput, Metric, Suite, Task
from ringbench_common.atomic_files import atomic_write_text


@dataclass(frozen=True)
class SelfTestOptions(SuiteOptions):
    n_tasks: int = option(4, "number of tasks (cells per seed)", check=at_least(1))
    sleep_s: float = option(0.0, "wall time each cell spends, in 0.1 s steps that survive a requeue", check=at_least(0))
    fail_tasks: tuple[int, ...] = option((-1,), "task indices that raise on purpose (-1: none)")
    n_samples: int = option(8, "per-sample values stored for paired statistics", check=at_least(1))
    profile: str = option("cpu", "resource profile of every cell")


class SelfTestSuite(Suite):
    name = "selftest"
    protocol_version = "1"
    uses_checkpoints = False
    reads_data_root = False
    default_seeds = (0,)
    Options = SelfTestOptions

    def tasks(self, options: SelfTestOptions, data_root: Path | None) -> list[Task]:
        return [Task(name=f"probe{i:04d}", params={"index": i}, profile=options.profile) for i in range(options.n_tasks)]

    def run(self, cell: Cell, workdir: Path) -> CellOutput:
        opts = cell.settings
        index = int(cell.task.params["index"])
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        info: dict[str, Any] = {"engine": "selftest", "world_size": world_size}
        if world_size > 1:
            info.update(self._all_reduce_check(world_size))
        # resumable sleep: progress lives in the cell folder, found again after a requeue
        steps = int(round(opts.sleep_s * 10))
        step_file = workdir / "selftest_steps.json"
        done_steps = json.loads(step_file.read_text())["done"] if step_file.exists() else 0
        info["resumed_from_step"] = done_steps
        for step in range(done_steps, steps):
            time.sleep(0.1)
            if int(os.environ.get("RANK", "0")) == 0:  # atomic, so a kill or a reader never sees half a file
                atomic_write_text(step_file, json.dumps({"done": step + 1}))
        if index in opts.fail_tasks:
            raise RuntimeError(f"selftest task {cell.task.name} fails on purpose (fail_tasks)")
        n = opts.n_samples
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
