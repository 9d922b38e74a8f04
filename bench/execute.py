"""The one path from a plan to a run: plan -> claim -> submit -> watch -> tabulate.

`plan_suite` turns a suite name into a prepared plan; `run_plan` claims, submits and watches its cells
through `build_runner`, the one place a `Runner` is built; `run_suite` is the two in a row. The CLI,
`--then` chains (locally and inside the SLURM follow-up job), `--follow` and the tests all come here:

    run = run_suite("knn", results_root=Path("results"), execution=execution_named("local"),
                    profiles=PROFILES, option_pairs=["ks=5"], checkpoint_specs=["a.pt,b.pt"])
    run.summary.states   # Counter of cell states
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from bench.plan import Plan, build_plan
from slurm.executors import Execution
from slurm.profiles import ResourceProfile


@dataclass
class SuiteRun:
    plan: Plan
    summary: Any  # bench.runner.RunSummary
    runner: Any  # bench.runner.Runner (its adopted cells feed --then dependencies)


def plan_suite(suite_name: str, *, results_root: Path, option_pairs: Sequence[str] = (),
               checkpoint_specs: Sequence[str] = (), data_root: Path | None = None, seeds: list[int] | None = None,
               task_names: list[str] | None = None, prepare: bool = True, **plan_options: Any) -> Plan:
    """The suite's plan (options parsed and checked, checkpoints resolved); `prepare` also builds its
    shared inputs (records, datasets) so the cells can run. `plan_options` go to `build_plan`
    (pretrain_seeds, train_embedded, data_root_flag, stream)."""
    from bench.suites import load_suite

    suite = load_suite(suite_name)
    plan = build_plan(suite_name, suite, results_root=Path(results_root), option_pairs=list(option_pairs),
                      checkpoint_specs=[str(spec) for spec in checkpoint_specs], data_root=data_root, seeds=seeds,
                      task_names=task_names, **plan_options)
    if prepare:
        plan.store.shared_dir.mkdir(parents=True, exist_ok=True)
        suite.prepare(plan.settings, plan.data_root, plan.store.shared_dir)
    return plan


def build_runner(plan: Plan, *, execution: Execution, profiles: dict[str, ResourceProfile],
                 max_parallel: int | None = None, force: bool = False, wait: bool = True, progress: bool = True,
                 stream: TextIO | None = None, **runner_options: Any):
    """The one place a `bench.runner.Runner` is built; `runner_options` are its own (poll_s, dependency)."""
    from bench.runner import Runner

    return Runner(plan, execution, profiles, max_parallel=max_parallel, force=force, wait=wait, progress=progress,
                  stream=stream if stream is not None else sys.stderr, **runner_options)


def run_plan(plan: Plan, **runner_options: Any) -> SuiteRun:
    """Claim, submit and (when `wait`) watch a prepared plan's cells; `runner_options` are build_runner's."""
    runner = build_runner(plan, **runner_options)
    return SuiteRun(plan, runner.run(), runner)


def run_suite(suite_name: str, *, results_root: Path, execution: Execution, profiles: dict[str, ResourceProfile],
              option_pairs: Sequence[str] = (), checkpoint_specs: Sequence[str] = (), data_root: Path | None = None,
              seeds: list[int] | None = None, task_names: list[str] | None = None, **run_options: Any) -> SuiteRun:
    """`plan_suite` then `run_plan`; `run_options` are run_plan's (max_parallel, force, wait, progress, stream, ...)."""
    plan = plan_suite(suite_name, results_root=results_root, option_pairs=option_pairs,
                      checkpoint_specs=checkpoint_specs, data_root=data_root, seeds=seeds, task_names=task_names)
    return run_plan(plan, execution=execution, profiles=profiles, **run_options)


def parse_then(tokens: Sequence[str]) -> list[tuple[str, list[str]]]:
    """`--then` arguments -> [(suite, its key=value options)]: names (comma lists allowed) start a suite,
    key=value tokens belong to the suite named last, e.g. ["knn", "ks=5", "linear"] or ["knn, linear"]."""
    from bench.suite import InputError, comma_list

    chain: list[tuple[str, list[str]]] = []
    for token in tokens:
        if "=" in token:
            if not chain:
                raise InputError(f"--then {token!r}: name the suite before its options, e.g. --then knn ks=5")
            chain[-1][1].append(token)
            continue
        for name in comma_list(token):
            if any(name == known for known, _ in chain):
                raise InputError(f"--then names suite {name!r} twice")
            chain.append((name, []))
    return chain


__all__ = ["SuiteRun", "build_runner", "parse_then", "plan_suite", "run_plan", "run_suite"]
