"""python -m bench.run --suite NAME: plan a suite's cells, submit them, watch them, tabulate.

    python -m bench.run --suite knn                          # embedded NCE/Ring pair, auto executor
    python -m bench.run --suite meta_dataset --checkpoints 'ckpts/*.pt' --executor slurm n_episodes=600
    python -m bench.run --suite knn --dry-run                # the plan, nothing submitted
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench.plan import parse_seeds
from bench.suite import InputError, comma_list
from slurm.executors import AUTO, EXECUTIONS, EXECUTOR_CHOICES, Driving

EXIT_USER_ERROR = 2


class GivenOnce(argparse.Action):
    """A flag that holds one value: repeated with another value it is an error, not "the last one wins"."""

    def __call__(self, parser, namespace, values, option_string=None):
        previous = getattr(namespace, self.dest, None)
        if previous is not None and previous != values:
            parser.error(f"{option_string} given twice ({previous} and {values}); give it once")
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Run a suite's cells (checkpoint x task x seed) as jobs and store one result.json per cell.",
        epilog="Extra key=value arguments override the suite's options; an unknown key lists the valid ones.",
    )
    parser.add_argument("--suite", required=True, help="registered suite name (see bench/suites/__init__.py) "
                        "or an import path module:Class")
    parser.add_argument("--checkpoints", action="append", default=[], metavar="PATHS|GLOB",
                        help="encoder files: paths, comma lists, globs or folders; repeatable "
                             "(default: the embedded NCE and Ring pair)")
    parser.add_argument("--data-root", type=Path, default=None, dest="data_root", action=GivenOnce,
                        help="dataset folder for suites that read one")
    parser.add_argument("--records", type=Path, default=None, dest="records", action=GivenOnce,
                        help="the same as --data-root, named for Meta-Dataset records")
    parser.add_argument("--executor", choices=EXECUTOR_CHOICES, default=AUTO,
                        help="auto: SLURM when a controller answers, else local; debug runs in-process")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (cells, resources, executor) and exit")
    parser.add_argument("--force", action="store_true", help="recompute cells that already have a result")
    parser.add_argument("--max-parallel", type=int, default=None,
                        help="cells running at once (SLURM: slurm_array_parallelism; local: processes)")
    parser.add_argument("--results", type=Path, default=None, action=GivenOnce, help="results folder (default: results/ or $RINGBENCH_RESULTS)")
    parser.add_argument("--tasks", default=None, metavar="NAMES", action=GivenOnce,
                        help="comma list: run only these tasks of the suite (default: all)")
    parser.add_argument("--seeds", default=None, action=GivenOnce, help="comma list of evaluation seeds (default: the suite's, e.g. 0,1,2 "
                        "for coco_det on the embedded set, else 0); for --suite pretrain without --pretrain-seeds, "
                        "the pretraining seeds")
    parser.add_argument("--pretrain-seeds", default=None, metavar="SEEDS", action=GivenOnce,
                        help="comma list of pretraining seeds: without --checkpoints, the embedded NCE/Ring pair is "
                             "trained (once, cached) and evaluated per seed (default 0); with --suite pretrain, the "
                             "seeds each recipe is trained with (--seeds then goes to the --then suites)")
    parser.add_argument("--resource", action="append", default=[], metavar="[PROFILE.]KEY=VALUE",
                        help="override a resource profile, e.g. eval.gpus=2, pretrain.partition=big, timeout_min=30")
    parser.add_argument("--then", nargs="+", action="append", default=[], metavar="SUITE [key=value ...]",
                        help="with --suite pretrain: evaluation suites to run on the trained encoders, each name "
                             "followed by its own options, e.g. --then knn ks=5 linear, or --then 'knn, linear' "
                             "(SLURM: submitted at once with afterok dependencies)")
    parser.add_argument("--follow", action="append", default=[], metavar="RUN_DIR",
                        help="evaluate the encoders a pretraining run folder publishes (snapshots, then encoder.pt) "
                             "as they appear, until its final encoder; repeatable")
    parser.add_argument("--follow-poll", type=float, default=10.0, metavar="SECONDS",
                        help="with --follow: how often to look for new encoders (default 10)")
    parser.add_argument("--follow-idle-min", type=float, default=360.0, metavar="MINUTES",
                        help="with --follow: stop following a run whose folder has not changed for this long "
                             "(default 360)")
    parser.add_argument("--no-wait", action="store_true",
                        help="SLURM only: submit and return; watch with python -m bench.status")
    parser.add_argument("--no-progress", action="store_true", help="no live progress bar")
    parser.add_argument("--no-leaderboard", action="store_true", help="do not rebuild results/<suite>.csv at the end")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="suite option overrides (before --then: they belong to --suite)")
    return parser


def check_output_folders(results_root: Path, suites: list[str]) -> None:
    """Before planning: the results folder (each suite's own too) and the cache can be written."""
    from pretrain.embedded import cache_root
    from ringbench_common.atomic_files import check_writable

    check_writable(results_root, "results folder")
    for name in suites:
        check_writable(Path(results_root) / name, "results folder")
    check_writable(cache_root(), "cache folder (RINGBENCH_CACHE)")


def disk_full_failures(plans: list) -> list[str]:
    """The messages of the cells that failed because the disk was full (bench.store error.json)."""
    messages = []
    for plan in plans:
        for planned in plan.cells:
            error = plan.store.cell(planned.cell_id).error() if planned.cell_id else None
            if error and error.get("type") == "DiskFullError":
                messages.append(str(error.get("message", "")))
    return messages


def user_error_types() -> tuple[type[BaseException], ...]:
    """ValueError covers InputError, CheckpointError and DatasetError (all ValueError subclasses)."""
    return (ValueError, FileNotFoundError, NotADirectoryError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stream = sys.stderr
    try:
        from bench.execute import parse_then, plan_suite, run_plan
        from bench.plan import check_device_here, parse_suite_options
        from bench.store import results_root_default
        from bench.suites import load_suite, load_suite_class, suite_names
        from slurm.executors import resolve_execution
        from slurm.profiles import PROFILES, apply_resource_overrides

        if args.max_parallel is not None and args.max_parallel < 1:
            raise InputError(f"--max-parallel {args.max_parallel}: expected a positive integer")
        results_root = args.results or results_root_default()
        profiles = apply_resource_overrides(PROFILES, args.resource)
        execution = resolve_execution(args.executor)
        if args.no_wait and not execution.jobs_outlive_runner:
            detached = [name for name, cls in EXECUTIONS.items() if cls.jobs_outlive_runner]
            attached = [name for name, cls in EXECUTIONS.items() if not cls.jobs_outlive_runner]
            raise InputError(f"--no-wait needs the {' or '.join(detached)} executor ({' and '.join(attached)} jobs "
                             f"live with the runner); got {execution.name}")
        then_chain = parse_then([token for group in args.then for token in group])
        then = [name for name, _ in then_chain]
        suite = load_suite(args.suite)
        check_output_folders(results_root, [suite.name, *(load_suite(name).name for name in then)])
        if args.follow:
            from bench.follow import follow_command

            return follow_command(args, execution, profiles, results_root, stream)
        if then and not suite.produces_checkpoints:
            producers = [name for name in suite_names() if load_suite_class(name).produces_checkpoints]
            raise InputError(f"--then chains evaluation suites after --suite {' or '.join(producers)} only")
        for name, pairs in then_chain:
            later = load_suite(name)
            if not later.uses_checkpoints:
                raise InputError(f"--then {name}: that suite evaluates no checkpoint")
            later_options = parse_suite_options(later, pairs)  # a bad option fails now, before anything is submitted
            if execution.runs_here:
                check_device_here(later_options, f"--then {name}")
        if args.records is not None and args.data_root is not None:
            raise InputError("--records and --data-root name the same folder; give one of them")
        data_root, data_root_flag = (args.records, "--records") if args.records is not None else (args.data_root, "--data-root")
        seeds = then_seeds = parse_seeds(args.seeds, stream=stream)
        pretrain_seeds = parse_seeds(args.pretrain_seeds, "--pretrain-seeds", stream=stream)
        if pretrain_seeds and suite.produces_checkpoints:  # the pretrain suite's cell seeds are pretraining seeds
            seeds, pretrain_seeds = pretrain_seeds, None
        plan_start = time.time()
        plan = plan_suite(args.suite, results_root=results_root, option_pairs=args.overrides,
                          checkpoint_specs=args.checkpoints, data_root=data_root, seeds=seeds,
                          task_names=list(comma_list(args.tasks or "")) or None, prepare=not args.dry_run,
                          pretrain_seeds=pretrain_seeds, train_embedded=not args.dry_run,
                          data_root_flag=data_root_flag, stream=stream, devices_here=execution.runs_here)
        plan_seconds = time.time() - plan_start
        if args.dry_run:
            from bench.runner import describe_plan

            describe_plan(plan, execution, profiles, args.max_parallel, sys.stdout)
            if then:
                print(f"then: {', '.join(then)} on the encoders these cells produce", file=sys.stdout)
            return 0
    except user_error_types() as error:
        if os.environ.get("RINGBENCH_TRACEBACK"):
            raise
        print(f"error: {error}", file=stream)
        return EXIT_USER_ERROR
    except OSError as error:  # a read-only or full results folder or cache: one line, nothing half-written
        if os.environ.get("RINGBENCH_TRACEBACK"):
            raise
        from ringbench_common.atomic_files import describe_os_error

        print(f"error: {describe_os_error(error)}", file=stream)
        return EXIT_USER_ERROR

    # a scheduler with dependencies takes the --then suites at once (afterok); jobs that run beside the
    # runner let it evaluate the snapshots while pretraining runs; in-process jobs evaluate afterwards
    chain_by_dependency = bool(then) and execution.supports_dependencies
    follow_while_training = bool(then) and not chain_by_dependency and execution.driving is not Driving.IN_PROCESS
    run_options = dict(execution=execution, profiles=profiles, max_parallel=args.max_parallel, force=args.force,
                       progress=not args.no_progress, stream=stream)
    try:
        if follow_while_training:
            from bench.follow import follow_pretraining

            run, _ = follow_pretraining(plan, lambda: run_plan(plan, **run_options), then, execution, profiles,
                                        in_background=True, seeds=then_seeds,
                                        max_parallel=args.max_parallel, force=args.force, stream=stream, poll_s=2.0,
                                        option_pairs=dict(then_chain))
        else:
            run = run_plan(plan, wait=not args.no_wait and not chain_by_dependency, **run_options)
    except user_error_types() as error:  # a bad partition, or sbatch refusing the request
        print(f"error: {error}", file=stream)
        return EXIT_USER_ERROR
    except OSError as error:  # the results folder turned read-only or full during the run
        from ringbench_common.atomic_files import describe_os_error

        print(f"error: {describe_os_error(error)}", file=stream)
        return EXIT_USER_ERROR
    summary, runner = run.summary, run.runner
    print(f"{plan.suite.name}: {summary.total} cells: kept {summary.skipped_done}, submitted {summary.submitted}, "
          f"watched {summary.adopted}; planning {plan_seconds:.2f}s, submission {summary.submit_seconds:.2f}s",
          file=stream)
    code = 0
    plans = [plan]
    if then:
        from bench.chain import run_then

        live = list(summary.job_ids) + [str(t.owner.get("job_id")) for t in runner.adopted if t.owner]
        then_code, then_plans = run_then(plan, then, execution, profiles, pretrain_job_ids=live,
                                         max_parallel=args.max_parallel, wait=not args.no_wait, force=args.force,
                                         progress=not args.no_progress, stream=stream,
                                         seeds=then_seeds, option_pairs=dict(then_chain))
        code = max(code, then_code)
        plans += then_plans
        if chain_by_dependency and not args.no_wait:
            from collections import Counter

            summary.states = Counter(plan.store.cell(p.cell_id).state().state for p in plan.cells)
    if args.no_wait:
        print(f"submitted; follow with: python -m bench.status --results {plan.store.root}", file=stream)
        return code
    print(f"{plan.suite.name} states: " + ", ".join(f"{k}={v}" for k, v in sorted(summary.states.items())),
          file=stream)
    if not args.no_leaderboard:
        from bench.leaderboard import write_suite_tables
        from ringbench_common.atomic_files import describe_os_error

        try:
            for done_plan in plans:
                for path in write_suite_tables(done_plan.store.root, done_plan.suite.name):
                    print(f"wrote {path}", file=stream)
        except OSError as error:
            print(f"error: the leaderboard was not written: {describe_os_error(error)}", file=stream)
            code = EXIT_USER_ERROR
    for done_plan in plans:  # where this run's results are, whatever the working folder was
        board = "" if args.no_leaderboard else (f" and the leaderboard "
                                                 f"{done_plan.store.root.resolve() / done_plan.suite.name}.csv/.md/.png")
        print(f"results: {done_plan.store.suite_dir.resolve()} (one folder per cell){board}", file=stream)
    full = disk_full_failures(plans)
    if full:  # not a failed evaluation: the same cells complete once there is space
        print(f"error: {len(full)} cell(s) failed for lack of disk space: {full[0].removeprefix('DiskFullError: ')}",
              file=stream)
        return EXIT_USER_ERROR
    return max(code, 1 if summary.failed else 0)


if __name__ == "__main__":
    sys.exit(main())
