"""`--suite pretrain --then SUITES`: evaluate the encoders a checkpoint-producing suite writes.

Every encoder a producing cell publishes counts: its `snapshot_every` snapshots and its final encoder.
An executor whose jobs run beside the runner (local) evaluates the snapshots while pretraining runs
(bench.follow); one that runs jobs in process (debug) runs the evaluation suites after the producing
cells finish.
An executor with dependencies (SLURM) submits both at once: the producing cells as an array, and a small
follow-up job with an `afterok` dependency on them that plans the evaluation suites on the trained
encoders and submits their arrays; while waiting, the runner also submits each snapshot's cells as it
appears. If any producing cell fails, SLURM never starts the follow-up (DependencyNeverSatisfied) and
the runner cancels it and says so.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bench.execute import plan_suite, run_plan, run_suite
from bench.plan import Plan
from bench.store import CorruptResult, ResultStore
from bench.suite import Suite
from slurm.executors import Execution
from slurm.profiles import ResourceProfile, get_profile


def trained_encoders(producer: Suite, results_root: Path, cell_ids: list[str]) -> tuple[list[Path], list[str]]:
    """Encoder paths recorded by the producing suite's finished cells, and the ids of cells without one."""
    store = ResultStore(results_root, producer.name)
    encoders, missing = [], []
    for cid in cell_ids:
        try:
            encoder = producer.produced_checkpoint(store.cell(cid).read_result())
        except (OSError, CorruptResult):
            encoder = None
        if encoder is not None and encoder.is_file():
            from bench.follow import snapshots_of

            encoders.extend([*snapshots_of(encoder), encoder])  # its snapshots, then the final encoder
        else:
            missing.append(cid)
    return encoders, missing


@dataclass
class FollowUpJob:
    """Runs inside the scheduler once the producing array succeeded: plan and submit the evaluation suites."""

    then: list[str]
    results_root: str
    producer_cell_ids: list[str]
    profiles: dict[str, ResourceProfile]
    execution: Execution  # where the evaluation suites go: the producing cells' execution
    max_parallel: int | None = None
    data_root: str | None = None
    seeds: list[int] | None = None
    option_pairs: dict[str, list[str]] = field(default_factory=dict)
    producer: str = "pretrain"  # the suite whose cells wrote the encoders

    def __call__(self) -> dict[str, Any]:
        from bench.suites import load_suite

        encoders, missing = trained_encoders(load_suite(self.producer), Path(self.results_root), self.producer_cell_ids)
        if missing:
            raise RuntimeError(f"{self.producer} cells without an encoder: {', '.join(missing)}")
        submitted = {}
        for name in self.then:
            run = run_suite(name, results_root=Path(self.results_root), execution=self.execution, profiles=self.profiles,
                            option_pairs=self.option_pairs.get(name, []), checkpoint_specs=[str(e) for e in encoders],
                            data_root=Path(self.data_root) if self.data_root else None, seeds=self.seeds,
                            max_parallel=self.max_parallel, wait=False, progress=False, stream=sys.stdout)
            submitted[name] = run.summary.job_ids
            print(f"{name}: submitted {run.summary.submitted} cell(s) on {len(encoders)} encoder(s)", flush=True)
        return submitted


def run_then(plan: Plan, then: list[str], execution: Execution, profiles: dict[str, ResourceProfile], *,
             pretrain_job_ids: list[str], max_parallel: int | None, wait: bool, force: bool,
             progress: bool, stream: TextIO, seeds: list[int] | None,
             option_pairs: dict[str, list[str]] | None = None) -> tuple[int, list[Plan]]:
    """Run (or, on SLURM, submit with afterok) the evaluation suites on the encoders `plan`'s cells produce;
    `option_pairs` holds each evaluation suite's key=value options."""
    option_pairs = option_pairs or {}
    cell_ids = [p.cell_id for p in plan.cells]
    root = plan.store.root
    if execution.supports_dependencies and pretrain_job_ids:
        notes: list[str] = []
        arrays = sorted({j.split("_")[0] for j in pretrain_job_ids})
        follow = FollowUpJob(then, str(root.resolve()), cell_ids, profiles, execution, max_parallel=max_parallel,
                             data_root=str(plan.data_root) if plan.data_root else None, seeds=seeds,
                             option_pairs=dict(option_pairs), producer=plan.suite.name)
        executor = execution.make_executor(plan.store.jobs_dir, execution.fit_profile(get_profile(profiles, "cpu"), notes),
                                           name="rb-then", dependency="afterok:" + ":".join(arrays))
        job = execution.submit(executor, follow)
        print(f"then: job {job.job_id} plans {', '.join(then)} once {plan.suite.name} job(s) "
              f"{', '.join(arrays)} succeed (afterok)", file=stream)
        if not wait:
            return 0, []
        from bench.follow import follow_pretraining

        # watch the pretraining cells (adopting them) while their snapshots are evaluated as they appear
        watched, _ = follow_pretraining(plan, lambda: run_plan(plan, execution=execution, profiles=profiles,
                                                               progress=progress, stream=stream),
                                        then, execution, profiles, in_background=True, evaluate_final=False,
                                        seeds=seeds, max_parallel=max_parallel, force=force, stream=stream,
                                        poll_s=2.0, option_pairs=dict(option_pairs))
        watch = watched.summary
        if watch.failed:
            print(f"then: {watch.failed} {plan.suite.name} cell(s) failed", file=stream)
        while True:
            state = execution.queue_state(str(job.job_id))
            if state is None:
                break
            if "DependencyNeverSatisfied" in state:
                execution.cancel([str(job.job_id)])
                print(f"then: a {plan.suite.name} cell failed, so {', '.join(then)} was not run "
                      f"(follow-up job {job.job_id} cancelled)", file=stream)
                return 1, []
            time.sleep(2)
        try:
            job.result()
        except Exception as error:  # noqa: BLE001 - report the follow-up job's failure as such
            print(f"then: follow-up job {job.job_id} failed: {str(error).strip().splitlines()[-1]}", file=stream)
            return 1, []
    encoders, missing = trained_encoders(plan.suite, root, cell_ids)
    if missing:
        print(f"then: {len(missing)} {plan.suite.name} cell(s) produced no encoder ({', '.join(missing)}); "
              f"evaluating the {len(encoders)} that did", file=stream)
    if not encoders:
        return 1, []
    code, plans = 0, []
    for name in then:
        try:
            later = plan_suite(name, results_root=root, option_pairs=option_pairs.get(name, []),
                               checkpoint_specs=[str(e) for e in encoders], data_root=plan.data_root, seeds=seeds)
        except ValueError as error:
            print(f"then: {name}: {error}", file=stream)
            code = 2
            continue
        summary = run_plan(later, execution=execution, profiles=profiles, max_parallel=max_parallel, force=force,
                           wait=wait, progress=progress, stream=stream).summary
        print(f"then: {name}: " + ", ".join(f"{k}={v}" for k, v in sorted(summary.states.items())), file=stream)
        code = max(code, 1 if summary.failed else 0)
        plans.append(later)
    return code, plans


__all__ = ["FollowUpJob", "run_then", "trained_encoders"]
