"""`--suite pretrain --then SUITES`: evaluate the encoders a pretraining grid produces.

Every encoder a pretraining cell publishes counts: its `snapshot_every` snapshots and its final encoder.
The local executor evaluates the snapshots while pretraining runs (bench.follow); the debug executor
runs the evaluation suites after the pretraining cells finish.
On SLURM both are submitted at once: the pretraining cells as an array, and a small follow-up job
with an `afterok` dependency on them that plans the evaluation suites on the trained encoders and
submits their arrays; while waiting, the runner also submits each snapshot's cells as it appears.
If any pretraining cell fails, SLURM never starts the follow-up
(DependencyNeverSatisfied) and the runner cancels it and says so.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bench.plan import Plan, build_plan
from bench.store import CorruptResult, ResultStore
from slurm.profiles import ResourceProfile


def trained_encoders(results_root: Path, cell_ids: list[str]) -> tuple[list[Path], list[str]]:
    """Encoder paths recorded by finished pretraining cells, and the ids of cells without one."""
    store = ResultStore(results_root, "pretrain")
    encoders, missing = [], []
    for cid in cell_ids:
        folder = store.cell(cid)
        try:
            encoder = folder.read_result().get("info", {}).get("encoder")
        except (OSError, CorruptResult):
            encoder = None
        if encoder and Path(encoder).is_file():
            from bench.follow import published_encoders

            encoders.extend(published_encoders(Path(encoder).parent))  # its snapshots, then the final encoder
        else:
            missing.append(cid)
    return encoders, missing


@dataclass
class FollowUpJob:
    """Runs inside SLURM once the pretraining array succeeded: plan and submit the evaluation suites."""

    then: list[str]
    results_root: str
    pretrain_cell_ids: list[str]
    profiles: dict[str, ResourceProfile]
    max_parallel: int | None = None
    data_root: str | None = None
    seeds: list[int] | None = None
    option_pairs: dict[str, list[str]] = field(default_factory=dict)

    def __call__(self) -> dict[str, Any]:
        from bench.runner import Runner
        from bench.suites import load_suite

        encoders, missing = trained_encoders(Path(self.results_root), self.pretrain_cell_ids)
        if missing:
            raise RuntimeError(f"pretraining cells without an encoder: {', '.join(missing)}")
        submitted = {}
        for name in self.then:
            suite = load_suite(name)
            plan = build_plan(name, suite, results_root=Path(self.results_root),
                              option_pairs=self.option_pairs.get(name, []),
                              checkpoint_specs=[str(e) for e in encoders],
                              data_root=Path(self.data_root) if self.data_root else None, seeds=self.seeds)
            suite.prepare(plan.options, plan.data_root, plan.store.shared_dir)
            summary = Runner(plan, "slurm", self.profiles, max_parallel=self.max_parallel, wait=False,
                             progress=False, stream=sys.stdout).run()
            submitted[name] = summary.job_ids
            print(f"{name}: submitted {summary.submitted} cell(s) on {len(encoders)} encoder(s)", flush=True)
        return submitted


def _squeue_reason(job_id: str) -> str | None:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True)
    text = out.stdout.strip()
    return text or None


def run_then(plan: Plan, then: list[str], executor: str, profiles: dict[str, ResourceProfile], *,
             pretrain_job_ids: list[str], max_parallel: int | None, wait: bool, force: bool,
             progress: bool, stream: TextIO, seeds: list[int] | None) -> tuple[int, list[Plan]]:
    """Run (or, on SLURM, submit with afterok) the evaluation suites on the pretrained encoders."""
    from bench.runner import Runner
    from bench.suites import load_suite

    cell_ids = [p.cell_id for p in plan.cells]
    root = plan.store.root
    if executor == "slurm" and pretrain_job_ids:
        from slurm.executors import fit_profile, make_executor
        from slurm.profiles import get_profile

        notes: list[str] = []
        arrays = sorted({j.split("_")[0] for j in pretrain_job_ids})
        follow = FollowUpJob(then, str(root.resolve()), cell_ids, profiles, max_parallel,
                             str(plan.data_root) if plan.data_root else None, seeds)
        executor_obj = make_executor("slurm", plan.store.jobs_dir, fit_profile(get_profile(profiles, "cpu"), "slurm", notes),
                                     name="rb-then", dependency="afterok:" + ":".join(arrays))
        job = executor_obj.submit(follow)
        print(f"then: job {job.job_id} plans {', '.join(then)} once pretraining job(s) "
              f"{', '.join(arrays)} succeed (afterok)", file=stream)
        if not wait:
            return 0, []
        from bench.follow import follow_pretraining

        # watch the pretraining cells (adopting them) while their snapshots are evaluated as they appear
        watch, _ = follow_pretraining(plan, Runner(plan, "slurm", profiles, progress=progress, stream=stream).run,
                                      then, "slurm", profiles, in_background=True, evaluate_final=False, seeds=seeds,
                                      max_parallel=max_parallel, force=force, stream=stream, poll_s=2.0)
        if watch.failed:
            print(f"then: {watch.failed} pretraining cell(s) failed", file=stream)
        while True:
            state = _squeue_reason(str(job.job_id))
            if state is None:
                break
            if "DependencyNeverSatisfied" in state:
                subprocess.run(["scancel", str(job.job_id)], capture_output=True)
                print(f"then: a pretraining cell failed, so {', '.join(then)} was not run "
                      f"(follow-up job {job.job_id} cancelled)", file=stream)
                return 1, []
            time.sleep(2)
        try:
            job.result()
        except Exception as error:  # noqa: BLE001 - report the follow-up job's failure as such
            print(f"then: follow-up job {job.job_id} failed: {str(error).strip().splitlines()[-1]}", file=stream)
            return 1, []
    encoders, missing = trained_encoders(root, cell_ids)
    if missing:
        print(f"then: {len(missing)} pretraining cell(s) produced no encoder ({', '.join(missing)}); "
              f"evaluating the {len(encoders)} that did", file=stream)
    if not encoders:
        return 1, []
    code, plans = 0, []
    for name in then:
        suite = load_suite(name)
        try:
            later = build_plan(name, suite, results_root=root, checkpoint_specs=[str(e) for e in encoders],
                               data_root=plan.data_root, seeds=seeds)
            suite.prepare(later.options, later.data_root, later.store.shared_dir)
        except ValueError as error:
            print(f"then: {name}: {error}", file=stream)
            code = 2
            continue
        summary = Runner(later, executor, profiles, max_parallel=max_parallel, force=force, wait=wait,
                         progress=progress, stream=stream).run()
        print(f"then: {name}: " + ", ".join(f"{k}={v}" for k, v in sorted(summary.states.items())), file=stream)
        code = max(code, 1 if summary.failed else 0)
        plans.append(later)
    return code, plans


__all__ = ["FollowUpJob", "run_then", "trained_encoders"]
